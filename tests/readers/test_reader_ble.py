"""The BLE plugin with the real bleak against a fake BlueZ (python-dbusmock) on a private system bus.

The emulator process serves adapter hci0 and one advertising reader; bleak
scans, connects, subscribes and writes exactly as it would against
bluetoothd, so these tests run the plugin's real Bluetooth code path.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from offterm.core.config import validate_options
from offterm.core.contracts import CollectRequest
from offterm.core.errors import ConfigError, ReaderDisconnected, ReaderError, ReaderNotConnected
from offterm.core.manager import create_plugin_manager
from offterm.core.models import ReadMethod
from offterm.core.registrations import ComponentContext
from offterm.plugins.readers import ble as ble_plugin
from offterm.plugins.readers import card_encryption
from offterm.plugins.readers.ble import BleReaderTransport, parse_options
from offterm.plugins.readers.protocol import ble as gatt

KEY = bytes.fromhex(card_encryption.TEST_BASE_KEY_HEX)
REQUEST = CollectRequest(amount=2500, currency="gbp", timeout=5.0)
Spawn = Callable[..., Any]


def transport(**options: object) -> BleReaderTransport:
    opts = {"scan_timeout": 3.0, "timeout": 2.0, "reconnect_initial_delay": 0.05, "reconnect_max_delay": 0.2}
    return BleReaderTransport(parse_options({**opts, **options}))


def record(conn) -> list[tuple[str, int, str]]:  # noqa: ANN001
    events: list[tuple[str, int, str]] = []
    conn.set_listener(lambda event, info, attempt, reason: events.append((event, attempt, reason)))
    return events


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls another process's effects
            await asyncio.sleep(0.02)


async def test_scan_connect_collect(ble_emulator: Any) -> None:
    t = transport()
    readers = await t.discover(timeout=0.5)
    assert [(r.serial_number, r.transport, r.address, r.label) for r in readers] == [
        ("OFFTERM-EMU-0001", "ble", "F0:0F:7E:00:00:01", "OFFTERM-EMU-0001")
    ]
    conn = await t.connect(readers[0])
    assert conn.info.firmware_version == "offterm-emu-1.0" and conn.is_connected
    for script, brand, method in [
        ("visa_de insert pin", "visa", ReadMethod.CONTACT_EMV),
        ("mastercard tap", "mastercard", ReadMethod.CONTACTLESS_EMV),
        ("amex swipe", "amex", ReadMethod.MAGNETIC_STRIPE),
    ]:
        ble_emulator.command(f"present {script}")
        result = await conn.collect(REQUEST)
        assert (result.details.brand, result.details.read_method) == (brand, method)
        card = card_encryption.decrypt(result.encrypted_card_data, result.key_serial, KEY)
        assert card.read_method == method.value
    await conn.display("Thank you")
    await t.close()
    assert ble_emulator.wait_event("link_down")["by"] == "host"


async def test_frames_are_cut_to_a_small_mtu(spawn_emulator: Spawn, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = spawn_emulator("--ble", "--wait", "--ble-mtu", "23")  # 20 bytes per write or notification
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", emu.address)
    t = transport()
    conn = await t.connect((await t.discover(timeout=0.5))[0])
    emu.command("present eftpos_visa insert name=CHUNKED")
    result = await conn.collect(REQUEST)  # a result frame of ~500 bytes arrives in ~25 notifications
    assert result.details.networks == ("eftpos_au", "visa") and result.details.cardholder_name == "CHUNKED"
    await t.close()


def test_chunks_fit_the_mtu() -> None:
    data = bytes(range(256)) * 3
    for mtu in (23, 185, 517, 1000, 5):
        pieces = gatt.chunks(data, mtu)
        assert b"".join(pieces) == data
        assert max(len(p) for p in pieces) == min(max(mtu, 23), 517) - 3


async def test_name_prefix_filters_discovery(ble_emulator: Any) -> None:
    assert await transport(name_prefix="OTHER").discover(timeout=0.4) == []
    assert len(await transport(name_prefix="offterm").discover(timeout=0.4)) == 1


async def test_disconnect_during_collection_then_reconnect(ble_emulator: Any) -> None:
    t = transport()
    conn = await t.connect((await t.discover(timeout=0.5))[0])
    events = record(conn)
    ble_emulator.command("present visa insert disconnect=0.5")
    with pytest.raises(ReaderDisconnected, match="nothing was stored"):
        await conn.collect(REQUEST)
    with pytest.raises(ReaderNotConnected):
        await conn.collect(REQUEST)
    await until(lambda: conn.is_connected)
    assert events[0] == ("reconnecting", 1, "") and events[-1][0] == "reconnected"
    ble_emulator.command("present discover tap")
    assert (await conn.collect(REQUEST)).details.brand == "discover"
    await t.close()


async def test_giving_up_reports_disconnected(ble_emulator: Any) -> None:
    t = transport(reconnect_attempts=2, scan_timeout=0.3, reconnect_initial_delay=0.05, reconnect_max_delay=0.05)
    conn = await t.connect((await t.discover(timeout=0.5))[0])
    events = record(conn)
    ble_emulator.command("disconnect 60")  # out of range for good
    await until(lambda: any(e == "disconnected" for e, _, _ in events))
    assert [e for e, _, _ in events] == ["reconnecting", "reconnecting", "disconnected"]
    assert not conn.is_connected
    await t.close()


async def test_notification_noise_is_skipped(ble_emulator: Any) -> None:
    t = transport()
    conn = await t.connect((await t.discover(timeout=0.5))[0])
    ble_emulator.command("noise 300")
    ble_emulator.command("present jcb tap")
    assert (await conn.collect(REQUEST)).details.brand == "jcb"
    await t.close()


CRASHING_HOST = """
import asyncio, sys
from bleak import BleakClient
async def main():
    client = BleakClient(sys.argv[1], timeout=5)
    await client.connect()
    print("connected", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_a_stale_link_left_by_a_crashed_process_is_closed_at_start_up(ble_emulator: Any, tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(CRASHING_HOST)
    host = await asyncio.create_subprocess_exec(
        sys.executable, str(script), "F0:0F:7E:00:00:01", stdout=asyncio.subprocess.PIPE, env=os.environ.copy()
    )
    try:
        assert host.stdout is not None
        assert (await asyncio.wait_for(host.stdout.readline(), 20)).strip() == b"connected"
        host.send_signal(signal.SIGKILL)  # BlueZ keeps the link: the reader stops advertising
    finally:
        if host.returncode is None:
            host.kill()
        await host.wait()
    assert ble_emulator.command("status")["connected"] is True
    t = transport()
    readers = await t.discover(timeout=0.5)  # cleans the stale link first, so the reader is found
    assert [r.serial_number for r in readers] == ["OFFTERM-EMU-0001"]
    conn = await t.connect(readers[0])
    ble_emulator.command("present visa tap")
    assert (await conn.collect(REQUEST)).details.last4 == "4242"
    await t.close()


async def test_connecting_twice_is_refused(ble_emulator: Any) -> None:
    t = transport()
    reader = (await t.discover(timeout=0.5))[0]
    await t.connect(reader)
    with pytest.raises(ReaderError, match="already connected"):
        await t.connect(reader)
    await t.close()


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"service_uuid": "nope"}, "reader.ble.service_uuid"),
        ({"scan_timeout": 0}, "reader.ble.scan_timeout"),
        ({"adapter": "hci0; rm"}, "reader.ble.adapter"),
        ({"name_prefix": "x" * 30}, "reader.ble.name_prefix"),
        ({"reconnect_attempts": -2}, "reader.ble.reconnect_attempts"),
        ({"mtu": 23}, "reader.ble.mtu"),
    ],
)
def test_bad_options_name_the_key(options: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as err:
        parse_options(options)
    assert err.value.key == key


def test_registered_under_ble(tmp_path: Path) -> None:
    pm = create_plugin_manager(autoload=False, bundled=(), plugins={"ble-reader": ble_plugin})
    reg = pm.reader_transport("ble")
    assert {o.key for o in reg.options} >= {"service_uuid", "name_prefix", "scan_timeout", "reconnect"}
    options = validate_options("reader.ble", reg.options, {"service_uuid": gatt.SERVICE_UUID.upper()}, env={})
    built = reg.factory(ComponentContext("ble", options, tmp_path))
    assert isinstance(built, BleReaderTransport) and built.settings.service_uuid == gatt.SERVICE_UUID
