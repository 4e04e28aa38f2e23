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
import heapq
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from aiolimiter import AsyncLimiter

from .contracts import (
    ForwardingPolicy,
    ForwardingTransport,
    PaymentState,
    ProcessorSession,
    StoredPayment,
    Submission,
    SubmissionResult,
)
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
        queue: asyncio.Queue[StoredPayment | None] = asyncio.Queue(maxsize=self._settings.concurrency)
        tasks = [asyncio.create_task(self._feed(queue, state), name="offterm-forward-feeder")]
        tasks += [
            asyncio.create_task(self._work(queue, state), name=f"offterm-forward-worker-{i}")
            for i in range(self._settings.concurrency)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Whatever was claimed and not finished goes back: unsent as it was, sent as outcome_unknown.
            await asyncio.shield(self._store.release(self.owner, utcnow()))
            self._on_progress()
        if state.failure is not None:
            await self._report_round_failure(state.failure)
        elif state.session is not None:
            self._round_failures = 0
        return state.finished

    async def _feed(self, queue: asyncio.Queue[StoredPayment | None], state: _Round) -> None:
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
                    await queue.put(payment)
        except Exception as exc:  # the store failed: stop, leave everything claimable
            log.error("forwarding_claim_failed", error_type=type(exc).__name__, error=str(exc))
            state.stop()
        await queue.put(None)

    async def _work(self, queue: asyncio.Queue[StoredPayment | None], state: _Round) -> None:
        while True:
            payment = await queue.get()
            if payment is None:
                queue.put_nowait(None)  # pass the end-of-work mark to the next worker
                return
            if state.stopped:
                continue  # left claimed; the round's release gives it back untouched
            try:
                if await self._forward_one(state, payment):
                    state.finished += 1
            except Exception as exc:  # a bug or a broken store: keep the payment, stop this round
                log.error("forwarding_worker_failed", error_type=type(exc).__name__, error=str(exc))
                state.stop()
            finally:
                state.queued.discard(payment.offline_id)
            self._progress()

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
    async def _forward_one(self, state: _Round, payment: StoredPayment) -> bool:
        """Forward one claimed payment.  True when it reached its outcome (event emitted)."""
        session = state.session
        if session is None:
            return False
        refusal = self._refusal(payment, session)
        if refusal is not None:
            return await self._finish(payment, PaymentState.NEEDS_ATTENTION, refusal)
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
        renewed = False
        while True:
            await self._limiter.acquire(self._weight)
            try:
                attempt = await self._store.record_attempt(payment.offline_id, self.owner, utcnow())
            except (InvalidTransition, PaymentNotFound) as exc:
                log.warning("forward_claim_lost", offline_id=payment.offline_id, error=str(exc))
                return False
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
                await self._retry_later(payment, attempt, exc, delay=0.0)
                state.stop(exc)
                return False
            except CardDeclined as exc:
                self._network.record_success()
                return await self._finish(payment, PaymentState.DECLINED, exc)
            except TransientProcessorError as exc:  # includes OutcomeUnknown: same key next time
                delay = self._policy.retry_delay(attempt.attempts)
                await self._retry_later(payment, attempt, exc, delay=delay)
                if exc.http_status is not None:
                    self._network.record_success()
                elif not await self._network.verify():
                    state.stop()  # the network is gone: the monitor brings us back
                return False
            except PermanentProcessorError as exc:
                self._network.record_success()
                return await self._finish(payment, PaymentState.NEEDS_ATTENTION, exc)
            except ProcessorError as exc:
                return await self._finish(payment, PaymentState.NEEDS_ATTENTION, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a transport bug: keep the payment, retry later with the same key
                log.error("transport_crashed", offline_id=payment.offline_id, error_type=type(exc).__name__)
                bug = TransientProcessorError(f"the transport raised {type(exc).__name__}", code="transport_error")
                await self._retry_later(payment, attempt, bug, delay=self._policy.retry_delay(attempt.attempts))
                return False
            return await self._forwarded(payment, result)

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

    async def _retry_later(
        self, payment: StoredPayment, attempt: StoredPayment, exc: ProcessorError, *, delay: float
    ) -> None:
        """Back to the queue as outcome_unknown (a request went out), due after ``delay`` seconds."""
        due = utcnow() + timedelta(seconds=delay) if delay > 0 else None
        done = await self._complete(
            payment,
            PaymentState.OUTCOME_UNKNOWN,
            error_code=exc.code,
            error_message=exc.message,
            next_attempt_at=due,
        )
        if done is not None:
            self._schedule(delay)
            log.info(
                "forward_retry_scheduled",
                offline_id=payment.offline_id,
                attempt=attempt.attempts,
                code=exc.code,
                delay=round(delay, 3),
            )

    async def _forwarded(self, payment: StoredPayment, result: SubmissionResult) -> bool:
        self._network.record_success()
        return await self._outcome(payment, PaymentState.FORWARDED, None, intent_id=result.intent_id)

    async def _finish(self, payment: StoredPayment, state: PaymentState, error: OfftermError) -> bool:
        return await self._outcome(
            payment,
            state,
            error,
            error_code=error.code,
            error_message=error.message,
            decline_code=getattr(error, "decline_code", None),
        )

    async def _outcome(
        self, payment: StoredPayment, state: PaymentState, error: OfftermError | None, **kw: str | None
    ) -> bool:
        """Record the outcome, then tell the app: one payment_intent_forwarded, after its requests finished.

        Shielded: a stop (close, timeout) arriving now cannot leave the
        outcome recorded but unannounced.
        """

        async def record_and_announce() -> bool:
            done = await self._complete(payment, state, **kw)
            if done is None:
                return False
            log.info(
                "payment_forwarded" if error is None else "payment_forward_finished",
                offline_id=payment.offline_id,
                state=state.value,
                intent_id=done.intent_id,
                code=None if error is None else error.code,
            )
            self._emit("payment_intent_forwarded", intent=intent_from_stored(done), error=error)
            return True

        return await asyncio.shield(record_and_announce())

    async def _complete(self, payment: StoredPayment, to_state: PaymentState, **kw: object) -> StoredPayment | None:
        """Record the outcome; None if the claim was lost meanwhile (another forwarder owns the payment now)."""
        try:
            return await self._store.complete(payment.offline_id, self.owner, to_state, utcnow(), **kw)
        except (InvalidTransition, PaymentNotFound) as exc:
            log.warning("forward_claim_lost", offline_id=payment.offline_id, error=str(exc))
            return None

    async def wait_idle(self) -> None:
        await self._idle.wait()


def _mode(livemode: bool) -> str:
    return "live" if livemode else "test"
