"""A hub that stops answering in the middle of a call never hangs the lane: not a confirm, not close, not exit.

A LAN black hole that never ends (``FaultProxy`` in ``blackhole`` mode between the lane and the real
PostgreSQL server: the connection stays up, nothing ever answers) is what a hub that lost power, a
switch that died or a cut cable looks like to a lane: no FIN, no RST, and a query in flight waits
for an answer that never comes (TCP gives up after minutes to hours). The lane's hub calls run on a
worker thread of their own; a call stuck there must cost the POS nothing it waits for: its confirms
fall back to local-only, ``close()`` leaves the stuck call behind, and the process exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from lanes import HUB_KEY_VARIABLE, lane_config, pay, set_hub_key, terminal
from pgcluster import HUB_KEY

from offterm.sim.netproxy import FaultProxy

#: seconds close() may take with the hub's call stuck (it waits a little for a call in flight to end)
CLOSE_BOUND = 8.0


@pytest.fixture
def lan(hub) -> Iterator[FaultProxy]:
    """The lane's LAN: a fault proxy in front of the hub's server."""
    proxy = FaultProxy(hub.cluster.port).start()
    try:
        yield proxy
    finally:
        proxy.set_mode("pass")
        proxy.stop()


def _through(config: dict[str, Any], hub, lan: FaultProxy) -> dict[str, Any]:
    postgres = config["replicator"]["postgres"]
    postgres["url"] = postgres["url"].replace(f":{hub.cluster.port}/", f":{lan.port}/")
    config["forwarding"]["close_timeout"] = 0.3
    return config


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_hub_that_stops_answering_never_blocks_a_confirm_or_close(
    hub, lan, simulator, tmp_path, monkeypatch, mode
) -> None:
    set_hub_key(monkeypatch)
    _, config = lane_config(hub, "lane_dead", simulator, tmp_path / "lane", mode=mode, sync_timeout=0.3)
    t = terminal(_through(config, hub, lan))
    await t.open()
    closed = False
    try:
        [reader] = (await t.discover_readers())[:1]
        await t.connect_reader(reader)
        first = await pay(t, 1000, forced=True)
        assert first.offline_details is not None
        assert first.offline_details.replicated_to_hub is (mode == "sync")  # the hub answered then

        lan.set_mode("blackhole")  # from now on the hub never answers, and never says so
        await asyncio.sleep(1.0)  # the background catch-up (every 0.2 s) sends a round into the black hole
        began = time.monotonic()
        second = await pay(t, 1100, forced=True)
        assert time.monotonic() - began < 3.0  # sync: at most sync_timeout waiting for the hub
        assert second.requires_upload and second.offline_details is not None
        assert second.offline_details.replicated_to_hub is False  # stored here only, and the app is told

        began = time.monotonic()
        async with asyncio.timeout(CLOSE_BOUND + 20):  # a hang fails the test instead of hanging it
            report = await t.close(timeout=0.3)
        closed = True
        assert time.monotonic() - began < CLOSE_BOUND
        assert report.needs_attention == 0
    finally:
        if not closed:
            lan.set_mode("pass")  # let a hung close finish, so the test's failure is the assertion above
            await t.close(timeout=0)

    # the next Terminal on the same store, with the LAN back, sends what the hub is missing
    lan.set_mode("pass")
    async with terminal(config) as again:
        await again.replication.catch_up()
    with psycopg.connect(hub.admin_url.replace("+psycopg", "")) as conn:
        on_hub = {r[0] for r in conn.execute("SELECT offline_id FROM hub_payments")}
    assert {first.offline_id, second.offline_id} <= on_hub


LANE_PROCESS = r"""
import asyncio, json, sys, time
from offterm.core import OfflineBehavior, Terminal, create_plugin_manager

async def main() -> None:
    config = json.loads(sys.argv[1])
    t = Terminal.from_config(config, plugin_manager=create_plugin_manager(autoload=False, env={}))
    await t.open()
    [reader] = (await t.discover_readers())[:1]
    await t.connect_reader(reader)

    async def pay(amount):
        intent = await t.create_payment_intent({"amount": amount, "currency": "usd"},
                                               offline_behavior=OfflineBehavior.FORCE_OFFLINE)
        t.connected_reader.present_card("visa")
        return await t.confirm_payment_intent(await t.collect_payment_method(intent))

    await pay(1000)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the LAN is cut now
    await asyncio.sleep(1.0)  # the background catch-up sends a round into the black hole
    await pay(1100)
    await t.close(timeout=0.3)
    print("closed", flush=True)

asyncio.run(main())
print("exiting", flush=True)
"""


def test_a_lane_process_exits_while_its_hub_call_is_stuck(hub, lan, simulator, tmp_path) -> None:
    """The stuck call's thread must not keep the process alive: a POS app that quits, quits."""
    _, config = lane_config(hub, "lane_exit", simulator, tmp_path / "lane", mode="async")
    env = {**os.environ, HUB_KEY_VARIABLE: HUB_KEY.hex()}
    proc = subprocess.Popen(
        [sys.executable, "-c", LANE_PROCESS, json.dumps(_through(config, hub, lan))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        lan.set_mode("blackhole")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        try:
            proc.wait(timeout=CLOSE_BOUND + 10)
        except subprocess.TimeoutExpired:
            pytest.fail("the lane process did not exit while its hub call was stuck")
        out = proc.stdout.read()
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        assert "closed" in out and "exiting" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
