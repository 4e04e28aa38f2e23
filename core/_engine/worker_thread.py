"""Blocking calls for async code on one daemon thread, which a call stuck forever cannot hold hostage.

The store hub's replicator is synchronous and talks to a server across a LAN.  A hub that loses
power, or a cable cut between the two, looks the same to a query in flight: the connection stays
up, no FIN, no RST, and the driver waits for an answer that never comes (TCP may give up after
minutes or hours).  The calls run on a thread of their own so the event loop never waits for
them; ``concurrent.futures.ThreadPoolExecutor`` would still hang the POS twice over: its
``shutdown(wait=True)`` waits for the stuck call, and at interpreter exit every executor thread is
joined, so a process that closed everything still never exits.

``WorkerThread`` runs one call at a time, in order, on one daemon thread.  ``close(wait)`` waits
at most ``wait`` seconds for the call in flight and then leaves it behind: the thread ends when the
call does, or with the process.  A call whose caller stopped waiting (a timeout, a cancel) before it
started is skipped, as an executor would.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Call(Generic[T]):
    fn: Callable[[], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its caller gave up (timeout, cancel) while it ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class WorkerThread:
    """``await worker.run(fn)`` runs ``fn()`` on the worker's daemon thread; ``await worker.close(wait)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._ended: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the thread after the calls before it; its result or its exception.

        Cancelling the caller (``asyncio.timeout``) stops the wait, not the call: one that started
        runs to its end, one that had not started is skipped.
        """
        if self._closed:
            raise RuntimeError(f"worker thread {self.name!r} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._ended = loop.create_future()
            self._thread = threading.Thread(target=self._main, args=(loop, self._ended), name=self.name, daemon=True)
            self._thread.start()
        self._calls.put(_Call(fn, loop, future))
        return await future

    async def close(self, wait: float) -> bool:
        """No more calls; wait at most ``wait`` seconds for those queued and in flight to end.

        :return: True when the thread ended; False when a call was still running and was left behind
            (the thread is a daemon: it ends when that call does, and never keeps the process alive).
        """
        if not self._closed:
            self._closed = True
            self._calls.put(None)
        if self._thread is None or self._ended is None:
            return True
        try:
            async with asyncio.timeout(wait):
                await asyncio.shield(self._ended)
        except TimeoutError:
            return not self._thread.is_alive()
        return True

    def _main(self, loop: asyncio.AbstractEventLoop, ended: asyncio.Future[None]) -> None:
        try:
            while (call := self._calls.get()) is not None:
                if call.future.cancelled():  # nobody waits for it any more (read across threads: at worst it runs)
                    continue
                result: Any = None
                error: BaseException | None = None
                try:
                    result = call.fn()
                except BaseException as exc:  # noqa: BLE001 - handed to the caller, whatever it is
                    error = exc
                with contextlib.suppress(RuntimeError):  # the loop closed while the call ran: nobody to tell
                    call.loop.call_soon_threadsafe(_settle, call.future, result, error)
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, ended, None, None)
