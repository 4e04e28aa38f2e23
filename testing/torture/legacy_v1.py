"""Schema version 1, frozen: the torture's crash run seeds old-schema stations with it.

A copy of ``build_v1`` from the storage team's ``tests/storage/legacy_schemas.py``,
cut down to what the crash run writes (payments still ``stored``).  A copy,
because this package ships and ``tests/`` does not; a faithful one, because
version 1 is frozen: what old offterm versions wrote never changes, and the
schema definitions in the plugin must not be used (they move on).
``tests/torture/test_legacy_v1.py`` checks that both builders write the same
database.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from offterm.core.contracts.storage import NewPayment

#: The cipher settings offterm has always pinned (SQLCipher 4).
PINS = {
    "cipher_page_size": "4096",
    "kdf_iter": "256000",
    "cipher_hmac_algorithm": "HMAC_SHA512",
    "cipher_kdf_algorithm": "PBKDF2_HMAC_SHA512",
    "cipher_use_hmac": "ON",
    "cipher_plaintext_header_size": "0",
}

_STATES = "'stored', 'forwarding', 'outcome_unknown', 'forwarded', 'declined', 'needs_attention'"

#: Schema version 1, exactly as offterm created it.
SCHEMA_V1: tuple[str, ...] = (
    "CREATE TABLE offterm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT",
    "CREATE TABLE app_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT",
    f"""CREATE TABLE payments (
        seq INTEGER PRIMARY KEY,
        offline_id TEXT NOT NULL UNIQUE,
        idempotency_key TEXT NOT NULL UNIQUE,
        amount INTEGER NOT NULL CHECK (amount > 0),
        currency TEXT NOT NULL,
        capture_method TEXT NOT NULL,
        metadata TEXT NOT NULL,
        account_id TEXT NOT NULL,
        livemode INTEGER NOT NULL,
        stored_at INTEGER NOT NULL,
        recorded_at INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ({_STATES})),
        attempts INTEGER NOT NULL DEFAULT 0,
        card_details TEXT,
        card_data BLOB,
        key_serial TEXT,
        encryption_scheme TEXT,
        intent_id TEXT,
        description TEXT,
        last_error_code TEXT,
        last_error_message TEXT,
        decline_code TEXT,
        next_attempt_at INTEGER,
        updated_at INTEGER NOT NULL,
        transition_code TEXT,
        claim_owner TEXT,
        claimed_at INTEGER,
        claim_expires_at INTEGER,
        claim_sent INTEGER NOT NULL DEFAULT 0,
        claimed_from TEXT
    ) STRICT""",
    """CREATE TABLE payment_history (
        offline_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        at INTEGER NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        error_code TEXT,
        PRIMARY KEY (offline_id, n)
    ) STRICT, WITHOUT ROWID""",
    "CREATE INDEX payments_state ON payments (state)",
    """CREATE TRIGGER history_on_transition AFTER UPDATE OF state ON payments WHEN NEW.state IS NOT OLD.state BEGIN
         INSERT INTO payment_history (offline_id, n, at, from_state, to_state, attempt, error_code)
         VALUES (NEW.offline_id,
                 (SELECT coalesce(max(n), 1) + 1 FROM payment_history WHERE offline_id = NEW.offline_id),
                 NEW.updated_at, OLD.state, NEW.state, NEW.attempts, NEW.transition_code);
       END""",
    """CREATE TRIGGER history_no_update BEFORE UPDATE ON payment_history
       BEGIN SELECT RAISE(ABORT, 'offterm: payment history is append-only'); END""",
    """CREATE TRIGGER history_no_delete BEFORE DELETE ON payment_history
       WHEN EXISTS (SELECT 1 FROM payments WHERE offline_id = OLD.offline_id)
       BEGIN SELECT RAISE(ABORT, 'offterm: payment history is append-only'); END""",
)


def _raw_connect(path: Path, key: bytes) -> Any:
    """A bare sqlcipher3 connection with the raw key, as ``tests/storage/storage_testkit.raw_connect``."""
    import sqlcipher3.dbapi2 as driver

    conn = driver.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA cipher_log_level = NONE")
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    return conn


def _micros(dt: datetime) -> int:
    return int(dt.timestamp() * 1_000_000)


def build_v1(path: Path, key: bytes, payments: Sequence[NewPayment], *, updated_at: int) -> None:
    """Write a schema-v1 database holding ``payments`` (WAL, pinned cipher settings, 0600)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    conn = _raw_connect(path, key)
    try:
        for name, value in PINS.items():
            conn.execute(f"PRAGMA {name} = {value}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        for statement in SCHEMA_V1:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO offterm_meta VALUES ('cipher_settings', ?), ('created_at', '2025-01-01T00:00:00+00:00')",
            (json.dumps({"pins": PINS, "cipher_version": "4.6.0 community"}, sort_keys=True),),
        )
        conn.execute("INSERT INTO app_meta VALUES ('last_account', '{\"account_id\": \"acct_test\"}')")
        for p in payments:
            card = p.card
            conn.execute(
                "INSERT INTO payments (offline_id, idempotency_key, amount, currency, capture_method, metadata, "
                "account_id, livemode, stored_at, recorded_at, state, card_details, card_data, key_serial, "
                "encryption_scheme, description, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'stored', ?, ?, ?, "
                "?, ?, ?)",
                (
                    p.offline_id,
                    p.idempotency_key,
                    p.amount,
                    p.currency,
                    p.capture_method.value,
                    json.dumps(p.metadata),
                    p.account_id,
                    int(p.livemode),
                    _micros(p.stored_at),
                    _micros(p.stored_at),
                    json.dumps(
                        {
                            "brand": card.details.brand,
                            "last4": card.details.last4,
                            "exp_month": card.details.exp_month,
                            "exp_year": card.details.exp_year,
                            "read_method": card.details.read_method.value,
                            "cardholder_name": card.details.cardholder_name,
                            "pin_verified": card.details.pin_verified,
                            "issuer_country": card.details.issuer_country,
                            "networks": list(card.details.networks),
                        }
                    ),
                    card.encrypted_card_data,
                    card.key_serial,
                    card.encryption_scheme,
                    p.description,
                    updated_at,
                ),
            )
        conn.execute("PRAGMA user_version = 1")
        conn.execute("COMMIT")
    finally:
        conn.close()
