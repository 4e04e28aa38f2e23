"""How each answer is classified: declined, needs attention, retried (same key), given up; nobody blocks."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

from forwarding_kit import (
    APPROVED,
    DECLINED,
    INSUFFICIENT,
    card,
    check_exactly_once,
    config,
    forwarded_events,
    new_payment,
    plugin_manager,
    populate,
    read_store,
    wait_until,
)

from offterm.core import IntentStatus, NetworkStatus, Terminal
from offterm.core.contracts import PaymentState
from offterm.core.errors import CardDeclined, PermanentProcessorError, TransientProcessorError
from offterm.plugins.policies.backoff import BackoffPolicy, BackoffSettings
from offterm.sim.processor.testing import card_result


async def test_declines_are_final_with_decline_code_and_distinct_from_success(data_dir, sim, recorder):
    good = [new_payment(i) for i in range(3)]
    generic = new_payment(10, pan=DECLINED)
    funds = new_payment(11, pan=INSUFFICIENT)
    populate(data_dir, [*good, generic, funds])
    async with Terminal.from_config(
        config(data_dir, sim.url), plugin_manager=plugin_manager(recorder), background=False
    ) as terminal:
        assert await terminal.forward_now() == 0
        assert terminal.offline_status.sdk.needs_attention_count == 0
    stored = read_store(data_dir)
    assert check_exactly_once(sim, stored) == {PaymentState.FORWARDED: 3, PaymentState.DECLINED: 2}
    assert stored[generic.offline_id].decline_code == "generic_decline"
    assert stored[funds.offline_id].decline_code == "insufficient_funds"
    assert stored[generic.offline_id].card is None, "card data is purged once the outcome is final"
    events = forwarded_events(recorder)
    for p in good:
        [call] = events[p.offline_id]
        assert call.error is None and call.intent.status is IntentStatus.SUCCEEDED
    for p, code in ((generic, "generic_decline"), (funds, "insufficient_funds")):
        [call] = events[p.offline_id]
        assert isinstance(call.error, CardDeclined) and call.error.decline_code == code
        assert call.intent.status is IntentStatus.REQUIRES_PAYMENT_METHOD
    ledger = sim.ledger()
    assert [c["status"] for c in ledger[generic.offline_id]] == ["failed"], "declined once, not retried"


async def test_invalid_requests_need_attention_with_the_processors_error(data_dir, sim, recorder):
    too_long = new_payment(1, metadata={"note": "x" * 600})  # Stripe caps metadata values at 500 characters
    foreign_key = new_payment(2, card_override=card_result(APPROVED, base_key_hex="11" * 32))
    fine = new_payment(3)
    populate(data_dir, [too_long, foreign_key, fine])
    async with Terminal.from_config(
        config(data_dir, sim.url), plugin_manager=plugin_manager(recorder), background=False
    ) as terminal:
        assert await terminal.forward_now() == 0
        assert terminal.offline_status.sdk.needs_attention_count == 2
    stored = read_store(data_dir)
    assert stored[too_long.offline_id].state is PaymentState.NEEDS_ATTENTION
    assert stored[too_long.offline_id].last_error_code == "parameter_invalid"
    assert "500 characters" in stored[too_long.offline_id].last_error_message
    assert stored[foreign_key.offline_id].state is PaymentState.NEEDS_ATTENTION
    assert stored[foreign_key.offline_id].last_error_code == "card_data_undecryptable"
    assert stored[foreign_key.offline_id].card is not None, "kept for a person to look at"
    assert stored[fine.offline_id].state is PaymentState.FORWARDED
    assert stored[too_long.offline_id].attempts == 1, "a permanent error is not retried"
    events = forwarded_events(recorder)
    assert isinstance(events[too_long.offline_id][0].error, PermanentProcessorError)
    check_exactly_once(sim, stored)


async def test_too_many_attempts_needs_attention_and_retries_come_by_themselves(data_dir, sim, recorder):
    [doomed] = populate(data_dir, [new_payment(1)])
    sim.set_faults(error_rates={503: 1.0}, paths=("/v1/payment_intents",))
    cfg = config(data_dir, sim.url, forwarding={"interval": 600.0}, policy={"max_attempts": 3, "base_delay": 0.01})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder)) as terminal:
        await wait_until(lambda: doomed in forwarded_events(recorder), timeout=20, what="giving up")
        assert terminal.network_status is NetworkStatus.ONLINE, "a 503 is an answer: the network is fine"
    payment = read_store(data_dir)[doomed]
    assert payment.state is PaymentState.NEEDS_ATTENTION
    assert payment.attempts == 3
    assert payment.last_error_code == "forwarding_gave_up"
    assert "3 attempts" in payment.last_error_message
    assert sim.injected()["503"] == 3
    [call] = forwarded_events(recorder)[doomed]
    assert call.error.code == "forwarding_gave_up"


async def test_too_old_needs_attention_without_a_request(data_dir, sim, recorder):
    old = new_payment(1, stored_at=datetime.now(UTC) - timedelta(hours=200))
    populate(data_dir, [old, new_payment(2)])
    async with Terminal.from_config(
        config(data_dir, sim.url), plugin_manager=plugin_manager(recorder), background=False
    ) as terminal:
        assert await terminal.forward_now() == 0
    payment = read_store(data_dir)[old.offline_id]
    assert payment.state is PaymentState.NEEDS_ATTENTION and payment.attempts == 0
    assert "max_age_hours" in payment.last_error_message
    sent = [r for r in sim.requests() if r["path"] == "/v1/payment_intents" and r["method"] == "POST"]
    assert [r["params"]["metadata"]["offterm_offline_id"] for r in sent] != [old.offline_id]
    assert len(sent) == 1


async def test_one_stuck_and_one_invalid_payment_never_block_the_rest(data_dir, sim, recorder, kit):
    base = datetime.now(UTC) - timedelta(minutes=5)
    stuck = new_payment(0, stored_at=base)  # the oldest: first in line
    invalid = new_payment(1, stored_at=base + timedelta(seconds=1), metadata={"note": "y" * 501})
    rest = [new_payment(i, stored_at=base + timedelta(seconds=i)) for i in range(2, 22)]
    populate(data_dir, [stuck, invalid, *rest])
    release = asyncio.Event()

    async def hang(_submission):
        await release.wait()

    cfg = config(data_dir, sim.url, transport="observed", forwarding={"concurrency": 2, "batch_size": 5})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder, kit)) as terminal:
        transport = kit.transports[0]
        transport.hold[stuck.offline_id] = hang
        everyone_else = {p.offline_id for p in [invalid, *rest]}
        await wait_until(lambda: everyone_else <= set(forwarded_events(recorder)), timeout=20, what="the others")
        assert stuck.offline_id not in forwarded_events(recorder)
        assert transport.in_flight == 1, "the stuck payment still holds its one worker"
        release.set()
        await wait_until(lambda: stuck.offline_id in forwarded_events(recorder), timeout=10, what="the stuck one")
        assert (await terminal.refresh_offline_status()).sdk.offline_payments_count == 0
    stored = read_store(data_dir)
    assert stored[invalid.offline_id].state is PaymentState.NEEDS_ATTENTION
    assert check_exactly_once(sim, stored) == {PaymentState.FORWARDED: 21, PaymentState.NEEDS_ATTENTION: 1}


async def test_transient_failures_back_off_exponentially_and_reuse_the_key(data_dir, sim, recorder, kit):
    flaky = new_payment(1)
    populate(data_dir, [flaky, *[new_payment(i) for i in range(2, 6)]])
    failures = iter(range(3))

    async def fail_three_times(_submission):
        if next(failures, None) is not None:
            raise TransientProcessorError("simulated: 503 from the processor", http_status=503, should_retry=True)

    cfg = config(
        data_dir,
        sim.url,
        transport="observed",
        forwarding={"interval": 600.0, "policy": "spy"},
        policy={"base_delay": 0.05, "max_delay": 10.0},
    )
    cfg["forwarding_policy"]["spy"] = cfg["forwarding_policy"].pop("default")
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder, kit)) as terminal:
        kit.transports[0].hold[flaky.offline_id] = fail_three_times
        await wait_until(lambda: flaky.offline_id in forwarded_events(recorder), timeout=20, what="the retries")
        assert (await terminal.refresh_offline_status()).sdk.offline_payments_count == 0
    [policy] = kit.policies
    ceiling = BackoffPolicy(BackoffSettings(base_delay=0.05, max_delay=10.0)).ceiling
    assert [a for a, _ in policy.delays] == [1, 2, 3], "one retry delay per failure, growing with the attempts"
    assert all(0 <= d <= ceiling(a) for a, d in policy.delays)
    keys = {c.idempotency_key for c in kit.transports[0].calls if c.offline_id == flaky.offline_id}
    assert len([c for c in kit.transports[0].calls if c.offline_id == flaky.offline_id]) == 4
    assert len(keys) == 1, "every retry uses the payment's one idempotency key"
    assert read_store(data_dir)[flaky.offline_id].attempts == 4
    check_exactly_once(sim, read_store(data_dir))


def _seed_dropping_first_only(rate: float) -> int:
    """A fault seed whose first roll injects and whose second does not."""
    for seed in range(10_000):
        rng = random.Random(seed)
        if rng.random() < rate <= rng.random():
            return seed
    raise AssertionError("no seed")


async def test_unknown_outcome_is_retried_with_the_same_key_and_charges_once(data_dir, sim, recorder):
    [oid] = populate(data_dir, [new_payment(1)])
    # The first confirm runs at the processor, then the connection drops: the answer never arrives.
    seed = _seed_dropping_first_only(0.5)
    sim.set_faults(commit_drop_rate=0.5, paths=("/v1/payment_intents",), seed=seed)
    cfg = config(data_dir, sim.url, forwarding={"interval": 600.0})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder)) as terminal:
        await wait_until(lambda: oid in forwarded_events(recorder), timeout=20, what="the retry")
        assert terminal.network_status is NetworkStatus.ONLINE
    assert sim.injected() == {"commit_drop": 1}
    # A stored payment is created and confirmed in one request; its answer was lost, so it is replayed.
    confirms = [r for r in sim.requests() if r["method"] == "POST" and r["path"] == "/v1/payment_intents"]
    assert len(confirms) == 2
    assert confirms[0]["idempotency_key"] == confirms[1]["idempotency_key"]
    assert confirms[1]["replayed"] is True, "the processor replayed the committed answer"
    assert sim.successful_charges() == {oid: 1}
    went_offline = [c for c in recorder.getcalls("network_status_changed") if c.status is NetworkStatus.OFFLINE]
    assert not went_offline, "one dropped connection with a healthy processor is not an outage"
    history = [h.to_state for h in await _history(data_dir, oid)]
    assert PaymentState.OUTCOME_UNKNOWN in history and history[-1] is PaymentState.FORWARDED
    assert card(APPROVED) is not None


async def _history(data_dir, oid):
    from offterm.testing import make_plugin_manager, open_store

    store = open_store(make_plugin_manager(), data_dir)
    try:
        return store.history(oid)
    finally:
        store.close()
