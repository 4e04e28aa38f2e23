"""close(): a bounded attempt to forward what remains, then a report of what is left."""

from __future__ import annotations

from forwarding_kit import (
    check_exactly_once,
    config,
    forwarded_events,
    new_payment,
    plugin_manager,
    populate,
    read_store,
    wait_until,
)

from offterm.core import NetworkStatus, Terminal
from offterm.core.contracts import PaymentState
from offterm.core.contracts.storage import PENDING_STATES


async def test_close_forwards_what_is_pending_and_reports_nothing_left(data_dir, sim, recorder):
    cfg = config(data_dir, sim.url, forwarding={"interval": 600.0, "close_timeout": 10.0})
    terminal = Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder))
    await terminal.open()
    try:
        await wait_until(lambda: terminal.network_status is NetworkStatus.ONLINE, what="online")
        ids = populate(data_dir, [new_payment(i) for i in range(10)])  # stored by another process meanwhile
    finally:
        report = await terminal.close()
    assert report.remaining == 0 and report.safe_to_shut_down
    assert report.amounts_by_currency == {}
    assert sorted(forwarded_events(recorder)) == sorted(ids)
    assert check_exactly_once(sim, read_store(data_dir)) == {PaymentState.FORWARDED: 10}


async def test_close_is_bounded_and_reports_what_remains(data_dir, sim, recorder):
    ids = populate(data_dir, [new_payment(i) for i in range(120)])
    sim.set_faults(latency=0.05)  # ~0.15 s per payment: far more than the close budget allows
    cfg = config(data_dir, sim.url, forwarding={"concurrency": 2, "close_timeout": 0.5})
    terminal = Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder))
    await terminal.open()
    await wait_until(lambda: len(forwarded_events(recorder)) >= 2, what="forwarding to start")
    report = await terminal.close()
    assert 0 < report.remaining < 120 and not report.safe_to_shut_down
    left = read_store(data_dir)
    pending = [p for p in left.values() if p.state in PENDING_STATES]
    assert report.remaining == len(pending)
    assert report.amounts_by_currency == {"usd": sum(p.amount for p in pending)}
    assert not [p for p in pending if p.state is PaymentState.FORWARDING], "every claim was given back"
    forwarded = set(forwarded_events(recorder))
    assert forwarded == {oid for oid, p in left.items() if p.state is PaymentState.FORWARDED}

    sim.set_faults()
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as again:
        assert await again.forward_now(timeout=60) == 0
    assert check_exactly_once(sim, read_store(data_dir)) == {PaymentState.FORWARDED: 120}
    events = forwarded_events(recorder)
    assert sorted(events) == sorted(ids) and all(len(v) == 1 for v in events.values())


async def test_close_reports_why_each_remaining_payment_waits(data_dir, sim, recorder):
    ids = populate(data_dir, [new_payment(i) for i in range(3)])
    sim.set_faults(error_rates={503: 1.0}, paths=("/device/v1/payment_methods",))  # the processor answers: 503
    cfg = config(data_dir, sim.url, forwarding={"close_timeout": 0.5})
    terminal = Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder))
    await terminal.open()
    report = await terminal.close()
    assert report.remaining == 3
    assert sorted(w.offline_id for w in report.waiting) == sorted(ids)
    assert {w.state for w in report.waiting} == {PaymentState.OUTCOME_UNKNOWN}
    assert all(w.reason.startswith("last attempt: ") for w in report.waiting), report.waiting


async def test_forward_now_keeps_trying_for_its_whole_time_whatever_the_backoff(data_dir, sim, recorder):
    """The processor answers, but fails a few times: forward_now tries again at once, not after each backoff."""
    ids = populate(data_dir, [new_payment(i) for i in range(5)])
    # A long backoff: after one failure a payment would wait up to 10 minutes for its next round.
    cfg = config(data_dir, sim.url, forwarding={"interval": 600.0}, policy={"base_delay": 600.0, "max_delay": 600.0})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        sim.set_faults(error_rates={503: 1.0}, paths=("/device/v1/payment_methods",))
        assert await terminal.forward_now(timeout=0.3) == 5, "every request refused"
        due = [p.next_attempt_at for p in read_store(data_dir).values()]
        assert all(d is not None for d in due), "each is in backoff now"
        sim.set_faults(error_rates={503: 0.5}, paths=("/device/v1/payment_methods",), seed=3)  # half still fail
        assert await terminal.forward_now(timeout=30) == 0
    assert check_exactly_once(sim, read_store(data_dir)) == {PaymentState.FORWARDED: 5}
    assert sorted(forwarded_events(recorder)) == sorted(ids)
