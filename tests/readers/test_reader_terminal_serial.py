"""Every scripted card case through the Terminal API, over a real pty, with the offline rules.

The reader emulator runs in its own process behind a pseudo-terminal; the
Terminal uses ``[reader] transport = "serial"``, the SQLCipher store, and the
processor simulator (which decrypts what the emulator encrypted) behind a
fault proxy that can take the network down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from offterm.core import IntentStatus, NetworkStatus, OfflineBehavior, Terminal, create_plugin_manager, hookimpl
from offterm.core.errors import (
    CardReadError,
    OfftermError,
    ReaderDisconnected,
    ReaderTimeout,
)
from offterm.core.manager import BUNDLED_PLUGINS
from offterm.plugins.policies.limits import (
    CardBrandNotAllowedOffline,
    CardSwipeNotAvailableOffline,
    InteracNotSupportedOffline,
    OfflineAndCardExpired,
    OfflinePinRequired,
    ReaderOfflineLocationMismatch,
)
from offterm.plugins.readers import serial as serial_plugin
from offterm.sim.netproxy import FaultProxy
from offterm.sim.processor import SimHandle, start_simulator

Spawn = Callable[..., Any]


class ReaderEvents:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    @hookimpl
    def offterm_on_reader_connected(self, reader: Any) -> None:
        self.events.append(("connected", reader.serial_number))

    @hookimpl
    def offterm_on_reader_reconnecting(self, reader: Any, attempt: int) -> None:
        self.events.append(("reconnecting", attempt))

    @hookimpl
    def offterm_on_reader_disconnected(self, reader: Any, reason: str) -> None:
        self.events.append(("disconnected", reason))


@pytest.fixture
def simulator() -> Iterator[SimHandle]:
    handle = start_simulator()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def network(simulator: SimHandle) -> Iterator[FaultProxy]:
    proxy = FaultProxy(simulator.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def emulator(tmp_path: Path, spawn_emulator: Spawn) -> Any:
    link = tmp_path / "reader-tty"
    emu = spawn_emulator("--serial", "--link", str(link), "--wait", "--location-id", "tml_store_1")
    emu.address = str(link)
    return emu


def make_config(tmp_path: Path, network: FaultProxy, port: str, country: str = "US") -> dict[str, Any]:
    return {
        "terminal": {
            "data_dir": str(tmp_path / "pos"),
            "merchant_country": country,
            "offline_enabled": True,
            "offline_timeout": 2.0,
            "probe_min_interval": 0.05,
            "probe_max_interval": 0.5,
        },
        "plugins": {"autoload": False},
        "reader": {
            "transport": "serial",
            "serial": {"port": port, "timeout": 1.0, "reconnect_initial_delay": 0.05, "reconnect_max_delay": 0.2},
        },
        "storage": {"backend": "sqlcipher", "key_provider": "file"},
        "tokens": {"providers": ["http"], "http": {"url": network.url + "/backend/connection_token"}},
        "forwarding": {
            "transport": "stripe",
            "interval": 60.0,
            "stripe": {"api_base": network.url, "timeout": 5.0, "connect_timeout": 1.0},
        },
        "acceptance": {"limits": {"max_amount": {"usd": 100_000, "eur": 100_000}}},
    }


def terminal(config: dict[str, Any], events: ReaderEvents | None = None) -> Terminal:
    plugins: dict[str, object] = {"events": events or ReaderEvents()}
    if not any(name == "serial-reader" for name, _ in BUNDLED_PLUGINS):
        plugins["serial-reader"] = serial_plugin
    return Terminal.from_config(config, plugin_manager=create_plugin_manager(autoload=False, env={}, plugins=plugins))


async def connect(term: Terminal) -> None:
    [reader] = await term.discover_readers(timeout=2.0)
    assert reader.transport == "serial" and reader.location_id == "tml_store_1"
    await term.connect_reader(reader)


async def collect(term: Terminal, emulator: Any, script: str, currency: str = "usd", timeout: float = 10.0) -> Any:
    intent = await term.create_payment_intent({"amount": 1200, "currency": currency})
    emulator.command(script)
    return intent, await term.collect_payment_method(intent, timeout=timeout)


# Offline (PREFER_ONLINE, network down), US merchant: script -> what happens at collect.
OFFLINE_CASES: list[tuple[str, str, type[OfftermError] | None]] = [
    ("visa insert", "present visa insert", None),
    ("mastercard tap", "present mastercard tap", None),
    ("discover insert", "present discover insert nopin", None),
    ("no swipe offline", "present amex swipe", CardSwipeNotAvailableOffline),
    ("interac refused", "present interac tap", InteracNotSupportedOffline),
    ("brand allow-list", "present jcb tap", CardBrandNotAllowedOffline),
    ("co-badged eftpos routed internationally", "present eftpos_visa insert", None),
    ("eftpos without an international brand", "present eftpos insert", CardBrandNotAllowedOffline),
    ("expired card", "present visa_expired insert", OfflineAndCardExpired),
    ("card removed early", "present visa insert remove-early", CardReadError),
    ("wrong PIN", "present visa insert pin-fail", CardReadError),
]


async def test_every_scripted_card_case_offline(
    tmp_path: Path, network: FaultProxy, simulator: SimHandle, emulator: Any
) -> None:
    stored: dict[str, str] = {}
    async with terminal(make_config(tmp_path, network, emulator.address)) as term:
        await connect(term)  # online: the reader counts as recently connected online at this location
        assert term.network_status is NetworkStatus.ONLINE
        network.set_mode("down")
        await term.network.check()
        assert term.network_status is NetworkStatus.OFFLINE
        for name, script, error in OFFLINE_CASES:
            intent = await term.create_payment_intent({"amount": 1200, "currency": "usd"})
            emulator.command(script)
            if error is not None:
                with pytest.raises(error):
                    await term.collect_payment_method(intent)
                assert intent.status is IntentStatus.REQUIRES_PAYMENT_METHOD, name
                # The intent stays collectable: the customer inserts another card.
                emulator.command("present visa insert")
            await term.collect_payment_method(intent)
            intent = await term.confirm_payment_intent(intent)
            assert intent.requires_upload and intent.id is None, name
            assert intent.offline_details is not None and intent.offline_details.card_present_details is not None
            stored[intent.offline_id] = intent.offline_details.card_present_details.brand
        # A customer who never presents a card: the reader times out, the intent stays collectable.
        intent = await term.create_payment_intent({"amount": 1200, "currency": "usd"})
        emulator.command("never")
        with pytest.raises(ReaderTimeout):
            await term.collect_payment_method(intent, timeout=0.3)
        assert intent.status is IntentStatus.REQUIRES_PAYMENT_METHOD
        emulator.command("present mastercard insert")
        intent = await term.confirm_payment_intent(await term.collect_payment_method(intent))
        stored[intent.offline_id] = "mastercard"

        assert term.offline_status.sdk.offline_payments_count == len(OFFLINE_CASES) + 1
        cobadged = [p for p in await term.list_stored_payments() if p.card.details.networks == ("eftpos_au", "visa")]
        assert len(cobadged) == 1 and cobadged[0].card.details.brand == "visa"
        assert all(b"4242424242424242" not in p.card.encrypted_card_data for p in await term.list_stored_payments())

        network.set_mode("pass")
        assert await term.forward_now() == 0
    # The processor decrypted every blob the emulator sealed, and charged each payment once.
    charges = simulator.successful_charges()
    assert {oid: charges.get(oid) for oid in stored} == {oid: 1 for oid in stored}


async def test_eea_offline_needs_chip_and_pin(tmp_path: Path, network: FaultProxy, emulator: Any) -> None:
    async with terminal(make_config(tmp_path, network, emulator.address, country="DE")) as term:
        await connect(term)
        network.set_mode("down")
        await term.network.check()
        for script in ("present visa_de tap", "present visa_de insert nopin"):
            with pytest.raises(OfflinePinRequired):
                await collect(term, emulator, script, currency="eur")
        _, intent = await collect(term, emulator, "present visa_de insert pin", currency="eur")
        intent = await term.confirm_payment_intent(intent)
        assert intent.requires_upload
        [payment] = await term.list_stored_payments()
        assert payment.card.details.pin_verified and payment.card.details.issuer_country == "DE"


async def test_online_payment_and_swipe_allowed_online(
    tmp_path: Path, network: FaultProxy, simulator: SimHandle, emulator: Any
) -> None:
    async with terminal(make_config(tmp_path, network, emulator.address)) as term:
        await connect(term)
        ids = []
        for script in ("present visa tap", "present amex swipe"):  # online, a swipe is fine
            _, intent = await collect(term, emulator, script)
            intent = await term.confirm_payment_intent(intent)
            assert intent.status is IntentStatus.SUCCEEDED and not intent.requires_upload
            ids.append(intent.offline_id)
        assert term.offline_status.sdk.offline_payments_count == 0
    assert [simulator.successful_charges().get(i) for i in ids] == [1, 1]


async def test_reader_disconnect_during_collection_stores_nothing(
    tmp_path: Path, network: FaultProxy, simulator: SimHandle, emulator: Any
) -> None:
    events = ReaderEvents()
    async with terminal(make_config(tmp_path, network, emulator.address), events) as term:
        await connect(term)
        network.set_mode("down")
        await term.network.check()
        intent = await term.create_payment_intent({"amount": 700, "currency": "usd"}, OfflineBehavior.PREFER_ONLINE)
        emulator.command("present visa insert disconnect=0.3")
        with pytest.raises(ReaderDisconnected):
            await term.collect_payment_method(intent)
        assert intent.status is IntentStatus.REQUIRES_PAYMENT_METHOD
        assert term.offline_status.sdk.offline_payments_count == 0
        emulator.wait_event("link_up")
        async with asyncio.timeout(10):
            while not (term.connected_reader is not None and term.connected_reader.is_connected):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert ("reconnecting", 1) in events.events and events.events[-1] == ("connected", "OFFTERM-EMU-0001")
        emulator.command("present visa insert")
        intent = await term.confirm_payment_intent(await term.collect_payment_method(intent))
        assert intent.requires_upload
        assert term.offline_status.sdk.offline_payments_count == 1


async def test_cold_start_offline_uses_the_cached_reader_record(
    tmp_path: Path, network: FaultProxy, simulator: SimHandle, emulator: Any
) -> None:
    config = make_config(tmp_path, network, emulator.address)
    async with terminal(config) as term:
        await connect(term)  # online once: the account and the reader's online connection are recorded
        _, intent = await collect(term, emulator, "present visa tap")
        assert (await term.confirm_payment_intent(intent)).status is IntentStatus.SUCCEEDED
    network.set_mode("down")
    async with terminal(config) as term:  # a reboot with no network at all
        await connect(term)
        await term.network.check()
        assert term.network_status is NetworkStatus.OFFLINE
        _, intent = await collect(term, emulator, "present mastercard insert")
        intent = await term.confirm_payment_intent(intent)
        assert intent.requires_upload
        network.set_mode("pass")
        assert await term.forward_now() == 0
    assert simulator.successful_charges()[intent.offline_id] == 1


async def test_a_reader_bound_to_another_location_is_refused_offline(
    tmp_path: Path, network: FaultProxy, emulator: Any
) -> None:
    config = make_config(tmp_path, network, emulator.address)
    config["terminal"]["location_id"] = "tml_other_store"
    async with terminal(config) as term:
        await connect(term)  # the reader reports location tml_store_1
        network.set_mode("down")
        await term.network.check()
        with pytest.raises(ReaderOfflineLocationMismatch):
            await collect(term, emulator, "present visa insert")
        assert term.offline_status.sdk.offline_payments_count == 0
