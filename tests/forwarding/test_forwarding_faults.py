"""Every fault mode at 10-30 % over 500 payments: each forwarded exactly once, or in a named final state.

Faults hit every path the terminal uses (the API, the device API, the
integrator's backend, the reachability probe).  Exactly-once is checked on
the simulator's ledger; one payment_intent_forwarded per payment, emitted
only once the processor had the outcome.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from forwarding_kit import (
    DECLINED,
    INSUFFICIENT,
    check_exactly_once,
    config,
    forwarded_events,
    new_payment,
    plugin_manager,
    populate,
    read_store,
    wait_until_async,
)

from offterm.core import Terminal, hookimpl
from offterm.core.contracts import PaymentState
from offterm.core.errors import CardDeclined
from offterm.sim.netproxy import FaultProxy
from offterm.sim.processor import SimHandle, start_simulator

PAYMENTS = 500
DECLINES = {DECLINED: "generic_decline", INSUFFICIENT: "insufficient_funds"}

#: name -> (simulator faults, the injected-fault counters that must have fired)
FAULTS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "http_500": ({"error_rates": {500: 0.3}}, ("500",)),
    "http_503": ({"error_rates": {503: 0.3}}, ("503",)),
    "http_429_should_retry": ({"error_rates": {429: 0.3}}, ("429",)),
    "connection_reset": ({"reset_rate": 0.2}, ("reset",)),
    "committed_then_dropped": ({"commit_drop_rate": 0.3}, ("commit_drop",)),
    "committed_then_timed_out": ({"commit_delay_rate": 0.1, "commit_delay": 0.8}, ("commit_delay",)),
    "latency_with_503": ({"latency": 0.03, "error_rates": {503: 0.1}}, ("503",)),
    "everything_at_once": (
        {
            "error_rates": {500: 0.04, 502: 0.03, 503: 0.04, 429: 0.04},
            "reset_rate": 0.04,
            "drop_rate": 0.03,
            "commit_drop_rate": 0.05,
            "commit_delay_rate": 0.03,
            "commit_delay": 0.8,
            "latency": 0.002,
        },
        ("500", "502", "503", "429", "reset", "drop", "commit_drop", "commit_delay"),
    ),
}


class OutcomeWitness:
    """At each payment_intent_forwarded, the ledger must already show that outcome."""

    def __init__(self, sim: SimHandle) -> None:
        self.sim = sim
        self.problems: list[str] = []

    @hookimpl
    def offterm_on_payment_intent_forwarded(self, intent, error) -> None:
        charges = self.sim.ledger().get(intent.offline_id, [])
        ok = [c for c in charges if c["status"] == "succeeded"]
        if error is None and len(ok) != 1:
            self.problems.append(f"{intent.offline_id}: success reported with {len(ok)} charges on the ledger")
        if isinstance(error, CardDeclined) and (ok or not charges):
            self.problems.append(f"{intent.offline_id}: decline reported but the ledger shows {charges}")


def _backlog(seed: int) -> tuple[list, dict[str, str | None]]:
    """500 payments in random order, 50 of them on declining cards; and each one's expected decline_code."""
    rng = random.Random(seed)
    pans = [DECLINED] * 25 + [INSUFFICIENT] * 25
    payments = [new_payment(i) for i in range(PAYMENTS - len(pans))]
    declines = [new_payment(1000 + i, pan=pan) for i, pan in enumerate(pans)]
    expected: dict[str, str | None] = {p.offline_id: None for p in payments}
    expected.update({p.offline_id: DECLINES[pan] for p, pan in zip(declines, pans, strict=True)})
    payments += declines
    rng.shuffle(payments)
    return payments, expected


def _config(data_dir, url: str) -> dict[str, Any]:
    return config(
        data_dir,
        url,
        terminal={"probe_min_interval": 0.02, "probe_max_interval": 0.2},
        forwarding={"concurrency": 8, "batch_size": 25, "interval": 2.0, "lease_seconds": 30.0},
        stripe_options={"timeout": 0.4, "connect_timeout": 0.4, "probe_timeout": 0.3},
        policy={"base_delay": 0.02, "max_delay": 0.2, "max_attempts": 60},
    )


async def _drain(data_dir, url: str, recorder, witness: OutcomeWitness | None = None, chaos=None) -> None:
    pm = plugin_manager(recorder)
    if witness is not None:
        pm.add(witness, "witness")
    async with Terminal.from_config(_config(data_dir, url), plugin_manager=pm) as terminal:
        chaos_task = asyncio.create_task(chaos()) if chaos else None
        try:

            async def drained() -> bool:
                return (await terminal.refresh_offline_status()).sdk.offline_payments_count == 0

            await wait_until_async(drained, timeout=120, what="the backlog to drain under faults")
        finally:
            if chaos_task is not None:
                chaos_task.cancel()
                await asyncio.gather(chaos_task, return_exceptions=True)


def _check(sim: SimHandle, data_dir, recorder, expected: dict[str, str | None]) -> dict[PaymentState, int]:
    payments = read_store(data_dir)
    assert set(payments) == set(expected), "nothing lost"
    states = check_exactly_once(sim, payments)
    events = forwarded_events(recorder)
    assert set(events) == set(payments), "an event for every payment"
    assert all(len(calls) == 1 for calls in events.values()), "payment_intent_forwarded exactly once per payment"
    for oid, p in payments.items():
        [call] = events[oid]
        if p.state is PaymentState.FORWARDED:
            assert expected[oid] is None and call.error is None
        elif p.state is PaymentState.DECLINED:
            assert p.decline_code == expected[oid] and isinstance(call.error, CardDeclined)
        else:
            assert p.state is PaymentState.NEEDS_ATTENTION and call.error is not None
    return states


@pytest.mark.parametrize("mode", sorted(FAULTS))
async def test_fault_mode_over_500_payments(tmp_path, recorder, mode):
    faults, expected = FAULTS[mode]
    data_dir = tmp_path / "pos"
    backlog, expected_outcomes = _backlog(seed=len(mode))
    populate(data_dir, backlog)
    sim = start_simulator(faults={**faults, "seed": len(mode)})
    try:
        witness = OutcomeWitness(sim) if mode == "everything_at_once" else None
        await _drain(data_dir, sim.url, recorder, witness)
        injected = sim.injected()
        states = _check(sim, data_dir, recorder, expected_outcomes)
    finally:
        sim.stop()
    for kind in expected:
        assert injected.get(kind, 0) >= 10, f"the {kind} fault was injected ({injected})"
    assert states.get(PaymentState.FORWARDED, 0) + states.get(PaymentState.NEEDS_ATTENTION, 0) == 450
    assert states.get(PaymentState.DECLINED, 0) + states.get(PaymentState.NEEDS_ATTENTION, 0) >= 50
    if witness is not None:
        assert witness.problems == []


async def test_flapping_network_over_500_payments(tmp_path, recorder):
    """The network itself fails: the proxy drops, resets and blackholes connections, 10-30 % of the time."""
    data_dir = tmp_path / "pos"
    backlog, expected_outcomes = _backlog(seed=99)
    populate(data_dir, backlog)
    sim = start_simulator()
    proxy = FaultProxy(sim.port).start()
    rng = random.Random(5)
    outages: list[str] = []

    async def chaos() -> None:
        while True:
            await asyncio.sleep(rng.uniform(0.15, 0.4))
            bad = rng.choice(["down", "reset", "blackhole"])
            outages.append(bad)
            proxy.set_mode(bad)
            await asyncio.sleep(rng.uniform(0.03, 0.1))
            proxy.set_mode("pass")

    try:
        await _drain(data_dir, proxy.url, recorder, chaos=chaos)
        states = _check(sim, data_dir, recorder, expected_outcomes)
    finally:
        proxy.stop()
        sim.stop()
    assert len(outages) >= 5
    assert states.get(PaymentState.FORWARDED, 0) + states.get(PaymentState.NEEDS_ATTENTION, 0) == 450
