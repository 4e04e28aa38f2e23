"""Several actors forwarding one payment (its lane, the hub forwarder) send the same keys at the same time.

Key generations are periods of the payment's life since it was stored (the idempotency window,
then a quiet gap as long as search's indexing delay), the same for every actor.  Each test runs
two independent exchanges (two ledgers that never hear of each other, as a lane cut off from its
hub) against the simulator, on a POS clock the test moves.  Before generations were periods, an
actor that had sent nothing itself sent generation 0's keys at any time: after the other actor's
lookup had moved on to a new key, or after the processor had pruned generation 0's, that was a
second charge (found by the fleet torture, docs/fleet.md).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime, timedelta

import pytest

from offterm.core._engine.exchange import Exchange, ExchangeSettings, Outcome, PaymentView
from offterm.core._engine.keys import Step
from offterm.core.contracts.forwarding import IntentRequest, ProcessorSession
from offterm.core.contracts.readers import CardResult
from offterm.core.contracts.tokens import ConnectionToken
from offterm.core.errors import TransientProcessorError
from offterm.core.models import CaptureMethod
from offterm.plugins.transport.stripe import StripeTransport
from offterm.sim.processor import start_simulator
from offterm.sim.processor.testing import card_result

WINDOW = 10.0
SEARCH_DELAY = 5.0  # the gap; one period is 15 s of POS time
STORED_AT = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = STORED_AT

    def at(self, seconds: float) -> Clock:
        self.now = STORED_AT + timedelta(seconds=seconds)
        return self

    def __call__(self) -> datetime:
        return self.now


class Ledger:
    """One actor's own ledger: what it sent, what generations it started."""

    def __init__(self) -> None:
        self.generations: list[int] = []

    async def sending(self, steps: Collection[Step], now: datetime) -> None:
        pass

    async def intent_known(self, intent_id: str, now: datetime) -> None:
        pass

    async def new_generation(self, intent_id: str | None, now: datetime, generation: int) -> None:
        self.generations.append(generation)


class Actor:
    def __init__(
        self, transport: StripeTransport, session: ProcessorSession, offline_id: str, key: str, card: CardResult
    ) -> None:
        self.clock = Clock()
        self.transport = transport
        self.exchange = Exchange(transport, ExchangeSettings(idempotency_window=WINDOW), self.clock)
        self.session = session
        self.ledger = Ledger()
        self.view = PaymentView(
            offline_id=offline_id,
            key=key,
            request=IntentRequest(
                offline_id=offline_id,
                amount=4200,
                currency="usd",
                capture_method=CaptureMethod.AUTOMATIC,
                metadata={},
                description=None,
            ),
            card=card,  # the card data as the reader encrypted it, the same bytes for every actor
            stored_at=STORED_AT,
        )

    async def run_at(self, seconds: float):  # type: ignore[no-untyped-def]
        self.clock.at(seconds)
        return await self.exchange.run(self.session, self.view, self.ledger)


@pytest.fixture
def sim():  # type: ignore[no-untyped-def]
    handle = start_simulator()
    yield handle
    handle.stop()


@pytest.fixture
async def pair(sim) -> AsyncIterator[tuple[Actor, Actor]]:  # type: ignore[no-untyped-def]
    """The payment's lane and the hub forwarder, each with its own ledger and transport."""
    offline_id = "offpi_" + uuid.uuid4().hex
    key = "offterm-" + uuid.uuid4().hex
    card = card_result("4242424242424242")
    actors = []
    transports = []
    for _ in range(2):
        transport = StripeTransport(sim.url, search_delay=SEARCH_DELAY, timeout=5.0)
        await transport.open()
        transports.append(transport)
        session = await transport.authenticate(ConnectionToken(sim.connection_token()))
        actors.append(Actor(transport, session, offline_id, key, card))
    yield actors[0], actors[1]
    for transport in transports:
        await transport.close()


def _charges(sim, actor: Actor) -> int:  # type: ignore[no-untyped-def]
    return sim.successful_charges().get(actor.view.offline_id, 0)


async def test_a_lane_that_sent_nothing_looks_up_after_the_hub_moved_to_a_new_key(sim, pair) -> None:  # type: ignore[no-untyped-def]
    """The fleet torture's double charge: the hub's first create never ran, its lookup found nothing, it
    charged under generation 1's key; the lane, cut off and knowing nothing, must not send generation 0's."""
    lane, hub = pair
    sim.set_faults(error_rates={500: 1.0}, paths=("/v1/payment_intents",))  # refused before it ran
    with pytest.raises(TransientProcessorError):
        await hub.run_at(1)
    sim.set_faults()
    paid = await hub.run_at(16)  # generation 1: looked up, not found, charged under new keys
    assert paid.outcome is Outcome.FORWARDED and hub.ledger.generations == [1]
    assert _charges(sim, hub) == 1
    result = await lane.run_at(20)  # the same period: the lane looks up before its first request
    assert result.outcome is Outcome.FORWARDED and result.intent_id == paid.intent_id
    assert _charges(sim, lane) == 1, "charged once"


async def test_a_lane_past_the_processors_key_retention_looks_up_before_its_first_request(sim, pair) -> None:  # type: ignore[no-untyped-def]
    lane, hub = pair
    sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents",))  # charged, the answer lost
    with pytest.raises(TransientProcessorError):
        await hub.run_at(1)
    sim.set_faults()
    assert _charges(sim, hub) == 1
    sim.advance_clock(25 * 3600)  # every key the processor held is forgotten
    lane.session = await lane.transport.authenticate(ConnectionToken(sim.connection_token()))  # a day later
    result = await lane.run_at(16)
    assert result.outcome is Outcome.FORWARDED, result
    assert _charges(sim, lane) == 1, "found paid by search, not charged again"
    assert lane.ledger.generations == [], "found paid: no new key needed"


async def test_two_actors_in_the_same_generation_send_the_same_keys(sim, pair) -> None:  # type: ignore[no-untyped-def]
    lane, hub = pair
    sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents",))
    with pytest.raises(TransientProcessorError):
        await hub.run_at(1)
    sim.set_faults()
    result = await lane.run_at(8)  # still generation 0: the processor replays the hub's request
    assert result.outcome is Outcome.FORWARDED
    assert _charges(sim, lane) == 1
    keys = [r["idempotency_key"] for r in sim.requests() if r["path"] == "/v1/payment_intents"]
    assert len(set(keys)) == 1 and keys[0].endswith("-create_and_confirm") and "-g" not in keys[0][-25:]


async def test_lookups_that_miss_a_fresh_intent_still_end_on_the_same_key(pair) -> None:  # type: ignore[no-untyped-def]
    """Search lags: the lane's lookup does not see the intent the hub made a moment before in the same
    generation, so both send generation 1's request, and the processor replays it."""
    lane, hub = pair
    sim = lagging = start_simulator(search_delay=3600.0)
    try:
        for actor in (lane, hub):
            transport = StripeTransport(lagging.url, search_delay=SEARCH_DELAY, timeout=5.0)
            await transport.open()
            actor.exchange = Exchange(transport, ExchangeSettings(idempotency_window=WINDOW), actor.clock)
            actor.session = await transport.authenticate(ConnectionToken(lagging.connection_token()))
        first = await hub.run_at(16)
        second = await lane.run_at(17)
        assert first.outcome is second.outcome is Outcome.FORWARDED
        assert first.intent_id == second.intent_id
        assert hub.ledger.generations == lane.ledger.generations == [1]
        assert sim.successful_charges() == {lane.view.offline_id: 1}
    finally:
        lagging.stop()


async def test_nothing_is_sent_in_the_gap_before_a_new_generation(sim, pair) -> None:  # type: ignore[no-untyped-def]
    lane, _ = pair
    before = len(sim.requests())
    result = await lane.run_at(12)
    assert (result.outcome, result.code) == (Outcome.PENDING, "awaiting_key_generation")
    assert result.retry_in == pytest.approx(3.0)
    assert len(sim.requests()) == before, "not even a lookup"


def test_every_actor_computes_the_same_generation_from_the_stored_time() -> None:
    exchange = Exchange(
        StripeTransport("http://127.0.0.1:9", search_delay=SEARCH_DELAY), ExchangeSettings(WINDOW), Clock()
    )
    view = PaymentView(
        offline_id="offpi_x",
        key="k",
        request=IntentRequest("offpi_x", 1, "usd", CaptureMethod.AUTOMATIC, {}, None),
        card=card_result("4242424242424242"),
        stored_at=STORED_AT,
    )
    at = [exchange.generation_at(view, STORED_AT + timedelta(seconds=s)) for s in (0, 9.9, 10, 14.9, 15, 29.9, 30)]
    assert [g for g, _ in at] == [0, 0, 0, 0, 1, 1, 2]
    assert [gap is not None for _, gap in at] == [False, False, True, True, False, True, False]
    view.generation = 4  # an actor whose clock runs ahead already looked up in generation 4
    assert exchange.generation_at(view, STORED_AT + timedelta(seconds=31)) == (4, None)
    online = PaymentView("offpi_y", "k", view.request, view.card)  # not stored: one period, no gap
    assert exchange.generation_at(online, STORED_AT + timedelta(days=3)) == (0, None)


def test_generation_zero_ends_a_window_after_requests_sent_before_storing() -> None:
    exchange = Exchange(
        StripeTransport("http://127.0.0.1:9", search_delay=SEARCH_DELAY), ExchangeSettings(WINDOW), Clock()
    )
    view = PaymentView(
        offline_id="offpi_z",
        key="k",
        request=IntentRequest("offpi_z", 1, "usd", CaptureMethod.AUTOMATIC, {}, None),
        card=card_result("4242424242424242"),
        stored_at=STORED_AT,
        steps_sent={"create": (STORED_AT - timedelta(seconds=4), STORED_AT - timedelta(seconds=4))},
    )
    # created online 4 s before it was stored: generation 0's window ends 6 s after storing
    assert exchange.generation_at(view, STORED_AT + timedelta(seconds=5.9)) == (0, None)
    assert exchange.generation_at(view, STORED_AT + timedelta(seconds=6))[1] == pytest.approx(9.0)
    assert exchange.generation_at(view, STORED_AT + timedelta(seconds=15)) == (1, None)


def test_a_generation_ahead_of_the_period_is_kept_only_while_its_keys_are_young() -> None:
    exchange = Exchange(
        StripeTransport("http://127.0.0.1:9", search_delay=SEARCH_DELAY), ExchangeSettings(WINDOW), Clock()
    )
    first = STORED_AT + timedelta(seconds=2)
    view = PaymentView(
        offline_id="offpi_w",
        key="k",
        request=IntentRequest("offpi_w", 1, "usd", CaptureMethod.AUTOMATIC, {}, None),
        card=card_result("4242424242424242"),
        stored_at=STORED_AT,
        generation=3,  # recorded by an actor whose clock ran ahead, or before generations were periods
        steps_sent={"confirm": (first, first)},
    )
    assert exchange.generation_at(view, first + timedelta(seconds=9)) == (3, None)
    assert exchange.generation_at(view, first + timedelta(seconds=10)) == (4, None), "looked up, then the next"


async def test_the_window_is_checked_again_before_the_confirmation(sim, pair) -> None:  # type: ignore[no-untyped-def]
    """The card step took the payment across the window's end: the create-and-confirm waits for the next generation."""
    lane, _ = pair

    async def slow_card_step() -> None:
        lane.clock.at(lane.clock.now.timestamp() - STORED_AT.timestamp() + 1.0)  # each request takes a second

    lane.exchange._before_request = slow_card_step
    result = await lane.run_at(8.5)  # the card step goes at 9.5 s, the confirmation would go at 10.5 s
    assert (result.outcome, result.code) == (Outcome.PENDING, "awaiting_key_generation")
    assert not [r for r in sim.requests() if r["path"] == "/v1/payment_intents"], "no intent made in the gap"
    assert _charges(sim, lane) == 0
    result = await lane.run_at(15)  # generation 1: looked up (nothing), then made once
    assert result.outcome is Outcome.FORWARDED and lane.ledger.generations == [1]
    assert _charges(sim, lane) == 1
