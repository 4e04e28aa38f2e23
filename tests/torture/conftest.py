"""Fixtures for the torture tests: a real simulator behind a fault proxy, and a Terminal wired to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offterm.sim.netproxy import FaultProxy
from offterm.sim.processor import SimHandle, start_simulator


@pytest.fixture
def simulator() -> Iterator[SimHandle]:
    handle = start_simulator()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def proxy(simulator: SimHandle) -> Iterator[FaultProxy]:
    """The POS's network: every request to the processor and to the backend goes through it."""
    net = FaultProxy(simulator.port, delay=0.2, drip_bytes=64, drip_interval=0.01).start()
    try:
        yield net
    finally:
        net.stop()


def pos_config(data_dir: Path, url: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """A Terminal config with short timeouts, pointed at ``url`` (a proxy, the simulator, or a hostile server)."""
    config: dict[str, Any] = {
        "terminal": {
            "data_dir": str(data_dir),
            "offline_enabled": True,
            "offline_timeout": 1.0,
            "probe_min_interval": 0.05,
            "probe_max_interval": 0.3,
        },
        "plugins": {"autoload": False, "strict": True},
        "reader": {"transport": "simulated"},
        "storage": {"backend": "sqlcipher", "key_provider": "file", "sqlcipher": {"reserve_bytes": 65536}},
        "tokens": {"providers": ["http"], "http": {"url": url + "/backend/connection_token", "timeout": 1.0}},
        "forwarding": {
            "transport": "stripe",
            "interval": 60.0,
            "lease_seconds": 2.0,
            "close_timeout": 0.5,
            "stripe": {"api_base": url, "timeout": 1.0, "connect_timeout": 0.5, "probe_timeout": 0.5},
        },
        "forwarding_policy": {"default": {"base_delay": 0.01, "max_delay": 0.05, "max_attempts": 0, "seed": 7}},
        "acceptance": {"limits": {"max_amount": {"usd": 1_000_000}, "max_age_hours": 0}},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


@pytest.fixture
def config(tmp_path: Path, proxy: FaultProxy) -> dict[str, Any]:
    return pos_config(tmp_path / "pos", proxy.url)
