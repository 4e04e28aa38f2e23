"""Disk faults under a running Terminal, on real filesystems (see offterm.testing.torture.disk)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from offterm.sim.processor import SimHandle, start_simulator
from offterm.testing.torture.battery import disk_row
from offterm.testing.torture.disk import run_scenario
from offterm.testing.torture.payments import successful

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim() -> Iterator[SimHandle]:
    handle = start_simulator()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def reports(sim: SimHandle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Each scenario runs once per module; several tests read its report."""
    cache: dict[str, dict[str, Any]] = {}

    def get(scenario: str) -> dict[str, Any]:
        if scenario not in cache:
            cache[scenario] = run_scenario(scenario, tmp_path_factory.mktemp(scenario), sim.url)
        return cache[scenario]

    return cache | {"get": get}  # type: ignore[dict-item]


def _report(reports: dict[str, Any], scenario: str) -> dict[str, Any]:
    report: dict[str, Any] = reports["get"](scenario)
    if "skipped" in report:
        pytest.skip(report["skipped"])
    assert "failed" not in report, report.get("failed")
    return report


@pytest.mark.parametrize("scenario", ["full", "full_rlimit"])
def test_a_full_disk_refuses_with_a_typed_error_and_loses_nothing(
    scenario: str, reports: dict[str, Any], sim: SimHandle
) -> None:
    report = _report(reports, scenario)
    assert report["untyped"] == []
    assert report["typed"].get("offline_storage_full", 0) >= 5, "every payment the full disk could not take"
    assert report["close_after"] == "ok"
    assert len(report["stored"]) > 0
    # After space came back: every payment reported stored is there, forwarded exactly once.
    assert report["remaining"] == 0
    assert set(report["stored"]) <= set(report["states"])
    charged = successful(sim.ledger())
    assert all(charged.get(oid) == 1 for oid in report["stored"] if report["states"][oid] == "forwarded")
    assert {report["states"][oid] for oid in report["stored"]} <= {"forwarded", "declined"}


def test_a_filesystem_turning_read_only_refuses_with_a_typed_error_and_loses_nothing(
    reports: dict[str, Any], sim: SimHandle
) -> None:
    report = _report(reports, "readonly")
    assert report["untyped"] == []
    assert report["stored_while_readonly"] == [], "nothing is reported stored on a read-only filesystem"
    assert report["typed"].get("storage_error", 0) == 3, "each payment tried while read-only was refused"
    # (close() itself may raise or hang while the filesystem is read-only: test_found_bugs.py)
    assert report["remaining"] == 0
    assert len(report["stored"]) == 8 and set(report["stored"]) <= set(report["states"])
    charged = successful(sim.ledger())
    assert all(charged.get(oid) == 1 for oid in report["stored"])


@pytest.mark.parametrize("scenario", ["full", "readonly"])
def test_the_battery_row_agrees(scenario: str, reports: dict[str, Any], sim: SimHandle) -> None:
    report = _report(reports, scenario)
    row = disk_row(scenario, scenario, report, successful(sim.ledger()))
    assert row["lost"] == 0 and row["duplicated"] == 0
