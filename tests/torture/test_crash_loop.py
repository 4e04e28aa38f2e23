"""The crash torture, CI-sized: real POS processes SIGKILLed at random and at exact points, under mixed faults.

The mix holds online confirms (killed in flight and after their answer), ``processing`` confirm answers
and key expiry (the simulator's clock jumps 25 h between lives, the POS's idempotency window is 1 s), and
the verdict counts charges the POS never reported once one last Terminal reconciled each store's journal.

The full run (1,000+ kills, 10,000+ payments) is ``python bench/torture.py``; this is the same harness
with small targets, so every CI run proves the promise again on fresh random choices of the same seed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from offterm.testing.torture.crash import Settings, run

pytestmark = pytest.mark.slow


def test_twenty_sigkills_lose_and_double_nothing(tmp_path: Path) -> None:
    stats = run(Settings(seed=20260301, kills=20, payments=120, lives_per_station=8), tmp_path)

    assert stats.kills >= 20 and stats.payments >= 120
    assert stats.failures == []
    assert stats.lost == 0, "every payment the POS reported is on the ledger or in a named final state"
    assert stats.duplicated == 0, "no payment was charged twice"
    # Every charge on the ledger is one the POS reported paid, stored, or recovered "charged" from its journal.
    assert stats.unreported_charges == 0, "a charge the POS never reported"
    assert stats.open_failures == 0 and stats.opens > 0, "the database always opens"
    assert stats.hung_lives == 0
    assert stats.migrations_completed >= 1, "an old-schema database was migrated (and killed during it)"
    # The kills really landed where they were aimed, and the faults really happened.
    points = set(stats.kills_by_point)
    assert {"inside store()", "right after confirm returned"} & points
    assert {"forward request in flight", "forward answered, not recorded", "random: forwarding"} & points
    assert sum(stats.sim_faults.values()) > 0 and sum(stats.proxy_faults.values()) > 0
    assert stats.reported["stored"] > 0 and stats.reported["online"] > 0
    assert stats.reported_by_behavior["require_online: online"] > 0
    assert stats.clock_jumps >= 1, "keys expired at the processor between lives"
    assert sum(stats.recovered.values()) > 0, "online confirms a kill interrupted were reconciled"
    finished = sum(n for state, n in stats.final_states.items() if state.endswith(("forwarded", "declined")))
    assert finished >= stats.reported["stored"] - stats.final_states.get("needs_attention", 0)
