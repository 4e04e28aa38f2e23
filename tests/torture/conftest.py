"""Fixtures for the torture tests: a real simulator behind a fault proxy, and a Terminal wired to it."""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offterm.sim.netproxy import FaultProxy
from offterm.sim.processor import SimHandle, start_simulator
from offterm.testing.torture.payments import pos_config


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


@pytest.fixture
def config(tmp_path: Path, proxy: FaultProxy) -> dict[str, Any]:
    return pos_config(tmp_path / "pos", proxy.url)


@pytest.fixture(autouse=True)
def stack_dump_if_stuck() -> Iterator[None]:
    """A torture test that hangs leaves every thread's stack in the CI log (after 240 s) instead of nothing."""
    faulthandler.dump_traceback_later(240, exit=False, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
