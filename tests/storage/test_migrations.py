"""Schema upgrades from every earlier version, with payments pending; failures leave the file intact."""

from __future__ import annotations

import hashlib
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from legacy_schemas import BUILDERS, LegacyPayment
from storage_testkit import T0, make_store, new_payment, raw_connect

from offterm.core.contracts.storage import PaymentState
from offterm.core.errors import StorageError
from offterm.plugins.storage.keys import StaticKeyProvider
from offterm.plugins.storage.sqlcipher import _migrate as migrate
from offterm.plugins.storage.sqlcipher import _schema as schema
from offterm.plugins.storage.sqlcipher._migrate import StorageMigrationFailed

S = PaymentState
RECENT = int((datetime.now(UTC) - timedelta(hours=1)).timestamp() * 1_000_000)


def legacy_payments() -> dict[str, LegacyPayment]:
    expired = int((T0 - timedelta(hours=1)).timestamp() * 1_000_000)
    return {
        "stored": LegacyPayment(new_payment(1, amount=100)),
        "unknown": LegacyPayment(
            new_payment(2, amount=200), [("forwarding", 0, None, {}), ("outcome_unknown", 1, "timeout", {})]
        ),
        "crashed": LegacyPayment(
            new_payment(3, amount=300),
            [
                (
                    "forwarding",
                    1,
                    None,
                    {
                        "claim_owner": "dead",
                        "claimed_at": expired,
                        "claim_expires_at": expired,
                        "claim_sent": 1,
                        "claimed_from": "stored",
                    },
                )
            ],
        ),
        "forwarded": LegacyPayment(
            new_payment(4, amount=400), [("forwarding", 0, None, {}), ("forwarded", 1, None, {"intent_id": "pi_4"})]
        ),
        "attention": LegacyPayment(
            new_payment(5, amount=500), [("forwarding", 0, None, {}), ("needs_attention", 1, "bad_request", {})]
        ),
        "euro": LegacyPayment(new_payment(6, amount=600, currency="eur")),
    }


def test_every_earlier_version_has_a_builder() -> None:
    assert set(BUILDERS) == set(range(1, schema.CURRENT_VERSION))
    assert set(schema.MIGRATIONS) == set(range(1, schema.CURRENT_VERSION))


@pytest.mark.parametrize("version", sorted(BUILDERS))
def test_upgrade_keeps_every_pending_payment_and_its_history(tmp_path: Path, key: bytes, version: int) -> None:
    legacy = legacy_payments()
    db = tmp_path / "payments.db"
    BUILDERS[version](db, key, list(legacy.values()), updated_at=RECENT)
    ids = {name: item.payment.offline_id for name, item in legacy.items()}

    store = make_store(tmp_path)
    store.open(StaticKeyProvider(key))
    try:
        assert store.opened_from_version == version
        states = {p.offline_id: p.state for p in store.list_payments()}
        assert states == {
            ids["stored"]: S.STORED,
            ids["unknown"]: S.OUTCOME_UNKNOWN,
            ids["crashed"]: S.FORWARDING,
            ids["forwarded"]: S.FORWARDED,
            ids["attention"]: S.NEEDS_ATTENTION,
            ids["euro"]: S.STORED,
        }
        summary = store.summary()
        assert summary.pending_count == 4
        assert summary.amounts_by_currency == {"usd": 600, "eur": 600}
        assert summary.needs_attention_count == 1

        unknown = store.get(ids["unknown"])
        assert unknown.idempotency_key == legacy["unknown"].payment.idempotency_key
        assert unknown.card is not None and unknown.card == legacy["unknown"].payment.card
        assert [(h.from_state, h.to_state, h.attempt, h.error_code) for h in store.history(ids["unknown"])] == [
            (None, S.STORED, 0, None),
            (S.STORED, S.FORWARDING, 0, None),
            (S.FORWARDING, S.OUTCOME_UNKNOWN, 1, "timeout"),
        ]
        forwarded = store.get(ids["forwarded"])
        assert forwarded.intent_id == "pi_4" and forwarded.card is None, "finished payments lose their card data"
        assert store.get_meta("last_account") == '{"account_id": "acct_test"}'

        # the crashed claim is recovered as outcome_unknown; everything pending can be forwarded
        assert store.recover_expired_claims(datetime.now(UTC)) == 1
        assert store.get(ids["crashed"]).state is S.OUTCOME_UNKNOWN
        claimed = store.claim("w", 10, 30, datetime.now(UTC))
        assert {p.offline_id for p in claimed} == {ids["stored"], ids["unknown"], ids["crashed"], ids["euro"]}
        assert all(
            p.idempotency_key == legacy[n].payment.idempotency_key
            for n in legacy
            for p in claimed
            if p.offline_id == ids[n]
        )
        store.store(new_payment(7))
    finally:
        store.close()

    backups = sorted(tmp_path.glob(f"payments.db.v{version}-*.bak"))
    assert len(backups) == 1
    assert stat.S_IMODE(backups[0].stat().st_mode) == 0o600
    old = raw_connect(backups[0], key)
    try:
        assert old.execute("PRAGMA user_version").fetchone()[0] == version
        assert old.execute("SELECT count(*) FROM payments").fetchone()[0] == len(legacy)
    finally:
        old.close()


def schema_of(path: Path, key: bytes) -> list[tuple[str, str, str]]:
    conn = raw_connect(path, key)
    try:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
        return [(t, n, " ".join((sql or "").split())) for t, n, sql in rows]
    finally:
        conn.close()


@pytest.mark.parametrize("version", sorted(BUILDERS))
def test_an_upgraded_database_has_exactly_the_schema_of_a_new_one(tmp_path: Path, key: bytes, version: int) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    BUILDERS[version](tmp_path / "old" / "payments.db", key, [], updated_at=RECENT)
    for sub in ("old", "new"):
        s = make_store(tmp_path / sub)
        s.open(StaticKeyProvider(key))
        s.close()
    assert schema_of(tmp_path / "old" / "payments.db", key) == schema_of(tmp_path / "new" / "payments.db", key)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_failed_migration_leaves_the_old_file_intact(tmp_path: Path, key: bytes, monkeypatch) -> None:
    legacy = legacy_payments()
    db = tmp_path / "payments.db"
    BUILDERS[1](db, key, list(legacy.values()), updated_at=RECENT)
    before = digest(db)
    broken = (*schema.MIGRATIONS[1], "CREATE TABLE half_done (x)", "THIS IS NOT SQL")
    monkeypatch.setitem(schema.MIGRATIONS, 1, broken)

    with pytest.raises(
        StorageMigrationFailed, match=rf"v1 to v{schema.CURRENT_VERSION} failed.*unchanged at v1.*\.bak"
    ) as err:
        make_store(tmp_path).open(StaticKeyProvider(key))
    assert digest(db) == before, "the database file is byte-for-byte the old one"
    backup = Path(err.value.details["backup"])
    assert backup.exists()
    conn = raw_connect(db, key)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half_done'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM payments").fetchone()[0] == len(legacy)
    finally:
        conn.close()

    monkeypatch.setitem(schema.MIGRATIONS, 1, migrate.schema.MIGRATION_V1_TO_V2)
    store = make_store(tmp_path)
    store.open(StaticKeyProvider(key))
    try:
        assert len(store.list_payments()) == len(legacy)
    finally:
        store.close()


def test_a_database_from_a_newer_offterm_is_refused_untouched(tmp_path: Path, key: bytes, open_store) -> None:
    store = open_store()
    store.store(new_payment())
    store.close()
    conn = raw_connect(tmp_path / "payments.db", key)
    conn.execute(f"PRAGMA user_version = {schema.CURRENT_VERSION + 1}")
    conn.close()
    before = digest(tmp_path / "payments.db")
    with pytest.raises(StorageError, match="newer than this offterm"):
        make_store(tmp_path).open(StaticKeyProvider(key))
    assert digest(tmp_path / "payments.db") == before


def test_a_foreign_database_with_the_right_key_is_refused(tmp_path: Path, key: bytes) -> None:
    os.close(os.open(tmp_path / "payments.db", os.O_CREAT | os.O_WRONLY, 0o600))
    conn = raw_connect(tmp_path / "payments.db", key)
    conn.execute("CREATE TABLE something_else (x)")
    conn.close()
    with pytest.raises(StorageError, match="no offterm schema version"):
        make_store(tmp_path).open(StaticKeyProvider(key))


def test_a_store_at_the_previous_version_gains_step_memory_and_the_journal(tmp_path: Path, key: bytes) -> None:
    legacy = legacy_payments()
    BUILDERS[2](tmp_path / "payments.db", key, list(legacy.values()), updated_at=RECENT)
    ids = {name: item.payment.offline_id for name, item in legacy.items()}
    store = make_store(tmp_path)
    store.open(StaticKeyProvider(key))
    try:
        assert store.opened_from_version == 2
        payments = store.list_payments()
        assert {p.offline_id for p in payments} == set(ids.values()), "every payment kept"
        assert all(p.key_generation == 0 and p.steps_sent == {} for p in payments)
        assert store.get(ids["forwarded"]).intent_id == "pi_4"
        assert store.online_attempts() == []

        now = datetime.now(UTC)
        [claimed] = [p for p in store.claim("w", 10, 30, now) if p.offline_id == ids["unknown"]]
        assert claimed.attempts == 1
        after = store.record_attempt(ids["unknown"], "w", now, ["create_and_confirm"])
        assert after.attempts == 2 and after.steps_sent == {"create_and_confirm": (now, now)}
        assert store.start_key_generation(ids["unknown"], "w", now, None).key_generation == 1
    finally:
        store.close()
