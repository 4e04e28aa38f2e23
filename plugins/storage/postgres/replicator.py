"""The PostgreSQL replicator: a lane's payments on a store hub, through SQLAlchemy and psycopg 3.

Why psycopg 3 (``psycopg[binary]``) rather than asyncpg: the replicator contract is synchronous
like the stores' (the core runs it on a worker thread), and psycopg 3 is a maintained, fully
synchronous driver on libpq, so every libpq connection option works as documented by PostgreSQL
-- ``sslmode``, ``sslrootcert``, ``sslcert``/``sslkey``, ``connect_timeout``, several hosts and
``target_session_attrs`` for a standby hub -- with SQLAlchemy's plain ``Engine``.  asyncpg is
async-only (SQLAlchemy would need its greenlet bridge on a thread that has no event loop) and
speaks the protocol itself, with its own, different TLS options.

Every failure is one of the contract's typed ``HubError``s; messages name what failed, never a
URL, password or key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import URL, make_url

from offterm.core.contracts.replication import (
    HubError,
    HubNotInitialised,
    HubOutcome,
    HubPermissionDenied,
    HubQueue,
    HubSchemaTooNew,
    HubUnavailable,
    LaneStatus,
    ReplicationRecord,
    Replicator,
    StateTotals,
)
from offterm.core.errors import ConfigError

from . import schema, sealing

log = structlog.get_logger("offterm.hub.postgres")

T = TypeVar("T")

_LANE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_KEY_CHECK = "key_check"
#: hub states -> the three columns of ``offterm hub status`` (outcome_unknown is still being forwarded)
_STATUS_STATE = {"stored": "stored", "forwarding": "forwarding", "outcome_unknown": "forwarding"}
_STATUS_STATE["needs_attention"] = "needs_attention"


def check_lane(lane: str) -> str:
    """A lane's name is its PostgreSQL role: lower-case letters, digits and '_' (no quoting games)."""
    if not isinstance(lane, str) or not _LANE.match(lane):
        raise ConfigError("hub.lane", "must be 1-63 of a-z, 0-9 or '_', not starting with a digit", lane)
    return lane


def _url(raw: str, where: str) -> URL:
    try:
        url = make_url(raw)
    except Exception:  # noqa: BLE001 - the message would echo the URL (and its password)
        raise ConfigError(where, "is not a PostgreSQL URL (postgresql://user@host:port/database)") from None
    if url.get_backend_name() != "postgresql":
        raise ConfigError(where, "must be a postgresql:// URL")
    return url.set(drivername="postgresql+psycopg")


class PostgresReplicator(Replicator):
    """One lane's (or an administrator's) connection to the hub.  See the module docstring."""

    def __init__(self, options: dict[str, Any], *, ping: bool = False) -> None:
        self._options = dict(options)
        #: check each pooled connection before use (a round trip); off for a lane, whose calls are all
        #: idempotent and sent once more on a fresh connection when the pooled one is stale (``_idempotent``)
        self._ping = ping
        self._engine: Engine | None = None
        self._key: bytes | None = None

    def __repr__(self) -> str:
        return "PostgresReplicator(<hub>)"

    # -- connections -----------------------------------------------------------------

    def _make_engine(self, admin: bool) -> Engine:
        opts = self._options
        where = "replicator.postgres.admin_url" if admin else "replicator.postgres.url"
        raw = opts["admin_url"] if admin else opts["url"]
        if not raw:
            raise ConfigError(where, "is required (or set OFFTERM_" + where.upper().replace(".", "_") + ")")
        url = _url(raw, where)
        if not admin and opts["password"]:
            url = url.set(password=opts["password"])
        if opts["sslmode"] not in _SSLMODES:
            raise ConfigError("replicator.postgres.sslmode", f"must be one of: {', '.join(_SSLMODES)}", opts["sslmode"])
        timeout_ms = int(float(opts["statement_timeout"]) * 1000)
        args: dict[str, Any] = {
            "sslmode": opts["sslmode"],
            "connect_timeout": max(1, int(opts["connect_timeout"])),
            "application_name": "offterm-hub",
            # a statement that hangs (a lock, a dying server) fails instead of holding the lane's worker; a
            # transaction whose client went silent (power cut, cable pulled: no FIN, no RST) is ended by the
            # server as soon, else it holds the lane's hub_lanes row and blocks every later catch-up for hours
            "options": f"-c statement_timeout={timeout_ms} -c idle_in_transaction_session_timeout={timeout_ms}",
        }
        for key in ("sslrootcert", "sslcert", "sslkey"):
            if opts[key]:
                args[key] = opts[key]
        return sa.create_engine(url, connect_args=args, pool_pre_ping=self._ping, pool_size=2, max_overflow=2)

    @contextmanager
    def _tx(self, engine: Engine | None = None) -> Iterator[Connection]:
        engine = engine or self._engine
        if engine is None:
            raise HubError("the hub connection is not open")
        try:
            with engine.begin() as conn:
                yield conn
        except HubError:
            raise
        except sa.exc.DBAPIError as exc:
            raise _typed(exc) from None
        except sa.exc.SQLAlchemyError as exc:
            raise HubUnavailable(f"the hub failed: {type(exc).__name__}") from None

    def _idempotent(self, work: Callable[[Connection], T], *, autocommit: bool = False) -> T:
        """``work`` in one transaction (or, ``autocommit``, its one statement committed as it ends).

        Only for work that may run twice: a lane's connections are not pinged before use (a round
        trip on every confirm), so a pooled connection the hub dropped since (a restart, a LAN cut)
        fails the first statement; the work then runs once more on a fresh connection.  A failure
        at COMMIT may leave it unknown whether the hub committed: running it again is harmless.
        """
        engine = self._engine
        if engine is None:
            raise HubError("the hub connection is not open")
        for attempt in (1, 2):
            try:
                with engine.connect() as conn:
                    if autocommit:
                        conn.execution_options(isolation_level="AUTOCOMMIT")
                        return work(conn)
                    with conn.begin():
                        return work(conn)
            except sa.exc.DBAPIError as exc:
                if attempt == 1 and exc.connection_invalidated:  # a disconnect: the pool drops its connections
                    log.debug("hub_connection_stale", error_type=type(exc.orig).__name__)
                    continue
                raise _typed(exc) from None
            except sa.exc.SQLAlchemyError as exc:
                raise HubUnavailable(f"the hub failed: {type(exc).__name__}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the contract ------------------------------------------------------------------

    def open(self, hub_key: bytes) -> None:
        sealing.check_key(hub_key)
        if self._engine is None:
            self._engine = self._make_engine(admin=False)
        try:
            check = self._idempotent(_read_key_check)
        except HubError:
            self.close()
            raise
        if check is None:
            self.close()
            raise HubNotInitialised("the hub has no key check yet: run `offterm hub init`")
        try:
            sealing.verify_key_check(hub_key, bytes(check))
        except HubError:
            self.close()
            raise
        self._key = hub_key
        log.info("hub_opened", schema_version=schema.SCHEMA_VERSION)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def initialise(self, hub_key: bytes) -> int:
        sealing.check_key(hub_key)
        engine = self._make_engine(admin=True)
        try:
            with self._tx(engine) as conn:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('offterm_hub_schema'))"))
                conn.execute(sa.text(schema.VERSION_TABLE))
                current = conn.execute(sa.text("SELECT coalesce(max(version), 0) FROM hub_schema_version")).scalar_one()
                if current > schema.SCHEMA_VERSION:
                    raise _too_new(current)
                for version in range(current + 1, schema.SCHEMA_VERSION + 1):
                    for statement in schema.MIGRATIONS[version]:
                        conn.execute(sa.text(statement))
                    conn.execute(sa.text("INSERT INTO hub_schema_version (version) VALUES (:v)"), {"v": version})
                    log.info("hub_schema_migrated", version=version)
                check = conn.execute(
                    sa.text("SELECT value FROM hub_meta WHERE key = :k"), {"k": _KEY_CHECK}
                ).scalar_one_or_none()
                if check is None:
                    conn.execute(
                        sa.text("INSERT INTO hub_meta (key, value) VALUES (:k, :v)"),
                        {"k": _KEY_CHECK, "v": sealing.key_check(hub_key)},
                    )
                else:
                    sealing.verify_key_check(hub_key, bytes(check))
        finally:
            engine.dispose()
        return schema.SCHEMA_VERSION

    def add_lane(self, lane: str, password: str, *, forwarder: bool = False) -> None:
        """Create (or update the password of) a lane's login role; an administrator's action."""
        check_lane(lane)
        if not password:
            raise ConfigError("password", "a lane role needs a password")
        group = schema.FORWARDER_ROLE if forwarder else schema.LANE_ROLE
        engine = self._make_engine(admin=True)
        try:
            with self._tx(engine) as conn:
                raw = conn.connection.driver_connection
                from psycopg import sql  # the driver's own quoting: utility statements take no parameters

                exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": lane}).scalar()
                verb = "ALTER" if exists else "CREATE"
                statement = sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(lane), sql.Literal(password)
                )
                raw.execute(statement)  # type: ignore[union-attr]
                raw.execute(  # type: ignore[union-attr]
                    sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(lane))
                )
        finally:
            engine.dispose()
        log.info("hub_lane_role_ready", lane=lane, forwarder=forwarder)

    def replicate(self, records: Sequence[ReplicationRecord]) -> int:
        if not records:
            return 0
        key = self._require_key()
        now = datetime.now(UTC)
        rows = [_row(key, r) for r in records]
        if len(rows) == 1:
            return self._replicate_one(rows[0], now)

        def send(conn: Connection) -> int:
            for lane in sorted({r.lane for r in records}):
                conn.execute(
                    sa.text(
                        "INSERT INTO hub_lanes (lane, last_replicated_at) VALUES (:lane, :now) "
                        "ON CONFLICT (lane) DO UPDATE SET last_replicated_at = EXCLUDED.last_replicated_at"
                    ),
                    {"lane": lane, "now": now},
                )
            return sum(max(conn.execute(_UPSERT, row).rowcount, 0) for row in rows)

        return self._idempotent(send)

    def _replicate_one(self, row: dict[str, Any], now: datetime) -> int:
        """One payment in one statement, committed by the server as it ends (autocommit): one round trip.

        The confirm of a sync-mode lane waits for this, so no BEGIN and COMMIT of their own, and the
        lane's ``hub_lanes`` row is only created when missing (the payment's foreign key needs it),
        never updated: that would be a second write per payment, and one that waits behind the
        catch-up's transaction holding the same row; the heartbeat says the lane is alive.
        """
        params = {**row, "now": now}
        return self._idempotent(lambda conn: max(conn.execute(_UPSERT_ONE, params).rowcount, 0), autocommit=True)

    def heartbeat(self, lane: str, now: datetime, oldest_unreplicated: datetime | None) -> None:
        statement = sa.text(
            "INSERT INTO hub_lanes (lane, last_heartbeat, oldest_unreplicated) VALUES (:lane, :now, :old) "
            "ON CONFLICT (lane) DO UPDATE SET last_heartbeat = EXCLUDED.last_heartbeat, "
            "oldest_unreplicated = EXCLUDED.oldest_unreplicated"
        )
        self._idempotent(lambda conn: conn.execute(statement, {"lane": lane, "now": now, "old": oldest_unreplicated}))

    def outcomes(self, lane: str, since: datetime | None) -> list[HubOutcome]:
        statement = sa.text(
            "SELECT offline_id, hub_state, hub_intent_id, hub_decided_at, hub_error_code FROM hub_payments "
            "WHERE lane = :lane AND hub_decided_at IS NOT NULL "
            "AND (CAST(:since AS timestamptz) IS NULL OR hub_decided_at > :since) ORDER BY hub_decided_at"
        )
        rows = self._idempotent(lambda conn: conn.execute(statement, {"lane": lane, "since": since}).all())
        return [HubOutcome(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def status(self) -> list[LaneStatus]:
        """Uses ``admin_url`` when set (every lane), else the lane's own connection (its own row only)."""
        if self._options["admin_url"]:
            engine = self._make_engine(admin=True)
            try:
                with self._tx(engine) as conn:
                    rows = conn.execute(_STATUS).all()
            finally:
                engine.dispose()
        else:
            rows = self._idempotent(lambda conn: conn.execute(_STATUS).all())
        lanes: dict[str, dict[str, Any]] = {}
        for lane, heartbeat, lag, state, currency, count, total, oldest in rows:
            entry = lanes.setdefault(
                lane, {"states": {}, "oldest": None, "heartbeat": heartbeat, "lag": None if lag is None else float(lag)}
            )
            if state is None:
                continue
            column = _STATUS_STATE[state]
            totals = entry["states"].setdefault(column, {"count": 0, "amounts": {}})
            totals["count"] += int(count)
            totals["amounts"][currency] = totals["amounts"].get(currency, 0) + int(total)
            if column != "needs_attention" and oldest is not None:
                entry["oldest"] = oldest if entry["oldest"] is None else min(entry["oldest"], oldest)
        return [
            LaneStatus(
                lane=lane,
                states={k: StateTotals(v["count"], v["amounts"]) for k, v in e["states"].items()},
                oldest_stored_at=e["oldest"],
                last_heartbeat=e["heartbeat"],
                replication_lag_seconds=e["lag"],
            )
            for lane, e in sorted(lanes.items())
        ]

    def exposure(self, exclude_lane: str | None = None) -> StateTotals:
        """Every lane's waiting payments (through ``hub_exposure``, which a lane role may call: totals only)."""
        statement = sa.text("SELECT * FROM hub_exposure(:lane)")
        rows = self._idempotent(lambda conn: conn.execute(statement, {"lane": exclude_lane}).all())
        return StateTotals(sum(int(r[1]) for r in rows), {r[0]: int(r[2]) for r in rows})

    def hub_queue(self) -> HubQueue:
        from .hub_queue import PostgresHubQueue

        # a connection of its own, pinged: leasing is not work to send twice
        return PostgresHubQueue(PostgresReplicator(self._options, ping=True))

    def _require_key(self) -> bytes:
        if self._key is None:
            raise HubError("the hub connection is not open")
        return self._key


_UPSERT_SQL = (
    "INSERT INTO hub_payments (offline_id, lane, amount, currency, state, attempts, stored_at, updated_at, "
    "card_data, key_serial, encryption_scheme, sealed) VALUES (:offline_id, :lane, :amount, :currency, :state, "
    ":attempts, :stored_at, :updated_at, :card_data, :key_serial, :scheme, :sealed) "
    "ON CONFLICT (offline_id) DO UPDATE SET state = EXCLUDED.state, attempts = EXCLUDED.attempts, "
    "updated_at = EXCLUDED.updated_at, replicated_at = clock_timestamp(), card_data = EXCLUDED.card_data, "
    "key_serial = EXCLUDED.key_serial, encryption_scheme = EXCLUDED.encryption_scheme, sealed = EXCLUDED.sealed "
    "WHERE hub_payments.updated_at < EXCLUDED.updated_at"
)
_UPSERT = sa.text(_UPSERT_SQL)
#: one payment on its own: the same upsert, creating the lane's row first only if it is missing.  The
#: existence test is a plain read, so the usual case (the row is there) never waits for a transaction
#: updating that row; the foreign key's check sees the row the CTE inserts (checked at the statement's end)
_UPSERT_ONE = sa.text(
    "WITH lane_row AS (INSERT INTO hub_lanes (lane, last_replicated_at) SELECT :lane, :now "  # noqa: S608 - constants
    "WHERE NOT EXISTS (SELECT FROM hub_lanes WHERE lane = :lane) ON CONFLICT (lane) DO NOTHING) " + _UPSERT_SQL
)


def _row(key: bytes, r: ReplicationRecord) -> dict[str, Any]:
    """One record as the upsert's parameters: amounts, state and times in clear, the rest sealed."""
    card = r.payment.card
    return {
        "offline_id": r.payment.offline_id,
        "lane": r.lane,
        "amount": r.payment.amount,
        "currency": r.payment.currency,
        "state": str(r.payment.state),
        "attempts": r.payment.attempts,
        "stored_at": r.payment.stored_at,
        "updated_at": r.changed_at,
        "card_data": card.encrypted_card_data if card is not None else None,
        "key_serial": card.key_serial if card is not None else None,
        "scheme": card.encryption_scheme if card is not None else None,
        "sealed": sealing.seal(key, r.lane, r.payment, r.history),
    }


#: ``offterm hub status`` in one query, on the partial index ``hub_payments_lane_open``: it reads only
#: columns the index holds (count(p.lane), not a column outside it), so the scan is index-only
_STATUS = sa.text(
    "SELECT l.lane, l.last_heartbeat, "
    "CASE WHEN l.last_heartbeat IS NULL THEN NULL WHEN l.oldest_unreplicated IS NULL THEN 0 "
    "ELSE extract(epoch FROM now() - l.oldest_unreplicated) END, "
    "p.state, p.currency, count(p.lane), coalesce(sum(p.amount), 0), min(p.stored_at) "
    "FROM hub_lanes l LEFT JOIN hub_payments p ON p.lane = l.lane "
    "AND p.state IN ('stored', 'forwarding', 'outcome_unknown', 'needs_attention') "
    "GROUP BY l.lane, l.last_heartbeat, l.oldest_unreplicated, p.state, p.currency ORDER BY l.lane"
)


def _read_key_check(conn: Connection) -> Any:
    """The hub's key check, once its schema version is this code's."""
    _check_version(conn)
    return conn.execute(sa.text("SELECT value FROM hub_meta WHERE key = :k"), {"k": _KEY_CHECK}).scalar_one_or_none()


def _check_version(conn: Connection) -> None:
    exists = conn.execute(sa.text("SELECT to_regclass('hub_schema_version') IS NOT NULL")).scalar_one()
    if not exists:
        raise HubNotInitialised("the hub database has no offterm schema: run `offterm hub init`")
    version = conn.execute(sa.text("SELECT coalesce(max(version), 0) FROM hub_schema_version")).scalar_one()
    if version > schema.SCHEMA_VERSION:
        raise _too_new(version)
    if version < schema.SCHEMA_VERSION:
        raise HubNotInitialised(
            f"the hub's schema is version {version}, this offterm needs {schema.SCHEMA_VERSION}: run `offterm hub init`"
        )


def _too_new(version: int) -> HubSchemaTooNew:
    return HubSchemaTooNew(
        f"the hub's schema is version {version}, newer than this offterm knows ({schema.SCHEMA_VERSION}): "
        "upgrade offterm on this lane; the hub was left untouched"
    )


def _typed(exc: sa.exc.DBAPIError) -> HubError:
    """The driver's error as the contract's, without the statement or its parameters."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    first_line = str(exc.orig).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__
    if sqlstate == "42501":
        return HubPermissionDenied(f"the hub refused the write: {first_line} (a lane may write only its own rows)")
    if sqlstate == "42P01":
        return HubNotInitialised("the hub database has no offterm schema: run `offterm hub init`")
    if sqlstate.startswith("28"):
        return HubPermissionDenied(f"the hub refused the login: {first_line}")
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) or exc.connection_invalidated:
        return HubUnavailable(f"the hub is unreachable: {first_line}")
    return HubError(f"the hub failed ({sqlstate or type(exc.orig).__name__}): {first_line}")
