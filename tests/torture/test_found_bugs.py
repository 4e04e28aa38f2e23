"""Minimal reproductions of bugs the torture found, in code owned by other issues.

An open bug is marked ``xfail(strict=True)`` with the reason: it fails today, and the suite turns red
the moment it is fixed, so the mark goes.  A fixed one keeps its test, unmarked, as a regression test.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from offterm.core import OfflineBehavior, Terminal
from offterm.core.errors import OfftermError, OutcomeUnknown, RequireOnlineWhileOffline
from offterm.sim.processor import SimHandle
from offterm.testing.torture.inputs import CONFIG_REGRESSIONS, KNOWN_CONFIG_BUGS, run_config_trials


async def _intent(terminal: Terminal, amount: int, behavior: OfflineBehavior = OfflineBehavior.PREFER_ONLINE) -> Any:
    intent = await terminal.create_payment_intent({"amount": amount, "currency": "usd"}, offline_behavior=behavior)
    terminal.connected_reader.present_card("visa")
    return await terminal.collect_payment_method(intent)


async def test_require_online_confirm_with_an_unknown_outcome_says_so(
    simulator: SimHandle, config: dict[str, Any]
) -> None:
    async with Terminal.from_config(config) as terminal:
        [reader] = await terminal.discover_readers()
        await terminal.connect_reader(reader)
        intent = await _intent(terminal, 5150, OfflineBehavior.REQUIRE_ONLINE)
        # The confirm runs at the processor, then the connection drops before the answer.
        simulator.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents/",))
        with pytest.raises((OutcomeUnknown, RequireOnlineWhileOffline)) as raised:
            await terminal.confirm_payment_intent(intent)
        simulator.set_faults()
    assert simulator.successful_charges() == {intent.offline_id: 1}, "the card was charged"
    assert isinstance(raised.value, OutcomeUnknown), f"the app was told: {raised.value}"


async def test_payments_stored_after_the_database_file_was_removed_survive_a_restart(
    config: dict[str, Any], tmp_path: Path
) -> None:
    reported: list[str] = []
    async with Terminal.from_config(config) as terminal:
        [reader] = await terminal.discover_readers()
        await terminal.connect_reader(reader)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp_path / 'pos' / 'payments.db'}{suffix}").unlink(missing_ok=True)
        for amount in (100, 200):
            intent = await _intent(terminal, amount, OfflineBehavior.FORCE_OFFLINE)
            try:
                stored = await terminal.confirm_payment_intent(intent)
            except OfftermError:
                continue  # refusing is fine: the POS was not told "stored"
            reported.append(stored.offline_id)
    async with Terminal.from_config(config) as terminal:
        present = {p.offline_id for p in await terminal.list_stored_payments()}
    assert [oid for oid in reported if oid not in present] == []


def test_close_does_not_raise_when_the_disk_is_full(tmp_path: Path) -> None:
    from offterm.sim.processor import start_simulator
    from offterm.testing.torture.disk import run_scenario

    sim = start_simulator()
    try:
        report = run_scenario("full_rlimit", tmp_path, sim.url)
    finally:
        sim.stop()
    assert "failed" not in report, report.get("failed")
    assert report["close_when_full"] == "ok"


@pytest.mark.parametrize(
    ("site", "key", "value"),
    [
        *(
            pytest.param(site, key, value, id=f"{site}.{key}={value!r:.12}")
            for site, key, value, _ in CONFIG_REGRESSIONS
        ),
        *(
            pytest.param(
                site,
                key,
                value,
                id=f"{site}.{key}={value!r:.12}",
                marks=pytest.mark.xfail(strict=True, reason=f"BUG: {why}"),
            )
            for site, key, value, why in KNOWN_CONFIG_BUGS
        ),
    ],
)
def test_bad_config_value_is_refused_or_works(
    site: str, key: str, value: Any, simulator: SimHandle, tmp_path: Path
) -> None:
    """A bad value must be a ConfigError (or any typed error), or be harmless: never an untyped exception,
    a hang or exhausted memory.  Each runs in a child process with a memory and a time limit."""
    [verdict] = run_config_trials([(site, key, value)], simulator.url, tmp_path, seconds=15, memory=384 << 20)
    assert verdict.startswith(("typed", "ok")), verdict


def test_a_key_file_that_is_a_directory_is_a_typed_error(tmp_path: Path) -> None:
    from offterm.plugins.storage.keys import FileKeyProvider

    (tmp_path / "storage.key").mkdir()
    with pytest.raises(OfftermError):
        FileKeyProvider(tmp_path / "storage.key").get_key("store", create=False)


async def test_stopping_the_forwarder_is_not_lost_when_a_trigger_coincides(config: dict[str, Any]) -> None:
    terminal = Terminal.from_config(config)
    await terminal.open()
    forwarder = terminal.forwarder
    try:
        await asyncio.sleep(0.3)  # the background forwarder waits for work
        forwarder.trigger()  # a payment was just stored...
        stopping = asyncio.ensure_future(forwarder.stop())  # ...as the app shuts down
        done, _ = await asyncio.wait({stopping}, timeout=3)
        assert done, "Forwarder.stop() never returned"
    finally:
        if forwarder._task is not None:  # a second cancel gets through: let the test end cleanly
            forwarder._task.cancel()
        await asyncio.sleep(0.05)
        await terminal.close(timeout=0)


async def test_an_unknown_online_outcome_is_not_reported_as_an_offline_refusal(
    simulator: SimHandle, config: dict[str, Any]
) -> None:
    config["acceptance"] = {"limits": {"max_amount": {"usd": 1000}, "max_age_hours": 0}}
    async with Terminal.from_config(config) as terminal:
        [reader] = await terminal.discover_readers()
        await terminal.connect_reader(reader)
        intent = await _intent(terminal, 5000)  # online: fine; offline: over the maximum
        simulator.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents/",))
        with pytest.raises(OfftermError) as raised:
            await terminal.confirm_payment_intent(intent)
        simulator.set_faults()
    assert simulator.successful_charges() == {intent.offline_id: 1}, "the card was charged"
    assert isinstance(raised.value, OutcomeUnknown), f"the app was told: {raised.value}"


def test_a_pos_killed_as_its_online_confirm_returns_still_knows_the_charge(
    simulator: SimHandle, tmp_path: Path
) -> None:
    """The crash torture's unreported charges: an online confirm succeeds and the process dies (SIGKILL) as
    ``confirm_payment_intent`` returns, before the app could record it.  The processor has the money; the
    next Terminal on the store must know it (``recovered_payments()``, or any record of the payment).

    Found by the torture on 16934db: the journal entry was deleted before the confirm returned.  Fixed by
    5ae7411 (the entry now goes at the app's next call); kept as the regression test.
    """
    from offterm.testing.torture.crash import Station, run_life, worker_config

    station = Station(tmp_path, 1)
    base = {"side_file": str(station.side), "seed": 1, "config": worker_config(station, simulator.url, 1)}
    # A first life authenticates on a calm network, as a POS does before it takes payments.
    first = {**base, "life": 0, "payments": 0, "kill": {"point": "none"}}
    run_life(station, None, first, outside_kill_after=None, max_seconds=60)  # type: ignore[arg-type]
    plan = {
        **base,
        "life": 1,
        "payments": 1,
        "behavior_weights": (0, 0, 1),  # REQUIRE_ONLINE
        "cards": ["visa"],
        "kill": {"point": "confirm_returned"},
    }
    killed = run_life(station, None, plan, outside_kill_after=None, max_seconds=60)  # type: ignore[arg-type]
    assert killed.returncode == -9, killed.stderr
    [tried] = [r["id"] for r in killed.records if r.get("e") == "try"]
    assert simulator.successful_charges().get(tried) == 1, "the processor charged it"

    async def the_pos_records() -> set[str]:
        async with Terminal.from_config(worker_config(station, simulator.url, 1)) as terminal:
            await terminal.forward_now(timeout=10)  # reconciles the in-flight journal
            recovered = {a.offline_id for a in await terminal.recovered_payments() if a.resolution == "charged"}
            stored = {p.offline_id for p in await terminal.list_stored_payments()}
            return recovered | stored

    assert tried in asyncio.run(the_pos_records()), "a charge the POS has no record of"
