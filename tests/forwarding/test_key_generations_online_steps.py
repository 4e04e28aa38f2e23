"""Key generation 0 of a payment whose online attempt sent requests long before it was stored.

A PREFER_ONLINE or REQUIRE_ONLINE payment that falls back offline is stored with the steps its
online attempt sent (``Terminal._store_offline``: ``steps_sent=dict(pending.steps_sent)``), and the
forwarder finishes it under the same keys.  Key generations are periods counted from the stored
time, so generation 0's keys are sent until ``stored_at + idempotency_window``; but an online
create (sent when the app created the intent) or an online create-and-confirm (an app that
confirms again later) may have used them hours before ``stored_at``.  Past Stripe's 24 h those keys
are pruned, and a resend is a new request: a second intent, a second charge.  Before key generations
were periods, the first request's age decided the lookup, and these payments were looked up first.

Every test here runs with the default window (23 h) and search delay (1 h), the simulator's
clock moved in step with the POS clock, and the processor's 24 h key retention.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from forwarding_kit import config, connect_online, plugin_manager, read_store

from offterm.core import OfflineBehavior, Terminal
from offterm.core._engine import forwarder as forwarder_module
from offterm.core._engine import terminal as terminal_module
from offterm.core._engine.exchange import Exchange, ExchangeSettings, Outcome, PaymentView
from offterm.core._engine.keys import Step, step_key
from offterm.core.contracts import PaymentState
from offterm.core.contracts.forwarding import IntentRequest
from offterm.core.contracts.tokens import ConnectionToken
from offterm.core.errors import OutcomeUnknown, TransientProcessorError
from offterm.core.models import CaptureMethod
from offterm.plugins.transport.stripe import StripeTransport
from offterm.sim.processor.testing import card_result

ONLINE_AT = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


class Clock:
    """The POS clock; the simulator's (the processor's) clock moves with it."""

    def __init__(self, sim, now: datetime = ONLINE_AT) -> None:  # type: ignore[no-untyped-def]
        self.sim = sim
        self.now = now

    def advance(self, hours: float) -> None:
        self.now += timedelta(hours=hours)
        self.sim.advance_clock(hours * 3600)

    def __call__(self) -> datetime:
        return self.now


class Ledger:
    async def sending(self, steps, now):  # type: ignore[no-untyped-def]
        pass

    async def intent_known(self, intent_id, now):  # type: ignore[no-untyped-def]
        pass

    async def new_generation(self, intent_id, now, generation=None):  # type: ignore[no-untyped-def]
        pass


class Actor:
    """One forwarder with its own transport (a lane, or the hub forwarder): default window and search delay."""

    def __init__(self, sim, clock: Clock) -> None:  # type: ignore[no-untyped-def]
        self.sim = sim
        self.transport = StripeTransport(sim.url, timeout=5.0)
        self.exchange = Exchange(self.transport, ExchangeSettings(), clock)

    async def run(self, view: PaymentView, ledger: Ledger | None = None):  # type: ignore[no-untyped-def]
        session = await self.transport.authenticate(ConnectionToken(self.sim.connection_token()))
        return await self.exchange.run(session, view, ledger or Ledger())

    async def settle(self, clock: Clock, view: PaymentView):  # type: ignore[no-untyped-def]
        """Runs until a result; a wait the exchange asks for (a quiet gap) is waited out on the clock."""
        for _ in range(3):
            result = await self.run(view)
            if result.outcome is not Outcome.PENDING or result.retry_in is None:
                return result
            clock.advance(result.retry_in / 3600 + 0.01)
        return result


#: The card data as the reader encrypted it: the same bytes for every actor.
CARD = card_result("4242424242424242")


def _view(offline_id: str, key: str, **kw) -> PaymentView:  # type: ignore[no-untyped-def]
    request = IntentRequest(offline_id, 4200, "usd", CaptureMethod.AUTOMATIC, {}, None)
    return PaymentView(offline_id=offline_id, key=key, request=request, card=CARD, **kw)


async def test_a_payment_confirmed_online_then_stored_hours_later_is_not_charged_again(  # type: ignore[no-untyped-def]
    data_dir, sim, recorder, monkeypatch
):
    """The public API: a REQUIRE_ONLINE confirm is charged and its answer lost (OutcomeUnknown, "confirm
    again"); two hours later the app confirms it again with FORCE_OFFLINE and it is stored, with the
    online attempt's create_and_confirm step.  The processor is next reached 22.5 h after storing: still
    key generation 0, whose create_and_confirm key was first used 24.5 h earlier and is pruned."""
    clock = Clock(sim, datetime.now(UTC))
    monkeypatch.setattr(forwarder_module, "utcnow", clock)
    monkeypatch.setattr(terminal_module, "utcnow", clock)
    cfg = config(data_dir, sim.url, forwarding={"interval": 600.0})  # default window and search delay
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        await connect_online(terminal)
        intent = await terminal.create_payment_intent(
            {"amount": 4200, "currency": "usd"}, OfflineBehavior.FORCE_OFFLINE
        )
        reader = terminal.connected_reader
        assert reader is not None
        reader.present_card("visa")  # type: ignore[attr-defined]
        intent = await terminal.collect_payment_method(intent)
        sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents",))
        with pytest.raises(OutcomeUnknown):
            await terminal.confirm_payment_intent(intent, OfflineBehavior.REQUIRE_ONLINE)
        sim.set_faults()
        oid = intent.offline_id
        assert sim.successful_charges() == {oid: 1}
        clock.advance(2)
        await terminal.confirm_payment_intent(intent, OfflineBehavior.FORCE_OFFLINE)
        stored = read_store(data_dir)[oid]
        assert stored.steps_sent[Step.CREATE_AND_CONFIRM][0] == stored.stored_at - timedelta(hours=2)
        clock.advance(22.5)
        await terminal.forward_now(timeout=5)
        waiting = read_store(data_dir)[oid]
        if waiting.state is not PaymentState.FORWARDED and waiting.next_attempt_at is not None:
            clock.advance((waiting.next_attempt_at - clock()).total_seconds() / 3600 + 0.01)  # a quiet gap
            await terminal.forward_now(timeout=5)
    assert read_store(data_dir)[oid].state is PaymentState.FORWARDED
    assert sim.successful_charges() == {oid: 1}, "charged twice"


async def test_an_online_create_and_confirm_hours_before_storing_is_looked_up_not_resent(sim) -> None:  # type: ignore[no-untyped-def]
    """The same, on the exchange alone: the online confirm (no stored time), then the stored payment."""
    clock = Clock(sim)
    lane = Actor(sim, clock)
    await lane.transport.open()
    try:
        oid, key = "offpi_" + uuid.uuid4().hex, "offterm-" + uuid.uuid4().hex
        online = _view(oid, key)
        sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents",))  # charged, the answer lost
        with pytest.raises(TransientProcessorError):
            await lane.run(online)
        sim.set_faults()
        clock.advance(2)
        stored = _view(oid, key, steps_sent=dict(online.steps_sent), stored_at=clock())
        clock.advance(22.5)
        result = await lane.settle(clock, stored)
        assert result.outcome is Outcome.FORWARDED
        assert sim.successful_charges() == {oid: 1}, "charged twice"
    finally:
        await lane.transport.close()


async def test_an_online_create_hours_before_storing_makes_one_charge_with_the_hub_racing(sim) -> None:  # type: ignore[no-untyped-def]
    """The app created the intent online (create sent, answer lost) two hours before the card was
    stored offline.  The lane, cut off from the hub but not from the processor, replays the create 8 h
    after storing and learns the intent; its confirm is refused before it runs (a 500) and the lane
    loses the processor.  The hub forwarder takes the silent lane over 22.5 h after storing: generation
    0, the create resent under a key first used 24.5 h earlier (pruned: a second intent), confirmed.
    The lane is back in generation 1, retrieves its intent by id, finds it unpaid, confirms it."""
    clock = Clock(sim)
    lane, hub = Actor(sim, clock), Actor(sim, clock)
    for actor in (lane, hub):
        await actor.transport.open()
    try:
        oid, key = "offpi_" + uuid.uuid4().hex, "offterm-" + uuid.uuid4().hex
        request = _view(oid, key).request
        session = await lane.transport.authenticate(ConnectionToken(sim.connection_token()))
        sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents",))  # Terminal._create_online
        with pytest.raises(TransientProcessorError):
            await lane.transport.create_intent(session, request, idempotency_key=step_key(key, Step.CREATE))
        sim.set_faults()
        clock.advance(2)
        steps = {Step.CREATE.value: (ONLINE_AT, ONLINE_AT)}
        lane_view = _view(oid, key, steps_sent=dict(steps), stored_at=clock())
        hub_view = _view(oid, key, steps_sent=dict(steps), stored_at=clock())  # the replicated record

        class ConfirmRefused(Ledger):
            async def intent_known(self, intent_id, now):  # type: ignore[no-untyped-def]
                sim.set_faults(error_rates={500: 1.0}, paths=("/v1/payment_intents/",))

        clock.advance(8)
        with pytest.raises(TransientProcessorError):
            await lane.run(lane_view, ConfirmRefused())
        sim.set_faults()
        assert lane_view.intent_id is not None and not sim.successful_charges()
        clock.advance(14.5)
        by_hub = await hub.settle(clock, hub_view)
        clock.advance(2)
        by_lane = await lane.settle(clock, lane_view)
        assert by_hub.outcome is by_lane.outcome is Outcome.FORWARDED
        assert by_hub.intent_id == by_lane.intent_id, "two intents"
        assert sim.successful_charges() == {oid: 1}, "charged twice"
    finally:
        for actor in (lane, hub):
            await actor.transport.close()
