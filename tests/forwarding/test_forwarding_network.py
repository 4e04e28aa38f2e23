"""Network status: starts unknown, follows real outcomes, probes with backoff, never stuck offline."""

from __future__ import annotations

import asyncio

import pytest
from forwarding_kit import (
    check_exactly_once,
    config,
    connect_online,
    forwarded_events,
    pay,
    plugin_manager,
    read_store,
    wait_until,
)

from offterm.core import NetworkStatus, Terminal
from offterm.core.contracts import PaymentState


async def test_status_starts_unknown_and_the_first_answer_decides(data_dir, sim, recorder):
    cfg = config(data_dir, sim.url)
    inspector = Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False)
    async with inspector:
        assert inspector.network_status is NetworkStatus.UNKNOWN
        assert inspector.offline_status.sdk.network_status is NetworkStatus.UNKNOWN
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder)) as terminal:
        await wait_until(lambda: terminal.network_status is NetworkStatus.ONLINE, what="the first probe")
    first = recorder.getcalls("network_status_changed")[0]
    assert (first.previous, first.status) == (NetworkStatus.UNKNOWN, NetworkStatus.ONLINE)


@pytest.mark.parametrize("outage", ["down", "blackhole"])
async def test_never_stuck_offline_once_connectivity_returns(data_dir, proxy, sim, recorder, outage):
    cfg = config(
        data_dir,
        proxy.url,
        terminal={"probe_min_interval": 0.02, "probe_max_interval": 0.16, "offline_timeout": 1.0},
        forwarding={"interval": 600.0},
        stripe_options={"probe_timeout": 0.3},
    )
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder)) as terminal:
        await connect_online(terminal)
        proxy.set_mode(outage)
        stored = [await pay(terminal, 700 + i) for i in range(3)]
        assert all(s.requires_upload for s in stored)
        assert terminal.network_status is NetworkStatus.OFFLINE
        network = terminal.network

        # Probes keep running on their own while offline, backing off to the cap.
        start = network.probes
        await wait_until(lambda: network.probes >= start + 6, timeout=20, what="probes while offline")
        assert network.probe_delay == pytest.approx(0.16), "the wait between probes backed off to its cap"
        assert terminal.network_status is NetworkStatus.OFFLINE

        before_up = network.probes
        proxy.set_mode("pass")  # connectivity returns; the app does nothing at all
        await wait_until(lambda: terminal.network_status is NetworkStatus.ONLINE, timeout=10, what="ONLINE")
        assert network.probes - before_up <= 2, "back within one or two probe intervals"
        ids = {s.offline_id for s in stored}
        await wait_until(lambda: ids <= set(forwarded_events(recorder)), timeout=20, what="automatic forwarding")
    assert check_exactly_once(sim, read_store(data_dir)) == {PaymentState.FORWARDED: 3}
    statuses = [c.status for c in recorder.getcalls("network_status_changed")]
    assert statuses[-2:] == [NetworkStatus.OFFLINE, NetworkStatus.ONLINE]


async def test_stop_is_not_lost_when_it_lands_as_a_probe_finishes() -> None:
    """The probe answers and stop() cancels the monitor in the same turn of the loop.

    With ``asyncio.wait_for`` around the probe (Python 3.11), the cancellation was swallowed: the
    loop went back to sleep and stop() — so Terminal.close() — waited forever.  The torture found
    it as a close() that hung about one time in twenty.
    """
    from offterm.core._engine.network import NetworkMonitor

    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    probing = asyncio.Event()

    async def probe() -> bool:
        probing.set()
        return await answer

    monitor = NetworkMonitor(probe, lambda new, old: None, probe_timeout=30)
    monitor.start()  # status UNKNOWN: the loop probes at once
    await probing.wait()
    answer.set_result(True)  # the probe finishes...
    stopping = asyncio.ensure_future(monitor.stop())  # ...as the app shuts down
    done, _ = await asyncio.wait({stopping}, timeout=3)
    assert done, "NetworkMonitor.stop() never returned"
