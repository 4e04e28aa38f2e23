"""The USB-serial reader passes the reader conformance kit: a real pty, the emulator in another process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offterm.core.contracts import ReaderConnection
from offterm.plugins.readers.serial import SerialReaderTransport, parse_options
from offterm.testing import CardPresenter, LinkAction, ReaderEmulatorProcess, ReaderTransportConformance


def wait_until_idle(emulator: ReaderEmulatorProcess, timeout: float = 5.0) -> None:
    """Until the emulator runs no collection (a cancel the host sent has reached it)."""
    deadline = time.monotonic() + timeout
    while emulator.status()["collecting"] is not None:
        if time.monotonic() > deadline:
            raise TimeoutError("the reader emulator is still collecting")
        time.sleep(0.02)


def emulator_presenter(emulator: ReaderEmulatorProcess) -> CardPresenter:
    async def present(connection: ReaderConnection, card: str) -> None:
        await asyncio.to_thread(wait_until_idle, emulator)
        await asyncio.to_thread(emulator.present, f"{card} insert pin")

    return present


class TestSerialReaderConformance(ReaderTransportConformance):
    transport_name = "serial"
    supports_link_loss = True

    @pytest.fixture
    def reader_link(self, tmp_path: Path) -> Path:
        """A stable symlink to the emulator's current pty (a new pty after each dropped link)."""
        return tmp_path / "reader"

    @pytest.fixture
    def emulator(self, reader_link: Path) -> Iterator[ReaderEmulatorProcess]:
        """The emulator in its own process; it waits for a card to be presented."""
        args = ["--link", str(reader_link), "--wait", "--exit-with-parent"]
        with ReaderEmulatorProcess("serial", args=args) as emulator:
            yield emulator

    @pytest.fixture
    def reader_transport(self, emulator: ReaderEmulatorProcess, reader_link: Path) -> SerialReaderTransport:
        options = {"timeout": 1.0, "reconnect_initial_delay": 0.05, "reconnect_max_delay": 0.2}
        return SerialReaderTransport(parse_options({"port": str(reader_link), **options}))

    @pytest.fixture
    def present_card(self, emulator: ReaderEmulatorProcess) -> CardPresenter:
        return emulator_presenter(emulator)

    @pytest.fixture
    def drop_link(self, emulator: ReaderEmulatorProcess) -> LinkAction:
        async def drop(connection: ReaderConnection) -> None:
            await asyncio.to_thread(emulator.disconnect, 0.3)

        return drop
