"""When forwarding runs (network back, timer, payment stored, forward_now), in what order, how fast."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from forwarding_kit import (
    check_exactly_once,
    config,
    connect_online,
    forwarded_events,
    new_payment,
    pay,
    plugin_manager,
    populate,
    read_store,
    wait_until,
)

from offterm.core import NetworkStatus, OfflineBehavior, Terminal
from offterm.core._engine.forwarder import REQUESTS_PER_PAYMENT
from offterm.core.config import CORE_OPTIONS
from offterm.core.contracts import PaymentState


async def test_network_coming_back_starts_forwarding_without_any_app_call(data_dir, proxy, sim, recorder):
    cfg = config(data_dir, proxy.url, forwarding={"interval": 600.0})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder)) as terminal:
        await connect_online(terminal)
        proxy.set_mode("down")
        stored = [await pay(terminal, 1000 + i) for i in range(3)]
        assert all(s.requires_upload and s.id is None for s in stored)
        assert terminal.network_status is NetworkStatus.OFFLINE
        assert not forwarded_events(recorder)

        proxy.set_mode("pass")  # nothing else: no forward_now, the timer is 10 minutes away
        await wait_until(lambda: len(forwarded_events(recorder)) == 3, timeout=20, what="forwarding after reconnect")
        assert terminal.network_status is NetworkStatus.ONLINE

        def last_status():
            calls = recorder.getcalls("offline_status_changed")
            return calls[-1].status.sdk if calls else None

        await wait_until(lambda: last_status().offline_payments_count == 0, what="an offline status update")
        assert last_status().network_status is NetworkStatus.ONLINE
        counts = [c.status.sdk.offline_payments_count for c in recorder.getcalls("offline_status_changed")]
        assert 3 in counts, "the app saw the backlog while offline"
    payments = read_store(data_dir)
    assert check_exactly_once(sim, payments) == {PaymentState.FORWARDED: 3}


async def test_timer_forwards_payments_nobody_announced(data_dir, sim, recorder):
    cfg = config(data_dir, sim.url, forwarding={"interval": 0.3})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder)) as terminal:
        await wait_until(lambda: terminal.network_status is NetworkStatus.ONLINE, what="first probe")
        # Another handle on the same store adds payments: no event reaches this Terminal.
        ids = populate(data_dir, [new_payment(i) for i in range(5)])
        await wait_until(lambda: len(forwarded_events(recorder)) == 5, timeout=20, what="timer round")
    assert set(forwarded_events(recorder)) == set(ids)
    assert check_exactly_once(sim, read_store(data_dir)) == {PaymentState.FORWARDED: 5}


async def test_payment_stored_while_online_is_forwarded_at_once(data_dir, sim, recorder):
    cfg = config(data_dir, sim.url, forwarding={"interval": 600.0})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder)) as terminal:
        await connect_online(terminal)
        stored = await pay(terminal, 4200, behavior=OfflineBehavior.FORCE_OFFLINE)
        assert stored.requires_upload
        await wait_until(lambda: stored.offline_id in forwarded_events(recorder), timeout=15, what="forwarding")
        [call] = forwarded_events(recorder)[stored.offline_id]
        assert call.error is None and call.intent.id.startswith("pi_")
        assert not call.intent.requires_upload
    assert sim.successful_charges() == {stored.offline_id: 1}


async def test_forward_now_forwards_everything_due_and_reports_what_remains(data_dir, sim, recorder):
    ids = populate(data_dir, [new_payment(i) for i in range(7)])
    cfg = config(data_dir, sim.url)
    terminal = Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False)
    async with terminal:
        assert terminal.offline_status.sdk.offline_payments_count == 7
        assert await terminal.forward_now() == 0
        assert terminal.offline_status.sdk.offline_payments_count == 0
    assert sorted(forwarded_events(recorder)) == sorted(ids)
    assert check_exactly_once(sim, read_store(data_dir)) == {PaymentState.FORWARDED: 7}


async def test_oldest_payment_is_sent_first(data_dir, sim, recorder):
    base = datetime.now(UTC) - timedelta(hours=1)
    payments = [new_payment(i, stored_at=base + timedelta(seconds=i)) for i in range(12)]
    shuffled = payments[:]
    random.Random(3).shuffle(shuffled)
    populate(data_dir, shuffled)  # stored in a scrambled order; stored_at says which is oldest
    cfg = config(data_dir, sim.url, forwarding={"concurrency": 1, "batch_size": 5})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        assert await terminal.forward_now() == 0
    creates = [
        r["params"]["metadata"]["offterm_offline_id"]
        for r in sim.requests()
        if r["method"] == "POST" and r["path"] == "/v1/payment_intents"
    ]
    assert creates == [p.offline_id for p in payments]


async def test_concurrency_is_bounded_and_used(data_dir, sim, recorder, kit):
    populate(data_dir, [new_payment(i) for i in range(30)])
    sim.set_faults(latency=0.03)  # requests overlap for sure
    cfg = config(data_dir, sim.url, transport="observed", forwarding={"concurrency": 3, "batch_size": 4})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder, kit), background=False) as terminal:
        assert await terminal.forward_now() == 0
    [transport] = kit.transports
    assert transport.max_in_flight == 3
    assert len(transport.calls) == 30


async def test_rate_limit_is_a_token_bucket_in_requests_per_second(data_dir, sim, recorder, kit):
    default = next(o.default for o in CORE_OPTIONS["forwarding"] if o.key == "rate_limit")
    assert default <= 25, "the default must stay well under Stripe's 100 requests/s"
    rate = 30.0  # requests/s: 10 payments/s at 3 requests each, bursts of at most 10 payments
    populate(data_dir, [new_payment(i) for i in range(24)])
    cfg = config(data_dir, sim.url, transport="observed", forwarding={"concurrency": 8, "rate_limit": rate})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder, kit), background=False) as terminal:
        assert await terminal.forward_now() == 0
    starts = sorted(c.at for c in kit.transports[0].calls)
    assert len(starts) == 24
    # Token bucket of `rate` tokens refilled at `rate`/s: n submissions within dt use n*3 tokens <= rate*(1+dt).
    slack = 0.05  # the event loop's clock granularity
    for i in range(len(starts)):
        for j in range(i, len(starts)):
            used = (j - i + 1) * REQUESTS_PER_PAYMENT
            assert used <= rate + rate * (starts[j] - starts[i] + slack), (i, j, starts[j] - starts[i])
    assert check_exactly_once(sim, read_store(data_dir)) == {PaymentState.FORWARDED: 24}
