"""The hub forwarder: a silent lane's payments forwarded exactly once, outcomes back to the lane.

Real parts only: lane Terminals (SQLCipher store, simulated reader) behind a fault proxy, a real
PostgreSQL hub, the processor simulator; exactly-once is read from the simulator's own ledger.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from lanes import HUB_KEY_VARIABLE, hub_sections, lane_config, pay, set_hub_key, terminal
from pgcluster import HUB_KEY

from offterm.cli.main import cli
from offterm.core import create_plugin_manager, load_config
from offterm.core._engine.hub_forwarder import HubForwarder, build_hub_forwarder
from offterm.core._engine.replication import Replication
from offterm.testing.config import terminal_config

SILENT_AFTER = 0.5


class Recorder:
    def __init__(self) -> None:
        self.forwarded: list[tuple[str, Any]] = []

    from offterm.core import hookimpl

    @hookimpl
    def offterm_on_payment_intent_forwarded(self, intent, error):
        self.forwarded.append((intent.offline_id, error))


def forwarder_config(hub, simulator, tmp_path: Path) -> dict[str, Any]:
    role = f"hubfwd_{hub.database}"
    hub.admin().add_lane(role, "pw-" + role, forwarder=True)
    url = hub.cluster.url(user=role, password="pw-" + role, database=hub.database)
    config = terminal_config(simulator, tmp_path / "hub-forwarder")
    config.update(hub_sections(hub, url, "", lane_silent_after=SILENT_AFTER))
    return config


def hub_forwarder(hub, simulator, tmp_path: Path) -> HubForwarder:
    config = forwarder_config(hub, simulator, tmp_path)
    return build_hub_forwarder(load_config(config), create_plugin_manager(autoload=False, env={}))


def behind(config: dict[str, Any], network) -> dict[str, Any]:
    """The lane reaches the processor and the token backend through ``network`` (a fault proxy)."""
    config["forwarding"]["stripe"]["api_base"] = network.url
    config["tokens"]["http"]["url"] = network.url + "/backend/connection_token"
    return config


async def _lane_with_stored(config, network, n: int, **plugins: Any):
    t = terminal(config, **plugins)
    await t.open()
    [reader] = (await t.discover_readers())[:1]
    await t.connect_reader(reader)
    network.set_mode("down")  # offline from here: the payments wait in the lane's store
    stored = [await pay(t, 1000 + i, forced=True) for i in range(n)]
    await t.replication.catch_up()
    return t, [s.offline_id for s in stored]


async def test_a_silent_lanes_payments_are_forwarded_once_by_the_hub_and_the_lane_learns_it(
    hub, simulator, network, tmp_path, monkeypatch
) -> None:
    set_hub_key(monkeypatch)
    _, config = lane_config(hub, "lane_a", simulator, tmp_path / "lane")
    recorder = Recorder()
    t, ids = await _lane_with_stored(behind(config, network), network, 3, recorder=recorder)
    await t.close()  # ... and the lane goes silent
    await asyncio.sleep(SILENT_AFTER * 2)

    fwd = hub_forwarder(hub, simulator, tmp_path)
    await fwd.open()
    try:
        report = await fwd.run_once()
        assert sorted(report.forwarded) == sorted(ids) and not report.needs_attention
        assert (await fwd.run_once()).taken == 0  # decided: never taken again
    finally:
        await fwd.close()
    assert simulator.successful_charges() == {oid: 1 for oid in ids}

    # The lane comes back (still without the processor): it learns the outcomes from the hub.
    async with terminal(config, recorder=recorder) as t:
        await t.replication.catch_up()
        payments = {p.offline_id: p for p in await t.list_stored_payments()}
        assert all(payments[oid].state.value == "forwarded" and payments[oid].intent_id for oid in ids)
        assert sorted(oid for oid, error in recorder.forwarded if error is None) == sorted(ids)
        history = await t.payment_history(ids[0])
        assert history[-1].error_code == "decided_by_hub"
        await t.replication.catch_up()  # read again: nothing recorded twice, no second event
        assert len(recorder.forwarded) == 3
        network.set_mode("pass")
        assert await t.forward_now(timeout=10) == 0
    assert simulator.successful_charges() == {oid: 1 for oid in ids}


async def test_a_lane_cut_from_the_hub_and_the_hub_forwarder_race_and_charge_once(
    hub, simulator, network, tmp_path, monkeypatch
) -> None:
    set_hub_key(monkeypatch)
    _, config = lane_config(hub, "lane_r", simulator, tmp_path / "lane")
    config["forwarding"]["interval"] = 3600.0  # only the explicit rounds below
    t, ids = await _lane_with_stored(behind(config, network), network, 4)
    try:
        # the LAN to the hub is cut: no more heartbeats, the lane still reaches the processor
        await t.replication.stop()
        t.replication = Replication(None, t.store)
        await asyncio.sleep(SILENT_AFTER * 2)
        network.set_mode("pass")  # the lane reaches the processor again
        fwd = hub_forwarder(hub, simulator, tmp_path)
        await fwd.open()
        try:
            # both at once, on the same payments: the lane's round and the hub forwarder's pass
            remaining, report = await asyncio.gather(t.forward_now(timeout=10), fwd.run_once())
            assert report.taken == 4  # the hub forwarder sent every one of them too
            for _ in range(5):  # until neither has anything left (a 409 "key in use" is retried)
                if remaining == 0 and report.taken == 0:
                    break
                remaining, report = await asyncio.gather(t.forward_now(timeout=10), fwd.run_once())
        finally:
            await fwd.close()
        assert all(p.state.value == "forwarded" for p in await t.list_stored_payments())
    finally:
        await t.close()
    assert simulator.successful_charges() == {oid: 1 for oid in ids}


async def test_device_loss_every_replicated_payment_forwarded_once_by_offterm_hub_forward(
    hub, simulator, network, tmp_path, monkeypatch
) -> None:
    set_hub_key(monkeypatch)
    data_dir = tmp_path / "lane"
    _, config = lane_config(hub, "lane_l", simulator, data_dir, mode="sync", sync_timeout=2.0)
    t = terminal(behind(config, network))
    await t.open()
    [reader] = (await t.discover_readers())[:1]
    await t.connect_reader(reader)
    network.set_mode("down")
    intents = [await pay(t, 500 + i, forced=True) for i in range(5)]
    assert all(i.offline_details and i.offline_details.replicated_to_hub for i in intents)
    await t.replication.stop()  # the device dies: nothing more reaches the hub from it
    await t.store.close()
    shutil.rmtree(data_dir)  # ... and its data directory is gone
    await asyncio.sleep(SILENT_AFTER * 2)

    toml = tmp_path / "hub-forwarder.toml"
    toml.write_text(_toml(forwarder_config(hub, simulator, tmp_path)))
    env = {HUB_KEY_VARIABLE: HUB_KEY.hex()}
    args = ["--config", str(toml), "hub", "forward", "--once", "--json"]
    done = await asyncio.to_thread(CliRunner().invoke, cli, args, env=env)  # the command runs its own loop
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["forwarded"] == 5
    again = await asyncio.to_thread(CliRunner().invoke, cli, args, env=env)
    assert again.exit_code == 0 and json.loads(again.output)["taken"] == 0
    assert simulator.successful_charges() == {i.offline_id: 1 for i in intents}


def _toml(config: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for the test configuration (tables of scalars, lists and sub-tables)."""
    scalars, tables = [], []
    for key, value in config.items():
        if isinstance(value, dict):
            tables.append(_toml(value, f"{prefix}{key}."))
        else:
            scalars.append(f"{key} = {json.dumps(value)}")
    head = f"[{prefix[:-1]}]\n" if prefix and scalars else ""
    return head + "\n".join(scalars) + "\n" + "\n".join(tables)
