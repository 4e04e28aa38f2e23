"""Fixtures for end-to-end tests: a real processor simulator (``simulator``) behind a fault proxy (``network``).

Both are offterm.testing's, aliased in tests/conftest.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from offterm.core import hookimpl
from offterm.sim.netproxy import FaultProxy


@pytest.fixture
def terminal_config(tmp_path, network: FaultProxy) -> dict[str, Any]:
    return {
        "terminal": {
            "data_dir": str(tmp_path / "pos"),
            "offline_enabled": True,
            "offline_timeout": 3.0,
            "probe_min_interval": 0.05,
            "probe_max_interval": 0.5,
        },
        "plugins": {"autoload": False},
        "reader": {"transport": "simulated"},
        "storage": {"backend": "sqlcipher", "key_provider": "file"},
        "tokens": {"providers": ["http"], "http": {"url": network.url + "/backend/connection_token"}},
        "forwarding": {
            "transport": "stripe",
            "interval": 60.0,
            "stripe": {"api_base": network.url, "timeout": 5.0, "connect_timeout": 1.0},
        },
        "acceptance": {"limits": {"max_amount": {"usd": 100_000, "eur": 100_000}}},
    }


class EventRecorder:
    """An event-listener plugin that records every event in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def of(self, name: str) -> list[dict[str, Any]]:
        return [kw for n, kw in self.events if n == name]

    @hookimpl
    def offterm_on_offline_status_changed(self, status):
        self.events.append(("offline_status_changed", {"status": status}))

    @hookimpl
    def offterm_on_network_status_changed(self, status, previous):
        self.events.append(("network_status_changed", {"status": status, "previous": previous}))

    @hookimpl
    def offterm_on_payment_stored(self, intent):
        self.events.append(("payment_stored", {"intent": intent}))

    @hookimpl
    def offterm_on_payment_intent_forwarded(self, intent, error):
        self.events.append(("payment_intent_forwarded", {"intent": intent, "error": error}))

    @hookimpl
    def offterm_on_forwarding_failure(self, error):
        self.events.append(("forwarding_failure", {"error": error}))

    @hookimpl
    def offterm_on_reader_connected(self, reader):
        self.events.append(("reader_connected", {"reader": reader}))

    @hookimpl
    def offterm_on_reader_disconnected(self, reader, reason):
        self.events.append(("reader_disconnected", {"reader": reader, "reason": reason}))

    @hookimpl
    def offterm_on_reader_reconnecting(self, reader, attempt):
        self.events.append(("reader_reconnecting", {"reader": reader, "attempt": attempt}))


@pytest.fixture
def recorder() -> EventRecorder:
    return EventRecorder()
