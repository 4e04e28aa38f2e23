"""Minimal reproductions of bugs the torture found in code owned by other issues.

Each is marked ``xfail(strict=True)``: it fails today for the reason given,
and the suite turns red the moment it is fixed, so the mark gets removed.
"""

from __future__ import annotations

from typing import Any

import pytest

import asyncio

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
