"""Lanes for the hub tests: Terminal configurations pointed at a test hub, and a payment helper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgcluster import HUB_KEY

from offterm.core import OfflineBehavior, PaymentIntent, Terminal, create_plugin_manager
from offterm.testing.config import terminal_config

HUB_KEY_VARIABLE = "OFFTERM_TEST_HUB_KEY"


def hub_sections(hub: Any, lane_url: str, lane: str, **hub_options: Any) -> dict[str, Any]:
    """The ``[hub]``, ``[replicator.postgres]`` and ``[storage_key.env]`` sections of a lane."""
    options = hub.options(lane_url, admin_url="")
    return {
        "hub": {"replicator": "postgres", "lane": lane, "key_provider": "env", "interval": 0.2, **hub_options},
        "replicator": {"postgres": options},
        "storage_key": {"env": {"variable": HUB_KEY_VARIABLE}},
    }


def lane_config(hub: Any, name: str, processor: Any, data_dir: Path, **hub_options: Any) -> tuple[str, dict[str, Any]]:
    """(the lane's role name, its Terminal configuration); ``processor`` has ``url`` and ``backend_url``."""
    role = f"{name}_{hub.database}"
    url = hub.lane(name)
    config = terminal_config(processor, data_dir)
    config.update(hub_sections(hub, url, role, **hub_options))
    config["acceptance"] = {"limits": {"max_amount": {"usd": 100_000}}}
    return role, config


def set_hub_key(monkeypatch: Any) -> None:
    monkeypatch.setenv(HUB_KEY_VARIABLE, HUB_KEY.hex())


def terminal(config: dict[str, Any], **plugins: Any) -> Terminal:
    pm = create_plugin_manager(autoload=False, env={}, plugins=plugins)
    return Terminal.from_config(config, plugin_manager=pm)


async def pay(t: Terminal, amount: int, *, card: str = "visa", forced: bool = False) -> PaymentIntent:
    behavior = OfflineBehavior.FORCE_OFFLINE if forced else OfflineBehavior.PREFER_ONLINE
    intent = await t.create_payment_intent({"amount": amount, "currency": "usd"}, offline_behavior=behavior)
    reader = t.connected_reader
    assert reader is not None
    reader.present_card(card)  # type: ignore[attr-defined]
    intent = await t.collect_payment_method(intent)
    return await t.confirm_payment_intent(intent)
