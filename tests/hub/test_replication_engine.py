"""The lane's side: catch-up after the hub disappears mid-replication, and sync mode's bound.

A real SQLCipher store on the lane, a real PostgreSQL hub stopped with ``pg_ctl stop -m immediate``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from pgcluster import HUB_KEY

from offterm.core._engine.replication import CURSOR_META, Replication
from offterm.core._engine.store_runner import AsyncStore
from offterm.core.config import validate_options
from offterm.core.contracts import CardDetails, CardResult, NewPayment, PaymentState
from offterm.core.models import CaptureMethod
from offterm.core.registrations import ComponentContext
from offterm.plugins.storage.keys import StaticKeyProvider
from offterm.plugins.storage.postgres import PostgresReplicator
from offterm.plugins.storage.sqlcipher import OPTIONS, build_store

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def make_store(directory: Path):
    return build_store(
        ComponentContext("sqlcipher", validate_options("storage.sqlcipher", OPTIONS, {}, env={}), directory)
    )


def new_payment(i: int) -> NewPayment:
    card = CardResult(
        details=CardDetails(brand="visa", last4="4242", exp_month=12, exp_year=2030, read_method="contact_emv"),
        encrypted_card_data=b"sealed-by-the-reader",
        key_serial="FFFF9876543210E00001",
    )
    return NewPayment(
        offline_id=f"pay_{i:04d}",
        idempotency_key=f"idem-{i:04d}",
        amount=1000 + i,
        currency="usd",
        capture_method=CaptureMethod.AUTOMATIC,
        metadata={"order": f"A-{i}"},
        account_id="acct_test",
        livemode=False,
        stored_at=T0 + timedelta(seconds=i),
        card=card,
    )


async def _lane(hub, tmp_path, *, mode="async", batch_size=200, sync_timeout=0.3, sender=False):
    store = AsyncStore(make_store(tmp_path))
    await store.open(StaticKeyProvider(bytes(range(1, 33))))
    lane = f"lane_a_{hub.database}"
    url = hub.lane("lane_a")
    replicator = hub.replicator(url)
    replicator.close()  # Replication opens it itself, on its own thread
    repl = Replication(
        replicator,
        store,
        lane=lane,
        mode=mode,
        keys=StaticKeyProvider(HUB_KEY),
        sync_timeout=sync_timeout,
        batch_size=batch_size,
        # as build_replication does in sync mode: a second instance, for the confirms' sends
        sender=PostgresReplicator(hub.options(url, admin_url="")) if sender else None,
    )
    return store, repl


def _hub_ids(hub) -> list[str]:
    with psycopg.connect(hub.admin_url.replace("+psycopg", "")) as conn:
        return [r[0] for r in conn.execute("SELECT offline_id FROM hub_payments ORDER BY ingest_seq")]


async def test_a_hub_that_disappears_mid_replication_loses_nothing_and_catches_up_in_order(hub, tmp_path) -> None:
    store, repl = await _lane(hub, tmp_path, batch_size=10)
    stored = [await store.store(new_payment(i)) for i in range(60)]
    order = [p.offline_id for p in sorted(stored, key=lambda p: (p.updated_at or p.stored_at, p.offline_id))]

    real_send = repl._send
    calls = 0

    def send_then_crash(records):  # the hub dies after the second batch committed
        nonlocal calls
        calls += 1
        if calls == 3:
            hub.cluster.stop("immediate")
        return real_send(records)

    repl._send = send_then_crash  # type: ignore[method-assign]
    try:
        await repl.catch_up()
        raise AssertionError("the hub was down")
    except Exception as exc:
        assert getattr(exc, "code", None) == "hub_unavailable", exc
    # local payments intact; the cursor stopped after the last committed batch
    assert len(await store.list_payments()) == 60
    assert await store.get_meta(CURSOR_META) is not None
    for i in range(60, 70):  # the lane keeps taking payments while the hub is gone
        stored.append(await store.store(new_payment(i)))
    hub.cluster.start()
    repl._send = real_send  # type: ignore[method-assign]
    await repl.catch_up()
    ids = _hub_ids(hub)
    assert len(ids) == len(set(ids)) == 70
    order = [p.offline_id for p in sorted(stored, key=lambda p: (p.updated_at or p.stored_at, p.offline_id))]
    assert ids == order  # first reached the hub in the lane's order
    assert await repl.catch_up() <= 70  # resending is harmless: still one row each
    assert len(_hub_ids(hub)) == 70
    await repl.stop()
    await store.close()


async def test_sync_mode_waits_for_the_hub_and_falls_back_within_its_bound(hub, tmp_path) -> None:
    store, repl = await _lane(hub, tmp_path, mode="sync", sync_timeout=2.0)
    first = await store.store(new_payment(1))
    assert await repl.stored(first) is True
    assert repl.reached_hub(first.offline_id) and _hub_ids(hub) == [first.offline_id]

    hub.cluster.stop("immediate")
    second = await store.store(new_payment(2))
    assert await repl.stored(second) is False  # local-only: the confirm still returns
    assert not repl.reached_hub(second.offline_id)
    assert (await store.get(second.offline_id)).offline_id == second.offline_id

    hub.cluster.start()
    await repl.catch_up()
    assert sorted(_hub_ids(hub)) == sorted([first.offline_id, second.offline_id])
    await repl.stop()
    await store.close()


@pytest.mark.parametrize("sender", [False, True], ids=["shared", "own_sender"])
async def test_a_lane_reconnects_after_a_hub_restart_without_falling_back(hub, tmp_path, sender) -> None:
    """A lane pings no connection before use: a stale one fails the statement, sent again on a new one."""
    store, repl = await _lane(hub, tmp_path, mode="sync", sync_timeout=2.0, sender=sender)
    first = await store.store(new_payment(1))
    assert await repl.stored(first) is True
    await repl.catch_up()
    for n, mode in ((2, "fast"), (3, "immediate")):
        hub.cluster.stop(mode)  # the pooled connections die with the server
        hub.cluster.start()
        later = await store.store(new_payment(n))
        assert await repl.stored(later) is True, mode  # reached the hub: no fallback to local-only
        await repl.catch_up()  # nor does the catch-up's round fail
        assert repl.last_error is None
    assert sorted(_hub_ids(hub)) == ["pay_0001", "pay_0002", "pay_0003"]
    await repl.stop()
    await store.close()


async def test_a_sync_send_never_queues_behind_the_catch_up_thread(hub, tmp_path) -> None:
    """Confirms go through a connection and a thread of their own, so a busy catch-up cannot hold them."""
    store, repl = await _lane(hub, tmp_path, mode="sync", sync_timeout=2.0, sender=True)
    busy, release = threading.Event(), threading.Event()

    def long_catch_up_call() -> None:  # stands for a catch-up batch the hub is slow to commit
        busy.set()
        release.wait(30)

    assert repl._worker is not None
    held = asyncio.ensure_future(repl._worker.run(long_catch_up_call))
    await asyncio.to_thread(busy.wait, 30)
    try:
        payment = await store.store(new_payment(1))
        assert await repl.stored(payment) is True  # behind the held thread it would time out: False
        assert _hub_ids(hub) == ["pay_0001"]
    finally:
        release.set()
        await held
    await repl.stop()
    await store.close()


async def test_catch_up_skips_what_sync_confirms_put_on_the_hub_and_sends_every_later_change(hub, tmp_path) -> None:
    store, repl = await _lane(hub, tmp_path, mode="sync", sync_timeout=2.0, sender=True)
    confirmed = [await store.store(new_payment(i)) for i in range(5)]
    for p in confirmed:
        assert await repl.stored(p) is True
    assert await repl.catch_up() == 0  # all five already on the hub, at this very version
    cursor = json.loads(await store.get_meta(CURSOR_META) or "{}")
    assert cursor["offline_id"] == "pay_0004"  # and the cursor moved past them

    local_only = await store.store(new_payment(5))  # stored, never sent by a confirm
    changed = await store.call(
        functools.partial(
            store.backend.record_outcome, "pay_0001", PaymentState.FORWARDED, datetime.now(UTC), intent_id="pi_1"
        )
    )
    assert changed is not None
    assert await repl.catch_up() == 2  # the new payment, and the new version of pay_0001
    with psycopg.connect(hub.admin_url.replace("+psycopg", "")) as conn:
        states = dict(conn.execute("SELECT offline_id, state FROM hub_payments").fetchall())
    assert states[local_only.offline_id] == "stored" and states["pay_0001"] == "forwarded"
    assert len(states) == 6
    await repl.stop()
    await store.close()
