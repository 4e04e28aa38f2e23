"""The fleet torture, CI-sized: lanes, the hub forwarder and PostgreSQL killed at random; device loss.

The full run is ``python bench/fleet_torture.py`` (docs/fleet.md, "Proof"); this is the same harness
(``offterm.testing.torture.fleet``) with small targets: 3 lane processes against a real PostgreSQL
cluster of its own, the processor simulator's ledger as the ground truth.
"""

from __future__ import annotations

from offterm.testing.torture import fleet


def test_a_small_fleet_torture_loses_nothing_and_charges_nothing_twice(tmp_path) -> None:
    settings = fleet.FleetSettings(
        seed=20261205,
        kills=15,
        payments=150,
        pg_every=(4.0, 9.0),  # a PostgreSQL crash or more within the short run
        lan_every=(0.5, 2.0),
        device_loss_payments=10,
        max_seconds=75.0,
        # The crash torture's 1 s window (the default here): a payment changes key generation every 1.3 s,
        # so lanes and the hub forwarder race through the lookup path, where per-actor generations once
        # charged 16 hub-forwarded payments twice (docs/dev/history.md, "key generations become periods").
    )
    stats = fleet.run(settings, tmp_path / "fleet")
    figures = stats.to_json()
    problems = stats.failures + stats.lanes.failures
    # a lane life that hangs fails here, with its tasks' and threads' stacks on file (crash.run_life); the
    # hang this test once showed in 2 runs of 5 was a hub call stuck on a connection reset the LAN proxy never
    # passed on, which Terminal.close() and the process exit waited for (#15, docs/fleet.md "In CI")
    assert stats.passed(), problems[:20]
    assert stats.lanes.lost == 0 and stats.lanes.duplicated == 0 and stats.ledger_duplicates == 0
    assert stats.kills >= 15 and stats.payments >= 150, figures
    # every actor was killed at least once, and the LAN was cut
    assert stats.lane_kills and stats.hub_forwarder_kills and stats.postgres_kills, figures
    assert sum(stats.lan_cuts.values()) >= 1
    # the hub forwarder took over payments of lanes that went silent, and its decisions hold on the ledger
    assert stats.hub.get("decided by the hub forwarder: forwarded", 0) >= 1, stats.hub
    assert not stats.not_on_hub, stats.not_on_hub
    # device loss in sync mode with the LAN up: every acknowledged payment was on the hub and charged once
    loss = stats.device_loss
    assert loss["acknowledged_stored"] == 10 and loss["on_the_hub"] == 10, loss
    assert loss["charged_once"] == 10 and loss["lost"] == 0 and loss["duplicated"] == 0, loss
