"""The crash torture, CI-sized: real POS processes SIGKILLed at random and at exact points, under mixed faults.

The full run (1,000+ kills, 10,000+ payments) is ``python bench/torture.py``; this is the same harness
with small targets, so every CI run proves the promise again on fresh random choices of the same seed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from torture_crash import Settings, run

pytestmark = pytest.mark.slow


def test_twenty_sigkills_lose_and_double_nothing(tmp_path: Path) -> None:
    stats = run(Settings(seed=20260301, kills=20, payments=200, lives_per_station=8), tmp_path)

    assert stats.kills >= 20 and stats.payments >= 200
    assert stats.failures == []
    assert stats.lost == 0, "every payment the POS reported is on the ledger or in a named final state"
    assert stats.duplicated == 0, "no payment was charged twice"
    assert stats.open_failures == 0 and stats.opens > 0, "the database always opens"
    assert stats.hung_lives == 0
    assert stats.migrations_completed >= 1, "an old-schema database was migrated (and killed during it)"
    # The kills really landed where they were aimed, and the faults really happened.
    points = set(stats.kills_by_point)
    assert {"inside store()", "right after confirm returned"} & points
    assert {"forward request in flight", "forward answered, not recorded", "random: forwarding"} & points
    assert sum(stats.sim_faults.values()) > 0 and sum(stats.proxy_faults.values()) > 0
    assert stats.reported["stored"] > 0 and stats.reported["online"] > 0
    finished = sum(n for state, n in stats.final_states.items() if state.endswith(("forwarded", "declined")))
    assert finished >= stats.reported["stored"] - stats.final_states.get("needs_attention", 0)
