"""Bad input ends in typed errors, never a crash, a hang or a lost payment (see offterm.testing.torture.inputs)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from offterm.sim.processor import SimHandle
from offterm.testing.torture.hostile import ACTS
from offterm.testing.torture.inputs import (
    config_cases,
    frame_cases,
    hostile_backend_case,
    hostile_case,
    key_cases,
    tamper_cases,
)

pytestmark = pytest.mark.slow

#: The slow acts (an answer dripped over seconds) run in the full bench run; here the fast ones.
FAST_ACTS = [act for act in ACTS if "drip" not in act]


@pytest.mark.parametrize("act", FAST_ACTS)
async def test_hostile_processor_answer(act: str, simulator: SimHandle, tmp_path: Path) -> None:
    result = await hostile_case(act, simulator, tmp_path, random.Random(act), huge_bytes=4 << 20, bomb_bytes=16 << 20)
    assert result["ok"], result["note"]
    assert result["tried"] >= 1, "the hostile answer was really served"
    assert result["lost"] == 0 and result["duplicated"] == 0


@pytest.mark.parametrize("act", ["garbage", "html_200", "error_500_garbage"])
async def test_hostile_token_backend(act: str, simulator: SimHandle, tmp_path: Path) -> None:
    result = await hostile_backend_case(act, simulator, tmp_path, random.Random(act))
    assert result["ok"], result["note"]
    assert result["tried"] >= 1


def test_malformed_configuration_values(simulator: SimHandle, tmp_path: Path) -> None:
    [result] = config_cases(simulator.url, tmp_path, random.Random(4), limit=40)
    assert result["ok"], result["note"]  # (values already known to fail are xfail cases in test_found_bugs.py)
    assert result["typed_errors"] >= 20


async def test_tampered_database_bytes(simulator: SimHandle, tmp_path: Path) -> None:
    [result] = await tamper_cases(simulator, tmp_path, random.Random(5), tries=10)
    assert result["ok"], result["note"]
    assert result["typed_errors"] >= 1, "tampering is noticed"


async def test_wrong_or_unusable_storage_keys(simulator: SimHandle, tmp_path: Path) -> None:
    [result] = await key_cases(simulator, tmp_path)
    assert result["ok"], result["note"]
    assert result["typed_errors"] + len(result.get("known", [])) == result["tried"]


def test_fuzzed_reader_frames() -> None:
    [result] = frame_cases(random.Random(6), tries=3000)
    assert result["ok"], result["note"]
    assert result["typed_errors"] > 1000
