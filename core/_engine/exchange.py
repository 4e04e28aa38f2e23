"""One payment's exchange with the processor, by the processor's real rules.

Used for every payment that carries card data to the processor: the
Terminal's online confirm and the forwarder's stored payments run the
same code, with the same steps, parameters and keys (``offterm.core.keys``),
so a payment that falls back offline is finished under the keys its online
attempt used and can never leave a second intent behind.

The rules, in the order they apply:

1. **Every actor uses the same keys at the same time; a new key is used
   only after a lookup.**  Stripe prunes idempotency keys once they are 24
   hours old, and a request with a pruned key is a new request.  A stored
   payment's life is cut into periods from the moment it was stored: each
   is the idempotency window (23 h by default) in which requests are sent,
   then a quiet gap of search's indexing delay (1 h) in which none is.
   Period ``g`` sends under key generation ``g``.  Every actor that
   forwards the payment (its lane, any Terminal on the same store, the hub
   forwarder for a silent lane) computes the same generation from the
   payment's stored time, so two of them racing send the same keys, and no
   key is used longer than the window after its first use.  Before its
   first request in a period past the first, an actor looks the payment up:
   by intent id when known, else by its offline id in the intent's metadata
   (search: every request of an earlier period was sent before the gap, so
   search shows what it made).  Paid -> forwarded, never sent again;
   declined -> declined; found unpaid -> confirm that intent; not found ->
   create anew, under the period's keys.  The actor's own ledger cannot
   decide this alone: another actor may have sent requests it never heard of.
2. **A confirm that went out is checked before it is resent.**  When the
   intent id is known and a confirm was sent, the intent is retrieved and
   judged (``offterm.core.outcomes``); only an unpaid intent is confirmed again.
3. **A create whose answer was lost is replayed, never repeated with other
   parameters**, so the processor returns the intent it made.
4. **Every step is recorded durably before it is sent** (the ledger), and
   the intent id as soon as it is known.
5. **Answers are judged by the intent's status**: only ``succeeded`` and
   ``requires_capture`` are paid; ``processing`` is retrieved until final,
   within a bound.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from ..contracts.forwarding import ForwardingTransport, IntentRequest, IntentSnapshot, ProcessorSession
from ..contracts.readers import CardResult
from ..contracts.storage import StoredPayment
from ..errors import PaymentNotFound
from .keys import CONFIRMING_STEPS, Step, step_key
from .outcomes import Verdict, attention_code, judge

log = structlog.get_logger("offterm.exchange")

#: step name -> (first sent, last sent), within one key generation
StepsSent = dict[str, tuple[datetime, datetime]]


@dataclass(frozen=True)
class ExchangeSettings:
    """How the exchange follows the processor's rules (``[forwarding]`` options)."""

    #: Seconds of each key generation's period in which requests are sent (then a quiet gap of the
    #: transport's ``search_delay``).  Below the processor's own window (Stripe: keys pruned once 24 h
    #: old), so clocks and delays never cross it.
    idempotency_window: float = 23 * 3600.0
    #: Retrievals of an intent the processor reports as ``processing`` before giving up for now.
    processing_checks: int = 5
    #: Seconds before the first retrieval of a ``processing`` intent (doubling after each).
    processing_interval: float = 0.5


class Ledger(Protocol):
    """Where the exchange writes what must survive a crash; every method is durable when it returns."""

    async def sending(self, steps: Collection[Step], now: datetime) -> None:
        """``steps`` are about to be sent (before the first byte goes out)."""

    async def intent_known(self, intent_id: str, now: datetime) -> None:
        """The processor's intent id for this payment."""

    async def new_generation(self, intent_id: str | None, now: datetime, generation: int) -> None:
        """A lookup found the payment unpaid (``intent_id``) or absent (None): keys of ``generation`` from now on."""


@dataclass
class PaymentView:
    """What the exchange knows of one payment; kept current as it goes."""

    offline_id: str
    key: str
    request: IntentRequest
    card: CardResult
    intent_id: str | None = None
    generation: int = 0
    steps_sent: StepsSent = field(default_factory=dict)
    stored_at: datetime | None = None

    @classmethod
    def of(cls, payment: StoredPayment) -> PaymentView:
        """The view of a stored payment (forwarded by a lane, or by the hub for a silent lane)."""
        assert payment.card is not None
        return cls(
            offline_id=payment.offline_id,
            key=payment.idempotency_key,
            request=IntentRequest(
                offline_id=payment.offline_id,
                amount=payment.amount,
                currency=payment.currency,
                capture_method=payment.capture_method,
                metadata=dict(payment.metadata),
                description=payment.description,
            ),
            card=payment.card,
            intent_id=payment.intent_id,
            generation=payment.key_generation,
            steps_sent=dict(payment.steps_sent),
            stored_at=payment.stored_at,
        )

    @property
    def first_request_at(self) -> datetime | None:
        return min((first for first, _ in self.steps_sent.values()), default=None)

    def last_sent(self, steps: Collection[Step]) -> datetime | None:
        return max((self.steps_sent[s][1] for s in steps if s in self.steps_sent), default=None)

    def note_sent(self, steps: Collection[Step], now: datetime) -> None:
        for step in steps:
            first = self.steps_sent.get(step, (now, now))[0]
            self.steps_sent[step] = (first, now)


class Outcome(enum.StrEnum):
    FORWARDED = "forwarded"
    DECLINED = "declined"
    NEEDS_ATTENTION = "needs_attention"
    #: not final: try again later (``retry_in`` when the wait is known)
    PENDING = "pending"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    intent: IntentSnapshot | None = None
    code: str | None = None
    message: str | None = None
    retry_in: float | None = None

    @property
    def intent_id(self) -> str | None:
        return None if self.intent is None else self.intent.id


Clock = Callable[[], datetime]


class Exchange:
    """Runs one payment to a result; transport errors propagate to the caller, typed."""

    def __init__(
        self,
        transport: ForwardingTransport,
        settings: ExchangeSettings,
        clock: Clock,
        before_request: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._transport = transport
        self._settings = settings
        self._clock = clock
        self._before_request = before_request

    async def _request(self) -> None:
        if self._before_request is not None:
            await self._before_request()

    def generation_at(self, view: PaymentView, now: datetime) -> tuple[int, float | None]:
        """The key generation in force for ``view`` at ``now``, and the seconds left of the quiet gap.

        Periods start at the payment's stored time: ``idempotency_window`` seconds of requests, then
        the transport's ``search_delay`` seconds of none (the gap: the second value is not None).
        Generation 0's requests end a window after its first request even when an online attempt
        sent it before the payment was stored (those steps are in every actor's view until the
        first lookup).  A generation recorded ahead of the period (an actor whose clock runs ahead)
        is kept while its first request is younger than the window.  A payment not stored yet (an
        online confirm) has one period, from its first request, and no gap.
        """
        if view.stored_at is None:
            return view.generation, None
        window = self._settings.idempotency_window
        period = window + self._transport.search_delay
        elapsed = max(0.0, (now - view.stored_at).total_seconds())
        generation = int(elapsed // period)
        into = elapsed - generation * period
        if generation < view.generation:
            first = view.first_request_at
            if first is None or (now - first).total_seconds() < window:
                return view.generation, None
            return view.generation + 1, None  # its keys may be pruned: look up, then the next one
        if generation == 0 == view.generation and view.first_request_at is not None:
            early = max(0.0, (view.stored_at - view.first_request_at).total_seconds())
            window -= early  # sent before storing: generation 0's keys are that much older
        return generation, (period - into if into >= window else None)

    async def run(self, session: ProcessorSession, view: PaymentView, ledger: Ledger) -> Result:
        now = self._clock()
        generation, gap_left = self.generation_at(view, now)
        first = view.first_request_at
        if gap_left is not None:
            return Result(
                Outcome.PENDING,
                code="awaiting_key_generation",
                message="between two key generations: nothing is sent until search shows every earlier request",
                retry_in=gap_left,
            )
        if generation > view.generation:
            settled = await self._look_up(session, view, ledger, generation)
            if settled is not None:
                return settled
        elif (
            view.stored_at is None
            and first is not None
            and now - first >= timedelta(seconds=self._settings.idempotency_window)
        ):
            # An online confirm whose intent was created longer ago than the window: never resent blind.
            settled = await self._look_up(session, view, ledger, view.generation + 1)
            if settled is not None:
                return settled
        elif view.intent_id is not None and not CONFIRMING_STEPS.isdisjoint(view.steps_sent):
            await self._request()
            current = await self._transport.retrieve_intent(session, view.intent_id)
            settled = await self._settle(session, current, confirmable_means_go_on=True)
            if settled is not None:
                return settled
        elif view.intent_id is None and Step.CREATE in view.steps_sent:
            # The online create's answer was lost: the same request, same key, returns the intent it made.
            await self._send(view, ledger, (Step.CREATE,))
            await self._request()
            made = await self._transport.create_intent(
                session, view.request, idempotency_key=step_key(view.key, Step.CREATE, view.generation)
            )
            await self._learn(view, ledger, made.id)
        return await self._confirm(session, view, ledger)

    async def _confirm(self, session: ProcessorSession, view: PaymentView, ledger: Ledger) -> Result:
        """The payment method and the confirmation: two requests, whatever the path."""
        final = Step.CONFIRM if view.intent_id is not None else Step.CREATE_AND_CONFIRM
        await self._send(view, ledger, (Step.PAYMENT_METHOD, final))
        await self._request()
        payment_method = await self._transport.create_payment_method(
            session,
            view.card,
            idempotency_key=step_key(view.key, Step.PAYMENT_METHOD, view.generation),
            stored_at=view.stored_at,
        )
        await self._request()
        if self.generation_at(view, self._clock()) != (view.generation, None):
            # The window closed while the card step went out: no request that may make or confirm
            # an intent is sent in the gap, where the next generation's lookup may not see it.
            return Result(
                Outcome.PENDING,
                code="awaiting_key_generation",
                message="the key generation's window closed before the confirmation was sent",
                retry_in=0.0,
            )
        key = step_key(view.key, final, view.generation)
        if view.intent_id is not None:
            answer = await self._transport.confirm_intent(
                session, view.intent_id, payment_method=payment_method, idempotency_key=key
            )
        else:
            answer = await self._transport.create_intent(
                session, view.request, idempotency_key=key, payment_method=payment_method
            )
        if answer.id != view.intent_id:
            view.intent_id = answer.id  # recorded with the result (or before polling, below)
        settled = await self._settle(session, answer, confirmable_means_go_on=False, view=view, ledger=ledger)
        assert settled is not None
        return settled

    async def _send(self, view: PaymentView, ledger: Ledger, steps: tuple[Step, ...]) -> None:
        now = self._clock()
        await ledger.sending(steps, now)
        view.note_sent(steps, now)

    async def _learn(self, view: PaymentView, ledger: Ledger, intent_id: str) -> None:
        view.intent_id = intent_id
        await ledger.intent_known(intent_id, self._clock())

    async def _settle(
        self,
        session: ProcessorSession,
        intent: IntentSnapshot,
        *,
        confirmable_means_go_on: bool,
        view: PaymentView | None = None,
        ledger: Ledger | None = None,
    ) -> Result | None:
        """The result ``intent`` means; None when it is unpaid and the caller goes on to confirm it."""
        verdict = judge(intent)
        if verdict is Verdict.PROCESSING:
            if view is not None and ledger is not None:
                await ledger.intent_known(intent.id, self._clock())  # durable before we wait on it
            intent = await self._until_final(session, intent)
            verdict = judge(intent)
        if verdict is Verdict.PAID:
            return Result(Outcome.FORWARDED, intent)
        if verdict is Verdict.DECLINED:
            error = intent.last_payment_error
            assert error is not None
            return Result(
                Outcome.DECLINED,
                intent,
                code=error.decline_code or error.code or "card_declined",
                message=error.message,
            )
        if verdict is Verdict.PROCESSING:
            return Result(
                Outcome.PENDING, intent, code="intent_processing", message="the processor is still processing it"
            )
        if verdict is Verdict.UNPAID:
            if confirmable_means_go_on:
                return None
            return Result(
                Outcome.PENDING,
                intent,
                code="intent_not_confirmed",
                message="the confirmation was answered but the intent is still unpaid",
            )
        return Result(
            Outcome.NEEDS_ATTENTION,
            intent,
            code=attention_code(intent),
            message=f"the processor reports the intent as {intent.status!r}",
        )

    async def _until_final(self, session: ProcessorSession, intent: IntentSnapshot) -> IntentSnapshot:
        delay = self._settings.processing_interval
        for _ in range(self._settings.processing_checks):
            await asyncio.sleep(delay)
            delay *= 2
            await self._request()
            intent = await self._transport.retrieve_intent(session, intent.id)
            if judge(intent) is not Verdict.PROCESSING:
                break
        return intent

    async def _look_up(
        self, session: ProcessorSession, view: PaymentView, ledger: Ledger, generation: int
    ) -> Result | None:
        """Rule 1: find out what the processor has before the first request of a new key generation.

        Every request of an earlier generation went out before the quiet gap, at least
        ``search_delay`` ago, so search shows any intent one of them made, whoever sent it.
        """
        found: IntentSnapshot | None = None
        await self._request()
        if view.intent_id is not None:
            try:
                found = await self._transport.retrieve_intent(session, view.intent_id)
            except PaymentNotFound:
                return Result(
                    Outcome.NEEDS_ATTENTION,
                    code="intent_missing",
                    message=f"the processor has no intent {view.intent_id}, which this payment recorded",
                )
        else:
            found = await self._transport.find_intent(session, view.offline_id)
        if found is not None:
            settled = await self._settle(session, found, confirmable_means_go_on=True, view=view, ledger=ledger)
            if settled is not None:
                if found.id != view.intent_id:
                    view.intent_id = found.id
                return settled
        intent_id = None if found is None else found.id
        log.info(
            "payment_looked_up",
            offline_id=view.offline_id,
            found=found is not None,
            intent_id=intent_id,
            generation=generation,
        )
        await ledger.new_generation(intent_id, self._clock(), generation)
        view.generation = generation
        view.steps_sent = {}
        view.intent_id = intent_id
        return None
