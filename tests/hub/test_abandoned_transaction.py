"""A lane that vanished in the middle of a hub transaction does not stop its own replication.

A lane that loses power, or whose cable is pulled, in the middle of a catch-up batch sends no FIN and no
RST: on the hub its session sits idle in a transaction that holds the lane's ``hub_lanes`` row (each batch
stamps it first thing), and TCP only notices after hours.  Every catch-up round of the lane's next life
then waits for that row until its ``statement_timeout`` and fails: nothing it stores in async mode (nor
any sync-mode fallback) reaches the hub, and its heartbeat is held too.  The fleet torture lost 34
acknowledged payments of one lane that way (issue #15).  The hub must end such a transaction itself.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import sqlalchemy as sa
from pgcluster import HUB_KEY

from offterm.core._engine.replication import CURSOR_META, Replication
from offterm.core._engine.store_runner import AsyncStore
from offterm.core.config import validate_options
from offterm.core.contracts import CardDetails, CardResult, NewPayment
from offterm.core.contracts.replication import HubError
from offterm.core.models import CaptureMethod
from offterm.core.registrations import ComponentContext
from offterm.plugins.storage.keys import StaticKeyProvider
from offterm.plugins.storage.postgres import PostgresReplicator
from offterm.plugins.storage.sqlcipher import OPTIONS, build_store

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
#: the lane's bound on a statement (seconds); rounds of the catch-up loop the lane is given to get through
STATEMENT_TIMEOUT = 1.0
ROUNDS = 4


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
        metadata={},
        account_id="acct_test",
        livemode=False,
        stored_at=T0 + timedelta(seconds=i),
        card=card,
    )


def _hub_ids(hub) -> list[str]:
    with psycopg.connect(hub.admin_url.replace("+psycopg", "")) as conn:
        return [r[0] for r in conn.execute("SELECT offline_id FROM hub_payments ORDER BY offline_id")]


async def test_a_transaction_its_lane_abandoned_does_not_block_the_lanes_catch_up(hub, tmp_path: Path) -> None:
    url = hub.lane("lane_a")
    lane = f"lane_a_{hub.database}"
    options = hub.options(url, admin_url="", statement_timeout=STATEMENT_TIMEOUT)

    # The lane's previous life: it replicated once, then lost power in the middle of its next batch.
    previous = PostgresReplicator(options)
    previous.open(HUB_KEY)
    previous.heartbeat(lane, datetime.now(UTC), None)
    assert previous._engine is not None
    abandoned = previous._engine.connect()  # a session of the lane's own, opened as the replicator opens them
    abandoned.begin()
    abandoned.execute(  # a catch-up batch's first statement: the lane's row is now held
        sa.text(
            "INSERT INTO hub_lanes (lane, last_replicated_at) VALUES (:lane, now()) "
            "ON CONFLICT (lane) DO UPDATE SET last_replicated_at = EXCLUDED.last_replicated_at"
        ),
        {"lane": lane},
    )
    # ... and then nothing: no COMMIT, no ROLLBACK, no FIN, no RST.

    # Its next life: payments stored in async mode, sent by the catch-up loop.
    store = AsyncStore(
        build_store(ComponentContext("sqlcipher", validate_options("storage.sqlcipher", OPTIONS, {}, env={}), tmp_path))
    )
    await store.open(StaticKeyProvider(bytes(range(1, 33))))
    stored = [await store.store(new_payment(i)) for i in range(1, 6)]
    repl = Replication(PostgresReplicator(options), store, lane=lane, keys=StaticKeyProvider(HUB_KEY), batch_size=2)
    failures: list[str] = []
    try:
        for _ in range(ROUNDS):  # what the background loop does: a failed round is tried again
            try:
                await repl.catch_up()
            except HubError as exc:
                failures.append(exc.code)
                continue
            break
        assert len(failures) < ROUNDS, (
            f"every catch-up round failed ({failures}): the abandoned transaction still holds the lane"
        )
        assert _hub_ids(hub) == [p.offline_id for p in stored]
        assert await store.get_meta(CURSOR_META) is not None
        with psycopg.connect(hub.admin_url.replace("+psycopg", "")) as conn:
            left = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND state LIKE 'idle in transaction%%'",
                (lane,),
            ).fetchone()
        assert left == (0,)  # the hub ended the abandoned transaction (and released the lane's row)
    finally:
        await repl.stop()
        await store.close()
        try:
            abandoned.close()  # the hub closed it already
        except sa.exc.SQLAlchemyError:
            pass
        previous.close()
