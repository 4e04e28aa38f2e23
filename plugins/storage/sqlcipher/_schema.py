"""The database schema, as a base version plus ordered migrations.

A new database is created at version 1 and then migrated like any old one,
so a fresh file and an upgraded file always end up identical.  Migrations
only add (columns, tables, triggers, indexes): payment rows are never
dropped or rewritten by a migration.  The version lives in
``PRAGMA user_version``, which changes atomically with the migration.
"""

# SQL here is assembled only from module constants; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

from offterm.core.contracts.storage import ALLOWED_TRANSITIONS, PaymentState

#: The version this code reads and writes.
CURRENT_VERSION = 3

_STATES = ", ".join(f"'{s.value}'" for s in PaymentState)

#: Version 1: payments, their append-only history of transitions (written by
#: a trigger, so no state change can skip it; the first entry, "stored", is
#: the immutable ``recorded_at`` of the payment row itself), and two small
#: key/value areas.
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

_FINAL = "('forwarded', 'declined')"
#: The claimable filter, spelled exactly as in the partial index so the planner can use it.
CLAIMABLE_WHERE = "state IN ('stored', 'outcome_unknown')"
UNCLAIMABLE_WHERE = "state NOT IN ('stored', 'outcome_unknown')"
_IMMUTABLE = (
    "offline_id",
    "idempotency_key",
    "amount",
    "currency",
    "account_id",
    "livemode",
    "stored_at",
    "recorded_at",
)

#: Version 2: retention (finalized_at, card_purged_at), O(1) totals for the
#: status summary, and transition rules enforced by the database itself.
MIGRATION_V1_TO_V2: tuple[str, ...] = (
    "ALTER TABLE payments ADD COLUMN finalized_at INTEGER",
    "ALTER TABLE payments ADD COLUMN card_purged_at INTEGER",
    f"UPDATE payments SET finalized_at = updated_at WHERE state IN {_FINAL} AND finalized_at IS NULL",
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
    "CREATE TRIGGER payments_immutable BEFORE UPDATE OF "
    + ", ".join(_IMMUTABLE)
    + " ON payments WHEN "
    + " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in _IMMUTABLE)
    + " BEGIN SELECT RAISE(ABORT, 'offterm: a stored payment''s identity and amount never change'); END",
    f"""CREATE TRIGGER payments_no_delete BEFORE DELETE ON payments WHEN OLD.state NOT IN {_FINAL}
       BEGIN SELECT RAISE(ABORT, 'offterm: only forwarded or declined payments may be removed'); END""",
    "DROP INDEX payments_state",
    f"CREATE INDEX payments_claimable ON payments (stored_at, seq) WHERE {CLAIMABLE_WHERE}",
    f"CREATE INDEX payments_unclaimable ON payments (state, stored_at, seq) WHERE {UNCLAIMABLE_WHERE}",
    "CREATE INDEX payments_finalized ON payments (finalized_at) WHERE finalized_at IS NOT NULL",
)

#: Version 3: what the forwarder must remember because the processor forgets
#: idempotency keys (Stripe after 24 h): the key generation and when each step
#: was first/last sent (JSON text, ISO times), and the in-flight journal of
#: online confirms (no card data in it).
MIGRATION_V2_TO_V3: tuple[str, ...] = (
    "ALTER TABLE payments ADD COLUMN key_generation INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE payments ADD COLUMN steps_sent TEXT NOT NULL DEFAULT '{}'",
    """CREATE TABLE online_attempts (
        offline_id TEXT PRIMARY KEY,
        idempotency_key TEXT NOT NULL,
        amount INTEGER NOT NULL CHECK (amount > 0),
        currency TEXT NOT NULL,
        owner TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        intent_id TEXT,
        steps_sent TEXT NOT NULL DEFAULT '{}',
        resolution TEXT,
        resolved_at INTEGER,
        error_code TEXT
    ) STRICT""",
    "CREATE INDEX online_attempts_started ON online_attempts (started_at)",
)

#: ``MIGRATIONS[n]`` upgrades version n to n + 1.
MIGRATIONS: dict[int, tuple[str, ...]] = {1: MIGRATION_V1_TO_V2, 2: MIGRATION_V2_TO_V3}


def transition_rows() -> set[tuple[str, str]]:
    """The contract's allowed transitions, as rows of ``allowed_transitions``."""
    return {(src.value, dst.value) for src, targets in ALLOWED_TRANSITIONS.items() for dst in targets}
