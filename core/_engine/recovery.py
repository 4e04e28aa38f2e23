"""Online confirms a crash interrupted: find out what happened, and tell the app.

Before an online confirm is sent, the Terminal writes an in-flight journal
entry (the payment's key, its intent id once known, the steps sent).  It
is removed when the answer comes back, or when the payment is stored
offline instead.  An entry left behind means the POS died with the confirm
in flight: the processor may have the money while the POS never said so,
and a cashier would take the card again.

Once the entry's process is provably gone (``offterm.core.owners``), each
entry is reconciled with the processor: retrieved by intent id, else
searched by offline id (after search's indexing delay).  Paid -> "charged";
declined -> "declined"; unpaid -> the intent is canceled so nothing can
confirm it later -> "not_charged"; never created -> "not_charged".  Each
resolution is kept (``Terminal.recovered_payments()``) and announced once
(``offterm_on_online_payment_recovered``).  An intent still processing, or
a search not yet trustworthy, is tried again on a later round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

import structlog

from ..contracts.forwarding import ForwardingTransport, IntentSnapshot, ProcessorSession
from ..contracts.storage import OnlineAttempt
from ..errors import InvalidTransition, OfftermError, PaymentNotFound, ProcessorError
from .exchange import ExchangeSettings
from .keys import CREATING_STEPS
from .outcomes import Verdict, judge
from .owners import owner_gone
from .store_runner import AsyncStore

log = structlog.get_logger("offterm.recovery")

CHARGED = "charged"
NOT_CHARGED = "not_charged"
DECLINED = "declined"


class OnlineRecovery:
    def __init__(
        self,
        store: AsyncStore,
        transport: ForwardingTransport,
        emit: Callable[..., None],
        settings: ExchangeSettings,
        clock: Callable[[], datetime],
        before_request: Callable[[], Awaitable[None]],
    ) -> None:
        self._store = store
        self._transport = transport
        self._emit = emit
        self._settings = settings
        self._clock = clock
        self._before_request = before_request

    async def _orphans(self) -> list[OnlineAttempt]:
        return [a for a in await self._store.online_attempts(resolved=False) if owner_gone(a.owner)]

    async def has_work(self) -> bool:
        return bool(await self._orphans())

    async def run(self, session: ProcessorSession) -> int:
        """Reconcile every orphaned entry it can now; returns how many were resolved."""
        resolved = 0
        for attempt in await self._orphans():
            try:
                if await self._reconcile(session, attempt):
                    resolved += 1
            except (ProcessorError, InvalidTransition) as exc:  # the processor or a peer: try again next round
                log.warning("online_recovery_deferred", offline_id=attempt.offline_id, error_type=type(exc).__name__)
            except OfftermError as exc:
                log.error("online_recovery_failed", offline_id=attempt.offline_id, code=exc.code)
        return resolved

    async def _reconcile(self, session: ProcessorSession, attempt: OnlineAttempt) -> bool:
        try:
            await self._store.get(attempt.offline_id)
        except PaymentNotFound:
            pass
        else:  # it fell back offline and was stored: the forwarder finishes it with the same keys
            await self._store.end_online(attempt.offline_id)
            return False
        intent = await self._find(session, attempt)
        if intent is _NOT_YET:
            return False
        assert not isinstance(intent, _NotYet)
        if intent is None:
            return await self._resolve(attempt, NOT_CHARGED, None, "intent_never_created")
        verdict = judge(intent)
        if verdict is Verdict.PAID:
            return await self._resolve(attempt, CHARGED, intent.id, None)
        if verdict is Verdict.DECLINED:
            error = intent.last_payment_error
            code = None if error is None else (error.decline_code or error.code)
            return await self._resolve(attempt, DECLINED, intent.id, code)
        if verdict is Verdict.PROCESSING:
            return False
        if intent.status != "canceled":
            await self._before_request()
            intent = await self._transport.cancel_intent(session, intent.id)
            if judge(intent) is Verdict.PAID:  # paid between our look and the cancel
                return await self._resolve(attempt, CHARGED, intent.id, None)
        return await self._resolve(attempt, NOT_CHARGED, intent.id, "intent_canceled")

    async def _find(self, session: ProcessorSession, attempt: OnlineAttempt) -> IntentSnapshot | None | _NotYet:
        if attempt.intent_id is not None:
            await self._before_request()
            try:
                return await self._transport.retrieve_intent(session, attempt.intent_id)
            except PaymentNotFound:
                return None
        sent = [attempt.steps_sent[s][1] for s in CREATING_STEPS if s in attempt.steps_sent]
        if not sent:
            return None  # nothing that could make an intent went out
        waited = (self._clock() - max(sent)).total_seconds()
        if waited < self._transport.search_delay:
            return _NOT_YET
        await self._before_request()
        return await self._transport.find_intent(session, attempt.offline_id)

    async def _resolve(self, attempt: OnlineAttempt, resolution: str, intent_id: str | None, code: str | None) -> bool:
        done = await self._store.resolve_online(
            attempt.offline_id, resolution, self._clock(), intent_id=intent_id, error_code=code
        )
        log.warning(
            "online_payment_recovered",
            offline_id=attempt.offline_id,
            resolution=resolution,
            intent_id=intent_id,
            amount=attempt.amount,
            currency=attempt.currency,
        )
        self._emit("online_payment_recovered", payment=done)
        return True


class _NotYet:
    """Not decidable yet (search's indexing delay)."""


_NOT_YET = _NotYet()
