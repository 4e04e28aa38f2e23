"""Fixtures for the forwarding tests: a simulator, a fault proxy, a recorder, the kit plugins."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from forwarding_kit import KitPlugin  # noqa: E402

from offterm.sim.netproxy import FaultProxy  # noqa: E402
from offterm.sim.processor import SimHandle, start_simulator  # noqa: E402
from offterm.testing import HookRecorder  # noqa: E402


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    handle = start_simulator()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def proxy(sim: SimHandle) -> Iterator[FaultProxy]:
    """The POS's network: every request (API, backend, probe) goes through it."""
    p = FaultProxy(sim.port).start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def recorder() -> HookRecorder:
    return HookRecorder()


@pytest.fixture
def kit() -> KitPlugin:
    return KitPlugin()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "pos"
