"""Forward stored payments to the processor, exactly once by the processor's rules.

Why it cannot double-charge: every payment carries the idempotency key it
was stored with; each step derives its key from it (``offterm.core.keys``),
is recorded durably before it is sent, and the intent id is recorded as
soon as the processor gives it.  A resend the processor may have forgotten
(its keys are pruned after 24 h) is looked up first (``offterm.core.exchange``).
Why it cannot lose one: a payment leaves the queue only when the processor
answered with a final status; a claim that dies with its process is
recovered (``outcome_unknown`` if a request had gone out), at once when its
process is provably gone, else when its lease runs out.

A round runs a pipeline: one feeder claims small batches from the store
(oldest first) just ahead of ``concurrency`` workers, each forwarding one
payment at a time.  Every request takes one token of the processor's rate
limit, so a drain costs what the processor allows and no more.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiolimiter import AsyncLimiter

from ..contracts import (
    ForwardingPolicy,
    ForwardingTransport,
    PaymentState,
    ProcessorSession,
    StoredPayment,
)
from ..errors import (
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
from ..logs import payment_scoped
from ..models import NetworkStatus
from .exchange import Exchange, ExchangeSettings, Outcome, PaymentView, Result
from .intents import intent_from_stored
from .keys import Step
from .network import NetworkMonitor
from .owners import make_owner, owner_gone
from .recovery import OnlineRecovery
from .session import SessionManager
from .store_runner import AsyncStore

log = structlog.get_logger("offterm.forwarder")

Emit = Callable[..., None]

#: Requests a stored payment costs when all goes well: the card_present payment method, then the
#: intent created and confirmed in one request.  (An intent created online costs a confirm instead.)
REQUESTS_PER_PAYMENT = 2
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
    exchange: ExchangeSettings = ExchangeSettings()


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Round:
    """What one round's feeder and workers share."""

    def __init__(self, ignore_backoff: bool) -> None:
        self.session: ProcessorSession | None = None
        self.queued: set[str] = set()  # offline_ids handed to workers and not finished yet
        self.finished = 0
        self.stopped = False
        self.failure: BaseException | None = None
        self.ignore_backoff = ignore_backoff

    def stop(self, failure: BaseException | None = None) -> None:
        """Stop taking payments; ``failure`` is reported as a forwarding failure once the round ends."""
        self.stopped = True
        if failure is not None and self.failure is None:
            self.failure = failure


class _StoreLedger:
    """The exchange's ledger for a claimed payment: the store, under this forwarder's claim."""

    def __init__(self, store: AsyncStore, owner: str, offline_id: str) -> None:
        self._store = store
        self._owner = owner
        self._offline_id = offline_id
        self.attempt: StoredPayment | None = None

    async def sending(self, steps: Collection[Step], now: datetime) -> None:
        self.attempt = await self._store.record_attempt(self._offline_id, self._owner, now, [s.value for s in steps])

    async def intent_known(self, intent_id: str, now: datetime) -> None:
        await self._store.record_intent(self._offline_id, self._owner, intent_id, now)

    async def new_generation(self, intent_id: str | None, now: datetime, generation: int) -> None:
        await self._store.start_key_generation(self._offline_id, self._owner, now, intent_id, generation=generation)


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
        self.owner = make_owner("fwd")
        rate = max(0.01, float(settings.rate_limit))
        # One token per request; a burst of at most one second's worth (Stripe counts per second).
        self._limiter = AsyncLimiter(max(1.0, rate), max(1.0, rate) / rate)
        self._exchange = Exchange(transport, settings.exchange, utcnow, self._limiter.acquire)
        self.recovery = OnlineRecovery(store, transport, emit, settings.exchange, utcnow, self._limiter.acquire)
        # Claim no more than the rate limit lets us send within half a lease, so claims do not expire queued.
        per_half_lease = int(rate / REQUESTS_PER_PAYMENT * settings.lease_seconds / 2)
        self._claim_size = max(1, min(settings.batch_size, per_half_lease))
        self._wake = asyncio.Event()
        self._ignore_backoff = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._round_lock = asyncio.Lock()
        self._due: list[float] = []  # heap of loop times at which retries fall due
        self._round_failures = 0
        self._last_progress = 0.0
        self._last_recover = 0.0
        #: Why the last round stopped before the processor was reached (token provider, authentication), or None.
        self.last_round_failure: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="offterm-forwarder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self._store.release(self.owner, utcnow())
        except OfftermError as exc:
            # A full or read-only disk: the claims stay until this process is gone (then at once) or their
            # lease runs out; nothing is lost by not releasing them now.
            log.warning("release_claims_failed", error_type=type(exc).__name__, code=exc.code)

    def trigger(self, *, ignore_backoff: bool = False) -> None:
        """Ask for a forwarding round soon (network back, payment stored, forward_now).

        ``ignore_backoff``: the next round also takes payments whose retry is
        not due yet (the network just came back: they failed for lack of it).
        """
        self._ignore_backoff = self._ignore_backoff or ignore_backoff
        self._wake.set()

    async def recover_claims(self) -> int:
        """Take back claims of forwarders that are provably gone (this device) or whose lease ran out."""
        return await self._store.recover_expired_claims(utcnow(), owner_gone)

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
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands together
            # with a wake-up, and then stop() (and close()) would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            if self._network.status is NetworkStatus.OFFLINE:
                # Retries that fell due wait for the network: its return triggers a round, which claims
                # them from the store.  Kept, a past-due entry would wake this loop at once, forever.
                now = loop.time()
                while self._due and self._due[0] <= now:
                    heapq.heappop(self._due)
                continue
            try:
                await self.run_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the background task die
                log.error("forwarding_round_crashed", error_type=type(exc).__name__, error=str(exc))
                self._schedule(self._policy.retry_delay(1))

    # -- one round --------------------------------------------------------------

    async def run_round(self, *, ignore_backoff: bool = False) -> int:
        """Forward everything due now.  Returns how many payments reached a final or needs_attention state.

        ``ignore_backoff`` (or a pending ``trigger(ignore_backoff=True)``) also
        takes payments whose retry is not due yet.
        """
        async with self._round_lock:
            self._idle.clear()
            try:
                now = asyncio.get_running_loop().time()
                while self._due and self._due[0] <= now:  # this round claims whatever fell due
                    heapq.heappop(self._due)
                ignore_backoff, self._ignore_backoff = ignore_backoff or self._ignore_backoff, False
                return await self._round(ignore_backoff)
            finally:
                self._idle.set()

    async def _round(self, ignore_backoff: bool) -> int:
        state = _Round(ignore_backoff)
        queue: asyncio.Queue[StoredPayment | None] = asyncio.Queue(maxsize=self._settings.concurrency)
        tasks = [asyncio.create_task(self._feed(queue, state), name="offterm-forward-feeder")]
        tasks += [
            asyncio.create_task(self._work(queue, state), name=f"offterm-forward-worker-{i}")
            for i in range(self._settings.concurrency)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            # Shielded: a deadline or close() landing meanwhile cannot skip the release.
            await asyncio.shield(self._end_round(tasks))
        self.last_round_failure = state.failure
        if state.failure is not None:
            await self._report_round_failure(state.failure)
        elif state.session is not None:
            self._round_failures = 0
        return state.finished

    async def _end_round(self, tasks: list[asyncio.Task[None]]) -> None:
        """Stop the feeder and workers, then give back whatever was claimed and not finished."""
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._store.release(self.owner, utcnow())  # unsent as it was, sent as outcome_unknown
        except OfftermError as exc:
            log.warning("release_claims_failed", error_type=type(exc).__name__, code=exc.code)
        self._on_progress()

    async def _feed(self, queue: asyncio.Queue[StoredPayment | None], state: _Round) -> None:
        """Claim batches just ahead of the workers, oldest first; authenticate once there is work."""
        loop = asyncio.get_running_loop()
        try:
            while not state.stopped:
                if loop.time() - self._last_recover >= RECOVER_EVERY:
                    self._last_recover = loop.time()
                    await self.recover_claims()
                if state.session is None:
                    has_work = (await self._store.summary()).pending_count or await self.recovery.has_work()
                    if not has_work:
                        break
                    # Authenticate before claiming: if the token provider fails, no payment was touched.
                    opened = self._sessions.sessions_opened
                    try:
                        state.session = await self._sessions.get("forwarding")
                    except Exception as exc:
                        state.stop(exc)
                        break
                    if self._sessions.sessions_opened != opened:  # the processor answered (a cached one proves nothing)
                        self._network.record_success()
                    await self.recovery.run(state.session)
                batch = await self._store.claim(
                    self.owner,
                    self._claim_size,
                    self._settings.lease_seconds,
                    utcnow(),
                    ignore_backoff=state.ignore_backoff,
                )
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
            try:
                if not state.stopped:  # else left claimed; the round's release gives it back untouched
                    await self._forward_one(state, payment)
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
    async def _forward_one(self, state: _Round, payment: StoredPayment) -> None:
        session = state.session
        if session is None:
            return
        refusal = self._refusal(payment, session)
        if refusal is not None:
            await self._finish(state, payment, PaymentState.NEEDS_ATTENTION, refusal)
            return
        view = PaymentView.of(payment)
        ledger = _StoreLedger(self._store, self.owner, payment.offline_id)
        renewed = False
        while True:
            try:
                result = await self._exchange.run(session, view, ledger)
            except (InvalidTransition, PaymentNotFound) as exc:
                # Our claim is gone (the lease ran out and another forwarder has it): nothing more is ours to do.
                log.warning("forward_claim_lost", offline_id=payment.offline_id, error=str(exc))
                return
            except AuthenticationFailed as exc:
                # The session expired or was refused: nothing ran.  One fresh session, then the same keys again.
                if not renewed:
                    renewed = True
                    fresh = await self._renew_session(state, session)
                    if fresh is not None:
                        session = fresh
                        continue
                await self._retry_later(state, payment, view, ledger, exc, delay=0.0)
                state.stop(exc)
                return
            except CardDeclined as exc:
                self._network.record_success()
                await self._finish(state, payment, PaymentState.DECLINED, exc, intent_id=view.intent_id)
                return
            except TransientProcessorError as exc:  # includes OutcomeUnknown: same keys next time
                await self._retry_later(state, payment, view, ledger, exc)
                if exc.http_status is not None:
                    self._network.record_success()
                elif not await self._network.verify():
                    state.stop()  # the network is gone: the monitor brings us back
                return
            except PermanentProcessorError as exc:
                self._network.record_success()
                await self._finish(state, payment, PaymentState.NEEDS_ATTENTION, exc, intent_id=view.intent_id)
                return
            except ProcessorError as exc:
                await self._finish(state, payment, PaymentState.NEEDS_ATTENTION, exc, intent_id=view.intent_id)
                return
            except asyncio.CancelledError:
                raise
            except OfftermError:
                raise  # the store failed: the worker stops the round, the payment stays claimed
            except Exception as exc:  # a transport bug: keep the payment, retry later with the same keys
                log.error("transport_crashed", offline_id=payment.offline_id, error_type=type(exc).__name__)
                bug = TransientProcessorError(f"the transport raised {type(exc).__name__}", code="transport_error")
                await self._retry_later(state, payment, view, ledger, bug)
                return
            self._network.record_success()
            await self._settled(state, payment, view, ledger, result)
            return

    async def _settled(
        self, state: _Round, payment: StoredPayment, view: PaymentView, ledger: _StoreLedger, result: Result
    ) -> None:
        if result.outcome is Outcome.FORWARDED:
            await self._record(state, payment, PaymentState.FORWARDED, None, intent_id=result.intent_id)
        elif result.outcome is Outcome.DECLINED:
            declined = CardDeclined(result.message or "the card was declined", decline_code=result.code)
            await self._finish(state, payment, PaymentState.DECLINED, declined, intent_id=result.intent_id)
        elif result.outcome is Outcome.NEEDS_ATTENTION:
            refused = PermanentProcessorError(result.message or "needs attention", code=result.code)
            await self._finish(state, payment, PaymentState.NEEDS_ATTENTION, refused, intent_id=view.intent_id)
        else:
            pending = TransientProcessorError(result.message or "not final yet", code=result.code)
            await self._retry_later(state, payment, view, ledger, pending, delay=result.retry_in)

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
        self,
        state: _Round,
        payment: StoredPayment,
        view: PaymentView,
        ledger: _StoreLedger,
        exc: ProcessorError,
        *,
        delay: float | None = None,
    ) -> None:
        """Back to the queue, due after ``delay`` seconds (the policy's backoff by default).

        ``outcome_unknown`` when a request went out under this claim, else ``stored`` as it was.
        """
        attempts = ledger.attempt.attempts if ledger.attempt is not None else payment.attempts
        if delay is None:
            delay = self._policy.retry_delay(max(1, attempts))
        due = utcnow() + timedelta(seconds=delay) if delay > 0 else None
        sent = ledger.attempt is not None or payment.attempts > 0  # by this claim, or an earlier one
        to = PaymentState.OUTCOME_UNKNOWN if sent else PaymentState.STORED
        done = await self._record(
            state,
            payment,
            to,
            exc,
            announce=False,
            intent_id=view.intent_id,
            error_code=exc.code,
            error_message=exc.message,
            next_attempt_at=due,
        )
        if done:
            self._schedule(delay)
            log.info(
                "forward_retry_scheduled",
                offline_id=payment.offline_id,
                attempt=attempts,
                code=exc.code,
                delay=round(delay, 3),
            )

    async def _finish(
        self,
        state: _Round,
        payment: StoredPayment,
        to: PaymentState,
        error: OfftermError,
        *,
        intent_id: str | None = None,
    ) -> None:
        await self._record(
            state,
            payment,
            to,
            error,
            intent_id=intent_id,
            error_code=error.code,
            error_message=error.message,
            decline_code=getattr(error, "decline_code", None),
        )

    async def _record(
        self,
        state: _Round,
        payment: StoredPayment,
        to: PaymentState,
        error: OfftermError | None,
        *,
        announce: bool = True,
        **fields: Any,
    ) -> bool:
        """Write the outcome; then one payment_intent_forwarded for a final or needs_attention state."""
        try:
            done = await self._store.complete(payment.offline_id, self.owner, to, utcnow(), **fields)
        except (InvalidTransition, PaymentNotFound) as exc:
            # another forwarder owns the payment now (our lease ran out): its outcome is theirs to record
            log.warning("forward_claim_lost", offline_id=payment.offline_id, error=str(exc))
            return False
        if not announce:
            return True
        state.finished += 1
        log.info(
            "payment_forwarded" if error is None else "payment_forward_finished",
            offline_id=payment.offline_id,
            state=to.value,
            intent_id=done.intent_id,
            code=None if error is None else error.code,
        )
        self._emit("payment_intent_forwarded", intent=intent_from_stored(done), error=error)
        return True

    async def wait_idle(self) -> None:
        await self._idle.wait()


def _mode(livemode: bool) -> str:
    return "live" if livemode else "test"
