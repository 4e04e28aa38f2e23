"""The simulated reader, driven through the reader contract and its public scenario methods."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from offterm.core.config import validate_options
from offterm.core.contracts import CardResult, CollectRequest, ReaderConnection, ReaderTransport
from offterm.core.errors import (
    CardReadError,
    CollectionCanceled,
    ConfigError,
    ReaderDisconnected,
    ReaderError,
    ReaderNotConnected,
    ReaderTimeout,
)
from offterm.core.manager import create_plugin_manager
from offterm.core.models import ReadMethod
from offterm.core.registrations import ComponentContext
from offterm.plugins.readers import card_encryption, simulated, test_cards

TEST_KEY = bytes.fromhex(card_encryption.TEST_BASE_KEY_HEX)


def make_transport(tmp_path: Path, **options: Any) -> ReaderTransport:
    """Build the transport the way the Terminal does: registration found by name, factory with options."""
    pm = create_plugin_manager(autoload=False, env={}, bundled=[("simulated-reader", simulated.__name__)])
    reg = pm.reader_transport("simulated")
    validated = validate_options("reader.simulated", reg.options, options, env={})
    return reg.factory(ComponentContext("simulated", validated, tmp_path))


async def connect(tmp_path: Path, **options: Any) -> simulated.SimulatedReaderConnection:
    transport = make_transport(tmp_path, **options)
    readers = await transport.discover()
    conn = await transport.connect(readers[0])
    assert isinstance(conn, simulated.SimulatedReaderConnection)
    return conn


def opened(result: CardResult, key: bytes = TEST_KEY) -> card_encryption.SensitiveCard:
    return card_encryption.decrypt(result.encrypted_card_data, result.key_serial, key)


REQUEST = CollectRequest(amount=1234, currency="usd", timeout=5.0)


# -- registration and discovery -----------------------------------------------------------------


def test_registered_under_simulated_with_documented_options() -> None:
    regs = list(simulated.offterm_reader_transports())
    assert [r.name for r in regs] == ["simulated"]
    keys = {o.key for o in regs[0].options}
    assert keys == {
        "count",
        "reader_type",
        "location_id",
        "card_key",
        "default_card",
        "read_method",
        "pin_verified",
        "read_delay",
    }
    assert all(o.help for o in regs[0].options)
    assert next(o for o in regs[0].options if o.key == "card_key").secret


async def test_discover_reports_count_type_and_location(tmp_path: Path) -> None:
    transport = make_transport(tmp_path, count=3, reader_type="simulated_m2", location_id="tml_loc_1")
    readers = await transport.discover()
    assert len(readers) == 3
    assert len({r.serial_number for r in readers}) == 3
    assert {r.reader_type for r in readers} == {"simulated_m2"}
    assert {r.location_id for r in readers} == {"tml_loc_1"}
    assert {r.transport for r in readers} == {"simulated"}
    # discovery is stable: the same readers each time
    assert await transport.discover() == readers


async def test_connect_unknown_reader_is_a_reader_error(tmp_path: Path) -> None:
    transport = make_transport(tmp_path)
    reader = (await transport.discover())[0]
    from dataclasses import replace

    with pytest.raises(ReaderError):
        await transport.connect(replace(reader, serial_number="NOPE-1"))


async def test_one_connection_per_reader_until_closed(tmp_path: Path) -> None:
    transport = make_transport(tmp_path)
    reader = (await transport.discover())[0]
    conn = await transport.connect(reader)
    with pytest.raises(ReaderError, match="already connected"):
        await transport.connect(reader)
    await conn.close()
    again = await transport.connect(reader)
    assert again.is_connected


# -- a card read -----------------------------------------------------------------------------------


async def test_default_collect_returns_encrypted_visa_without_the_number(tmp_path: Path) -> None:
    conn = await connect(tmp_path)
    result = await conn.collect(REQUEST)
    d = result.details
    assert (d.brand, d.last4, d.read_method, d.pin_verified) == ("visa", "4242", ReadMethod.CONTACT_EMV, True)
    assert not d.is_expired(datetime.now(UTC))
    assert result.encryption_scheme == card_encryption.SCHEME
    # the number is only inside the blob, readable with the processor's key
    assert "4242424242424242" not in repr(result) + repr(d)
    assert b"4242424242424242" not in result.encrypted_card_data
    card = opened(result)
    assert card.pan == "4242424242424242"
    assert (card.exp_month, card.exp_year) == (d.exp_month, d.exp_year)
    assert card.track2 is None


async def test_each_read_uses_a_fresh_key_serial(tmp_path: Path) -> None:
    conn = await connect(tmp_path)
    first, second = await conn.collect(REQUEST), await conn.collect(REQUEST)
    assert first.key_serial != second.key_serial
    assert first.encrypted_card_data != second.encrypted_card_data


async def test_card_key_option_is_used_for_encryption(tmp_path: Path) -> None:
    key = bytes(range(32))
    conn = await connect(tmp_path, card_key=key.hex())
    result = await conn.collect(REQUEST)
    assert opened(result, key).pan == "4242424242424242"
    with pytest.raises(card_encryption.CardDecryptionError):
        opened(result, TEST_KEY)


@pytest.mark.parametrize(
    ("name", "brand", "last4"),
    [
        ("visa", "visa", "4242"),
        ("visa_debit", "visa", "5556"),
        ("mastercard", "mastercard", "4444"),
        ("amex", "amex", "0005"),
        ("discover", "discover", "1117"),
        ("jcb", "jcb", "0505"),
        ("unionpay", "unionpay", "0005"),
        ("interac", "interac", "1933"),
        ("declined", "visa", "0002"),
        ("insufficient_funds", "visa", "9995"),
        ("girocard", "girocard", "0007"),
    ],
)
async def test_present_card_by_brand(tmp_path: Path, name: str, brand: str, last4: str) -> None:
    conn = await connect(tmp_path)
    conn.present_card(name)
    result = await conn.collect(REQUEST)
    assert (result.details.brand, result.details.last4) == (brand, last4)
    assert opened(result).pan == test_cards.CARDS[name].pan


async def test_card_number_can_be_presented_and_is_never_echoed(tmp_path: Path) -> None:
    conn = await connect(tmp_path)
    conn.present_card("5555 5555 5555 4444")
    result = await conn.collect(REQUEST)
    assert (result.details.brand, result.details.last4) == ("mastercard", "4444")
    with pytest.raises(ValueError) as info:
        conn.present_card("4242424242424241")  # bad check digit
    assert "4242424242424241" not in str(info.value)
    with pytest.raises(ValueError, match="unknown test card"):
        conn.present_card("no_such_card")


async def test_co_badged_eftpos_routes_over_visa(tmp_path: Path) -> None:
    conn = await connect(tmp_path)
    conn.present_card("eftpos_visa")
    d = (await conn.collect(REQUEST)).details
    assert d.brand == "visa"
    assert d.networks == ("eftpos_au", "visa")
    assert d.issuer_country == "AU"


async def test_presentations_are_queued_then_default_card(tmp_path: Path) -> None:
    conn = await connect(tmp_path, default_card="mastercard")
    conn.present_card("amex")
    conn.present_card("discover")
    assert conn.pending_presentations == 2
    brands = [(await conn.collect(REQUEST)).details.brand for _ in range(3)]
    assert brands == ["amex", "discover", "mastercard"]
    assert conn.pending_presentations == 0


async def test_presentations_survive_a_reconnect(tmp_path: Path) -> None:
    transport = make_transport(tmp_path)
    reader = (await transport.discover())[0]
    conn = await transport.connect(reader)
    assert isinstance(conn, simulated.SimulatedReaderConnection)
    conn.present_card("amex")
    await conn.close()
    again = await transport.connect(reader)
    assert (await again.collect(REQUEST)).details.brand == "amex"


async def test_expired_card(tmp_path: Path) -> None:
    conn = await connect(tmp_path)
    now = datetime.now(UTC)
    conn.present_card("visa", expired=True)
    assert (await conn.collect(REQUEST)).details.is_expired(now)
    conn.present_card("visa_expired")
    assert (await conn.collect(REQUEST)).details.is_expired(now)


async def test_swipe_puts_track_data_only_in_the_blob(tmp_path: Path) -> None:
    conn = await connect(tmp_path)
    conn.present_card("visa", read_method="magnetic_stripe", cardholder_name="JENNY ROSEN")
    result = await conn.collect(REQUEST)
    assert result.details.read_method is ReadMethod.MAGNETIC_STRIPE
    assert result.details.pin_verified is False
    assert result.details.cardholder_name == "JENNY ROSEN"
    card = opened(result)
    assert card.track2 is not None and card.track2.startswith(";4242424242424242=")
    assert card.read_method == "magnetic_stripe"
    assert "4242424242424242" not in repr(result.details)


async def test_contactless_and_pin_defaults(tmp_path: Path) -> None:
    conn = await connect(tmp_path)
    conn.present_card("visa", read_method=ReadMethod.CONTACTLESS_EMV)
    conn.present_card("visa", pin=False)
    conn.present_card("visa_de", read_method="contact_emv", pin=True)
    tap, no_pin, chip_pin = [(await conn.collect(REQUEST)).details for _ in range(3)]
    assert (tap.read_method, tap.pin_verified) == (ReadMethod.CONTACTLESS_EMV, False)
    assert (no_pin.read_method, no_pin.pin_verified) == (ReadMethod.CONTACT_EMV, False)
    assert (chip_pin.read_method, chip_pin.pin_verified, chip_pin.issuer_country) == (
        ReadMethod.CONTACT_EMV,
        True,
        "DE",
    )


async def test_default_read_method_and_pin_options(tmp_path: Path) -> None:
    conn = await connect(tmp_path, read_method="contactless_emv")
    d = (await conn.collect(REQUEST)).details
    assert (d.read_method, d.pin_verified) == (ReadMethod.CONTACTLESS_EMV, False)
    conn2 = await connect(tmp_path / "b", pin_verified=False)
    assert (await conn2.collect(REQUEST)).details.pin_verified is False


async def test_read_method_not_allowed_by_the_request(tmp_path: Path) -> None:
    conn = await connect(tmp_path)
    conn.present_card("visa", read_method="magnetic_stripe")
    request = CollectRequest(100, "usd", allowed_read_methods=(ReadMethod.CONTACT_EMV, ReadMethod.CONTACTLESS_EMV))
    with pytest.raises(CardReadError, match="magnetic_stripe"):
        await conn.collect(request)


# -- failures ----------------------------------------------------------------------------------------


async def test_card_removed_early(tmp_path: Path) -> None:
    conn = await connect(tmp_path)
    conn.present_card("visa", remove_early=True)
    with pytest.raises(CardReadError) as info:
        await conn.collect(REQUEST)
    assert info.value.code == "card_read_failed"
    # the next presentation works again
    assert (await conn.collect(REQUEST)).details.brand == "visa"


async def test_customer_never_presents_times_out(tmp_path: Path) -> None:
    conn = await connect(tmp_path)
    conn.present_card(never=True)
    with pytest.raises(ReaderTimeout):
        await conn.collect(CollectRequest(100, "usd", timeout=0.05))
    assert conn.is_connected and not conn.is_collecting


async def test_cancel_collect_while_waiting(tmp_path: Path) -> None:
    conn = await connect(tmp_path)
    conn.present_card(never=True)
    task = asyncio.create_task(conn.collect(CollectRequest(100, "usd", timeout=30)))
    await conn.wait_until_collecting()
    assert conn.is_collecting
    await conn.cancel_collect()
    with pytest.raises(CollectionCanceled):
        await task
    assert conn.is_connected
    await conn.cancel_collect()  # no collection: a no-op
    assert (await conn.collect(REQUEST)).details.brand == "visa"


async def test_cancel_during_read_delay(tmp_path: Path) -> None:
    conn = await connect(tmp_path, read_delay=30)
    task = asyncio.create_task(conn.collect(REQUEST))
    await conn.wait_until_collecting()
    assert conn.is_collecting
    await conn.cancel_collect()
    with pytest.raises(CollectionCanceled):
        await task


async def test_second_concurrent_collect_is_refused(tmp_path: Path) -> None:
    conn = await connect(tmp_path)
    conn.present_card(never=True)
    task = asyncio.create_task(conn.collect(CollectRequest(100, "usd", timeout=30)))
    await conn.wait_until_collecting()
    assert conn.is_collecting
    with pytest.raises(ReaderError, match="in progress"):
        await conn.collect(REQUEST)
    await conn.cancel_collect()
    with pytest.raises(CollectionCanceled):
        await task


async def test_disconnect_during_collect(tmp_path: Path) -> None:
    conn = await connect(tmp_path)
    events: list[tuple[str, str, int]] = []
    conn.set_listener(lambda event, reader, attempt, reason: events.append((event, reader.serial_number, attempt)))
    conn.present_card(never=True)
    task = asyncio.create_task(conn.collect(CollectRequest(100, "usd", timeout=30)))
    await conn.wait_until_collecting()
    assert conn.is_collecting
    conn.simulate_disconnect()
    with pytest.raises(ReaderDisconnected):
        await task
    assert not conn.is_connected
    assert events == [("disconnected", conn.info.serial_number, 0)]
    with pytest.raises(ReaderNotConnected):
        await conn.collect(REQUEST)


async def test_disconnect_as_a_presentation_and_reconnect(tmp_path: Path) -> None:
    conn = await connect(tmp_path)
    events: list[str] = []
    conn.set_listener(lambda event, reader, attempt, reason: events.append(event))
    conn.present_card("visa", disconnect=True, reconnect=True)
    with pytest.raises(ReaderDisconnected):
        await conn.collect(REQUEST)
    await asyncio.sleep(0)
    assert conn.is_connected
    assert events == ["reconnecting", "reconnected"]
    assert (await conn.collect(REQUEST)).details.brand == "visa"


async def test_close_is_idempotent_and_ends_a_collection(tmp_path: Path) -> None:
    conn: ReaderConnection = await connect(tmp_path)
    assert isinstance(conn, simulated.SimulatedReaderConnection)
    conn.present_card(never=True)
    task = asyncio.create_task(conn.collect(CollectRequest(100, "usd", timeout=30)))
    await conn.wait_until_collecting()
    assert conn.is_collecting
    await conn.close()
    await conn.close()
    assert not conn.is_connected
    with pytest.raises(ReaderDisconnected):
        await task


# -- configuration -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"count": 0}, "reader.simulated.count"),
        ({"count": True}, "reader.simulated.count"),
        ({"read_method": "chip"}, "reader.simulated.read_method"),
        ({"default_card": "nope"}, "reader.simulated.default_card"),
        ({"pin_verified": "yes"}, "reader.simulated.pin_verified"),
        ({"read_delay": -1}, "reader.simulated.read_delay"),
        ({"colour": "red"}, "reader.simulated.colour"),
    ],
)
def test_bad_options_name_the_key(tmp_path: Path, options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_transport(tmp_path, **options)
    assert info.value.key == key


def test_bad_card_key_never_echoes_the_key(tmp_path: Path) -> None:
    secret = "ab" * 31 + "zz"
    with pytest.raises(ConfigError) as info:
        make_transport(tmp_path, card_key=secret)
    assert info.value.key == "reader.simulated.card_key"
    assert secret not in str(info.value)


def test_bad_default_card_number_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_transport(tmp_path, default_card="4242424242424241")
    assert "4242424242424241" not in str(info.value)
