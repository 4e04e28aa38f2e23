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
sees two calls at once.  In sync mode a second replicator, built from the same component (a
connection of its own), sends the confirms' payments on a thread of its own, so a confirm never
queues behind the catch-up.  Hub failures are logged with their code (never a URL, password or
key) and never fail a payment.

A hub that stops answering mid-call (power lost, a cable cut, a connection reset that never
arrived: no FIN, no RST) can keep a call waiting for hours.  Nothing the POS waits for waits on
it: a sync confirm falls back after ``sync_timeout``, ``stop()`` (so ``Terminal.close()``) leaves
such a call behind after ``STOP_WAIT`` seconds, and the threads are daemons (``WorkerThread``),
so the process still exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from ..config import Config
from ..contracts.policies import FleetExposure
from ..contracts.replication import HubError, HubOutcome, ReplicationRecord, Replicator, StateTotals
from ..contracts.storage import PaymentState, StorageKeyProvider, StoredPayment
from ..errors import (
    CardDeclined,
    ConfigError,
    OfftermError,
    PaymentNotFound,
    PermanentProcessorError,
    StorageKeyUnavailable,
)
from ..manager import PluginManager
from ..registrations import Registration
from .forwarder import utcnow
from .intents import intent_from_stored
from .store_runner import AsyncStore
from .worker_thread import WorkerThread

log = structlog.get_logger("offterm.hub")

T = TypeVar("T")

CURSOR_META = "hub_replication_cursor"
#: the last hub outcome this lane recorded (``Replicator.outcomes``): when the hub forwarder decided it
OUTCOMES_META = "hub_outcomes_cursor"
#: outcomes decided this close before the cursor are read again (recording one twice changes nothing):
#: two hub forwarders may commit their decisions out of time order
OUTCOMES_OVERLAP = timedelta(seconds=60)
#: hub outcome -> the lane's state, and the error its event carries
_OUTCOME_STATES = {
    "forwarded": PaymentState.FORWARDED,
    "declined": PaymentState.DECLINED,
    "needs_attention": PaymentState.NEEDS_ATTENTION,
}
HUB_KEY_ID = "hub"
MODES = ("sync", "async")
#: changes this close behind the cursor are sent again (no-ops on the hub): a change whose time was
#: taken just before another's but committed just after it is never skipped
OVERLAP = timedelta(seconds=2)
#: seconds ``stop()`` waits for the hub (a call in flight to end, the connections to close) before leaving
#: a stuck call behind on its daemon thread: a hub that stopped answering never holds ``Terminal.close()``
STOP_WAIT = 2.0
#: at most this many payments remembered as put on the hub by sync confirms (forgetting only costs a resend)
ON_HUB_MAX = 10_000


def _outcome_error(payment: StoredPayment) -> OfftermError | None:
    """The error ``payment_intent_forwarded`` carries for an outcome the hub forwarder decided."""
    if payment.state is PaymentState.DECLINED:
        return CardDeclined("the card was declined (forwarded by the store hub)", decline_code=payment.decline_code)
    if payment.state is PaymentState.NEEDS_ATTENTION:
        return PermanentProcessorError(
            "the store hub's forwarder put this payment aside for a person", code=payment.last_error_code
        )
    return None


def _key(payment: StoredPayment) -> tuple[datetime, str]:
    return (payment.updated_at or payment.stored_at, payment.offline_id)


def _cancelling() -> bool:
    """The running task is being cancelled (``Replication.stop()``)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


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
        emit: Callable[..., None] | None = None,
        sender: Replicator | None = None,
    ) -> None:
        self.replicator = replicator
        self._emit = emit
        self.store = store
        self.lane = lane
        self.mode = mode
        self.sync_timeout = sync_timeout
        self.interval = interval
        self.batch_size = batch_size
        self._keys = keys
        self._open = False
        self._reached: set[str] = set()
        #: offline id -> the change (``_key``'s time) a sync confirm saw the hub commit: catch-up skips it
        self._on_hub: dict[str, datetime] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        self._worker = WorkerThread("offterm-hub") if replicator is not None else None
        #: sync mode: the confirms' sends, on a connection and a thread of their own (None: on the above)
        self._sender = sender if replicator is not None and mode == "sync" and sender is not replicator else None
        self._sender_open = False
        self._sync_worker = WorkerThread("offterm-hub-sync") if self._sender is not None else None
        self._key_lock = threading.Lock()  # the two threads may both ask the key provider
        self._exposure_seen: tuple[float, StateTotals] | None = None

    @property
    def enabled(self) -> bool:
        return self.replicator is not None

    @property
    def last_error(self) -> str | None:
        """The code of the last hub failure, None once a round succeeded."""
        return self._last_error

    # -- the worker thread ------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, worker: WorkerThread | None = None) -> T:
        worker = worker or self._worker
        assert worker is not None
        return await worker.run(functools.partial(fn, *args))

    def _hub_key(self) -> bytes:
        assert self._keys is not None
        with self._key_lock:
            key = self._keys.get_key(HUB_KEY_ID, create=False)
        if key is None:
            raise StorageKeyUnavailable("the hub key provider ([hub] key_provider) has no hub key")
        return key

    def _ensure_open(self) -> Replicator:
        """On the worker thread: connect and check the hub (schema, key) if not yet done."""
        assert self.replicator is not None
        if not self._open:
            self.replicator.open(self._hub_key())
            self._open = True
        return self.replicator

    def _send(self, records: Sequence[ReplicationRecord]) -> int:
        try:
            return self._ensure_open().replicate(records)
        except HubError:
            self._close_quietly()  # reconnect next time: the hub may have restarted
            raise

    def _send_sync(self, record: ReplicationRecord) -> int:
        """On the sync thread: one confirm's payment, through the sender."""
        assert self._sender is not None
        try:
            if not self._sender_open:
                self._sender.open(self._hub_key())
                self._sender_open = True
            return self._sender.replicate([record])
        except HubError:
            self._close_sender_quietly()
            raise

    def _close_sender_quietly(self) -> None:
        assert self._sender is not None
        self._sender_open = False
        _close_quietly(self._sender)

    def _outcomes(self, since: datetime | None) -> list[HubOutcome]:
        return self._ensure_open().outcomes(self.lane, since)

    def _exposure(self) -> StateTotals:
        return self._ensure_open().exposure(self.lane)

    def _beat(self, now: datetime, oldest: datetime | None) -> None:
        self._ensure_open().heartbeat(self.lane, now, oldest)

    def _close_quietly(self) -> None:
        assert self.replicator is not None
        self._open = False
        _close_quietly(self.replicator)

    # -- what the Terminal calls --------------------------------------------------------

    def start(self) -> None:
        """Start the background catch-up loop (a Terminal opened with ``background=True``)."""
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="offterm-hub-replication")

    async def stop(self) -> None:
        """Stop the loop and close the hub's connections, in ``STOP_WAIT`` seconds at most.

        A call still stuck then (a hub that stopped answering) is left behind on its daemon thread,
        with its connection: it ends when the call does, or with the process.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_WAIT
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            # asyncio.wait, not ``await task``: a cancel of this call (the app bounding close()) goes on up
            # instead of being taken for the loop's own, and the loop may be stuck behind a hub call
            await asyncio.wait({task}, timeout=STOP_WAIT)
        for worker, is_open, close in (
            (self._sync_worker, self._sender_open, self._close_sender_quietly),
            (self._worker, self._open, self._close_quietly),
        ):
            if worker is None or worker.closed:
                continue
            if is_open:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await worker.run(close)
            if not await worker.close(max(0.0, deadline - loop.time())):
                log.warning("hub_call_left_behind", thread=worker.name, waited=STOP_WAIT)

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
                record = ReplicationRecord(self.lane, payment, history)
                if self._sync_worker is not None:
                    await self._run(self._send_sync, record, worker=self._sync_worker)
                else:
                    await self._run(self._send, [record])
        except TimeoutError:
            log.warning("hub_sync_timed_out", offline_id=payment.offline_id, timeout=self.sync_timeout)
            self._wake.set()
            return False
        except OfftermError as exc:
            self._failed(exc)
            self._wake.set()
            return False
        self._reached.add(payment.offline_id)
        if len(self._on_hub) >= ON_HUB_MAX:
            self._on_hub.clear()
        self._on_hub[payment.offline_id] = _key(payment)[0]
        return True

    def reached_hub(self, offline_id: str) -> bool:
        """Whether this Terminal saw the hub commit the payment when it was confirmed (sync mode)."""
        return offline_id in self._reached

    async def catch_up(self) -> int:
        """Send every change the hub may not have, oldest first, moving the cursor after each batch.

        A change a sync confirm saw the hub commit is not sent again (nor its history read): in sync
        mode, with the hub up, a round sends nothing, so a confirm finds the hub's connection and the
        store's thread free.

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
        # batches of the changes the hub may not have; batch i covers todo[: ends[i]] (what it skips is on the hub)
        batches: list[list[StoredPayment]] = [[]]
        ends: list[int] = []
        for i, p in enumerate(todo):
            if self._known_on_hub(p):
                continue
            if len(batches[-1]) == self.batch_size:
                ends.append(i)
                batches.append([])
            batches[-1].append(p)
        ends.append(len(todo))
        sent = done = 0
        try:
            for batch, end in zip(batches, ends, strict=True):
                if batch:
                    records = [ReplicationRecord(self.lane, p, await self.store.history(p.offline_id)) for p in batch]
                    await self._run(self._send, records)
                    sent += len(batch)
                done = end
                last = _key(todo[done - 1]) if done else None
                if last is not None and (cursor is None or last > cursor):
                    cursor = last
                    value = json.dumps({"changed_at": last[0].isoformat(), "offline_id": last[1]})
                    await self.store.set_meta(CURSOR_META, value)
        finally:
            unsent = [p for p in todo[done:] if (cursor is None or _key(p) > cursor) and not self._known_on_hub(p)]
            oldest = _key(unsent[0])[0] if unsent else None
            if (sent or not unsent) and not _cancelling():  # stopping: no new hub call to wait for
                try:
                    await self._run(self._beat, utcnow(), oldest)
                except HubError as exc:
                    log.debug("hub_heartbeat_failed", code=exc.code)
        if cursor is not None:  # what the cursor left behind is never looked at again
            floor_at = cursor[0] - OVERLAP
            self._on_hub = {k: at for k, at in self._on_hub.items() if at >= floor_at}
        await self.apply_outcomes()
        await self.refresh_exposure()
        self._last_error = None
        return sent

    def _known_on_hub(self, payment: StoredPayment) -> bool:
        return self._on_hub.get(payment.offline_id) == _key(payment)[0]

    async def apply_outcomes(self) -> int:
        """Record in the lane's store what the hub forwarder decided for its payments; how many changed.

        Each changed payment emits ``payment_intent_forwarded``, as if this lane had forwarded it.
        Idempotent: an outcome the lane already has (it forwarded the payment itself, or recorded
        it before) changes nothing and emits nothing.

        :raises HubError: the hub failed (the outcomes cursor stays; they are read again next time).
        """
        if not self.enabled:
            return 0
        raw = await self.store.get_meta(OUTCOMES_META)
        since = datetime.fromisoformat(raw) - OUTCOMES_OVERLAP if raw else None
        outcomes = await self._run(self._outcomes, since)
        changed = 0
        for outcome in outcomes:
            to = _OUTCOME_STATES.get(outcome.state)
            if to is None:
                continue
            backend = self.store.backend
            now = utcnow()
            try:
                done = await self.store.call(
                    functools.partial(
                        backend.record_outcome,
                        outcome.offline_id,
                        to,
                        now,
                        intent_id=outcome.intent_id,
                        error_code=outcome.error_code,
                    )
                )
            except PaymentNotFound:
                continue  # not this device's (a lane whose data directory was replaced): nothing to record
            if done is None:
                continue
            changed += 1
            log.info("hub_outcome_recorded", offline_id=outcome.offline_id, state=to.value, intent_id=outcome.intent_id)
            if self._emit is not None:
                self._emit("payment_intent_forwarded", intent=intent_from_stored(done), error=_outcome_error(done))
        if outcomes:
            await self.store.set_meta(OUTCOMES_META, max(o.decided_at for o in outcomes).isoformat())
        return changed

    async def refresh_exposure(self) -> None:
        """Ask the hub for the other lanes' waiting payments (store-wide limits); keep the answer with its time."""
        if not self.enabled:
            return
        try:
            totals = await self._run(self._exposure)
        except HubError as exc:
            log.debug("hub_exposure_failed", code=exc.code)
            return
        self._exposure_seen = (time.monotonic(), totals)

    def fleet_exposure(self, max_age: float) -> StateTotals | None:
        """The other lanes' waiting payments as the hub last said, if it said so within ``max_age`` seconds.

        None when there is no hub, the hub has not answered yet, or its last answer is older: the
        store-wide limits then fall back to this lane's share.  Synchronous and cheap (no I/O):
        acceptance policies call it inside the store's write transaction.
        """
        seen = self._exposure_seen
        if seen is None:
            return None
        at, totals = seen
        return totals if time.monotonic() - at <= max_age else None

    def fleet_snapshot(self) -> FleetExposure | None:
        """What the acceptance policies see of the rest of the store (``AcceptanceRequest.fleet``).

        None with no hub; otherwise the hub's last answer (None before the first) with its age, so
        each policy applies its own maximum age.  Synchronous and cheap (no I/O).
        """
        if not self.enabled:
            return None
        seen = self._exposure_seen
        if seen is None:
            return FleetExposure(None, None)
        at, totals = seen
        return FleetExposure(totals, max(0.0, time.monotonic() - at))

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
    # a second instance of the component, so a second connection: sync sends never wait for the catch-up's
    sender = build("replicator", registration) if mode == "sync" else None
    return Replication(
        replicator,
        store,
        lane=lane,
        mode=mode,
        keys=keys,
        sync_timeout=float(hub["sync_timeout"]),
        interval=float(hub["interval"]),
        batch_size=int(hub["batch_size"]),
        emit=plugins.emit,
        sender=sender if isinstance(sender, Replicator) else None,
    )


def _close_quietly(replicator: Replicator) -> None:
    """Close a hub connection that may be broken: closing must never raise."""
    try:
        replicator.close()
    except Exception as exc:  # noqa: BLE001 - closing a broken connection must not raise
        log.debug("hub_close_failed", error_type=type(exc).__name__)
