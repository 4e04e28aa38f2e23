"""Bad input at the lane: a hub it must not use leaves it taking payments, typed errors, nothing lost.

The replicator-level cases live beside the replicator (docs/fleet.md, "Proof", lists them all):
test_replicator.py refuses a newer schema untouched, a wrong hub key before anything is sent, and a
lane role writing another lane's rows; test_replication_engine.py stops the hub mid-replication.
Here the same failures reach a real lane Terminal (SQLCipher store, simulated reader, the processor
simulator) in ``sync`` mode: every confirm still returns stored, says it did not reach the hub, the
lane's replication reports the typed code, the hub holds nothing of it; once the hub is usable,
catch-up sends every payment.
"""

from __future__ import annotations

import psycopg
import pytest
from lanes import HUB_KEY_VARIABLE, lane_config, pay, set_hub_key, terminal

from offterm.core.contracts.replication import HubSchemaTooNew, WrongHubKey
from offterm.plugins.storage.postgres.schema import SCHEMA_VERSION


def _hub_ids(hub) -> set[str]:
    with psycopg.connect(hub.admin_url.replace("+psycopg", "")) as conn:
        return {r[0] for r in conn.execute("SELECT offline_id FROM hub_payments")}


def _admin(hub, sql: str, *args) -> None:
    with psycopg.connect(hub.admin_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(sql, args)


async def _take(t, n: int) -> list[str]:
    [reader] = (await t.discover_readers())[:1]
    await t.connect_reader(reader)
    intents = [await pay(t, 1000 + i, forced=True) for i in range(n)]
    for intent in intents:
        assert intent.requires_upload and intent.offline_details is not None
        assert intent.offline_details.replicated_to_hub is False  # stored here only, and the app is told
    return [i.offline_id for i in intents]


async def test_a_lane_with_a_wrong_hub_key_keeps_its_payments_and_sends_nothing(
    hub, simulator, tmp_path, monkeypatch
) -> None:
    _, config = lane_config(hub, "lane_k", simulator, tmp_path / "lane", mode="sync", sync_timeout=2.0)
    monkeypatch.setenv(HUB_KEY_VARIABLE, bytes(range(1, 33)).hex())  # not the store's hub key
    async with terminal(config) as t:
        ids = await _take(t, 3)
        assert t.replication.last_error == "wrong_hub_key"
        with pytest.raises(WrongHubKey):
            await t.replication.catch_up()
        assert {p.offline_id for p in await t.list_stored_payments()} >= set(ids)
    assert _hub_ids(hub) == set()  # refused before anything was sent

    set_hub_key(monkeypatch)  # the right key: every payment catches up
    async with terminal(config) as t:
        await t.replication.catch_up()
    assert _hub_ids(hub) >= set(ids)


async def test_a_hub_schema_from_a_newer_version_leaves_the_lane_working_and_the_hub_untouched(
    hub, simulator, tmp_path, monkeypatch
) -> None:
    set_hub_key(monkeypatch)
    _, config = lane_config(hub, "lane_n", simulator, tmp_path / "lane", mode="sync", sync_timeout=2.0)
    _admin(hub, "INSERT INTO hub_schema_version (version) VALUES (%s)", SCHEMA_VERSION + 1)
    async with terminal(config) as t:
        ids = await _take(t, 3)
        assert t.replication.last_error == "hub_schema_too_new"
        with pytest.raises(HubSchemaTooNew):
            await t.replication.catch_up()
        assert {p.offline_id for p in await t.list_stored_payments()} >= set(ids)
    assert _hub_ids(hub) == set()

    _admin(hub, "DELETE FROM hub_schema_version WHERE version = %s", SCHEMA_VERSION + 1)  # this offterm's hub again
    async with terminal(config) as t:
        await t.replication.catch_up()
    assert _hub_ids(hub) >= set(ids)
