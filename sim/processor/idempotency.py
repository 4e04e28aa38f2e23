"""Stripe's idempotency semantics for POST requests.

* same key, same request: the saved answer is replayed (``Idempotent-Replayed: true``);
* same key, different request: 400 ``idempotency_error``;
* same key while the first request still runs: 409 ``idempotency_key_in_use``.

Only answers of requests that started executing are saved (see SimError.saved).

Keys expire ``ttl`` seconds after their first use, measured on the account's
clock (Stripe prunes keys once they are at least 24 hours old): a request
reusing an expired key is a new request.  A key whose request still runs
never expires.  At most ``capacity`` keys are kept (oldest forgotten first).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import SimError

MAX_KEY_LENGTH = 255
#: Stripe prunes idempotency keys once they are at least 24 hours old.
DEFAULT_TTL = 86_400.0


@dataclass
class Saved:
    """A saved answer, kept as the exact bytes sent (cheaper than the objects)."""

    status: int
    body: bytes


@dataclass
class _Entry:
    fingerprint: str
    first_used: float  # on the account's clock
    saved: Saved | None = None  # None while in flight


def fingerprint(method: str, path: str, params: dict[str, Any]) -> str:
    return json.dumps([method.upper(), path, params], sort_keys=True, separators=(",", ":"))


class IdempotencyStore:
    """Keys -> saved answers, forgotten ``ttl`` seconds after first use and beyond ``capacity`` keys."""

    def __init__(
        self, capacity: int = 200_000, *, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.time
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity
        self.ttl = ttl
        self.clock = clock

    def _expired(self, entry: _Entry, now: float) -> bool:
        return entry.saved is not None and now - entry.first_used >= self.ttl

    def _prune(self, now: float) -> None:
        """Forget expired keys from the oldest on (caller holds the lock)."""
        while self._entries:
            entry = next(iter(self._entries.values()))
            if not self._expired(entry, now):
                break
            self._entries.popitem(last=False)

    def begin(self, key: str, fp: str) -> Saved | None:
        """Claim ``key`` for a new request, or return the saved answer to replay.

        Raises SimError 400 (different request) or 409 (in flight).
        """
        if len(key) > MAX_KEY_LENGTH:
            raise SimError(
                400, f"Idempotency keys must be at most {MAX_KEY_LENGTH} characters.", type="idempotency_error"
            )
        with self._lock:
            now = self.clock()
            self._prune(now)
            entry = self._entries.get(key)
            if entry is not None and self._expired(entry, now):
                # Out of order behind an in-flight key, so _prune did not reach it.
                del self._entries[key]
                entry = None
            if entry is None:
                self._entries[key] = _Entry(fingerprint=fp, first_used=now)
                while len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
                return None
            if entry.fingerprint != fp:
                raise SimError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters they were first used "
                    "with. Try using a key other than the one you used.",
                    type="idempotency_error",
                )
            if entry.saved is None:
                raise SimError(
                    409,
                    "There is currently another in-progress request using this Idempotent Key (that probably means "
                    "you submitted twice, and the other request is still going through). Please retry.",
                    type="invalid_request_error",
                    code="idempotency_key_in_use",
                    headers={"Stripe-Should-Retry": "true"},
                )
            return entry.saved

    def finish(self, key: str, saved: Saved | None) -> None:
        """Save the answer, or (``None``) release the key: nothing executed."""
        with self._lock:
            if saved is None:
                self._entries.pop(key, None)
            elif key in self._entries:
                self._entries[key].saved = saved

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
