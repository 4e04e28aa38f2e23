"""The bundled simulated reader passes the reader conformance kit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest

from offterm.core.contracts import ReaderConnection
from offterm.plugins.readers.simulated import SimulatedReaderConnection, SimulatedReaderTransport
from offterm.testing import CardPresenter, LinkAction, ReaderTransportConformance


def _simulated(connection: ReaderConnection) -> SimulatedReaderConnection:
    assert isinstance(connection, SimulatedReaderConnection)
    return connection


class TestSimulatedReaderConformance(ReaderTransportConformance):
    transport_name = "simulated"
    supports_link_loss = True

    @pytest.fixture
    def reader_transport(self) -> SimulatedReaderTransport:
        return SimulatedReaderTransport()

    @pytest.fixture
    def present_card(self) -> CardPresenter:
        return lambda connection, card: _simulated(connection).present_card(card)

    @pytest.fixture
    def withhold_card(self) -> LinkAction:
        return lambda connection: _simulated(connection).present_card(never=True)

    @pytest.fixture
    def drop_link(self) -> LinkAction:
        return lambda connection: _simulated(connection).simulate_disconnect(reconnect=True)


class TestSimulatedReaderWithAnotherCard(ReaderTransportConformance):
    """The kit with a non-default card, and the transport made inside the event loop."""

    card = "mastercard"

    @pytest.fixture
    def reader_transport(self) -> type[SimulatedReaderTransport]:
        return SimulatedReaderTransport

    @pytest.fixture
    def present_card(self) -> CardPresenter:
        async def present(connection: ReaderConnection, card: str) -> None:
            cast(SimulatedReaderConnection, connection).present_card(card)

        return present

    @pytest.fixture
    def withhold_card(self) -> LinkAction:
        return lambda connection: _simulated(connection).present_card(never=True)


LEAKY_PLUGIN_TEST = '''
import logging

import pytest

from offterm.plugins.readers.simulated import SimulatedReaderTransport
from offterm.testing import ReaderTransportConformance


class LeakyTransport(SimulatedReaderTransport):
    """Logs the card number it read: the kit must catch it."""

    async def connect(self, reader):
        connection = await super().connect(reader)
        collect = connection.collect

        async def leaky_collect(request):
            result = await collect(request)
            logging.getLogger("leaky").debug("read %s", "4242" "4242" "4242" "4242")
            return result

        connection.collect = leaky_collect
        return connection


class TestLeakyReader(ReaderTransportConformance):
    @pytest.fixture
    def reader_transport(self):
        return LeakyTransport()

    @pytest.fixture
    def present_card(self):
        return lambda connection, card: connection.present_card(card)

    @pytest.fixture
    def withhold_card(self):
        return lambda connection: connection.present_card(never=True)
'''


def test_a_plain_project_runs_the_kit_and_it_catches_a_logged_card_number(tmp_path: Path) -> None:
    """No conftest, no asyncio plugin: the kit runs as a third-party suite would run it."""
    (tmp_path / "test_leaky_reader.py").write_text(LEAKY_PLUGIN_TEST)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio", str(tmp_path)],
        cwd=tmp_path,
        env=dict(os.environ, PYTEST_ADDOPTS=""),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    # Every check that collects a card errors on the log line (in the kit's teardown); the others pass.
    assert "6 passed, 1 skipped, 4 errors" in output, output
    assert "a log record of 'leaky' (call) holds the card number" in output
