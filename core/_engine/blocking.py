"""A small blocking facade for synchronous POS apps.

The async Terminal runs on its own event loop in a background thread; each
method here submits a call to it and waits.  Event hooks fire on that
thread, so listeners must be thread-safe with respect to the app.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from ..config import Config
from ..contracts import ReaderConnection, ReaderInfo, StoredPayment
from ..errors import UnexpectedIntentState
from ..manager import PluginManager
from ..models import OfflineBehavior, OfflineStatus, PaymentIntent, PaymentIntentParams
from .terminal import CloseReport, Terminal

T = TypeVar("T")


class BlockingTerminal:
    """``with BlockingTerminal.from_config(...) as terminal:`` — same methods, no ``await``."""

    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal
        self._report: CloseReport | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="offterm-loop", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(
        cls,
        config: str | Path | Mapping[str, Any] | Config | None = None,
        *,
        plugin_manager: PluginManager | None = None,
    ) -> BlockingTerminal:
        return cls(Terminal.from_config(config, plugin_manager=plugin_manager))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()  # never started: no "coroutine was never awaited"
            raise UnexpectedIntentState("this BlockingTerminal is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> BlockingTerminal:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        self._call(self.terminal.open())

    def close(self, timeout: float | None = None) -> CloseReport:
        """Close once; a second close (leaving a ``with`` block after closing in it) returns the same report."""
        if self._report is not None:
            return self._report
        try:
            self._report = self._call(self.terminal.close(timeout))
            return self._report
        finally:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=5)
                self._loop.close()

    @property
    def offline_status(self) -> OfflineStatus:
        return self.terminal.offline_status

    @property
    def connected_reader(self) -> ReaderConnection | None:
        return self.terminal.connected_reader

    def discover_readers(self, timeout: float = 5.0) -> list[ReaderInfo]:
        return self._call(self.terminal.discover_readers(timeout))

    def connect_reader(self, reader: ReaderInfo) -> ReaderInfo:
        return self._call(self.terminal.connect_reader(reader))

    def disconnect_reader(self) -> None:
        self._call(self.terminal.disconnect_reader())

    def create_payment_intent(
        self,
        params: PaymentIntentParams | dict[str, Any],
        offline_behavior: OfflineBehavior = OfflineBehavior.PREFER_ONLINE,
    ) -> PaymentIntent:
        return self._call(self.terminal.create_payment_intent(params, offline_behavior))

    def collect_payment_method(self, intent: PaymentIntent, timeout: float = 60.0) -> PaymentIntent:
        return self._call(self.terminal.collect_payment_method(intent, timeout))

    def confirm_payment_intent(
        self, intent: PaymentIntent, offline_behavior: OfflineBehavior | None = None
    ) -> PaymentIntent:
        return self._call(self.terminal.confirm_payment_intent(intent, offline_behavior))

    def cancel_payment_intent(self, intent: PaymentIntent) -> PaymentIntent:
        return self._call(self.terminal.cancel_payment_intent(intent))

    def forward_now(self, timeout: float = 30.0) -> int:
        return self._call(self.terminal.forward_now(timeout))

    def list_stored_payments(self) -> list[StoredPayment]:
        return self._call(self.terminal.list_stored_payments())
