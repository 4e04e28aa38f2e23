"""While the processor is unreachable, the background forwarder waits; it does not spin on a due retry.

A retry that fell due while the network was OFFLINE used to stay in the forwarder's schedule, so
its loop woke at once, saw OFFLINE and went round again: most of a core for as long as the outage
lasted (found by the serve benchmark).  The network's return triggers a round that claims it.
"""

from __future__ import annotations

import asyncio
import socket

from forwarding_kit import config, plugin_manager

from offterm.core import Terminal
from offterm.core._engine.network import NetworkStatus


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_a_retry_due_while_offline_does_not_keep_waking_the_forwarder(data_dir, recorder) -> None:  # type: ignore[no-untyped-def]
    cfg = config(data_dir, _closed_port_url())
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder)) as terminal:
        network, forwarder = terminal.network, terminal.forwarder
        for _ in range(200):
            if network.status is NetworkStatus.OFFLINE:
                break
            await network.check()
            await asyncio.sleep(0.02)
        assert network.status is NetworkStatus.OFFLINE
        wakes = 0
        original = forwarder._wake.clear

        def counting_clear() -> None:
            nonlocal wakes
            wakes += 1
            original()

        forwarder._wake.clear = counting_clear  # type: ignore[method-assign]
        forwarder._schedule(0.0)  # a retry falls due now, while offline
        forwarder.trigger()  # and something wakes the loop (a payment stored, say)
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not forwarder._due, "the due retry is left to the network's return"
        assert wakes <= 3, f"the loop went round {wakes} times while offline"
