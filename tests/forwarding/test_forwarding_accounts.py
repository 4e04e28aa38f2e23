"""A payment stored under one account or mode is never forwarded to another: refused, kept, needs attention."""

from __future__ import annotations

import pytest
from forwarding_kit import config, connect_online, forwarded_events, pay, plugin_manager, read_store

from offterm.core import OfflineBehavior, Terminal
from offterm.core.contracts import PaymentState
from offterm.core.errors import AccountMismatch
from offterm.sim.processor import start_simulator

OTHER = {
    "another_account": ({"account_id": "acct_1OtherMerchant00"}, "acct_1OtherMerchant00 (test mode)"),
    "live_mode": ({"livemode": True, "secret_key": "sk_live_simAccountMismatch01"}, "(live mode)"),
}


@pytest.mark.parametrize("other", sorted(OTHER))
async def test_payments_are_refused_and_kept_when_the_session_is_for_another_account(data_dir, sim, recorder, other):
    # Stored while the terminal worked for the simulator's test-mode account...
    async with Terminal.from_config(
        config(data_dir, sim.url), plugin_manager=plugin_manager(recorder), background=False
    ) as first:
        await connect_online(first)
        stored = [await pay(first, 500 + i, behavior=OfflineBehavior.FORCE_OFFLINE) for i in range(3)]
    ids = {s.offline_id for s in stored}

    # ...then forwarded by a terminal whose token provider belongs to another account (or live mode).
    settings, expected = OTHER[other]
    wrong = start_simulator(**settings)
    try:
        async with Terminal.from_config(
            config(data_dir, wrong.url), plugin_manager=plugin_manager(recorder), background=False
        ) as second:
            assert await second.forward_now() == 0
            assert second.offline_status.sdk.needs_attention_count == 3
        assert wrong.ledger() == {}
        sent = [r for r in wrong.requests() if r["path"].startswith("/v1/") or r["path"].endswith("payment_methods")]
        assert sent == [], "nothing about these payments reached the other account"
    finally:
        wrong.stop()

    payments = read_store(data_dir)
    for oid in ids:
        p = payments[oid]
        assert p.state is PaymentState.NEEDS_ATTENTION
        assert p.last_error_code == AccountMismatch.code
        assert "acct_1SimulatedOfftrm (test mode)" in p.last_error_message and expected in p.last_error_message
        assert p.card is not None, "kept with its card data, for the right account to forward later"
        assert p.attempts == 0
        [call] = forwarded_events(recorder)[oid]
        assert isinstance(call.error, AccountMismatch) and call.intent.requires_upload
    assert sim.successful_charges() == {}
