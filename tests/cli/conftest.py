from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from offterm.core import Terminal
from offterm.sim.netproxy import FaultProxy
from offterm.sim.processor import start_simulator


@pytest.fixture
def world(tmp_path):
    """A simulator behind a proxy, and a config file for a POS whose store holds two offline payments."""
    sim = start_simulator()
    proxy = FaultProxy(sim.port).start()
    config = tmp_path / "offterm.toml"
    config.write_text(f"""
[terminal]
data_dir = "{tmp_path / "pos"}"
offline_enabled = true
probe_min_interval = 0.05
[plugins]
autoload = false
[tokens.http]
url = "{proxy.url}/backend/connection_token"
[forwarding]
interval = 60
[forwarding.stripe]
api_base = "{proxy.url}"
connect_timeout = 1.0
timeout = 5.0
""")

    async def store_two() -> list[str]:
        async with Terminal.from_config(config) as terminal:
            [reader] = await terminal.discover_readers()
            await terminal.connect_reader(reader)
            proxy.set_mode("down")
            ids = []
            for amount, card in ((1000, "visa"), (2000, "declined")):
                intent = await terminal.create_payment_intent({"amount": amount, "currency": "usd"})
                terminal.connected_reader.present_card(card)
                intent = await terminal.collect_payment_method(intent)
                intent = await terminal.confirm_payment_intent(intent)
                ids.append(intent.offline_id)
            await terminal.close(timeout=0)
            return ids

    ids = asyncio.run(store_two())
    try:
        yield {"sim": sim, "proxy": proxy, "config": Path(config), "ids": ids}
    finally:
        proxy.stop()
        sim.stop()
