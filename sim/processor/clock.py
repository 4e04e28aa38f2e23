"""The simulated account's clock: real time plus an offset tests can move forward.

One clock serves the whole account (books and idempotency store), so
"advance by 25 hours" expires idempotency keys, connection tokens, device
sessions and search-indexing delays together, as the passing of real time would.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class SimClock:
    """``clock()`` is the account's time in unix seconds; ``advance(s)`` moves it forward."""

    def __init__(self, source: Callable[[], float] = time.time) -> None:
        self._source = source
        self._offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._source() + self._offset

    @property
    def offset(self) -> float:
        """Seconds the clock runs ahead of its source."""
        return self._offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (>= 0, finite); returns the new time."""
        seconds = float(seconds)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"the clock only moves forward by a finite number of seconds, got {seconds}")
        with self._lock:
            self._offset += seconds
        return self()
