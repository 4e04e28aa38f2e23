"""Forward stored payments to the processor, exactly once.

Why it cannot double-charge: every payment carries the idempotency key it
was stored with, and every attempt (after a timeout, a crash, a restart, in
another process) reuses it.  Why it cannot lose one: a payment leaves the
queue only when the processor answered; a claim that dies with its process
expires and is recovered (``outcome_unknown`` if a request had gone out).

A round runs a pipeline: one feeder claims small batches from the store
(oldest first) just ahead of ``concurrency`` workers, each forwarding one
payment at a time under a token-bucket rate limit.  A slow or failing
payment holds one worker, never the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiolimiter import AsyncLimiter

from .claim_writer import ClaimWriter
from .contracts import (
    ForwardingPolicy,
    ForwardingTransport,
    PaymentState,
    ProcessorSession,
    StoredPayment,
    Submission,
)
from .contracts.storage import AttemptUpdate, AttemptWithdrawal, OutcomeUpdate
from .errors import (
    AccountMismatch,
    AuthenticationFailed,
    CardDeclined,
    ConnectionTokenError,
    InvalidTransition,
    OfftermError,
    PaymentNotFound,
    PermanentProcessorError,
    ProcessorError,
    TransientProcessorError,
)
from .intents import intent_from_stored
from .logs import payment_scoped
from .models import NetworkStatus
from .network import NetworkMonitor
from .session import SessionManager
from .store_runner import AsyncStore

log = structlog.get_logger("offterm.forwarder")

Emit = Callable[..., None]

#: Requests one submission may make (create, card_present payment method, confirm):
#: the rate limit is in requests per second, so each payment takes this many tokens.
REQUESTS_PER_PAYMENT = 3
#: Seconds between two offline-status refreshes while a round runs.
PROGRESS_EVERY = 0.25
#: Seconds between two recoveries of expired claims (a crashed peer) within a round.
RECOVER_EVERY = 1.0


@dataclass(frozen=True)
class ForwardingSettings:
    interval: float
    concurrency: int
    rate_limit: float
    batch_size: int
    lease_seconds: float


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Round:
    """What one round's feeder and workers share."""

    def __init__(self) -> None:
        self.session: ProcessorSession | None = None
        self.queued: set[str] = set()  # offline_ids handed to workers and not finished yet
        self.finished = 0
        self.stopped = False
        self.failure: BaseException | None = None

    def stop(self, failure: BaseException | None = None) -> None:
        """Stop taking payments; ``failure`` is reported as a forwarding failure once the round ends."""
        self.stopped = True
        if failure is not None and self.failure is None:
            self.failure = failure


class _Slot:
    """A claimed payment waiting for a worker, with its attempt record if one was started ahead."""

    __slots__ = ("attempt", "attempt_at", "payment")

    def __init__(self, payment: StoredPayment) -> None:
        self.payment = payment
        self.attempt: asyncio.Future[StoredPayment] | None = None
        self.attempt_at = 0.0  # loop time the attempt was submitted: it renewed the lease then


class _Unsent:
    """The attempt a worker must take back if it stops before the request goes out (None once sent)."""

    __slots__ = ("attempt",)

    def __init__(self, attempt: asyncio.Future[StoredPayment] | None) -> None:
        self.attempt = attempt


class _WorkQueue(asyncio.Queue[_Slot | None]):
    """The round's queue of claimed payments, in order; None marks the end of the work."""

    def first_unrecorded(self) -> _Slot | None:
        """The first waiting payment whose attempt nobody started, left in its place."""
        waiting: Iterable[_Slot | None] = self._queue  # type: ignore[attr-defined]  # Queue's storage, as subclasses use
        for slot in waiting:
            if slot is not None and slot.attempt is None:
                return slot
        return None

    def leftover(self) -> list[_Slot]:
        """Take out whatever no worker took (the round is over)."""
        out = []
        while not self.empty():
            slot = self.get_nowait()
            if slot is not None:
                out.append(slot)
        return out


class Forwarder:
    def __init__(
        self,
        store: AsyncStore,
        transport: ForwardingTransport,
        sessions: SessionManager,
        policy: ForwardingPolicy,
        network: NetworkMonitor,
        emit: Emit,
        settings: ForwardingSettings,
        on_progress: Callable[[], None],
    ) -> None:
        self._store = store
        self._transport = transport
        self._sessions = sessions
        self._policy = policy
        self._network = network
        self._emit = emit
        self._settings = settings
        self._on_progress = on_progress
        self.owner = f"fwd-{uuid.uuid4().hex[:12]}"
        rate = max(1.0, float(settings.rate_limit))
        self._limiter = AsyncLimiter(rate, 1.0)
        self._weight = min(float(REQUESTS_PER_PAYMENT), rate)
        # Claim no more than the rate limit lets us send within half a lease, so claims do not expire queued.
        per_half_lease = int(rate / self._weight * settings.lease_seconds / 2)
        self._claim_size = max(1, min(settings.batch_size, per_half_lease))
        self._writer = ClaimWriter(store)  # attempts and outcomes of all workers, group-committed
        self._ending: set[asyncio.Future[None]] = set()  # round endings that outlived a cancelled round
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._round_lock = asyncio.Lock()
        self._due: list[float] = []  # heap of loop times at which retries fall due
        self._round_failures = 0
        self._last_progress = 0.0
        self._last_recover = 0.0

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="offterm-forwarder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for ending in list(self._ending):  # a round cancelled while ending: let it finish its release
            with contextlib.suppress(Exception):
                await ending
        try:
            await self._store.release(self.owner, utcnow())
        except OfftermError as exc:
            # A full or read-only disk: the claims stay until their lease runs out, then any forwarder
            # (this one after a restart) recovers them.  Nothing is lost by not releasing them now.
            log.warning("release_claims_failed", error_type=type(exc).__name__, code=exc.code)

    def trigger(self) -> None:
        """Ask for a forwarding round soon (network back, payment stored, forward_now)."""
        self._wake.set()

    def _schedule(self, delay: float) -> None:
        """Make sure a round runs after ``delay`` seconds (a retry falls due).

        A heap, not one deadline: a payment may be retried early (by a round
        that happened to run) and fail again, and the later due time must
        still wake us.  A stale entry only costs an empty claim.
        """
        heapq.heappush(self._due, asyncio.get_running_loop().time() + max(0.0, delay) + 0.01)

    async def _run(self) -> None:
        """Background loop: a round on trigger, when a retry falls due, and every ``interval``.

        While the network is OFFLINE it waits: the network monitor probes and
        triggers a round when the processor answers again.
        """
        loop = asyncio.get_running_loop()
        while True:
            timeout = self._settings.interval
            if self._due:
                timeout = min(timeout, max(0.0, self._due[0] - loop.time()))
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands
                # together with a wake-up, and then stop() (and close()) would wait forever.
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._network.status is NetworkStatus.OFFLINE:
                continue
            try:
                await self.run_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the background task die
                log.error("forwarding_round_crashed", error_type=type(exc).__name__, error=str(exc))
                self._schedule(self._policy.retry_delay(1))

    # -- one round --------------------------------------------------------------

    async def run_round(self) -> int:
        """Forward everything due now.  Returns how many payments reached a final or needs_attention state."""
        async with self._round_lock:
            self._idle.clear()
            try:
                now = asyncio.get_running_loop().time()
                while self._due and self._due[0] <= now:  # this round claims whatever fell due
                    heapq.heappop(self._due)
                return await self._round()
            finally:
                self._idle.set()

    async def _round(self) -> int:
        state = _Round()
        queue = _WorkQueue(maxsize=self._settings.concurrency)
        tasks = [asyncio.create_task(self._feed(queue, state), name="offterm-forward-feeder")]
        tasks += [
            asyncio.create_task(self._work(queue, state), name=f"offterm-forward-worker-{i}")
            for i in range(self._settings.concurrency)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            # One task, shielded: a deadline or close() landing meanwhile cannot skip any step of the ending.
            ending = asyncio.ensure_future(self._end_round(tasks, queue, state))
            self._ending.add(ending)
            ending.add_done_callback(self._ending.discard)
            await asyncio.shield(ending)
        if state.failure is not None:
            await self._report_round_failure(state.failure)
        elif state.session is not None:
            self._round_failures = 0
        return state.finished

    async def _end_round(self, tasks: list[asyncio.Task[None]], queue: _WorkQueue, state: _Round) -> None:
        """Stop the feeder and workers, withdraw unsent attempts, write and announce every outcome, release."""
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for slot in queue.leftover():  # attempts recorded ahead for payments no worker took
            if slot.attempt is not None:
                self._withdraw(state, slot.payment, slot.attempt)
        # Outcomes (and withdrawals) still being written are written, and announced, before anything goes back.
        await self._writer.drain()
        # Whatever was claimed and not finished goes back: unsent as it was, sent as outcome_unknown.
        await self._store.release(self.owner, utcnow())
        self._on_progress()

    async def _feed(self, queue: _WorkQueue, state: _Round) -> None:
        """Claim batches just ahead of the workers, oldest first; authenticate once there is work."""
        loop = asyncio.get_running_loop()
        try:
            while not state.stopped:
                if loop.time() - self._last_recover >= RECOVER_EVERY:
                    self._last_recover = loop.time()
                    await self._store.recover_expired_claims(utcnow())
                if state.session is None:
                    # Authenticate before claiming: if the token provider fails, no payment was touched.
                    if not (await self._store.summary()).pending_count:
                        break
                    try:
                        state.session = await self._sessions.get("forwarding")
                    except Exception as exc:
                        state.stop(exc)
                        break
                    self._network.record_success()
                batch = await self._store.claim(self.owner, self._claim_size, self._settings.lease_seconds, utcnow())
                if not batch:
                    break
                for payment in self._policy.order(batch):
                    if state.stopped:
                        break
                    if payment.offline_id in state.queued:
                        continue  # our own lease ran out and we claimed it again: one worker has it already
                    state.queued.add(payment.offline_id)
                    await queue.put(_Slot(payment))
        except Exception as exc:  # the store failed: stop, leave everything claimable
            log.error("forwarding_claim_failed", error_type=type(exc).__name__, error=str(exc))
            state.stop()
        await queue.put(None)

    async def _work(self, queue: _WorkQueue, state: _Round) -> None:
        """Forward payments one at a time, the next one's attempt recorded while this one is sent.

        The attempt must be durable before a payment's first request goes
        out.  Waiting for it between payments would leave the connection
        idle for a store round trip each time; instead, as a payment's
        requests start, the first payment still waiting in the queue has
        its attempt written meanwhile (:meth:`_look_ahead`).  It stays in its
        place in the queue, for whichever worker is free first, so a stuck
        payment never holds another one.  If the round stops before it is
        sent, the attempt is withdrawn: nothing is counted that was not sent.
        """
        while True:
            slot = await queue.get()
            if slot is None:
                queue.put_nowait(None)  # pass the end-of-work mark to the next worker
                return
            payment = slot.payment
            if state.stopped:
                if slot.attempt is not None:
                    self._withdraw(state, payment, slot.attempt)
                continue  # else left claimed; the round's release gives it back untouched
            recording = False
            try:
                recording = await self._forward_one(state, payment, slot, lambda: self._look_ahead(queue, state))
            except Exception as exc:  # a bug or a broken store: keep the payment, stop this round
                log.error("forwarding_worker_failed", error_type=type(exc).__name__, error=str(exc))
                state.stop()
            finally:
                if not recording:  # else it leaves the queue once its outcome is written (_announce)
                    state.queued.discard(payment.offline_id)
            self._progress()

    def _look_ahead(self, queue: _WorkQueue, state: _Round) -> None:
        """Start writing the attempt of the first waiting payment that has none yet (with other workers' writes)."""
        if state.stopped:
            return
        slot = queue.first_unrecorded()
        if slot is not None:
            slot.attempt = self._writer.submit(AttemptUpdate(slot.payment.offline_id, self.owner, utcnow()))
            slot.attempt_at = asyncio.get_running_loop().time()

    def _withdraw(self, state: _Round, payment: StoredPayment, attempt: asyncio.Future[StoredPayment]) -> None:
        """The payment's attempt was recorded ahead but its request never went out: take it back."""

        def settled(withdrawn: asyncio.Future[StoredPayment]) -> None:
            state.queued.discard(payment.offline_id)
            _log_withdrawal(payment, withdrawn)

        def recorded(done: asyncio.Future[StoredPayment]) -> None:
            if done.cancelled() or done.exception() is not None:  # never recorded: nothing to take back
                state.queued.discard(payment.offline_id)
                return
            withdrawal = AttemptWithdrawal(payment.offline_id, self.owner, utcnow())
            self._writer.submit(withdrawal).add_done_callback(settled)

        if attempt.done():  # at once, so a round's drain that follows waits for the withdrawal too
            recorded(attempt)
        else:  # the writer has it: the withdrawal follows as soon as it is written, before drain() returns
            attempt.add_done_callback(recorded)

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    def _progress(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            self._on_progress()

    async def _report_round_failure(self, exc: BaseException) -> None:
        """A failure not tied to one payment: event, and a retry with backoff."""
        error = exc if isinstance(exc, OfftermError) else ConnectionTokenError(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, AuthenticationFailed):
            self._sessions.invalidate()
        self._round_failures += 1
        delay = min(self._settings.interval, self._policy.retry_delay(self._round_failures))
        self._schedule(delay)
        log.warning("forwarding_failure", code=error.code, error=str(error), retry_in=round(delay, 3))
        self._emit("forwarding_failure", error=error)
        if isinstance(exc, TransientProcessorError) and getattr(exc, "http_status", None) is None:
            await self._network.verify()

    # -- one payment -------------------------------------------------------------

    def _refusal(self, payment: StoredPayment, session: ProcessorSession) -> OfftermError | None:
        """Why this payment must not be sent at all (it goes to needs_attention), or None."""
        if payment.account_id != session.account_id or payment.livemode != session.livemode:
            return AccountMismatch(
                f"payment was stored for account {payment.account_id} ({_mode(payment.livemode)} mode) but the "
                f"session is for {session.account_id} ({_mode(session.livemode)} mode); kept, not forwarded"
            )
        reason = self._policy.give_up_reason(payment, utcnow())
        if reason:
            return PermanentProcessorError(reason, code="forwarding_gave_up")
        if payment.card is None:
            return PermanentProcessorError(
                "stored card data is unavailable (purged or undecodable)", code="card_data_unavailable"
            )
        return None

    @payment_scoped
    async def _forward_one(
        self,
        state: _Round,
        payment: StoredPayment,
        slot: _Slot,
        look_ahead: Callable[[], None],
    ) -> bool:
        """Forward one claimed payment.  True when its outcome is being written (announced once written).

        The worker does not wait for the outcome's write: it goes on to its
        next payment while the write shares a transaction with others
        (:class:`ClaimWriter`).  It does wait for the attempt's write, which
        must be durable before the request goes out: ``slot.attempt`` when
        it was started ahead, while another payment was being sent.
        Whatever ends this before the request goes out (a refusal, a stop, a
        cancel while waiting for the rate limiter) takes that attempt back.
        So does a wait of more than half a lease since it was recorded: the
        claim is checked again by a fresh attempt, as for any send.
        """
        unsent = _Unsent(slot.attempt)
        if slot.attempt is not None and self._loop_time() - slot.attempt_at > self._settings.lease_seconds / 2:
            self._withdraw(state, payment, slot.attempt)
            unsent.attempt = None
        try:
            return await self._send(state, payment, unsent, look_ahead)
        finally:
            if unsent.attempt is not None:
                self._withdraw(state, payment, unsent.attempt)

    async def _send(
        self, state: _Round, payment: StoredPayment, unsent: _Unsent, look_ahead: Callable[[], None]
    ) -> bool:
        session = state.session
        if session is None:
            return False
        refusal = self._refusal(payment, session)
        if refusal is not None:
            if unsent.attempt is not None:  # recorded ahead, but it is not going to be sent: take it back first
                try:
                    await asyncio.shield(unsent.attempt)
                except (InvalidTransition, PaymentNotFound) as exc:
                    unsent.attempt = None  # never recorded: nothing to take back
                    log.warning("forward_claim_lost", offline_id=payment.offline_id, error=str(exc))
                    return False
                unsent.attempt = None
                self._writer.submit(AttemptWithdrawal(payment.offline_id, self.owner, utcnow())).add_done_callback(
                    lambda done: _log_withdrawal(payment, done)
                )
            return self._finish(state, payment, PaymentState.NEEDS_ATTENTION, refusal)
        assert payment.card is not None
        submission = Submission(
            offline_id=payment.offline_id,
            idempotency_key=payment.idempotency_key,
            amount=payment.amount,
            currency=payment.currency,
            capture_method=payment.capture_method,
            metadata=payment.metadata,
            card=payment.card,
            intent_id=payment.intent_id,
            description=payment.description,
            stored_at=payment.stored_at,
        )
        renewed = sent = False
        recorded = unsent.attempt
        while True:
            await self._limiter.acquire(self._weight)
            if recorded is None:
                recorded = self._writer.submit(AttemptUpdate(payment.offline_id, self.owner, utcnow()))
                if not sent:  # nothing went out under this claim yet: stopping before the send takes it back
                    unsent.attempt = recorded
            try:
                attempt = await asyncio.shield(recorded)
            except (InvalidTransition, PaymentNotFound) as exc:
                unsent.attempt = None  # never recorded: nothing to take back
                log.warning("forward_claim_lost", offline_id=payment.offline_id, error=str(exc))
                return False
            unsent.attempt, recorded, sent = None, None, True  # the request goes out now
            look_ahead()
            try:
                result = await self._transport.submit(session, submission)
            except AuthenticationFailed as exc:
                # The session expired or was refused: nothing ran.  One fresh session, then the same key again.
                if not renewed:
                    renewed = True
                    fresh = await self._renew_session(state, session)
                    if fresh is not None:
                        session = fresh
                        continue
                recording = self._retry_later(state, payment, attempt, exc, delay=0.0)
                state.stop(exc)
                return recording
            except CardDeclined as exc:
                self._network.record_success()
                return self._finish(state, payment, PaymentState.DECLINED, exc)
            except TransientProcessorError as exc:  # includes OutcomeUnknown: same key next time
                delay = self._policy.retry_delay(attempt.attempts)
                recording = self._retry_later(state, payment, attempt, exc, delay=delay)
                if exc.http_status is not None:
                    self._network.record_success()
                elif not await self._network.verify():
                    state.stop()  # the network is gone: the monitor brings us back
                return recording
            except PermanentProcessorError as exc:
                self._network.record_success()
                return self._finish(state, payment, PaymentState.NEEDS_ATTENTION, exc)
            except ProcessorError as exc:
                return self._finish(state, payment, PaymentState.NEEDS_ATTENTION, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a transport bug: keep the payment, retry later with the same key
                log.error("transport_crashed", offline_id=payment.offline_id, error_type=type(exc).__name__)
                bug = TransientProcessorError(f"the transport raised {type(exc).__name__}", code="transport_error")
                return self._retry_later(state, payment, attempt, bug, delay=self._policy.retry_delay(attempt.attempts))
            self._network.record_success()
            return self._record(state, payment, PaymentState.FORWARDED, None, intent_id=result.intent_id)

    async def _renew_session(self, state: _Round, stale: ProcessorSession) -> ProcessorSession | None:
        self._sessions.invalidate(stale)
        try:
            fresh = await self._sessions.get("forwarding")
        except Exception as exc:
            state.stop(exc)
            return None
        state.session = fresh
        log.info("processor_session_renewed")
        return fresh

    def _retry_later(
        self, state: _Round, payment: StoredPayment, attempt: StoredPayment, exc: ProcessorError, *, delay: float
    ) -> bool:
        """Back to the queue as outcome_unknown (a request went out), due after ``delay`` seconds."""
        due = utcnow() + timedelta(seconds=delay) if delay > 0 else None
        return self._record(
            state,
            payment,
            PaymentState.OUTCOME_UNKNOWN,
            exc,
            retry=(attempt.attempts, delay),
            error_code=exc.code,
            error_message=exc.message,
            next_attempt_at=due,
        )

    def _finish(self, state: _Round, payment: StoredPayment, to: PaymentState, error: OfftermError) -> bool:
        return self._record(
            state,
            payment,
            to,
            error,
            error_code=error.code,
            error_message=error.message,
            decline_code=getattr(error, "decline_code", None),
        )

    def _record(
        self,
        state: _Round,
        payment: StoredPayment,
        to: PaymentState,
        error: OfftermError | None,
        *,
        retry: tuple[int, float] | None = None,
        **fields: Any,
    ) -> bool:
        """Hand the outcome to the claim writer; it is announced once written (:meth:`_announce`)."""
        update = OutcomeUpdate(payment.offline_id, self.owner, to, utcnow(), **fields)
        written = self._writer.submit(update)
        written.add_done_callback(lambda done: self._announce(done, state, payment, to, error, retry))
        return True

    def _announce(
        self,
        written: asyncio.Future[StoredPayment],
        state: _Round,
        payment: StoredPayment,
        to: PaymentState,
        error: OfftermError | None,
        retry: tuple[int, float] | None,
    ) -> None:
        """After the outcome's commit: one payment_intent_forwarded for a final or needs_attention outcome,
        a scheduled retry for outcome_unknown.  Runs even when the round was stopped meanwhile."""
        state.queued.discard(payment.offline_id)
        failure = None if written.cancelled() else written.exception()
        if written.cancelled() or isinstance(failure, InvalidTransition | PaymentNotFound):
            # another forwarder owns the payment now (our lease ran out): its outcome is theirs to record
            log.warning("forward_claim_lost", offline_id=payment.offline_id, error=str(failure))
            return
        if failure is not None:  # the store failed: the payment stays claimed and comes back after the lease
            log.error("forward_outcome_not_recorded", offline_id=payment.offline_id, error_type=type(failure).__name__)
            state.stop()
            return
        done = written.result()
        if retry is not None:
            attempts, delay = retry
            self._schedule(delay)
            log.info(
                "forward_retry_scheduled",
                offline_id=payment.offline_id,
                attempt=attempts,
                code=None if error is None else error.code,
                delay=round(delay, 3),
            )
            return
        state.finished += 1
        log.info(
            "payment_forwarded" if error is None else "payment_forward_finished",
            offline_id=payment.offline_id,
            state=to.value,
            intent_id=done.intent_id,
            code=None if error is None else error.code,
        )
        self._emit("payment_intent_forwarded", intent=intent_from_stored(done), error=error)

    async def wait_idle(self) -> None:
        await self._idle.wait()


def _log_withdrawal(payment: StoredPayment, withdrawn: asyncio.Future[StoredPayment]) -> None:
    failure = None if withdrawn.cancelled() else withdrawn.exception()
    if failure is not None:  # a lost claim, or a failed write: release treats it as sent (outcome_unknown)
        log.warning("forward_attempt_not_withdrawn", offline_id=payment.offline_id, error=str(failure))


def _mode(livemode: bool) -> str:
    return "live" if livemode else "test"
