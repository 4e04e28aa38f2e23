"""Is the processor reachable?  Decided by real request outcomes plus probes.

Starts UNKNOWN.  Any answered request means ONLINE; a request that got no
answer is checked with a probe right away (``verify``), so one dropped
connection does not take a healthy terminal offline.  While OFFLINE a probe
runs on its own with capped exponential backoff and full jitter, and nothing
the app does (or fails to do) is needed for it: the terminal is never stuck
offline once connectivity returns.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import structlog

from ..models import NetworkStatus

log = structlog.get_logger("offterm.network")

Listener = Callable[[NetworkStatus, NetworkStatus], None]


class NetworkMonitor:
    """Owns the network status; ``start()`` runs the probe loop in the background."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[bool]],
        on_change: Listener,
        min_interval: float = 0.5,
        max_interval: float = 30.0,
        probe_timeout: float = 30.0,
    ) -> None:
        self._probe = probe
        self._on_change = on_change
        self._min = max(min_interval, 0.001)
        self._max = max(max_interval, self._min)
        self._probe_timeout = probe_timeout
        self.status = NetworkStatus.UNKNOWN
        #: Ceiling of the next wait between probes while offline (doubles per failed probe).
        self.probe_delay = self._min
        #: Probes run so far (reachability checks, background or on demand).
        self.probes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._checking: asyncio.Future[NetworkStatus] | None = None

    def record_success(self) -> None:
        """A request was answered (any HTTP status): the processor is reachable."""
        self._set(NetworkStatus.ONLINE)

    def record_failure(self) -> None:
        """The processor could not be reached at all."""
        self._set(NetworkStatus.OFFLINE)

    def _set(self, status: NetworkStatus) -> None:
        if status is self.status:
            return
        previous, self.status = self.status, status
        log.info("network_status_changed", status=status.value, previous=previous.value)
        if status is NetworkStatus.OFFLINE:
            self.probe_delay = self._min
            self._wake.set()
        try:
            self._on_change(status, previous)
        except Exception as exc:  # a listener must never stop the monitor
            log.error("network_listener_failed", error_type=type(exc).__name__)

    async def check(self) -> NetworkStatus:
        """Probe once now and record the outcome."""
        self.probes += 1
        try:
            # Not wait_for: on 3.11 it can swallow a cancel that lands as the probe finishes, and then
            # stop() would wait forever for a probe loop that went back to sleep.
            async with asyncio.timeout(self._probe_timeout):
                ok = await self._probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a probe must never crash the monitor
            log.debug("probe_failed", error_type=type(exc).__name__)
            ok = False
        if ok:
            self.record_success()
        else:
            self.record_failure()
        return self.status

    async def verify(self) -> bool:
        """A request got no answer: probe now to tell a dropped connection from a lost network.

        Concurrent callers share one probe.  Returns True if the processor answered.
        """
        if self._checking is None or self._checking.done():
            self._checking = asyncio.ensure_future(self.check())
        status = await asyncio.shield(self._checking)
        return status is NetworkStatus.ONLINE

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="offterm-network-probe")

    async def stop(self) -> None:
        for task in (self._task, self._checking):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = None
        self._checking = None

    async def _run(self) -> None:
        if self.status is NetworkStatus.UNKNOWN:
            await self.check()
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the probe loop die: that is how terminals get stuck offline
                log.error("probe_loop_error", error_type=type(exc).__name__)
                await asyncio.sleep(self._min)

    async def _step(self) -> None:
        if self.status is not NetworkStatus.OFFLINE:
            self._wake.clear()
            await self._wake.wait()
            return
        # full jitter keeps a fleet of terminals from probing in lock-step
        await asyncio.sleep(self._min + random.uniform(0, self.probe_delay))
        if self.status is NetworkStatus.OFFLINE:
            self.probe_delay = min(self._max, self.probe_delay * 2)
            await self.check()
