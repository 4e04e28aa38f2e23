"""The hub's schema and its migrations (``offterm hub init``).

The version lives in ``hub_schema_version`` (one row per applied migration).  Migrations run in
one transaction under an advisory lock, only add (tables, columns, indexes, policies), and never
drop or rewrite replicated rows.  A hub whose version is newer than ``SCHEMA_VERSION`` is refused
untouched (``HubSchemaTooNew``).

Roles: ``offterm_lane`` (each lane's login role is a member) may insert and update only rows whose
``lane`` is its own role name (row-level security) and never the hub forwarder's columns;
``offterm_forwarder`` reads every row and writes only the lease and outcome columns.  The leases
(``lease_owner``, ``lease_expires_at``), the hub's outcome (``hub_state``, ``hub_intent_id``,
``hub_decided_at``, ``hub_error_code``) and the lanes' heartbeats are there for the hub forwarder
that takes over silent lanes (``FOR UPDATE SKIP LOCKED`` on ``hub_payments_takeover``).
"""

from __future__ import annotations

LANE_ROLE = "offterm_lane"
FORWARDER_ROLE = "offterm_forwarder"

_OPEN_STATES = "('stored', 'forwarding', 'outcome_unknown', 'needs_attention')"

_V1 = [
    f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{LANE_ROLE}') THEN
            CREATE ROLE {LANE_ROLE} NOLOGIN;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{FORWARDER_ROLE}') THEN
            CREATE ROLE {FORWARDER_ROLE} NOLOGIN;
        END IF;
    END $$""",  # noqa: S608 - role names are constants of this module
    """CREATE TABLE hub_meta (
        key text PRIMARY KEY,
        value bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE hub_lanes (
        lane text PRIMARY KEY,
        last_heartbeat timestamptz,
        oldest_unreplicated timestamptz,
        last_replicated_at timestamptz
    )""",
    """CREATE TABLE hub_payments (
        offline_id text PRIMARY KEY,
        lane text NOT NULL REFERENCES hub_lanes (lane),
        ingest_seq bigint GENERATED ALWAYS AS IDENTITY,
        amount bigint NOT NULL CHECK (amount > 0),
        currency text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
        state text NOT NULL CHECK (state IN ('stored', 'forwarding', 'outcome_unknown', 'forwarded',
                                             'declined', 'needs_attention')),
        attempts integer NOT NULL CHECK (attempts >= 0),
        stored_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        replicated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        card_data bytea,
        key_serial text,
        encryption_scheme text,
        sealed bytea NOT NULL,
        lease_owner text,
        lease_expires_at timestamptz,
        hub_state text,
        hub_intent_id text,
        hub_decided_at timestamptz,
        hub_error_code text
    )""",
    f"""CREATE INDEX hub_payments_lane_open ON hub_payments (lane, state, currency)
        INCLUDE (amount, stored_at) WHERE state IN {_OPEN_STATES}""",
    """CREATE INDEX hub_payments_takeover ON hub_payments (lane, stored_at)
        WHERE state IN ('stored', 'outcome_unknown') AND hub_state IS NULL""",
    """CREATE INDEX hub_payments_outcomes ON hub_payments (lane, hub_decided_at) WHERE hub_decided_at IS NOT NULL""",
    "ALTER TABLE hub_payments ENABLE ROW LEVEL SECURITY",
    "ALTER TABLE hub_lanes ENABLE ROW LEVEL SECURITY",
    f"""CREATE POLICY lane_own_payments ON hub_payments TO {LANE_ROLE}
        USING (lane = current_user) WITH CHECK (lane = current_user)""",
    f"""CREATE POLICY lane_own_row ON hub_lanes TO {LANE_ROLE}
        USING (lane = current_user) WITH CHECK (lane = current_user)""",
    f"CREATE POLICY forwarder_payments ON hub_payments TO {FORWARDER_ROLE} USING (true) WITH CHECK (true)",
    f"CREATE POLICY forwarder_lanes ON hub_lanes TO {FORWARDER_ROLE} USING (true) WITH CHECK (true)",
    f"GRANT SELECT ON hub_schema_version, hub_meta TO {LANE_ROLE}, {FORWARDER_ROLE}",
    f"GRANT SELECT ON hub_payments, hub_lanes TO {LANE_ROLE}, {FORWARDER_ROLE}",
    f"GRANT INSERT ON hub_payments, hub_lanes TO {LANE_ROLE}",
    f"""GRANT UPDATE (state, attempts, updated_at, replicated_at, card_data, key_serial, encryption_scheme, sealed)
        ON hub_payments TO {LANE_ROLE}""",
    f"GRANT UPDATE (last_heartbeat, oldest_unreplicated, last_replicated_at) ON hub_lanes TO {LANE_ROLE}",
    f"""GRANT UPDATE (lease_owner, lease_expires_at, hub_state, hub_intent_id, hub_decided_at, hub_error_code)
        ON hub_payments TO {FORWARDER_ROLE}""",
]

#: Version 2: the hub forwarder's own ledger for a payment it took over (its key generation, the steps
#: it sent with their times, how many attempts), the index its takeover query reads (a lane that went
#: silent mid-forward leaves payments in ``forwarding`` too), and ``hub_exposure``: the store-wide
#: totals a lane's acceptance policy needs, without letting a lane role read another lane's rows.
_V2 = [
    "ALTER TABLE hub_payments ADD COLUMN hub_key_generation integer",
    "ALTER TABLE hub_payments ADD COLUMN hub_steps_sent jsonb",
    "ALTER TABLE hub_payments ADD COLUMN hub_attempts integer NOT NULL DEFAULT 0",
    """CREATE INDEX hub_payments_takeover_v2 ON hub_payments (lane, stored_at)
        WHERE state IN ('stored', 'forwarding', 'outcome_unknown') AND hub_state IS NULL""",
    f"""GRANT UPDATE (hub_key_generation, hub_steps_sent, hub_attempts) ON hub_payments TO {FORWARDER_ROLE}""",
    """CREATE FUNCTION hub_exposure(exclude_lane text)
        RETURNS TABLE (currency text, payments bigint, amount numeric)
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
            SELECT p.currency, count(*), sum(p.amount) FROM public.hub_payments p
            WHERE p.state IN ('stored', 'forwarding', 'outcome_unknown') AND p.hub_state IS NULL
              AND p.lane IS DISTINCT FROM exclude_lane
            GROUP BY p.currency
        $$""",
    "REVOKE ALL ON FUNCTION hub_exposure(text) FROM PUBLIC",
    f"GRANT EXECUTE ON FUNCTION hub_exposure(text) TO {LANE_ROLE}, {FORWARDER_ROLE}",
]

#: version -> statements that bring the schema from version - 1 to it
MIGRATIONS: dict[int, list[str]] = {1: _V1, 2: _V2}
SCHEMA_VERSION = max(MIGRATIONS)

VERSION_TABLE = """CREATE TABLE IF NOT EXISTS hub_schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
