"""offterm.testing: the encrypted store, the simulator and the Terminal configuration fixtures."""

from __future__ import annotations

import stat
from datetime import UTC, datetime

import httpx

from offterm.core import OfflineBehavior, Terminal
from offterm.core.config import load_config
from offterm.core.contracts import CardDetails, CardResult, NewPayment, PaymentState
from offterm.core.models import CaptureMethod, ReadMethod


def _payment(offline_id: str) -> NewPayment:
    return NewPayment(
        offline_id=offline_id,
        idempotency_key="offterm-" + "0" * 32,
        amount=1250,
        currency="eur",
        capture_method=CaptureMethod.AUTOMATIC,
        metadata={"order": "A-17"},
        account_id="acct_test",
        livemode=False,
        stored_at=datetime.now(UTC),
        card=CardResult(
            details=CardDetails("visa", "4242", 12, 2099, ReadMethod.CONTACT_EMV, pin_verified=True),
            encrypted_card_data=b"opaque-sealed-card-data",
        ),
    )


def test_store_fixture_is_a_real_encrypted_file_with_a_private_key(offterm_store, tmp_path):
    folder = tmp_path / "offterm-store"
    database = folder / "payments.db"
    key = folder / "storage.key"
    assert database.exists() and key.exists()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(database.stat().st_mode) == 0o600

    stored = offterm_store.store(_payment("offpi_" + "5" * 32))
    assert stored.state is PaymentState.STORED
    summary = offterm_store.summary()
    assert summary.pending_count == 1 and summary.amounts_by_currency == {"eur": 1250}
    raw = database.read_bytes() + b"".join(p.read_bytes() for p in folder.glob("payments.db-*"))
    assert not raw.startswith(b"SQLite format 3")
    assert b"A-17" not in raw and b"opaque-sealed-card-data" not in raw


def test_processor_simulator_fixture_is_serving(processor_simulator):
    assert processor_simulator.url.startswith("http://127.0.0.1:")
    assert httpx.get(processor_simulator.url + "/healthcheck", timeout=5).status_code == 200
    assert processor_simulator.ledger() == {}


def test_config_fixture_is_valid_and_points_at_the_simulator(offterm_config, processor_simulator, tmp_path):
    config = load_config(offterm_config)
    assert config.data_dir == tmp_path / "offterm"
    assert config.get("terminal", "offline_enabled") is True
    assert config.get("plugins", "autoload") is False
    assert config.component_options[("forwarding", "stripe")]["api_base"] == processor_simulator.url
    assert config.component_options[("tokens", "http")]["url"] == processor_simulator.backend_url


async def test_terminal_from_the_config_fixture_pays_online_and_offline_exactly_once(
    offterm_config, offterm_plugin_manager, offterm_hook_recorder, processor_simulator
):
    async with Terminal.from_config(offterm_config, plugin_manager=offterm_plugin_manager) as terminal:
        [reader] = await terminal.discover_readers()
        await terminal.connect_reader(reader)
        online = await terminal.create_payment_intent({"amount": 900, "currency": "usd"})
        await terminal.confirm_payment_intent(await terminal.collect_payment_method(online))
        offline = await terminal.create_payment_intent(
            {"amount": 300, "currency": "usd"}, OfflineBehavior.FORCE_OFFLINE
        )
        offline = await terminal.confirm_payment_intent(await terminal.collect_payment_method(offline))
        assert offline.requires_upload
        assert await terminal.forward_now() == 0
        await offterm_hook_recorder.wait_for_async("payment_intent_forwarded")

    assert processor_simulator.successful_charges() == {online.offline_id: 1, offline.offline_id: 1}
    assert offterm_hook_recorder.getcall("payment_stored").intent.offline_id == offline.offline_id
    forwarded = offterm_hook_recorder.getcall("payment_intent_forwarded")
    assert forwarded.intent.offline_id == offline.offline_id and forwarded.error is None
    offterm_hook_recorder.assert_called("reader_connected", times=1)
    offterm_hook_recorder.assert_called("offline_status_changed")
    assert offterm_hook_recorder.getcalls("reader_disconnected")[-1].reason == "requested"
