"""Encryption at rest, key verification, damage, quarantine, durability settings and permissions."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from storage_testkit import T0, make_store, new_payment, raw_connect
from structlog.testing import capture_logs

from offterm.core.contracts.storage import PaymentState
from offterm.core.errors import EncryptionUnavailable, StorageDamaged, StorageError, WrongStorageKey
from offterm.plugins.storage.keys import StaticKeyProvider
from offterm.plugins.storage.sqlcipher._connection import CIPHER_PINS, StorageBusy, WeakDurability

S = PaymentState
NOW = T0 + timedelta(hours=1)
PAGE = 4096


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def closed_db_with_payments(tmp_path: Path, key: bytes, n: int = 40) -> list[str]:
    store = make_store(tmp_path)
    store.open(StaticKeyProvider(key))
    ids = [store.store(new_payment(i)).offline_id for i in range(n)]
    store.close()
    return ids


# -- encryption ----------------------------------------------------------------------


def test_the_database_and_its_wal_are_encrypted(store, tmp_path: Path) -> None:
    store.store(new_payment(1))
    store.set_meta("marker", "plaintext-marker-7f3a")
    db, wal = tmp_path / "payments.db", tmp_path / "payments.db-wal"
    assert wal.exists() and wal.stat().st_size > 0
    for path in (db, wal):
        data = path.read_bytes()
        assert b"SQLite format 3" not in data
        assert b"plaintext-marker-7f3a" not in data
        assert b"acct_test" not in data
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        sqlite3.connect(db).execute("SELECT * FROM sqlite_master").fetchall()


def test_the_file_opens_only_with_the_raw_key(tmp_path: Path, key: bytes) -> None:
    closed_db_with_payments(tmp_path, key, 1)
    raw = raw_connect(tmp_path / "payments.db", key)
    assert raw.execute("SELECT count(*) FROM payments").fetchone()[0] == 1
    raw.close()
    import sqlcipher3.dbapi2 as driver

    as_passphrase = driver.connect(str(tmp_path / "payments.db"))
    as_passphrase.execute("PRAGMA cipher_log_level = NONE")
    as_passphrase.execute(f"PRAGMA key = '{key.hex()}'")
    with pytest.raises(driver.DatabaseError):
        as_passphrase.execute("SELECT count(*) FROM sqlite_master").fetchall()
    as_passphrase.close()


def test_cipher_settings_are_pinned_and_recorded(store, key: bytes) -> None:
    import json

    raw = raw_connect(store.path, key)
    recorded = json.loads(raw.execute("SELECT value FROM offterm_meta WHERE key = 'cipher_settings'").fetchone()[0])
    raw.close()
    assert recorded["pins"] == dict(CIPHER_PINS)
    assert recorded["cipher_version"].startswith("4.")


def test_wrong_key_is_reported_without_sqlcipher_noise_on_stderr(tmp_path: Path, key: bytes, capfd) -> None:
    closed_db_with_payments(tmp_path, key, 3)
    before = digest(tmp_path / "payments.db")
    capfd.readouterr()
    with pytest.raises(WrongStorageKey) as err:
        make_store(tmp_path).open(StaticKeyProvider(os.urandom(32)))
    out, errout = capfd.readouterr()
    assert out == "" and errout == ""
    assert key.hex() not in str(err.value)
    assert digest(tmp_path / "payments.db") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["payments.db", "payments.db.lock", "payments.db.reserve"]


def test_sqlcipher_is_required_and_there_is_no_plaintext_fallback(tmp_path: Path, keys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sqlcipher3", None)
    monkeypatch.setitem(sys.modules, "sqlcipher3.dbapi2", None)
    with pytest.raises(EncryptionUnavailable, match="never stored unencrypted"):
        make_store(tmp_path).open(keys)
    assert not (tmp_path / "payments.db").exists()


def test_a_plain_sqlite_file_is_refused(tmp_path: Path, keys) -> None:
    plain = sqlite3.connect(tmp_path / "payments.db")
    plain.execute("CREATE TABLE payments (x)")
    plain.commit()
    plain.close()
    before = digest(tmp_path / "payments.db")
    with pytest.raises(StorageDamaged, match="unencrypted"):
        make_store(tmp_path).open(keys)
    assert digest(tmp_path / "payments.db") == before


def test_a_database_with_sqlcipher3_settings_gets_a_clear_error(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "payments.db"
    old = raw_connect(path, key)
    old.execute("PRAGMA cipher_compatibility = 3")
    old.execute("CREATE TABLE t (x)")
    old.close()
    before = digest(path)
    with pytest.raises(StorageError, match="SQLCipher 3 settings") as err:
        make_store(tmp_path).open(StaticKeyProvider(key))
    assert not isinstance(err.value, WrongStorageKey)
    assert digest(path) == before


# -- damage --------------------------------------------------------------------------


def smash(path: Path, page: int) -> None:
    with open(path, "r+b") as f:
        f.seek(page * PAGE + 200)
        f.write(os.urandom(64))


def test_a_damaged_first_page_is_damage_not_a_wrong_key(tmp_path: Path, key: bytes) -> None:
    closed_db_with_payments(tmp_path, key)
    smash(tmp_path / "payments.db", 0)
    damaged = digest(tmp_path / "payments.db")
    for _ in range(2):  # and a second attempt does not "repair" by recreating
        with pytest.raises(StorageDamaged, match="damaged.*left untouched"):
            make_store(tmp_path).open(StaticKeyProvider(key))
        assert digest(tmp_path / "payments.db") == damaged


def test_a_damaged_data_page_gives_a_clear_error_and_the_file_is_preserved(tmp_path: Path, key: bytes) -> None:
    closed_db_with_payments(tmp_path, key, 60)
    pages = (tmp_path / "payments.db").stat().st_size // PAGE
    for page in range(2, pages):
        smash(tmp_path / "payments.db", page)
    damaged = digest(tmp_path / "payments.db")
    with pytest.raises(StorageDamaged):
        store = make_store(tmp_path)
        store.open(StaticKeyProvider(key))
        try:
            store.list_payments()
        finally:
            store.close()
    assert digest(tmp_path / "payments.db") == damaged


def plant(store, key: bytes, pid: str, column: str, value: object) -> None:
    """Corrupt one field of one record behind the store's back (an old bug, a bit flip in a value)."""
    raw = raw_connect(store.path, key)
    raw.execute(f"UPDATE payments SET {column} = ? WHERE offline_id = ?", (value, pid))
    raw.close()


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("metadata", "{not json", "metadata"),
        ("card_details", '{"brand": "visa"}', "card_details"),
        ("capture_method", "sometimes", "capture_method"),
        ("card_data", None, "card_data"),
    ],
)
def test_an_undecodable_record_is_quarantined_and_never_blocks_the_others(store, key, column, value, reason) -> None:
    ids = [store.store(new_payment(i)).offline_id for i in range(4)]
    plant(store, key, ids[0], column, value)
    batch = store.claim("w", 2, 30, NOW)
    assert [p.offline_id for p in batch] == ids[1:3], "the bad oldest record did not block the next ones"
    bad = store.get(ids[0])
    assert bad.state is S.NEEDS_ATTENTION
    assert bad.last_error_code == "undecodable_record"
    assert reason in (bad.last_error_message or "")
    assert bad.card is None
    assert store.history(ids[0])[-1].to_state is S.NEEDS_ATTENTION
    assert store.summary().needs_attention_count == 1
    assert {p.offline_id for p in store.list_payments()} == set(ids)


def test_listing_quarantines_an_undecodable_record_once(store, key) -> None:
    ids = [store.store(new_payment(i)).offline_id for i in range(3)]
    plant(store, key, ids[1], "metadata", "[1, 2]")
    with capture_logs() as logs:
        listed = {p.offline_id: p.state for p in store.list_payments()}
        store.list_payments()
    assert listed == {ids[0]: S.STORED, ids[1]: S.NEEDS_ATTENTION, ids[2]: S.STORED}
    quarantined = [e for e in logs if e["event"] == "payment_quarantined"]
    assert [(e["offline_id"], e["log_level"]) for e in quarantined] == [(ids[1], "warning")]
    assert len(store.history(ids[1])) == 2


# -- durability and permissions --------------------------------------------------------


def test_wal_and_synchronous_full_are_in_force(store, tmp_path: Path) -> None:
    with store._tx(write=False) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


@pytest.mark.parametrize(("option", "value"), [("synchronous", "normal"), ("journal_mode", "delete")])
def test_weaker_durability_is_refused_unless_overridden_and_logged(tmp_path, keys, option, value) -> None:
    with pytest.raises(WeakDurability, match="allow_weak_durability"):
        make_store(tmp_path, **{option: value}).open(keys)
    store = make_store(tmp_path, **{option: value, "allow_weak_durability": True})
    with capture_logs() as logs:
        store.open(keys)
    try:
        assert any(e["event"] == "storage_durability_weakened" and e["log_level"] == "warning" for e in logs)
        store.store(new_payment())
    finally:
        store.close()


def test_busy_timeout_waits_for_another_writer_then_gives_a_typed_error(tmp_path: Path, key: bytes) -> None:
    store = make_store(tmp_path, busy_timeout_ms=300)
    store.open(StaticKeyProvider(key))
    other = raw_connect(tmp_path / "payments.db", key)
    try:
        other.execute("PRAGMA busy_timeout = 5000")
        other.execute("BEGIN IMMEDIATE")
        p = new_payment(1)
        with pytest.raises(StorageBusy):
            store.store(p)
        releaser = threading.Timer(0.1, lambda: other.execute("COMMIT"))
        releaser.start()
        patient = make_store(tmp_path, busy_timeout_ms=10_000)
        patient.open(StaticKeyProvider(key))
        try:
            assert patient.store(p).state is S.STORED
        finally:
            releaser.join()
            patient.close()
    finally:
        other.close()
        store.close()


def test_files_holding_payments_are_0600(store, tmp_path: Path) -> None:
    store.store(new_payment())
    for name in ("payments.db", "payments.db-wal", "payments.db-shm", "payments.db.reserve"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


def test_loose_permissions_on_an_existing_database_are_tightened(tmp_path: Path, key: bytes) -> None:
    closed_db_with_payments(tmp_path, key, 1)
    os.chmod(tmp_path / "payments.db", 0o644)
    store = make_store(tmp_path)
    store.open(StaticKeyProvider(key))
    store.close()
    assert stat.S_IMODE((tmp_path / "payments.db").stat().st_mode) == 0o600


def test_the_data_directory_is_created_private(tmp_path: Path, keys) -> None:
    store = make_store(tmp_path / "new" / "dir")
    store.open(keys)
    store.close()
    assert stat.S_IMODE((tmp_path / "new" / "dir").stat().st_mode) == 0o700


# -- retention -------------------------------------------------------------------------


def test_reconciliation_summaries_are_kept_for_retention_days_then_removed(tmp_path: Path, keys) -> None:
    store = make_store(tmp_path, retention_days=7)
    store.open(keys)
    try:
        done, kept = (store.store(new_payment(i)).offline_id for i in range(2))
        store.claim("w", 1, 30, NOW)
        store.record_attempt(done, "w", NOW)
        store.complete(done, "w", S.FORWARDED, NOW, intent_id="pi_1")
        assert store.purge_expired(NOW + timedelta(days=6)) == 0
        summary = store.get(done)
        assert (summary.state, summary.intent_id, summary.amount, summary.card) == (S.FORWARDED, "pi_1", 1000, None)
        assert store.purge_expired(NOW + timedelta(days=7, seconds=1)) == 1
        with pytest.raises(Exception, match="no stored payment"):
            store.get(done)
        assert store.get(kept).state is S.STORED, "pending payments are never removed"
        assert store.purge_expired(NOW + timedelta(days=3650)) == 0
    finally:
        store.close()


def test_opening_purges_expired_summaries(tmp_path: Path, keys) -> None:
    store = make_store(tmp_path, retention_days=0)
    store.open(keys)
    pid = store.store(new_payment()).offline_id
    now = datetime.now(UTC) - timedelta(seconds=5)
    store.claim("w", 1, 30, now)
    store.record_attempt(pid, "w", now)
    store.complete(pid, "w", S.DECLINED, now, decline_code="do_not_honor")
    store.close()
    time.sleep(0.01)
    again = make_store(tmp_path, retention_days=0)
    again.open(keys)
    try:
        assert again.list_payments() == []
    finally:
        again.close()
