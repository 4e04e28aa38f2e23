"""A POS life that hangs is killed with its stacks on file: what it waited for, not only that it hung."""

from __future__ import annotations

from pathlib import Path

from offterm.sim.processor import SimHandle
from offterm.testing.torture import crash


def test_a_hung_life_leaves_its_tasks_and_threads_stacks(simulator: SimHandle, tmp_path: Path) -> None:
    station = crash.Station(tmp_path, 1)
    plan = {
        "side_file": str(station.side),
        "life": 0,
        "seed": 1,
        "payments": 0,
        "linger": 60.0,  # idles far past its time limit: "hung" as far as the harness can tell
        "kill": {"point": "none"},
        "config": crash.worker_config(station, simulator.url, 1),
    }
    result = crash.run_life(station, None, plan, outside_kill_after=None, max_seconds=6.0)

    assert result.killed_by == "hung"
    assert result.dump == station.dir / "hung-life-0.txt"
    dump = result.dump.read_text()
    # the asyncio tasks, each with its chain of awaits down to where it waits
    assert "--- asyncio tasks of pid" in dump
    assert "pos_worker.py" in dump and 'in run: await asyncio.sleep(float(plan.get("linger"' in dump
    assert "offterm-forwarder" in dump  # the Terminal's background tasks too
    # every thread's Python stack (faulthandler), which works even with the event loop blocked
    assert "Current thread" in dump or "Thread 0x" in dump
    stats = crash.Stats()
    crash.account(result, "none", station, stats)
    assert stats.hung_lives == 1 and str(result.dump) in stats.failures[0]
