"""Is the processor reachable?  Decided by real request outcomes plus probes.

Starts UNKNOWN.  Any answered request means ONLINE; a connection failure or
timeout means OFFLINE.  While OFFLINE a probe runs with exponential backoff
(capped), so the terminal is never stuck offline once connectivity returns.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import structlog

from .models import NetworkStatus

log = structlog.get_logger("offterm.network")

Listener = Callable[[NetworkStatus, NetworkStatus], None]


class NetworkMonitor:
    def __init__(
        self,
        probe: Callable[[], Awaitable[bool]],
        on_change: Listener,
        min_interval: float = 0.5,
        max_interval: float = 30.0,
    ) -> None:
        self._probe = probe
        self._on_change = on_change
        self._min = min_interval
        self._max = max(max_interval, min_interval)
        self.status = NetworkStatus.UNKNOWN
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def record_success(self) -> None:
        self._set(NetworkStatus.ONLINE)

    def record_failure(self) -> None:
        self._set(NetworkStatus.OFFLINE)

    def _set(self, status: NetworkStatus) -> None:
        if status is self.status:
            return
        previous, self.status = self.status, status
        log.info("network_status_changed", status=status.value, previous=previous.value)
        if status is NetworkStatus.OFFLINE:
            self._wake.set()
        self._on_change(status, previous)

    async def check(self) -> NetworkStatus:
        """Probe once now and record the outcome."""
        try:
            ok = await self._probe()
        except Exception as exc:  # a probe must never crash the monitor
            log.warning("probe_failed", error_type=type(exc).__name__)
            ok = False
        if ok:
            self.record_success()
        else:
            self.record_failure()
        return self.status

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="offterm-network-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        if self.status is NetworkStatus.UNKNOWN:
            await self.check()
        delay = self._min
        while True:
            if self.status is not NetworkStatus.OFFLINE:
                self._wake.clear()
                await self._wake.wait()
                delay = self._min
                continue
            # full jitter keeps a fleet of terminals from probing in lock-step
            await asyncio.sleep(self._min + random.uniform(0, delay))
            if self.status is NetworkStatus.OFFLINE:
                await self.check()
            delay = min(self._max, delay * 2)
