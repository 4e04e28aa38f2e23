"""Replication to the store hub: what the Terminal calls, and the background catch-up.

The lane's own store stays the first durable copy; the hub (``[hub] replicator``) is the second.

* ``sync`` mode: ``stored(payment)`` (called by the Terminal once the local commit is durable)
  waits for the hub's commit too, at most ``[hub] sync_timeout``; past it, or on any hub error,
  the confirm returns local-only and the payment catches up later.  ``reached_hub`` says which.
* ``async`` mode: ``stored`` only wakes the background loop.
* In both, a background loop replays every change the hub does not have yet, oldest first
  (by the payment's last change, then its offline id), in batches; after each batch the hub
  committed, a cursor in the store's meta area (``hub_replication_cursor``) moves on, so
  catch-up after any outage of the hub or the LAN resumes where it stopped, in order.  Each
  round also sends a heartbeat with how far behind the lane is.

The replicator is synchronous (like a store): every call goes to one worker thread of its own,
so a hub that hangs never blocks the event loop nor the store's thread, and the replicator never
sees two calls at once.  Hub failures are logged with their code (never a URL, password or key)
and never fail a payment.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from ..config import Config
from ..contracts.replication import HubError, ReplicationRecord, Replicator
from ..contracts.storage import StorageKeyProvider, StoredPayment
from ..errors import ConfigError, OfftermError, StorageKeyUnavailable
from ..manager import PluginManager
from ..registrations import Registration
from .forwarder import utcnow
from .store_runner import AsyncStore

log = structlog.get_logger("offterm.hub")

T = TypeVar("T")

CURSOR_META = "hub_replication_cursor"
HUB_KEY_ID = "hub"
MODES = ("sync", "async")
#: changes this close behind the cursor are sent again (no-ops on the hub): a change whose time was
#: taken just before another's but committed just after it is never skipped
OVERLAP = timedelta(seconds=2)


def _key(payment: StoredPayment) -> tuple[datetime, str]:
    return (payment.updated_at or payment.stored_at, payment.offline_id)


class Replication:
    """The Terminal's side of the hub; ``Replication(None, ...)`` is the no-hub case (does nothing)."""

    def __init__(
        self,
        replicator: Replicator | None,
        store: AsyncStore,
        *,
        lane: str = "",
        mode: str = "async",
        keys: StorageKeyProvider | None = None,
        sync_timeout: float = 0.3,
        interval: float = 2.0,
        batch_size: int = 200,
    ) -> None:
        self.replicator = replicator
        self.store = store
        self.lane = lane
        self.mode = mode
        self.sync_timeout = sync_timeout
        self.interval = interval
        self.batch_size = batch_size
        self._keys = keys
        self._open = False
        self._reached: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="offterm-hub") if replicator is not None else None
        )

    @property
    def enabled(self) -> bool:
        return self.replicator is not None

    @property
    def last_error(self) -> str | None:
        """The code of the last hub failure, None once a round succeeded."""
        return self._last_error

    # -- the worker thread ------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _ensure_open(self) -> Replicator:
        """On the worker thread: connect and check the hub (schema, key) if not yet done."""
        assert self.replicator is not None and self._keys is not None
        if not self._open:
            key = self._keys.get_key(HUB_KEY_ID, create=False)
            if key is None:
                raise StorageKeyUnavailable("the hub key provider ([hub] key_provider) has no hub key")
            self.replicator.open(key)
            self._open = True
        return self.replicator

    def _send(self, records: Sequence[ReplicationRecord]) -> int:
        try:
            return self._ensure_open().replicate(records)
        except HubError:
            self._close_quietly()  # reconnect next time: the hub may have restarted
            raise

    def _beat(self, now: datetime, oldest: datetime | None) -> None:
        self._ensure_open().heartbeat(self.lane, now, oldest)

    def _close_quietly(self) -> None:
        assert self.replicator is not None
        self._open = False
        try:
            self.replicator.close()
        except Exception as exc:  # noqa: BLE001 - closing a broken connection must not raise
            log.debug("hub_close_failed", error_type=type(exc).__name__)

    # -- what the Terminal calls --------------------------------------------------------

    def start(self) -> None:
        """Start the background catch-up loop (a Terminal opened with ``background=True``)."""
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="offterm-hub-replication")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._executor is not None:
            if self._open:
                await self._run(self._close_quietly)
            self._executor.shutdown(wait=True)

    async def stored(self, payment: StoredPayment) -> bool:
        """A payment was durably stored: in sync mode, wait (bounded) for the hub; True if it got there."""
        if not self.enabled:
            return False
        if self.mode != "sync":
            self._wake.set()
            return False
        try:
            async with asyncio.timeout(self.sync_timeout):
                history = await self.store.history(payment.offline_id)
                await self._run(self._send, [ReplicationRecord(self.lane, payment, history)])
        except TimeoutError:
            log.warning("hub_sync_timed_out", offline_id=payment.offline_id, timeout=self.sync_timeout)
            self._wake.set()
            return False
        except OfftermError as exc:
            self._failed(exc)
            self._wake.set()
            return False
        self._reached.add(payment.offline_id)
        return True

    def reached_hub(self, offline_id: str) -> bool:
        """Whether this Terminal saw the hub commit the payment when it was confirmed (sync mode)."""
        return offline_id in self._reached

    async def catch_up(self) -> int:
        """Send every change the hub may not have, oldest first, moving the cursor after each batch.

        :return: how many changes were sent.
        :raises HubError: the hub failed (the cursor stays after the last batch it committed).
        """
        if not self.enabled:
            return 0
        raw = await self.store.get_meta(CURSOR_META)
        cursor: tuple[datetime, str] | None = None
        if raw:
            data = json.loads(raw)
            cursor = (datetime.fromisoformat(data["changed_at"]), data["offline_id"])
        payments = await self.store.list_payments()
        floor = (cursor[0] - OVERLAP, "") if cursor else None
        todo = sorted((p for p in payments if floor is None or _key(p) > floor), key=_key)
        sent = 0
        try:
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start : start + self.batch_size]
                records = [ReplicationRecord(self.lane, p, await self.store.history(p.offline_id)) for p in batch]
                await self._run(self._send, records)
                sent += len(batch)
                last = _key(batch[-1])
                if cursor is None or last > cursor:
                    cursor = last
                    value = json.dumps({"changed_at": last[0].isoformat(), "offline_id": last[1]})
                    await self.store.set_meta(CURSOR_META, value)
        finally:
            unsent = [p for p in todo[sent:] if cursor is None or _key(p) > cursor]
            oldest = _key(unsent[0])[0] if unsent else None
            if sent or not unsent:
                try:
                    await self._run(self._beat, utcnow(), oldest)
                except HubError as exc:
                    log.debug("hub_heartbeat_failed", code=exc.code)
        self._last_error = None
        return sent

    # -- the background loop ---------------------------------------------------------------

    def _failed(self, exc: OfftermError) -> None:
        if exc.code != self._last_error:  # one line per outage, not one per round
            log.warning("hub_replication_failed", code=exc.code, error=str(exc))
        self._last_error = exc.code

    async def _loop(self) -> None:
        while True:
            try:
                await self.catch_up()
            except OfftermError as exc:
                self._failed(exc)
            except Exception as exc:  # noqa: BLE001 - the loop must outlive a bug in a replicator plugin
                log.error("hub_replication_crashed", error_type=type(exc).__name__)
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()


def build_replication(
    config: Config,
    plugins: PluginManager,
    build: Callable[[str, Registration[Any]], Any],
    store: AsyncStore,
) -> Replication:
    """The Terminal's ``Replication`` from ``[hub]``: a no-op one when no replicator is configured."""
    hub = config.sections.get("hub") or {}
    name = hub.get("replicator") or ""
    if not name:
        return Replication(None, store)
    mode = hub["mode"]
    if mode not in MODES:
        raise ConfigError("hub.mode", f"must be one of: {', '.join(MODES)}", mode)
    lane = hub["lane"]
    if not lane:
        raise ConfigError("hub.lane", "is required when [hub] replicator is set (this lane's name on the hub)")
    key_name = hub["key_provider"]
    if key_name == config.get("storage", "key_provider") and key_name != "keyring":
        raise ConfigError(
            "hub.key_provider",
            "must not be the provider of this lane's storage key (it would hand the hub the lane's own key)",
            key_name,
        )
    from ..registrations import ReplicatorRegistration

    registration = plugins._select("offterm_replicators", ReplicatorRegistration, name)
    replicator = build("replicator", registration)
    if not isinstance(replicator, Replicator):
        raise ConfigError("hub.replicator", f"component {name!r} built a {type(replicator).__name__}, not a Replicator")
    keys = build("storage_key", plugins.storage_key_provider(key_name))
    return Replication(
        replicator,
        store,
        lane=lane,
        mode=mode,
        keys=keys,
        sync_timeout=float(hub["sync_timeout"]),
        interval=float(hub["interval"]),
        batch_size=int(hub["batch_size"]),
    )
