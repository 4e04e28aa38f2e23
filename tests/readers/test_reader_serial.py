"""The serial plugin over real pseudo-terminals and sockets, the emulator in another process."""

from __future__ import annotations

import asyncio
import os
import signal
import tty
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from offterm.core.config import load_config
from offterm.core.contracts import CollectRequest, ReaderInfo
from offterm.core.errors import ConfigError, ReaderDisconnected, ReaderError, ReaderNotConnected
from offterm.core.manager import create_plugin_manager
from offterm.core.models import ReadMethod
from offterm.core.registrations import ComponentContext
from offterm.plugins.readers import card_encryption
from offterm.plugins.readers import serial as serial_plugin
from offterm.plugins.readers.serial import SerialReaderTransport, parse_options

Spawn = Callable[..., Any]
KEY = bytes.fromhex(card_encryption.TEST_BASE_KEY_HEX)
REQUEST = CollectRequest(amount=500, currency="usd", timeout=5.0)


def transport(port: str, **options: object) -> SerialReaderTransport:
    opts = {"port": port, "timeout": 1.0, "reconnect_initial_delay": 0.05, "reconnect_max_delay": 0.2, **options}
    return SerialReaderTransport(parse_options(opts))


def record(conn) -> list[tuple[str, int, str]]:  # noqa: ANN001
    events: list[tuple[str, int, str]] = []
    conn.set_listener(lambda event, info, attempt, reason: events.append((event, attempt, reason)))
    return events


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls another process's effects
            await asyncio.sleep(0.01)


async def test_discover_connect_collect_over_a_pty(serial_emulator: Any) -> None:
    t = transport(serial_emulator.address)
    readers = await t.discover(timeout=2)
    assert [(r.serial_number, r.transport, r.address) for r in readers] == [
        ("OFFTERM-EMU-0001", "serial", serial_emulator.address)
    ]
    conn = await t.connect(readers[0])
    serial_emulator.command("present mastercard tap")
    result = await conn.collect(REQUEST)
    assert (result.details.brand, result.details.last4, result.details.read_method) == (
        "mastercard",
        "4444",
        ReadMethod.CONTACTLESS_EMV,
    )
    assert card_encryption.decrypt(result.encrypted_card_data, result.key_serial, KEY).pan == "5555555555554444"
    assert serial_emulator.wait_event("result")["last4"] == "4444"
    await t.close()
    assert not conn.is_connected


async def test_line_noise_between_frames_is_skipped(serial_emulator: Any) -> None:
    t = transport(serial_emulator.address)
    conn = await t.connect((await t.discover())[0])
    for _ in range(3):
        serial_emulator.command("noise 500")
        serial_emulator.command("present visa tap")
        assert (await conn.collect(REQUEST)).details.last4 == "4242"
    assert conn.is_connected
    await t.close()


async def test_disconnect_during_collection_then_reconnect(serial_emulator: Any) -> None:
    t = transport(serial_emulator.address)
    conn = await t.connect((await t.discover())[0])
    events = record(conn)
    serial_emulator.command("present visa insert disconnect=0.3")
    with pytest.raises(ReaderDisconnected, match="nothing was stored"):
        await conn.collect(REQUEST)
    with pytest.raises(ReaderNotConnected):
        await conn.collect(REQUEST)
    await until(lambda: conn.is_connected)
    assert serial_emulator.wait_event("link_down")["seconds"] == 0.3
    assert serial_emulator.wait_event("link_up")["address"].startswith("/dev/pts/")
    assert events[0] == ("reconnecting", 1, "") and events[-1][0] == "reconnected"
    serial_emulator.command("present amex insert")
    assert (await conn.collect(REQUEST)).details.brand == "amex"
    await t.close()


async def test_a_rebooted_reader_process_is_found_again(tmp_path: Path, spawn_emulator: Spawn) -> None:
    link = tmp_path / "reader"
    first = spawn_emulator("--serial", "--link", str(link), "--wait")
    t = transport(str(link), reconnect_attempts=0)
    conn = await t.connect((await t.discover())[0])
    events = record(conn)
    first.proc.send_signal(signal.SIGKILL)  # power loss: no goodbye
    first.proc.wait(5)
    await until(lambda: any(e == "reconnecting" for e, _, _ in events))
    assert not conn.is_connected
    second = spawn_emulator("--serial", "--link", str(link), "--wait")
    await until(lambda: conn.is_connected)
    assert events[-1][0] == "reconnected"
    second.command("present discover tap")
    assert (await conn.collect(REQUEST)).details.brand == "discover"
    await t.close()


async def test_giving_up_reports_disconnected(tmp_path: Path, spawn_emulator: Spawn) -> None:
    link = tmp_path / "reader"
    emu = spawn_emulator("--serial", "--link", str(link), "--wait")
    t = transport(str(link), reconnect_attempts=2, reconnect_initial_delay=0.01, reconnect_max_delay=0.01)
    conn = await t.connect((await t.discover())[0])
    events = record(conn)
    emu.stop()
    await until(lambda: any(e == "disconnected" for e, _, _ in events))
    assert [e for e, _, _ in events] == ["reconnecting", "reconnecting", "disconnected"]
    assert "gave up after 2 attempts" in events[-1][2]
    await t.close()


async def test_the_same_reader_cannot_be_opened_twice(serial_emulator: Any) -> None:
    a, b = transport(serial_emulator.address), transport(serial_emulator.address)
    reader = (await a.discover())[0]
    await a.connect(reader)
    with pytest.raises(ReaderError, match="already connected"):
        await a.connect(reader)
    with pytest.raises(ReaderError, match="lock"):  # another process (or transport) holds the port
        await b.connect(reader)
    await a.close()
    await b.close()


async def test_a_port_nobody_answers_on_is_not_a_reader() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        t = transport(os.ttyname(slave), timeout=0.2)
        assert await t.discover(timeout=0.2) == []
        info = ReaderInfo("R1", "x", "serial", os.ttyname(slave))
        with pytest.raises(ReaderError, match="no reader answered"):
            await t.connect(info)
        with pytest.raises(ReaderError, match="cannot open serial port"):
            await t.connect(ReaderInfo("R1", "x", "serial", "/dev/does-not-exist"))
    finally:
        os.close(master)
        os.close(slave)


async def test_writes_larger_than_the_os_buffer_arrive_whole_and_in_order() -> None:
    """A write goes straight to the port; what the OS buffer does not take at once still arrives."""
    import threading
    import time

    from offterm.plugins.readers._serial_link import SerialLink

    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    received = bytearray()
    data = bytes(range(256)) * 1024  # 256 KiB: far more than a pty buffers
    expected = data + b"tail"

    def drain() -> None:  # a slow reader on the other end
        while len(received) < len(expected):
            time.sleep(0.001)
            received.extend(os.read(master, 4096))

    link = SerialLink(os.ttyname(slave), 115200, write_timeout=10.0)
    try:
        await link.open(lambda _data: None, lambda _reason: None)
        assert link._write_fd is not None  # the direct path is the one under test
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        await link.write(data)
        await link.write(b"tail")
        reader.join(10)
        assert bytes(received) == expected
    finally:
        await link.close()
        os.close(master)
        os.close(slave)


async def test_over_tcp_with_a_pyserial_url(tcp_emulator: Any) -> None:
    assert tcp_emulator.address.startswith("socket://127.0.0.1:")
    t = transport(tcp_emulator.address)
    conn = await t.connect((await t.discover())[0])
    events = record(conn)
    tcp_emulator.command("present interac tap")
    assert (await conn.collect(REQUEST)).details.brand == "interac"
    tcp_emulator.command("disconnect 0.3")
    await until(lambda: events and events[-1][0] == "reconnected")
    tcp_emulator.command("present unionpay insert")
    assert (await conn.collect(REQUEST)).details.brand == "unionpay"
    await t.close()


# -- discovery and configuration -------------------------------------------------------------------------


def test_usb_discovery_filters_by_vid_and_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = [
        SimpleNamespace(device="/dev/ttyS0", vid=None, pid=None),
        SimpleNamespace(device="/dev/ttyACM1", vid=0x0403, pid=0x6001),
        SimpleNamespace(device="/dev/ttyACM0", vid=0x0403, pid=0x6015),
        SimpleNamespace(device="/dev/ttyUSB0", vid=0x10C4, pid=0xEA60),
    ]
    monkeypatch.setattr(serial_plugin.serial.tools.list_ports, "comports", lambda: ports)
    every_usb = ["/dev/ttyACM0", "/dev/ttyACM1", "/dev/ttyUSB0"]
    assert SerialReaderTransport(parse_options({})).candidate_ports() == every_usb
    assert SerialReaderTransport(parse_options({"vid": "0x0403"})).candidate_ports() == ["/dev/ttyACM0", "/dev/ttyACM1"]
    assert SerialReaderTransport(parse_options({"vid": 1027, "pid": 0x6015})).candidate_ports() == ["/dev/ttyACM0"]
    assert SerialReaderTransport(parse_options({"port": "/dev/x", "vid": 1})).candidate_ports() == ["/dev/x"]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"vid": "usb"}, "reader.serial.vid"),
        ({"pid": 0x10000}, "reader.serial.pid"),
        ({"port": " "}, "reader.serial.port"),
        ({"baudrate": 10}, "reader.serial.baudrate"),
        ({"timeout": 100}, "reader.serial.timeout"),
        ({"colour": "red"}, "reader.serial.colour"),
    ],
)
def test_bad_options_name_the_key(options: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as err:
        parse_options(options)
    assert err.value.key == key


def test_registered_under_serial_with_documented_options(tmp_path: Path) -> None:
    pm = create_plugin_manager(autoload=False, bundled=(), plugins={"serial-reader": serial_plugin})
    reg = pm.reader_transport("serial")
    assert {o.key for o in reg.options} >= {"port", "vid", "pid", "timeout", "reconnect", "reconnect_attempts"}
    assert all(o.help for o in reg.options)
    config = load_config({"reader": {"transport": "serial", "serial": {"port": "socket://127.0.0.1:9", "vid": 1}}})
    built = reg.factory(ComponentContext("serial", config.component("reader", reg), tmp_path))
    assert isinstance(built, SerialReaderTransport) and built.settings.port == "socket://127.0.0.1:9"


async def test_usb_discovery_and_a_reader_that_re_enumerates(
    tmp_path: Path, spawn_emulator: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found via list_ports (vid/pid filter); after a replug under a new name, reconnection finds it again."""
    emu = spawn_emulator("--serial", "--wait")
    first, second = tmp_path / "ttyACM0", tmp_path / "ttyACM1"
    first.symlink_to(emu.address)
    ports = [SimpleNamespace(device=str(first), vid=0x0403, pid=0x6015)]
    monkeypatch.setattr(serial_plugin.serial.tools.list_ports, "comports", lambda: list(ports))
    t = SerialReaderTransport(
        parse_options({"vid": "0x0403", "pid": 0x6015, "timeout": 1.0, "reconnect_initial_delay": 0.05})
    )
    [reader] = await t.discover(timeout=1.0)
    assert reader.address == str(first)
    conn = await t.connect(reader)
    events = record(conn)
    emu.command("disconnect 0.2")  # unplugged...
    first.unlink()
    new_pty = emu.wait_event("link_up")["address"]
    second.symlink_to(new_pty)  # ...and back under another name
    ports[:] = [SimpleNamespace(device=str(second), vid=0x0403, pid=0x6015)]
    await until(lambda: bool(events))
    await until(lambda: conn.is_connected)
    assert conn.info.address == str(second) and events[-1][0] == "reconnected"
    emu.command("present visa tap")
    assert (await conn.collect(REQUEST)).details.last4 == "4242"
    await t.close()
