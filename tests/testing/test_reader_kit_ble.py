"""The BLE reader passes the reader conformance kit: real bleak against the fake BlueZ of the reader tests.

The emulator process serves a fake BlueZ (python-dbusmock) on a private
system bus; the fixtures that start it are those of ``tests/readers``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path
from typing import Any

import pytest

from offterm.core.contracts import ReaderConnection
from offterm.plugins.readers.ble import BleReaderTransport, parse_options
from offterm.testing import CardPresenter, LinkAction, ReaderTransportConformance


def _reader_fixtures() -> Any:
    """tests/readers/conftest.py as a module of its own (its fixtures are imported below)."""
    path = Path(__file__).resolve().parents[1] / "readers" / "conftest.py"
    spec = importlib.util.spec_from_file_location("offterm_tests_readers_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fixtures = _reader_fixtures()
spawn_emulator = _fixtures.spawn_emulator
ble_emulator = _fixtures.ble_emulator


def wait_until_idle(emulator: Any, timeout: float = 5.0) -> None:
    """Until the emulator runs no collection (a cancel the host sent has reached it)."""
    deadline = time.monotonic() + timeout
    while emulator.command("status")["collecting"] is not None:
        if time.monotonic() > deadline:
            raise TimeoutError("the reader emulator is still collecting")
        time.sleep(0.02)


class TestBleReaderConformance(ReaderTransportConformance):
    transport_name = "ble"
    supports_link_loss = True
    discover_timeout = 0.5  # a BLE scan lasts its whole timeout

    @pytest.fixture
    def reader_transport(self, ble_emulator: Any) -> Any:
        options = {"scan_timeout": 3.0, "timeout": 2.0, "reconnect_initial_delay": 0.05, "reconnect_max_delay": 0.2}
        return lambda: BleReaderTransport(parse_options(options))

    @pytest.fixture
    def present_card(self, ble_emulator: Any) -> CardPresenter:
        async def present(connection: ReaderConnection, card: str) -> None:
            await asyncio.to_thread(wait_until_idle, ble_emulator)
            answer = await asyncio.to_thread(ble_emulator.command, f"present {card} tap")
            assert "ok" in answer, answer

        return present

    @pytest.fixture
    def drop_link(self, ble_emulator: Any) -> LinkAction:
        async def drop(connection: ReaderConnection) -> None:
            await asyncio.to_thread(ble_emulator.command, "disconnect 0.5")

        return drop
