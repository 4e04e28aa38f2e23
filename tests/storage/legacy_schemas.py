"""Frozen copies of every earlier schema, with builders that fill them as an old offterm did.

Deliberately NOT imported from the plugin: if the shipped definitions
drift, the upgrade tests still start from what old versions really wrote.
Adding schema version N+1 means adding a builder for version N here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from storage_testkit import raw_connect

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


@dataclass
class LegacyPayment:
    """One payment as an old version left it: where it was in its lifecycle."""

    payment: NewPayment
    #: (to_state, attempts, error_code, extra column values) steps after "stored"
    path: Sequence[tuple[str, int, str | None, dict[str, object]]] = field(default_factory=tuple)


def _micros(dt) -> int:  # type: ignore[no-untyped-def]
    return int(dt.timestamp() * 1_000_000)


def build_v1(path: Path, key: bytes, payments: Sequence[LegacyPayment], *, updated_at: int) -> None:
    """Write a schema-v1 database holding ``payments`` (WAL, pinned cipher settings, 0600)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    conn = raw_connect(path, key)
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
        for item in payments:
            p, card = item.payment, item.payment.card
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
            for to_state, attempts, code, extra in item.path:
                sets = ", ".join(f"{k} = ?" for k in extra)
                conn.execute(
                    "UPDATE payments SET state = ?, attempts = ?, transition_code = ?, last_error_code = ?, "
                    f"updated_at = ?{', ' + sets if sets else ''} WHERE offline_id = ?",
                    (to_state, attempts, code, code, updated_at, *extra.values(), p.offline_id),
                )
        conn.execute("PRAGMA user_version = 1")
        conn.execute("COMMIT")
    finally:
        conn.close()


#: Schema version 2, exactly as offterm upgraded version 1 to it (and created new files).
MIGRATION_V1_TO_V2: tuple[str, ...] = (
    "ALTER TABLE payments ADD COLUMN finalized_at INTEGER",
    "ALTER TABLE payments ADD COLUMN card_purged_at INTEGER",
    ("UPDATE payments SET finalized_at = updated_at WHERE state IN ('forwarded', 'declined') AND finalized_at IS NULL"),
    """CREATE TABLE state_totals (
        state TEXT NOT NULL,
        currency TEXT NOT NULL,
        count INTEGER NOT NULL,
        amount INTEGER NOT NULL,
        PRIMARY KEY (state, currency)
    ) STRICT, WITHOUT ROWID""",
    """INSERT INTO state_totals (state, currency, count, amount)
       SELECT state, currency, count(*), sum(amount) FROM payments GROUP BY state, currency""",
    """CREATE TRIGGER totals_insert AFTER INSERT ON payments BEGIN
         INSERT INTO state_totals (state, currency, count, amount) VALUES (NEW.state, NEW.currency, 1, NEW.amount)
         ON CONFLICT (state, currency) DO UPDATE SET count = count + 1, amount = amount + excluded.amount;
       END""",
    """CREATE TRIGGER totals_update AFTER UPDATE OF state ON payments WHEN NEW.state IS NOT OLD.state BEGIN
         UPDATE state_totals SET count = count - 1, amount = amount - OLD.amount
           WHERE state = OLD.state AND currency = OLD.currency;
         INSERT INTO state_totals (state, currency, count, amount) VALUES (NEW.state, NEW.currency, 1, NEW.amount)
         ON CONFLICT (state, currency) DO UPDATE SET count = count + 1, amount = amount + excluded.amount;
       END""",
    """CREATE TRIGGER totals_delete AFTER DELETE ON payments BEGIN
         UPDATE state_totals SET count = count - 1, amount = amount - OLD.amount
           WHERE state = OLD.state AND currency = OLD.currency;
       END""",
    """CREATE TABLE allowed_transitions (
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        PRIMARY KEY (from_state, to_state)
    ) STRICT, WITHOUT ROWID""",
    """CREATE TRIGGER payments_transition BEFORE UPDATE OF state ON payments
       WHEN NEW.state IS NOT OLD.state AND NOT EXISTS (
         SELECT 1 FROM allowed_transitions WHERE from_state = OLD.state AND to_state = NEW.state)
       BEGIN SELECT RAISE(ABORT, 'offterm: state transition not allowed'); END""",
    (
        "CREATE TRIGGER payments_immutable BEFORE UPDATE OF offline_id, idempotency_key, amount, currency, "
        "account_id, livemode, stored_at, recorded_at ON payments WHEN NEW.offline_id IS NOT OLD.offline_id "
        "OR NEW.idempotency_key IS NOT OLD.idempotency_key OR NEW.amount IS NOT OLD.amount OR NEW.currency IS "
        "NOT OLD.currency OR NEW.account_id IS NOT OLD.account_id OR NEW.livemode IS NOT OLD.livemode OR "
        "NEW.stored_at IS NOT OLD.stored_at OR NEW.recorded_at IS NOT OLD.recorded_at BEGIN SELECT "
        "RAISE(ABORT, 'offterm: a stored payment''s identity and amount never change'); END"
    ),
    """CREATE TRIGGER payments_no_delete BEFORE DELETE ON payments WHEN OLD.state NOT IN ('forwarded', 'declined')
       BEGIN SELECT RAISE(ABORT, 'offterm: only forwarded or declined payments may be removed'); END""",
    "DROP INDEX payments_state",
    ("CREATE INDEX payments_claimable ON payments (stored_at, seq) WHERE state IN ('stored', 'outcome_unknown')"),
    (
        "CREATE INDEX payments_unclaimable ON payments (state, stored_at, seq) WHERE state NOT IN ('stored', "
        "'outcome_unknown')"
    ),
    "CREATE INDEX payments_finalized ON payments (finalized_at) WHERE finalized_at IS NOT NULL",
)

#: The transitions version 2 allowed (rows of ``allowed_transitions``).
TRANSITIONS_V2: tuple[tuple[str, str], ...] = (
    ("forwarding", "declined"),
    ("forwarding", "forwarded"),
    ("forwarding", "needs_attention"),
    ("forwarding", "outcome_unknown"),
    ("forwarding", "stored"),
    ("needs_attention", "stored"),
    ("outcome_unknown", "forwarding"),
    ("outcome_unknown", "needs_attention"),
    ("stored", "forwarding"),
    ("stored", "needs_attention"),
)


def build_v2(path: Path, key: bytes, payments: Sequence[LegacyPayment], *, updated_at: int) -> None:
    """Write a schema-v2 database holding ``payments``: version 1 as written, upgraded as offterm v2 did."""
    build_v1(path, key, payments, updated_at=updated_at)
    conn = raw_connect(path, key)
    try:
        for name, value in PINS.items():
            conn.execute(f"PRAGMA {name} = {value}")
        conn.execute("BEGIN IMMEDIATE")
        for statement in MIGRATION_V1_TO_V2:
            conn.execute(statement)
        conn.executemany("INSERT INTO allowed_transitions (from_state, to_state) VALUES (?, ?)", TRANSITIONS_V2)
        conn.execute("INSERT INTO offterm_meta (key, value) VALUES ('migrated_v1_to_v2', '2026-01-01T00:00:00+00:00')")
        conn.execute("PRAGMA user_version = 2")
        conn.execute("COMMIT")
    finally:
        conn.close()


#: Every earlier schema version -> its builder.
BUILDERS: dict[int, Callable[..., None]] = {1: build_v1, 2: build_v2}
