"""Forward stored payments to the processor, exactly once.

Why it cannot double-charge: every payment carries the idempotency key it
was stored with, and every attempt (after a crash, a timeout, a restart)
reuses it.  Why it cannot lose one: a payment leaves the queue only when
the processor answered; a claim that dies with its process expires and is
recovered (``outcome_unknown`` if a request had gone out).
"""

from __future__ import annotations

import asyncio
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
)
from .errors import (
    AccountMismatch,
    AuthenticationFailed,
    CardDeclined,
    ConnectionTokenError,
    OfftermError,
    OutcomeUnknown,
    PermanentProcessorError,
    ProcessorError,
    TransientProcessorError,
)
from .intents import intent_from_stored
from .logs import payment_scoped
from .network import NetworkMonitor
from .session import SessionManager
from .store_runner import AsyncStore

log = structlog.get_logger("offterm.forwarder")

Emit = Callable[..., None]


@dataclass(frozen=True)
class ForwardingSettings:
    interval: float
    concurrency: int
    rate_limit: float
    batch_size: int
    lease_seconds: float


def utcnow() -> datetime:
    return datetime.now(UTC)


class _RoundAborted(Exception):
    """The processor became unreachable or refused us: stop this round."""


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
        self._limiter = AsyncLimiter(max(1.0, settings.rate_limit), 1.0)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._round_lock = asyncio.Lock()

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
        await self._store.release(self.owner, utcnow())

    def trigger(self) -> None:
        """Ask for a forwarding round soon (network back, payment stored, timer)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._settings.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.run_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the background task die
                log.error("forwarding_round_crashed", error_type=type(exc).__name__, error=str(exc))

    # -- one round --------------------------------------------------------------

    async def run_round(self) -> int:
        """Forward everything due now.  Returns how many payments were finished."""
        async with self._round_lock:
            self._idle.clear()
            try:
                return await self._round()
            finally:
                self._idle.set()

    async def _round(self) -> int:
        await self._store.recover_expired_claims(utcnow())
        finished = 0
        while True:
            batch = await self._store.claim(
                self.owner, self._settings.batch_size, self._settings.lease_seconds, utcnow()
            )
            if not batch:
                return finished
            try:
                session = await self._sessions.get("forwarding")
            except Exception as exc:
                await self._release_batch(batch)
                self._report_round_failure(exc)
                return finished
            self._network.record_success()
            done, aborted = await self._forward_batch(session, batch)
            finished += done
            self._on_progress()
            if aborted:
                return finished

    async def _forward_batch(self, session: ProcessorSession, batch: list[StoredPayment]) -> tuple[int, bool]:
        """Forward one claimed batch with bounded concurrency; stop early if the processor goes away."""
        semaphore = asyncio.Semaphore(self._settings.concurrency)
        aborted = False

        async def one(payment: StoredPayment) -> bool:
            nonlocal aborted
            async with semaphore:
                if aborted:  # give the claim back untouched
                    await self._store.complete(payment.offline_id, self.owner, _back(payment), utcnow())
                    return False
                try:
                    return await self._forward_one(session, payment)
                except _RoundAborted:
                    aborted = True
                    return False

        results = await asyncio.gather(*(one(p) for p in self._policy.order(batch)))
        return sum(results), aborted

    async def _release_batch(self, batch: list[StoredPayment]) -> None:
        for payment in batch:
            await self._store.complete(payment.offline_id, self.owner, _back(payment), utcnow())

    def _report_round_failure(self, exc: BaseException) -> None:
        error = exc if isinstance(exc, OfftermError) else ConnectionTokenError(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, TransientProcessorError):
            self._network.record_failure()
        if isinstance(exc, AuthenticationFailed):
            self._sessions.invalidate()
        log.warning("forwarding_failure", code=error.code, error=str(error))
        self._emit("forwarding_failure", error=error)

    @payment_scoped
    async def _forward_one(self, session: ProcessorSession, payment: StoredPayment) -> bool:
        now = utcnow()
        pid = payment.offline_id
        if payment.account_id != session.account_id or payment.livemode != session.livemode:
            mode = "live" if payment.livemode else "test"
            err: OfftermError = AccountMismatch(
                f"payment was stored for account {payment.account_id} ({mode} mode) but the session is for "
                f"{session.account_id} ({'live' if session.livemode else 'test'} mode); kept, not forwarded"
            )
            return await self._finish(payment, PaymentState.NEEDS_ATTENTION, err)
        reason = self._policy.give_up_reason(payment, now)
        if reason:
            return await self._finish(
                payment, PaymentState.NEEDS_ATTENTION, PermanentProcessorError(reason, code="forwarding_gave_up")
            )
        if payment.card is None:
            return await self._finish(
                payment,
                PaymentState.NEEDS_ATTENTION,
                PermanentProcessorError(
                    "stored card data is unavailable (purged or undecodable)", code="card_data_unavailable"
                ),
            )

        await self._limiter.acquire()
        attempt = await self._store.record_attempt(pid, self.owner, utcnow())
        submission = Submission(
            offline_id=pid,
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
        try:
            result = await self._transport.submit(session, submission)
        except CardDeclined as exc:
            self._network.record_success()
            return await self._finish(payment, PaymentState.DECLINED, exc)
        except AuthenticationFailed as exc:
            self._sessions.invalidate()
            await self._store.complete(
                pid, self.owner, PaymentState.OUTCOME_UNKNOWN, utcnow(), error_code=exc.code, error_message=exc.message
            )
            self._emit("forwarding_failure", error=exc)
            raise _RoundAborted() from exc
        except (OutcomeUnknown, TransientProcessorError) as exc:
            delay = self._policy.retry_delay(attempt.attempts)
            await self._store.complete(
                pid,
                self.owner,
                PaymentState.OUTCOME_UNKNOWN,
                utcnow(),
                error_code=exc.code,
                error_message=exc.message,
                next_attempt_at=utcnow() + timedelta(seconds=delay),
            )
            log.info(
                "forward_retry_scheduled",
                offline_id=pid,
                attempt=attempt.attempts,
                code=exc.code,
                delay=round(delay, 3),
            )
            if exc.http_status is None:  # no answer at all: the network is down
                self._network.record_failure()
                raise _RoundAborted() from exc
            return False
        except PermanentProcessorError as exc:
            self._network.record_success()
            return await self._finish(payment, PaymentState.NEEDS_ATTENTION, exc)
        except ProcessorError as exc:
            return await self._finish(payment, PaymentState.NEEDS_ATTENTION, exc)
        except Exception as exc:  # a transport bug: keep the payment, retry later with the same key
            log.error("transport_crashed", offline_id=pid, error_type=type(exc).__name__)
            await self._store.complete(
                pid,
                self.owner,
                PaymentState.OUTCOME_UNKNOWN,
                utcnow(),
                error_code="transport_error",
                error_message=type(exc).__name__,
                next_attempt_at=utcnow() + timedelta(seconds=self._policy.retry_delay(attempt.attempts)),
            )
            return False
        self._network.record_success()
        done = await self._store.complete(pid, self.owner, PaymentState.FORWARDED, utcnow(), intent_id=result.intent_id)
        log.info("payment_forwarded", offline_id=pid, intent_id=result.intent_id, replayed=result.replayed)
        self._emit("payment_intent_forwarded", intent=intent_from_stored(done), error=None)
        return True

    async def _finish(self, payment: StoredPayment, state: PaymentState, error: OfftermError) -> bool:
        decline = getattr(error, "decline_code", None)
        done = await self._store.complete(
            payment.offline_id,
            self.owner,
            state,
            utcnow(),
            error_code=error.code,
            error_message=error.message,
            decline_code=decline,
        )
        log.info("payment_forward_finished", offline_id=payment.offline_id, state=state.value, code=error.code)
        self._emit("payment_intent_forwarded", intent=intent_from_stored(done), error=error)
        return True

    async def wait_idle(self) -> None:
        await self._idle.wait()


def _back(payment: StoredPayment) -> PaymentState:
    """Where an unsent claim goes back to: where it came from."""
    return PaymentState.OUTCOME_UNKNOWN if payment.attempts > 0 else PaymentState.STORED
