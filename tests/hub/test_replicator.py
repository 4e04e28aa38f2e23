"""The PostgreSQL replicator against a real server: schema, idempotence, row-level security, keys."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from pgcluster import HUB_KEY

from offterm.core.contracts import CardDetails, CardResult, HistoryEntry, PaymentState, StoredPayment
from offterm.core.contracts.replication import (
    HubNotInitialised,
    HubPermissionDenied,
    HubSchemaTooNew,
    ReplicationRecord,
    WrongHubKey,
)
from offterm.core.models import CaptureMethod
from offterm.plugins.storage.postgres import PostgresReplicator
from offterm.plugins.storage.postgres.schema import SCHEMA_VERSION
from offterm.plugins.storage.postgres.sealing import open_sealed

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def payment(n: int, *, state=PaymentState.STORED, updated=None, amount=1000 + 1, currency="usd") -> StoredPayment:
    card = CardResult(
        details=CardDetails(brand="visa", last4="4242", exp_month=12, exp_year=2030, read_method="contact_emv"),
        encrypted_card_data=b"sealed-by-the-reader-%d" % n,
        key_serial="FFFF9876543210E00001",
    )
    at = T0 + timedelta(seconds=n)
    return StoredPayment(
        offline_id=f"pay_{n:04d}",
        idempotency_key=f"idem-{n}",
        amount=amount,
        currency=currency,
        capture_method=CaptureMethod.AUTOMATIC,
        metadata={"order": f"A-{n}"},
        account_id="acct_1",
        livemode=False,
        stored_at=at,
        state=state,
        attempts=0,
        card_details=card.details,
        card=card,
        updated_at=updated or at,
    )


def record(lane: str, p: StoredPayment) -> ReplicationRecord:
    return ReplicationRecord(lane, p, [HistoryEntry(p.stored_at, None, PaymentState.STORED, 0)])


def rows(hub, sql: str):
    with psycopg.connect(hub.admin_url.replace("+psycopg", "")) as conn:
        return conn.execute(sql).fetchall()


def test_init_creates_the_schema_once_and_is_idempotent(hub) -> None:
    assert hub.admin().initialise(HUB_KEY) == SCHEMA_VERSION  # again: nothing to do
    assert rows(hub, "SELECT max(version) FROM hub_schema_version") == [(SCHEMA_VERSION,)]
    tables = {r[0] for r in rows(hub, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"hub_payments", "hub_lanes", "hub_meta", "hub_schema_version"} <= tables


def test_a_newer_schema_is_refused_untouched(hub) -> None:
    url = hub.lane("lane_a")
    rows_before = rows(hub, "SELECT count(*) FROM hub_payments")
    with psycopg.connect(hub.admin_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("INSERT INTO hub_schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(HubSchemaTooNew, match=f"version {SCHEMA_VERSION + 1}"):
        hub.replicator(url)
    with pytest.raises(HubSchemaTooNew):
        hub.admin().initialise(HUB_KEY)
    assert rows(hub, "SELECT count(*) FROM hub_payments") == rows_before
    assert rows(hub, "SELECT max(version) FROM hub_schema_version") == [(SCHEMA_VERSION + 1,)]


def test_an_empty_database_says_run_hub_init(pg, hub_db) -> None:
    r = PostgresReplicator(
        {
            "url": pg.url(database=hub_db),
            "password": "",
            "admin_url": "",
            "sslmode": "disable",
            "sslrootcert": "",
            "sslcert": "",
            "sslkey": "",
            "connect_timeout": 2,
            "statement_timeout": 5.0,
        }
    )
    with pytest.raises(HubNotInitialised, match="offterm hub init"):
        r.open(HUB_KEY)


def test_replication_is_idempotent_and_never_goes_back(hub) -> None:
    lane = f"lane_a_{hub.database}"
    r = hub.replicator(hub.lane("lane_a"))
    p = payment(1)
    assert r.replicate([record(lane, p)]) == 1
    assert r.replicate([record(lane, p)]) == 0  # twice: one row, unchanged
    later = replace(p, state=PaymentState.FORWARDING, attempts=1, updated_at=p.stored_at + timedelta(seconds=5))
    assert r.replicate([record(lane, later)]) == 1
    assert r.replicate([record(lane, p)]) == 0  # an older view never overwrites a newer one
    assert rows(hub, "SELECT offline_id, state, attempts, amount, currency FROM hub_payments") == [
        ("pay_0001", "forwarding", 1, 1001, "usd")
    ]
    r.close()


def test_only_amounts_states_and_times_are_in_clear(hub) -> None:
    lane = f"lane_a_{hub.database}"
    r = hub.replicator(hub.lane("lane_a"))
    r.replicate([record(lane, payment(7))])
    [(card, sealed)] = rows(hub, "SELECT card_data, sealed FROM hub_payments")
    assert bytes(card) == b"sealed-by-the-reader-7"  # as the reader sealed it, not re-encrypted
    for secret in (b"A-7", b"idem-7", b"4242", b"acct_1", b"visa"):
        assert secret not in bytes(sealed)
    opened = open_sealed(HUB_KEY, lane, "pay_0007", bytes(sealed))
    assert opened["metadata"] == {"order": "A-7"} and opened["idempotency_key"] == "idem-7"
    assert opened["history"][0]["to"] == "stored"
    with pytest.raises(WrongHubKey):  # bound to its row: another row's id does not open it
        open_sealed(HUB_KEY, lane, "pay_0008", bytes(sealed))
    r.close()


def test_a_lane_cannot_write_another_lanes_rows(hub) -> None:
    lane_a, lane_b = f"lane_a_{hub.database}", f"lane_b_{hub.database}"
    a = hub.replicator(hub.lane("lane_a"))
    b = hub.replicator(hub.lane("lane_b"))
    a.replicate([record(lane_a, payment(1))])
    with pytest.raises(HubPermissionDenied, match="only its own rows"):
        b.replicate([record(lane_a, payment(2))])  # a new row in lane A's name
    newer = replace(payment(1), state=PaymentState.NEEDS_ATTENTION, updated_at=T0 + timedelta(hours=1))
    with pytest.raises(HubPermissionDenied):
        b.replicate([record(lane_b, newer)])  # lane A's existing row, claimed as lane B's
    with pytest.raises(HubPermissionDenied):
        b.heartbeat(lane_a, T0, None)
    assert rows(hub, "SELECT offline_id, lane, state FROM hub_payments") == [("pay_0001", lane_a, "stored")]
    # the lane sees only its own rows
    assert b.status() == [] or all(s.lane == lane_b for s in b.status())
    a.close()
    b.close()


def test_a_lane_cannot_touch_the_hub_forwarders_columns(hub) -> None:
    url = hub.lane("lane_a")
    hub.replicator(url).replicate([record(f"lane_a_{hub.database}", payment(1))])
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE hub_payments SET hub_state = 'forwarded'")


def test_a_wrong_hub_key_is_refused_before_anything_is_sent(hub) -> None:
    url = hub.lane("lane_a")
    with pytest.raises(WrongHubKey, match="not the key the hub was initialised with"):
        hub.replicator(url, key=bytes(32))
    with pytest.raises(WrongHubKey):
        hub.admin().initialise(bytes(32))
    assert rows(hub, "SELECT count(*) FROM hub_payments") == [(0,)]


def test_status_counts_and_amounts_per_lane(hub) -> None:
    lane_a, lane_b = f"lane_a_{hub.database}", f"lane_b_{hub.database}"
    a = hub.replicator(hub.lane("lane_a"))
    b = hub.replicator(hub.lane("lane_b"))
    a.replicate(
        [
            record(lane_a, payment(1, amount=500)),
            record(lane_a, payment(2, amount=700)),
            record(lane_a, payment(3, amount=900, currency="eur")),
            record(lane_a, payment(4, amount=100, state=PaymentState.FORWARDING)),
            record(lane_a, payment(5, amount=200, state=PaymentState.OUTCOME_UNKNOWN)),
            record(lane_a, payment(6, amount=300, state=PaymentState.NEEDS_ATTENTION)),
            record(lane_a, payment(7, amount=999, state=PaymentState.FORWARDED)),
        ]
    )
    b.replicate([record(lane_b, payment(20, amount=4200))])
    a.heartbeat(lane_a, datetime.now(UTC), None)
    [sa, sb] = hub.admin().status()
    assert sa.lane == lane_a and sb.lane == lane_b
    assert sa.states["stored"].count == 3
    assert sa.states["stored"].amounts_by_currency == {"usd": 1200, "eur": 900}
    assert sa.states["forwarding"].count == 2 and sa.states["forwarding"].amounts_by_currency == {"usd": 300}
    assert sa.states["needs_attention"].count == 1
    assert sa.oldest_stored_at == T0 + timedelta(seconds=1)
    assert sa.last_heartbeat is not None and sa.replication_lag_seconds == 0
    assert sb.states["stored"].amounts_by_currency == {"usd": 4200} and sb.last_heartbeat is None
    a.close()
    b.close()


def test_one_payment_alone_creates_its_lanes_row_and_never_waits_for_that_row(hub) -> None:
    """One record is one autocommit statement: the lane's row is made if missing, else left alone.

    So a sync confirm's send never queues behind a transaction holding the lane's ``hub_lanes`` row
    (a catch-up batch stamps it first thing); were it to wait, the held row below would make the
    statement run into its ``statement_timeout`` and fail.
    """
    lane = f"lane_a_{hub.database}"
    r = hub.replicator(hub.lane("lane_a"))
    assert rows(hub, "SELECT count(*) FROM hub_lanes") == [(0,)]
    assert r.replicate([record(lane, payment(1))]) == 1  # the lane's very first payment
    assert rows(hub, "SELECT lane, last_replicated_at IS NOT NULL FROM hub_lanes") == [(lane, True)]
    with psycopg.connect(hub.admin_url.replace("+psycopg", "")) as holder:
        holder.execute("UPDATE hub_lanes SET last_heartbeat = now() WHERE lane = %s", (lane,))  # row locked
        assert r.replicate([record(lane, payment(2))]) == 1
        assert r.replicate([record(lane, payment(2))]) == 0  # still idempotent
        holder.rollback()
    assert rows(hub, "SELECT offline_id FROM hub_payments ORDER BY offline_id") == [("pay_0001",), ("pay_0002",)]
    r.close()
