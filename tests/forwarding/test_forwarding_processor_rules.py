"""Issue 12: exactly once by the processor's real rules, each scenario on the simulator's ledger.

* keys pruned after 24 h: a stored payment's first request in a key generation past the first looks
  the payment up first (found paid, found unpaid, not found; by intent id and by search), and nothing
  is sent in the quiet gap before a generation, while search may not show the last one's requests;
* confirm answers judged by the intent's status (processing, requires_action);
* one key scheme: a PREFER_ONLINE fallback whose create answer was lost makes one intent;
* the in-flight journal: a POS killed during an online confirm is reconciled at the next open.

Each of these charged twice, reported an unpaid intent as paid, or left a charge the POS never
knew of, before the forwarder followed these rules.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime

from forwarding_kit import (
    Worker,
    check_exactly_once,
    config,
    connect_online,
    forwarded_events,
    new_payment,
    plugin_manager,
    populate,
    read_store,
    wait_until,
)

from offterm.core import OfflineBehavior, Terminal, hookimpl
from offterm.core.contracts import OnlineAttempt, PaymentState
from offterm.testing import make_plugin_manager, open_store

DAY = 86_400.0
#: POS-side settings that let a test cross the idempotency window without waiting a day
FAST_WINDOW = {"idempotency_window": 0.3, "interval": 600.0}
#: The default window (23 h): what a first Terminal sends stays in key generation 0
DAY_WINDOW = {"interval": 600.0}


def _creates(sim):
    return [r for r in sim.requests() if r["method"] == "POST" and r["path"] == "/v1/payment_intents"]


def _payment_requests(sim):
    return [r for r in sim.requests() if "payment_intents" in r["path"] or "payment_methods" in r["path"]]


def _intents_of(sim, offline_id):
    return [
        r
        for r in sim.requests()
        if r["method"] == "POST"
        and r["path"] == "/v1/payment_intents"
        and r["status"] == 200
        and not r["replayed"]
        and r["params"].get("metadata", {}).get("offterm_offline_id") == offline_id
    ]


async def _forward(terminal, timeout=20.0):
    return await terminal.forward_now(timeout=timeout)


async def test_a_committed_confirm_retried_after_the_keys_were_pruned_is_found_paid_not_charged_again(
    data_dir, sim, recorder
):
    """The reproduction from the issue: answer lost after commit, processor forgets every key, forward again."""
    [oid] = populate(data_dir, [new_payment(1)])
    sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents",))
    first = config(data_dir, sim.url, forwarding=DAY_WINDOW, stripe_options={"search_delay": 0.0})
    cfg = config(data_dir, sim.url, forwarding=FAST_WINDOW, stripe_options={"search_delay": 0.0})
    async with Terminal.from_config(first, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        assert await terminal.forward_now(timeout=0.2) == 1
        assert read_store(data_dir)[oid].state is PaymentState.OUTCOME_UNKNOWN
        assert sim.successful_charges() == {oid: 1}, "the processor charged it; the POS does not know"
    sim.set_faults()
    sim.advance_clock(25 * 3600)  # every key sent so far is forgotten
    await asyncio.sleep(0.4)  # past the POS's idempotency window: a new key generation
    before = len(_creates(sim))
    # A restart (a weekend power cut): what was sent, and when, is read back from the store.
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        assert await _forward(terminal) == 0
    payment = read_store(data_dir)[oid]
    assert payment.state is PaymentState.FORWARDED
    assert sim.successful_charges() == {oid: 1}, "charged once, not twice"
    assert len(_creates(sim)) == before, "nothing was created again"
    searches = [r for r in sim.requests() if r["path"] == "/v1/payment_intents/search"]
    assert searches and oid in searches[-1]["params"]["query"], "looked up by the offline id in its metadata"
    assert payment.intent_id == sim.ledger()[oid][0]["payment_intent"], "the intent found is recorded"
    assert payment.key_generation == 0, "found paid: no new generation was needed"
    [event] = forwarded_events(recorder)[oid]
    assert event.error is None


async def test_a_known_intent_past_the_window_is_retrieved_and_an_unpaid_one_confirmed_under_new_keys(
    data_dir, sim, recorder
):
    """Created online, the card step failed, then a long outage: the intent is found unpaid and confirmed."""
    cfg = config(data_dir, sim.url, forwarding=FAST_WINDOW, stripe_options={"search_delay": 0.0})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        await connect_online(terminal)
        intent = await terminal.create_payment_intent({"amount": 1500, "currency": "usd"})
        assert intent.id
        terminal.connected_reader.present_card("visa")
        intent = await terminal.collect_payment_method(intent)
        sim.set_faults(error_rates={503: 1.0}, paths=("/device/v1/payment_methods",))
        stored = await terminal.confirm_payment_intent(intent)
        assert stored.requires_upload
        sim.set_faults()
        sim.advance_clock(25 * 3600)
        await asyncio.sleep(0.4)
        assert await _forward(terminal) == 0
    payment = read_store(data_dir)[intent.offline_id]
    assert (payment.state, payment.intent_id) == (PaymentState.FORWARDED, intent.id), "that intent, no other"
    assert payment.key_generation == 1, "a new key generation after the lookup"
    assert sim.successful_charges() == {intent.offline_id: 1}
    assert len(_intents_of(sim, intent.offline_id)) == 1
    keys = {r["idempotency_key"] for r in sim.requests() if r["path"].endswith("/confirm")}
    assert keys == {payment.idempotency_key + "-g1-confirm"}, keys
    gets = [r for r in sim.requests() if r["method"] == "GET" and r["path"] == f"/v1/payment_intents/{intent.id}"]
    assert gets, "retrieved by id, not searched"


async def test_a_create_that_never_ran_past_the_window_is_searched_not_found_and_made_once(data_dir, sim, recorder):
    [oid] = populate(data_dir, [new_payment(2)])
    sim.set_faults(error_rates={500: 1.0}, paths=("/v1/payment_intents",))  # refused before it ran
    first = config(data_dir, sim.url, forwarding=DAY_WINDOW, stripe_options={"search_delay": 0.0})
    cfg = config(data_dir, sim.url, forwarding=FAST_WINDOW, stripe_options={"search_delay": 0.0})
    async with Terminal.from_config(first, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        await terminal.forward_now(timeout=0.2)
        assert read_store(data_dir)[oid].state is PaymentState.OUTCOME_UNKNOWN
    sim.set_faults()
    sim.advance_clock(25 * 3600)
    await asyncio.sleep(0.4)
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        assert await _forward(terminal) == 0
    payment = read_store(data_dir)[oid]
    assert payment.state is PaymentState.FORWARDED and payment.key_generation >= 1
    assert sim.successful_charges() == {oid: 1}
    made = [r for r in _creates(sim) if r["status"] == 200]
    key = f"{payment.idempotency_key}-g{payment.key_generation}-create_and_confirm"
    assert [r["idempotency_key"] for r in made] == [key]
    assert [r for r in sim.requests() if r["path"] == "/v1/payment_intents/search"], "looked up first"


async def test_nothing_is_sent_in_the_gap_before_a_new_generation_while_search_may_lag(data_dir, sim, recorder):
    """An intent created moments ago may not show in search yet: in the gap before the next key
    generation nothing is sent, not even the lookup (after it, see test_key_generations.py)."""
    [oid] = populate(data_dir, [new_payment(3)])
    sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents",))
    first = config(data_dir, sim.url, forwarding=DAY_WINDOW, stripe_options={"search_delay": 120.0})
    async with Terminal.from_config(first, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        await terminal.forward_now(timeout=0.2)  # the answer is lost
    sim.set_faults()
    # Window 0.3 s, then a 120 s gap (the transport's search delay): generation 1 starts 120.3 s after storing.
    cfg = config(data_dir, sim.url, forwarding=FAST_WINDOW, stripe_options={"search_delay": 120.0})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        before = len(_payment_requests(sim))
        await terminal.forward_now(timeout=0.2)
        payment = read_store(data_dir)[oid]
        assert payment.state is PaymentState.OUTCOME_UNKNOWN
        assert payment.last_error_code == "awaiting_key_generation"
        assert payment.next_attempt_at is not None and payment.next_attempt_at > datetime.now(UTC)
        assert len(_payment_requests(sim)) == before, "nothing sent, not even a search"
    assert sim.successful_charges() == {oid: 1}


async def test_a_processing_confirm_is_retrieved_until_final(data_dir, sim, recorder):
    [oid] = populate(data_dir, [new_payment(4)])
    sim.set_faults(confirm_status={"processing": 1.0}, processing_for=0.3)
    cfg = config(data_dir, sim.url, forwarding={"processing_interval": 0.1, "processing_checks": 6})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        assert await _forward(terminal) == 0
    payment = read_store(data_dir)[oid]
    assert payment.state is PaymentState.FORWARDED
    assert sim.successful_charges() == {oid: 1}
    assert [
        r for r in sim.requests() if r["method"] == "GET" and r["path"] == f"/v1/payment_intents/{payment.intent_id}"
    ]


async def test_an_intent_still_processing_is_never_reported_paid_and_is_retrieved_first_next_time(
    data_dir, sim, recorder
):
    [oid] = populate(data_dir, [new_payment(5)])
    sim.set_faults(confirm_status={"processing": 1.0}, processing_for=3600.0)
    cfg = config(data_dir, sim.url, forwarding={"processing_interval": 0.05, "processing_checks": 1})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        await terminal.forward_now(timeout=0.5)
        payment = read_store(data_dir)[oid]
        assert payment.state is PaymentState.OUTCOME_UNKNOWN, "processing is not paid"
        assert payment.last_error_code == "intent_processing" and payment.intent_id, "its intent id is kept"
        assert oid not in forwarded_events(recorder)
        sim.set_faults()
        sim.advance_clock(3601)
        creates_before = len(_creates(sim))
        assert await _forward(terminal) == 0
        assert len(_creates(sim)) == creates_before, "retrieved, never created or confirmed again"
    assert read_store(data_dir)[oid].state is PaymentState.FORWARDED
    assert sim.successful_charges() == {oid: 1}


async def test_requires_action_needs_attention_and_is_not_charged(data_dir, sim, recorder):
    [oid] = populate(data_dir, [new_payment(6)])
    sim.set_faults(confirm_status={"requires_action": 1.0})
    cfg = config(data_dir, sim.url)
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        await _forward(terminal)
    payment = read_store(data_dir)[oid]
    assert (payment.state, payment.last_error_code) == (PaymentState.NEEDS_ATTENTION, "intent_requires_action")
    assert sim.successful_charges().get(oid, 0) == 0
    [event] = forwarded_events(recorder)[oid]
    assert event.error is not None and event.error.code == "intent_requires_action", "never 'forwarded'"


async def test_a_fallback_whose_online_create_answer_was_lost_leaves_one_intent(data_dir, sim, recorder):
    """One key scheme: the forwarder replays the online create (same key, same bytes) instead of making another."""
    cfg = config(data_dir, sim.url, forwarding={"interval": 600.0})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        await connect_online(terminal)
        sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents",))
        intent = await terminal.create_payment_intent({"amount": 2100, "currency": "usd"})
        assert intent.id is None, "the processor made it, the POS never heard"
        sim.set_faults()
        terminal.connected_reader.present_card("visa")
        intent = await terminal.collect_payment_method(intent)
        stored = await terminal.confirm_payment_intent(intent, offline_behavior=OfflineBehavior.FORCE_OFFLINE)
        assert stored.requires_upload
        assert await _forward(terminal) == 0
    payment = read_store(data_dir)[intent.offline_id]
    assert payment.state is PaymentState.FORWARDED
    assert len(_intents_of(sim, intent.offline_id)) == 1, "one intent at the processor, not two"
    creates = [r for r in _creates(sim) if r["idempotency_key"] == payment.idempotency_key + "-create"]
    assert len(creates) == 2 and creates[1]["replayed"], "the forwarder replayed the online create"
    assert len({r["body_sha256"] for r in creates}) == 1
    assert sim.successful_charges() == {intent.offline_id: 1}


class AppListener:
    """How an app hears of a payment recovered from the journal: its own hook implementation."""

    def __init__(self) -> None:
        self.recovered: list[OnlineAttempt] = []

    @hookimpl
    def offterm_on_online_payment_recovered(self, payment: OnlineAttempt) -> None:
        self.recovered.append(payment)


def _dead_owner() -> str:
    """A journal owner whose process has exited (a POS that crashed)."""
    code = "from offterm.core._engine.owners import make_owner; print(make_owner('pos'))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


async def _kill_during_online_confirm(tmp_path, data_dir, sim, fault_path):
    """A POS process confirms online; the processor holds the answer of ``fault_path``; the POS is SIGKILLed."""
    cfg = config(data_dir, sim.url, stripe_options={"timeout": 20.0})
    path = tmp_path / "worker.json"
    path.write_text(json.dumps(cfg))
    sim.set_faults(commit_delay_rate=1.0, commit_delay=30.0, paths=(fault_path,))
    worker = await Worker(path, online=1).start()
    await worker.go()
    await wait_until(lambda: bool(worker.of("confirming")), timeout=30, what="the online confirm")
    [oid] = worker.of("confirming")
    await wait_until(
        lambda: any(r["path"].startswith(fault_path) and r["method"] == "POST" for r in sim.requests()),
        timeout=30,
        what="the request at the processor",
    )
    await worker.kill()
    sim.set_faults()
    return oid, cfg


async def test_a_pos_killed_during_an_online_confirm_learns_at_the_next_open_that_it_was_charged(
    tmp_path, data_dir, sim, recorder
):
    oid, cfg = await _kill_during_online_confirm(tmp_path, data_dir, sim, "/v1/payment_intents/")
    assert sim.successful_charges() == {oid: 1}, "the processor has the money; the POS died before hearing it"
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder)) as terminal:
        await wait_until(lambda: recorder.getcalls("online_payment_recovered"), timeout=20, what="recovery")
        [recovered] = await terminal.recovered_payments()
    [call] = recorder.getcalls("online_payment_recovered")
    assert (call.payment.offline_id, call.payment.resolution) == (oid, "charged")
    assert recovered.offline_id == oid and recovered.resolution == "charged" and recovered.intent_id
    assert recovered.intent_id == sim.ledger()[oid][0]["payment_intent"]
    assert sim.successful_charges() == {oid: 1}, "reconciled, never charged again"
    assert read_store(data_dir) == {}, "an online payment is not a stored one"


async def test_a_pos_killed_before_its_confirm_ran_cancels_the_intent_and_says_not_charged(
    tmp_path, data_dir, sim, recorder
):
    oid, cfg = await _kill_during_online_confirm(tmp_path, data_dir, sim, "/device/v1/payment_methods")
    assert sim.successful_charges().get(oid, 0) == 0
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder)) as terminal:
        await wait_until(lambda: recorder.getcalls("online_payment_recovered"), timeout=20, what="recovery")
        [recovered] = await terminal.recovered_payments()
    assert (recovered.offline_id, recovered.resolution) == (oid, "not_charged")
    cancels = [r for r in sim.requests() if r["path"] == f"/v1/payment_intents/{recovered.intent_id}/cancel"]
    assert cancels and cancels[-1]["status"] == 200, "its intent is canceled, so nothing can charge it later"
    assert sim.successful_charges().get(oid, 0) == 0


async def test_a_journaled_confirm_whose_intent_id_was_never_heard_is_found_by_search(data_dir, sim, recorder):
    """The create-and-confirm went out, the POS died before the answer: found by the offline id in metadata."""
    cfg = config(data_dir, sim.url, stripe_options={"search_delay": 0.0})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        await connect_online(terminal)
        # Made the way the dead POS made it: same exchange, its answer lost.
        sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents",))
        intent = await terminal.create_payment_intent(
            {"amount": 999, "currency": "usd"}, offline_behavior=OfflineBehavior.FORCE_OFFLINE
        )
        terminal.connected_reader.present_card("visa")
        intent = await terminal.collect_payment_method(intent)
        try:
            await terminal.confirm_payment_intent(intent, offline_behavior=OfflineBehavior.REQUIRE_ONLINE)
        except Exception:  # noqa: BLE001 - the answer was dropped: OutcomeUnknown
            pass
        sim.set_faults()
    assert sim.successful_charges() == {intent.offline_id: 1}
    # The process that sent it is gone: rewrite the entry's owner as a dead process's.
    store = open_store(make_plugin_manager(), data_dir)
    try:
        [entry] = store.online_attempts(resolved=False)
        assert entry.intent_id is None and "create_and_confirm" in entry.steps_sent
        store.begin_online(
            OnlineAttempt(
                offline_id=entry.offline_id,
                idempotency_key=entry.idempotency_key,
                amount=entry.amount,
                currency=entry.currency,
                owner=_dead_owner(),
                started_at=entry.started_at,
                steps_sent=entry.steps_sent,
            )
        )
    finally:
        store.close()
    app = AppListener()
    pm = make_plugin_manager(plugins={"recorder": recorder, "app": app})
    async with Terminal.from_config(cfg, plugin_manager=pm) as terminal:
        await wait_until(lambda: app.recovered, timeout=20, what="recovery")
        [recovered] = await terminal.recovered_payments()
    assert [p.offline_id for p in app.recovered] == [recovered.offline_id], "the app's own listener, told once"
    assert (recovered.resolution, recovered.intent_id) == (
        "charged",
        sim.ledger()[intent.offline_id][0]["payment_intent"],
    )
    assert [r for r in sim.requests() if r["path"] == "/v1/payment_intents/search"]
    assert sim.successful_charges() == {intent.offline_id: 1}


async def test_a_live_process_journal_entry_is_left_alone(data_dir, sim, recorder):
    """Another POS process on the same store is mid-confirm: its entry is not reconciled under it."""
    store = open_store(make_plugin_manager(), data_dir)
    try:
        from offterm.core._engine.owners import make_owner

        store.begin_online(
            OnlineAttempt(
                offline_id="offpi_live",
                idempotency_key="offterm-live",
                amount=100,
                currency="usd",
                owner=make_owner("pos"),  # this very process: alive
                started_at=datetime.now(UTC),
                intent_id="pi_unknown",
                steps_sent={"confirm": (datetime.now(UTC), datetime.now(UTC))},
            )
        )
    finally:
        store.close()
    cfg = config(data_dir, sim.url)
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        await terminal.forward_now(timeout=5)
        assert await terminal.recovered_payments() == []
    recorder.assert_not_called("online_payment_recovered")
    assert not [r for r in sim.requests() if "pi_unknown" in r["path"]]


async def test_online_payments_still_cost_three_requests_and_stored_ones_two(data_dir, sim, recorder):
    cfg = config(data_dir, sim.url)
    [oid] = populate(data_dir, [new_payment(7)])
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        await _forward(terminal)
    stored_requests = [
        r
        for r in sim.requests()
        if r["method"] == "POST" and (r["idempotency_key"] or "").startswith(read_store(data_dir)[oid].idempotency_key)
    ]
    assert [r["path"] for r in stored_requests] == ["/device/v1/payment_methods", "/v1/payment_intents"]
    check_exactly_once(sim, read_store(data_dir))
