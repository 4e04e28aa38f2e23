"""One network or processor fault at a time under a running Terminal: typed errors, nothing lost or doubled."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from offterm.sim.processor import SimHandle
from offterm.testing.torture.battery import _PROXY_CASES, _SIM_CASES, _network_case

pytestmark = pytest.mark.slow

PROXY = [
    "network down",
    "black hole (accepted, never answered)",
    "half-open: an established connection stops answering",
]
PROXY += ["flapping between up, down and black hole"]  # (slow answers: the bench run and the crash torture)
SIM = ["processor answers 503", "processor answers 502 (HTML)", "request ran, answer lost"]
SIM += ["request ran, answer later than the timeout"]


@pytest.mark.parametrize("case", PROXY)
async def test_proxy_fault(case: str, simulator: SimHandle, tmp_path: Path) -> None:
    result = await _network_case(case, simulator, tmp_path, random.Random(case), 4, proxy_mode=_PROXY_CASES[case])
    assert result["ok"], result["note"]
    assert result["lost"] == 0 and result["duplicated"] == 0


@pytest.mark.parametrize("case", SIM)
async def test_processor_fault(case: str, simulator: SimHandle, tmp_path: Path) -> None:
    result = await _network_case(case, simulator, tmp_path, random.Random(case), 4, sim_faults=_SIM_CASES[case])
    assert result["ok"], result["note"]
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert "injected" in result["note"], "the simulator really injected the fault"
