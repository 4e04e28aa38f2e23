"""Minimal reproductions of bugs the torture found in code owned by other issues.

Each is marked ``xfail(strict=True)``: it fails today for the reason given,
and the suite turns red the moment it is fixed, so the mark gets removed.
"""

from __future__ import annotations

from typing import Any

import pytest

import asyncio
from pathlib import Path

from torture_hostile import HostileProcessor
from torture_payments import pos_config

from offterm.core import NetworkStatus, OfflineBehavior, Terminal
from offterm.sim.processor import SimHandle


async def _intent(terminal: Terminal, amount: int, behavior: OfflineBehavior = OfflineBehavior.PREFER_ONLINE) -> Any:
    intent = await terminal.create_payment_intent({"amount": amount, "currency": "usd"}, offline_behavior=behavior)
    terminal.connected_reader.present_card("visa")
    return await terminal.collect_payment_method(intent)


async def _until_online(terminal: Terminal) -> None:
    """The 503 took the terminal offline; its probe brings it back (the processor does answer)."""
    for _ in range(200):
        if terminal.network_status is NetworkStatus.ONLINE:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the terminal never came back online")


@pytest.mark.xfail(
    strict=True,
    reason="BUG: an online confirm that created the intent under '<key>-create' and then fell back offline is "
    "re-sent by the forwarder with extra metadata (offterm_stored_at) under the same key: idempotency_error, "
    "the payment ends needs_attention and can never be forwarded",
)
async def test_payment_stored_after_a_failed_online_confirm_is_forwarded(
    simulator: SimHandle, config: dict[str, Any]
) -> None:
    async with Terminal.from_config(config) as terminal:
        [reader] = await terminal.discover_readers()
        await terminal.connect_reader(reader)
        # Creating the intent online fails once (503), so the intent has no processor id yet...
        simulator.set_faults(error_rates={503: 1.0}, paths=("/v1/payment_intents",))
        intent = await _intent(terminal, 4321)
        assert intent.id is None
        await _until_online(terminal)
        # ...then confirm goes online: the create step succeeds, the card step fails, so the
        # payment is stored offline (the processor holds an unconfirmed intent made with '<key>-create').
        simulator.set_faults(error_rates={503: 1.0}, paths=("/device/v1/payment_methods",))
        stored = await terminal.confirm_payment_intent(intent)
        assert stored.requires_upload
        simulator.set_faults()
        assert await terminal.forward_now(timeout=10) == 0
        [payment] = await terminal.list_stored_payments()
        assert payment.state.value == "forwarded", (payment.state.value, payment.last_error_code)
    assert simulator.successful_charges() == {intent.offline_id: 1}


async def _stored_payment(config: dict[str, Any]) -> tuple[Terminal, str]:
    terminal = Terminal.from_config(config)
    await terminal.open()
    [reader] = await terminal.discover_readers()
    await terminal.connect_reader(reader)
    intent = await _intent(terminal, 2500, OfflineBehavior.FORCE_OFFLINE)
    stored = await terminal.confirm_payment_intent(intent)
    assert stored.requires_upload
    return terminal, stored.offline_id


@pytest.mark.xfail(
    strict=True,
    reason="BUG: a redirect (what a captive portal or a misconfigured proxy answers) is classified as a permanent "
    "processor error, so the stored payment is parked in needs_attention instead of being retried",
)
async def test_a_captive_portal_redirect_does_not_park_stored_payments(simulator: SimHandle, tmp_path: Path) -> None:
    with HostileProcessor(simulator.url) as portal:
        terminal, offline_id = await _stored_payment(pos_config(tmp_path / "pos", portal.url))
        try:
            portal.arm("redirect", count=1)
            await terminal.forward_now(timeout=5)
            portal.disarm()
            [payment] = await terminal.list_stored_payments()
            assert payment.state.value in ("stored", "outcome_unknown"), (payment.state.value, payment.last_error_code)
        finally:
            await terminal.close(timeout=0)


@pytest.mark.xfail(
    strict=True,
    reason="BUG: the Stripe transport reads an answer of any size into memory (no cap): an endless or huge body "
    "from the processor's address grows the POS's memory until the caller's own timeout",
)
async def test_an_endless_answer_is_not_read_without_limit(simulator: SimHandle, tmp_path: Path) -> None:
    with HostileProcessor(simulator.url, endless_cap=64 << 20) as endless:
        terminal, _ = await _stored_payment(pos_config(tmp_path / "pos", endless.url))
        try:
            endless.arm("endless_body", count=1)
            await terminal.forward_now(timeout=8)
        finally:
            await terminal.close(timeout=0)
        # A processor answer is a few kilobytes; 16 MiB is a generous ceiling for any client-side limit.
        assert endless.acts.sent["endless_body"] < 16 << 20, endless.acts.sent["endless_body"]


@pytest.mark.xfail(
    strict=True,
    reason="BUG: the Stripe transport's timeout bounds each read, not the request: an answer dripped one byte at a "
    "time never times out, so one payment holds the forwarder (and its claim) for as long as the drip lasts",
)
async def test_a_dripped_answer_is_abandoned_after_the_transport_timeout(
    simulator: SimHandle, tmp_path: Path
) -> None:
    with HostileProcessor(simulator.url) as dripping:
        dripping.acts.drip_interval = 0.2  # ~1.5 KB answer: about five minutes
        terminal, offline_id = await _stored_payment(pos_config(tmp_path / "pos", dripping.url))
        try:
            dripping.arm("slow_drip", count=1)
            # The transport timeout is 1 s; in 8 s it has had plenty of time to give up on its own and
            # have the forwarder record the attempt as outcome_unknown (not merely have its claim released
            # because forward_now stopped waiting).
            await terminal.forward_now(timeout=8)
            codes = [entry.error_code for entry in await terminal.payment_history(offline_id)]
            assert "outcome_unknown" in codes, codes
        finally:
            await terminal.close(timeout=0)
