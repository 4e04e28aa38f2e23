"""The intent says whether it reached the hub: OfflineDetails.replicated_to_hub, through the Terminal.

A real lane Terminal (SQLCipher store, simulated reader, the processor simulator) pointed at a real
PostgreSQL hub in sync mode; the hub is stopped with ``pg_ctl stop -m immediate`` for the second payment.
"""

from __future__ import annotations

import psycopg
from lanes import lane_config, pay, set_hub_key, terminal

from offterm.testing.config import terminal_config


def _hub_ids(hub) -> set[str]:
    with psycopg.connect(hub.admin_url.replace("+psycopg", "")) as conn:
        return {r[0] for r in conn.execute("SELECT offline_id FROM hub_payments")}


async def test_sync_mode_says_true_with_the_hub_up_and_false_once_it_is_stopped(
    hub, simulator, tmp_path, monkeypatch
) -> None:
    set_hub_key(monkeypatch)
    _, config = lane_config(hub, "lane_a", simulator, tmp_path / "lane", mode="sync", sync_timeout=2.0)
    async with terminal(config) as t:
        [reader] = (await t.discover_readers())[:1]
        await t.connect_reader(reader)  # online once: the account is cached

        first = await pay(t, 1200, forced=True)
        assert first.requires_upload and first.offline_details is not None
        assert first.offline_details.replicated_to_hub is True
        assert first.offline_id in _hub_ids(hub)  # and it is there, committed
        # sent by a second replicator (a connection and thread of its own), not the catch-up's
        assert t.replication._sender is not None and t.replication._sender is not t.replication.replicator

        hub.cluster.stop("immediate")
        second = await pay(t, 1300, forced=True)
        assert second.requires_upload and second.offline_details is not None
        assert second.offline_details.replicated_to_hub is False  # local-only: stored, not on the hub
        assert {p.offline_id for p in await t.list_stored_payments()} >= {first.offline_id, second.offline_id}
    hub.cluster.start()


async def test_no_hub_configured_says_none(simulator, tmp_path) -> None:
    config = terminal_config(simulator, tmp_path / "lane")
    config["acceptance"] = {"limits": {"max_amount": {"usd": 100_000}}}
    async with terminal(config) as t:
        [reader] = (await t.discover_readers())[:1]
        await t.connect_reader(reader)
        stored = await pay(t, 1200, forced=True)
        assert stored.offline_details is not None and stored.offline_details.replicated_to_hub is None
