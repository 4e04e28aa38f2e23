"""The SQLCipher payment store: durable, encrypted, one claim per payment.

Every method is one SQLite transaction.  Writers take the write lock up
front (``BEGIN IMMEDIATE``), so two processes never claim the same payment;
``store`` returns only after COMMIT (WAL, synchronous=FULL).  Status comes
from totals the database maintains itself (triggers), never from loading
payment rows.
"""

# SQL here is assembled only from module constants; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import structlog
from sqlalchemy import URL, Engine, create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool

from offterm.core.contracts.storage import (
    ALLOWED_TRANSITIONS,
    FINAL_STATES,
    PENDING_STATES,
    HistoryEntry,
    NewPayment,
    OnlineAttempt,
    PaymentState,
    PaymentStore,
    StorageKeyProvider,
    StoredPayment,
    StoreSummary,
)
from offterm.core.errors import (
    InvalidRequest,
    InvalidTransition,
    OfflineStorageFull,
    OfftermError,
    PaymentNotFound,
    StorageDamaged,
    StorageError,
    StorageKeyUnavailable,
    StoreNotFound,
)
from offterm.core.models import CaptureMethod, time_ordered_hex
from offterm.core.paths import make_private_dir

from . import _codec as codec
from ._codec import PAYMENT_COLUMNS, SELECT_PAYMENT, DecodeProblem, from_micros, to_micros
from ._connection import Durability, classify, connect, load_driver, verify_key
from ._migrate import ensure_schema
from ._reserve import SpaceReserve
from ._schema import CLAIMABLE_WHERE, UNCLAIMABLE_WHERE

log = structlog.get_logger("offterm.storage.sqlcipher")

_RETURNING = " RETURNING " + ", ".join(PAYMENT_COLUMNS)
_INSERT_COLUMNS = (
    "offline_id",
    "idempotency_key",
    "amount",
    "currency",
    "capture_method",
    "metadata",
    "account_id",
    "livemode",
    "stored_at",
    "recorded_at",
    "state",
    "card_details",
    "card_data",
    "key_serial",
    "encryption_scheme",
    "intent_id",
    "description",
    "updated_at",
    "steps_sent",
)
INSERT_SQL = (
    f"INSERT INTO payments ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join(':' + c for c in _INSERT_COLUMNS)}) "
    "ON CONFLICT (offline_id) DO NOTHING"
)
_PENDING = sorted(s.value for s in PENDING_STATES)
_PENDING_TOTALS = (
    f"SELECT currency, sum(count), sum(amount) FROM state_totals WHERE state IN ({', '.join('?' * len(_PENDING))}) "
    "GROUP BY currency"
)
_CLAIM_SELECT = (
    SELECT_PAYMENT + f" INDEXED BY payments_claimable WHERE {CLAIMABLE_WHERE} "
    "AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY stored_at, seq LIMIT ?"
)
#: The same, whatever ``next_attempt_at`` says (``claim(..., ignore_backoff=True)``).
_CLAIM_SELECT_ANY = (
    SELECT_PAYMENT + f" INDEXED BY payments_claimable WHERE {CLAIMABLE_WHERE} ORDER BY stored_at, seq LIMIT ?"
)
#: Oldest pending payment: two index lookups, whatever the backlog.
_OLDEST_PENDING = (
    f"SELECT min(m) FROM (SELECT min(stored_at) AS m FROM payments WHERE {CLAIMABLE_WHERE} "
    f"UNION ALL SELECT min(stored_at) FROM payments WHERE {UNCLAIMABLE_WHERE} AND state = 'forwarding')"
)
_SUMMARY = (
    f"SELECT NULL, ({_OLDEST_PENDING}), "
    "(SELECT coalesce(sum(count), 0) FROM state_totals WHERE state = 'needs_attention') "
    f"UNION ALL SELECT * FROM ({_PENDING_TOTALS})"
)
#: Card data goes once a payment is final; brand/last4/expiry stay for reconciliation.
_PURGE_CARD = (
    "card_data = NULL, key_serial = NULL, card_purged_at = :now, card_details = CASE WHEN json_valid(card_details) "
    "THEN json_set(card_details, '$.cardholder_name', NULL) END"
)
_FINAL = ", ".join(f"'{s.value}'" for s in sorted(FINAL_STATES))
_CLEAR_CLAIM = "claim_owner = NULL, claimed_at = NULL, claim_expires_at = NULL, claim_sent = 0, claimed_from = NULL"
_GIVE_BACK = (
    "state = CASE WHEN claim_sent = 1 THEN 'outcome_unknown' ELSE coalesce(claimed_from, 'stored') END, " + _CLEAR_CLAIM
)
_UNDECODABLE = codec.UNDECODABLE


@dataclass(frozen=True)
class StoreConfig:
    """Validated options of one store."""

    path: Path
    store_id: str
    durability: Durability
    retention_days: int
    reserve_bytes: int = 4 * 1024 * 1024
    pool_size: int = 2


_F = TypeVar("_F", bound=Callable[..., Any])


def _drains_when_full(method: _F) -> _F:
    """Retry a bookkeeping write once after giving up the space reserve.

    A failed transaction changed nothing, so the retry is safe; it lets
    claims and completions go on draining the backlog on a full disk.
    """

    @functools.wraps(method)
    def wrapper(self: SqlCipherStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except OfflineStorageFull:
            self._on_disk_full()
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class SqlCipherStore(PaymentStore):
    """PaymentStore on one SQLCipher file (see module docstring)."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.path = config.path
        self._engine: Engine | None = None
        self._driver: ModuleType | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file opened
        self._reserve = SpaceReserve(Path(f"{config.path}.reserve"), config.reserve_bytes)
        self.opened_from_version: int | None = None

    # -- opening -------------------------------------------------------------------

    def open(self, keys: StorageKeyProvider, *, create: bool = True) -> None:
        if self._engine is not None:
            return
        driver = load_driver()
        if not create and not self._exists():
            # Nothing is written: a mistyped data_dir must not become a new, empty store.
            raise StoreNotFound(
                f"no payment store at {self.path} (nothing was created); check [terminal] data_dir "
                "and [storage.sqlcipher] path",
                path=str(self.path),
            )
        if create:
            make_private_dir(self.path.parent, StorageError, "database directory")
        with _creation_lock(self.path):
            exists = self._exists()
            if not exists and not create:
                raise StoreNotFound(f"no payment store at {self.path} (nothing was created)", path=str(self.path))
            key = keys.get_key(self.config.store_id, create=not exists)
            if key is None:
                if exists:
                    raise StorageKeyUnavailable(
                        f"the key provider has no key for the existing database {self.path}; restore the key "
                        "from your backup (without it the stored payments cannot be read)"
                    )
                raise StorageKeyUnavailable("the key provider cannot create a key for a new database")
            if not isinstance(key, bytes) or len(key) != 32:
                raise StorageKeyUnavailable("the key provider returned a key that is not 32 bytes")
            if exists:
                _tighten(self.path)
                verify_key(driver, self.path, key)
            else:
                _create_private(self.path)
            self._open_schema(driver, key)
        self._driver = driver
        self._engine = self._make_engine(driver, key)
        self._identity = _identity(self.path)
        try:
            if create and not self._reserve.ensure():
                log.warning("storage_disk_full", path=str(self.path), effect="new offline payments are refused")
            try:
                self.purge_expired(_now())
            except OfflineStorageFull:  # housekeeping must never keep the backlog from draining
                log.warning("storage_purge_skipped", reason="disk full")
            log.info("storage_opened", path=str(self.path), schema_version=self._schema_version())
        except BaseException:
            self.close()
            raise

    def _exists(self) -> bool:
        try:
            main = _size(self.path)
            wal = _size(Path(f"{self.path}-wal"))
        except OSError as exc:  # a directory we may not search, a path through a file
            raise StorageError(f"cannot look at {self.path}: {exc.strerror}", path=str(self.path)) from None
        if main == 0 and wal > 0:
            raise StorageDamaged(
                f"{self.path} is empty but its write-ahead log is not; the files were left untouched",
                path=str(self.path),
            )
        return main > 0

    def _open_schema(self, driver: ModuleType, key: bytes) -> None:
        try:
            conn = connect(driver, self.path, key, self.config.durability)
        except driver.Error as exc:
            raise classify(exc, self.path) from None
        try:
            self.opened_from_version = ensure_schema(driver, conn, self.path, key)
        except driver.Error as exc:
            raise classify(exc, self.path) from None
        finally:
            conn.close()

    def _make_engine(self, driver: ModuleType, key: bytes) -> Engine:
        path, durability = self.path, self.config.durability

        def creator() -> Any:
            return connect(driver, path, key, durability)

        # sqlite+pysqlite with the sqlcipher3 module: the pysqlcipher dialect
        # would issue its own passphrase PRAGMA key from the URL after ours.
        return create_engine(
            URL.create("sqlite+pysqlite", database=str(path)),
            module=driver,
            creator=creator,
            poolclass=QueuePool,
            pool_size=self.config.pool_size,
            max_overflow=4,
            # LIFO: the store's one thread keeps getting the connection it just used, whose page cache is
            # current; FIFO rotated through the pool, and each connection re-read (and decrypted) the pages
            # the others had written.
            pool_use_lifo=True,
            hide_parameters=True,
        )

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    # -- transactions ----------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled DBAPI connection; driver errors become typed errors, an open transaction is rolled back.

        The engine provides pooling and keyed connections; statements go to
        the driver directly, which keeps the path to COMMIT short and keeps
        bound values out of every error message.
        """
        if self._engine is None or self._driver is None:
            raise StorageError("the payment store is not open")
        driver = self._driver
        try:
            fairy = self._engine.raw_connection()
        except sa_exc.DBAPIError as exc:
            raise self._translate(exc.orig or exc) from None
        try:
            conn: Any = fairy.driver_connection
            try:
                yield conn
            except BaseException as exc:
                # classify first: it looks at the files as the failure left them
                error = self._translate(exc) if isinstance(exc, driver.Error) else None
                with contextlib.suppress(Exception):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                if error is None:
                    raise
                if isinstance(error, StorageDamaged):
                    fairy.invalidate()
                raise error from None
        finally:
            fairy.close()

    @contextlib.contextmanager
    def _tx(self, *, write: bool) -> Iterator[Any]:
        """One explicit transaction (BEGIN IMMEDIATE for a write) on a pooled connection."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield conn
            conn.execute("COMMIT")

    def _statement(self, sql: str, params: Any) -> list[Any]:
        """One write statement as its own transaction; its rows (RETURNING).

        For the per-payment bookkeeping of a drain.  The connection is in
        autocommit mode, so SQLite wraps the statement in a write
        transaction that it begins before reading and commits (with the
        same fsync) once ``fetchall`` has stepped it to the end.  Same
        atomicity and durability as ``_tx`` with two fewer round trips
        through the driver, each of which must win the GIL back from a busy
        event loop.
        """
        with self._connection() as conn:
            rows: list[Any] = conn.execute(sql, params).fetchall()
        return rows

    def _translate(self, exc: BaseException) -> OfftermError:
        message = str(exc)
        if "offterm:" in message:
            return InvalidTransition(message[message.index("offterm:") + len("offterm:") :].strip())
        if "UNIQUE constraint failed: payments.idempotency_key" in message:
            return InvalidRequest("this idempotency key already belongs to another stored payment")
        return classify(exc, self.path)

    def _schema_version(self) -> int:
        with self._tx(write=False) as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    # -- storing and reading -------------------------------------------------------

    def store(self, payment: NewPayment, check: Callable[[StoreSummary], None] | None = None) -> StoredPayment:
        now_us = to_micros(_now())
        params = codec.payment_row(payment, now_us)
        if not self._reserve.ensure():
            raise OfflineStorageFull(
                f"the disk holding {self.path.name} is (nearly) full: the payment was NOT stored; stored payments "
                "are intact and are still forwarded",
                path=str(self.path),
            )
        self._check_file_in_place()
        row = None
        try:
            with self._tx(write=True) as conn:
                if check is not None:
                    # Under the write lock: no other process can store between this look and the insert.
                    try:
                        check(self._summary_in(conn))
                    except Exception:
                        row = conn.execute(SELECT_PAYMENT + " WHERE offline_id = ?", (payment.offline_id,)).fetchone()
                        if row is None:
                            raise  # refused: nothing written
                inserted = row is None and conn.execute(INSERT_SQL, params).rowcount == 1
                if not inserted and row is None:
                    row = conn.execute(SELECT_PAYMENT + " WHERE offline_id = ?", (payment.offline_id,)).fetchone()
        except OfflineStorageFull:
            self._on_disk_full()
            raise
        self._check_file_in_place()  # removed during the commit: it went to a file no one will open again
        if not inserted:
            return self._decode_or_view(row)
        return StoredPayment(
            offline_id=params["offline_id"],
            idempotency_key=params["idempotency_key"],
            amount=params["amount"],
            currency=params["currency"],
            capture_method=CaptureMethod(params["capture_method"]),
            metadata=dict(payment.metadata),
            account_id=params["account_id"],
            livemode=payment.livemode,
            stored_at=_when(params["stored_at"]),
            state=PaymentState.STORED,
            attempts=0,
            card_details=payment.card.details,
            card=payment.card,
            intent_id=payment.intent_id,
            description=payment.description,
            updated_at=_when(now_us),
            steps_sent=codec.decode_steps(params["steps_sent"]),
        )

    def _check_file_in_place(self) -> None:
        """Refuse to report a payment stored into a database file that was deleted or replaced.

        SQLite keeps writing to a file unlinked under it (the open handle outlives the name): those
        payments would be gone at the next start.  One ``stat`` per store, before and after the commit.
        """
        if self._identity is not None and _identity(self.path) != self._identity:
            raise StorageError(
                f"the database file {self.path} was removed or replaced while offterm was running: the payment "
                "was NOT stored. Stop offterm and restore the file (and its -wal) before taking payments offline",
                path=str(self.path),
            )

    def _on_disk_full(self) -> None:
        """Free the reserve and fold the WAL back into the database (best effort)."""
        self._reserve.release()
        if self._engine is None:
            return
        with contextlib.suppress(Exception):
            fairy = self._engine.raw_connection()
            try:
                conn: Any = fairy.driver_connection
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                fairy.close()

    def get(self, offline_id: str) -> StoredPayment:
        with self._tx(write=False) as conn:
            row = conn.execute(SELECT_PAYMENT + " WHERE offline_id = ?", (offline_id,)).fetchone()
        if row is None:
            raise PaymentNotFound(f"no stored payment {offline_id!r}")
        return self._decode_rows([row])[0]

    def list_payments(
        self, states: Collection[PaymentState] | None = None, limit: int | None = None
    ) -> list[StoredPayment]:
        sql = SELECT_PAYMENT
        params: list[Any] = []
        if states is not None:
            wanted = sorted({PaymentState(s).value for s in states})
            if not wanted:
                return []
            sql += " WHERE state IN (" + ", ".join("?" * len(wanted)) + ")"
            params.extend(wanted)
        sql += " ORDER BY stored_at, seq"
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise InvalidRequest("limit must be a non-negative integer")
            sql += " LIMIT ?"
            params.append(limit)
        with self._tx(write=False) as conn:
            rows = conn.execute(sql, params).fetchall()
        return self._decode_rows(rows)

    @_drains_when_full
    def _decode_rows(self, rows: list[Any]) -> list[StoredPayment]:
        """Decode rows; quarantine the undecodable ones (in their own write)."""
        results: list[StoredPayment | None] = []
        problems: dict[int, str] = {}
        for i, row in enumerate(rows):
            try:
                results.append(codec.decode_payment(row))
            except DecodeProblem as exc:
                results.append(None)
                problems[i] = exc.reason
        if problems:
            now_us = to_micros(_now())
            with self._tx(write=True) as conn:
                for i, reason in problems.items():
                    self._quarantine(conn, rows[i], reason, now_us)
                    fresh = conn.execute(SELECT_PAYMENT + " WHERE seq = ?", (rows[i][0],)).fetchone()
                    results[i] = codec.decode_quarantined(fresh, reason)
        return [r for r in results if r is not None]

    def _decode_or_view(self, row: Any) -> StoredPayment:
        try:
            return codec.decode_payment(row)
        except DecodeProblem as exc:
            return codec.decode_quarantined(row, exc.reason)

    def _quarantine(self, conn: Any, row: Any, reason: str, now_us: int) -> None:
        """Move one undecodable, claimable record to needs_attention with the reason."""
        r = dict(zip(PAYMENT_COLUMNS, row, strict=True))
        moved = conn.execute(
            "UPDATE payments SET state = 'needs_attention', last_error_code = :code, last_error_message = :message, "
            f"transition_code = :code, updated_at = :now, {_CLEAR_CLAIM} WHERE offline_id = :id AND {CLAIMABLE_WHERE} "
            "RETURNING state",
            {
                "code": _UNDECODABLE,
                "message": f"record could not be decoded: {reason}",
                "now": now_us,
                "id": r["offline_id"],
            },
        ).fetchone()
        if moved is not None:
            log.warning("payment_quarantined", offline_id=r["offline_id"], reason=reason)

    def summary(self) -> StoreSummary:
        with self._tx(write=False) as conn:
            return self._summary_in(conn)

    @staticmethod
    def _summary_in(conn: Any) -> StoreSummary:
        """The summary as seen by ``conn``'s open transaction (totals kept by triggers: no rows loaded)."""
        # One statement (it runs inside every offline confirm): the oldest pending time and the
        # needs-attention count first, then one row per currency waiting.
        rows = conn.execute(_SUMMARY, _PENDING).fetchall()
        (_, oldest, attention), totals = rows[0], rows[1:]
        return StoreSummary(
            pending_count=sum(int(count) for _, count, _ in totals),
            amounts_by_currency={cur: int(amount) for cur, count, amount in totals if count},
            oldest_stored_at=from_micros(oldest),
            needs_attention_count=int(attention),
        )

    # -- forwarding lifecycle ------------------------------------------------------

    @_drains_when_full
    def claim(
        self, owner: str, limit: int, lease_seconds: float, now: datetime, *, ignore_backoff: bool = False
    ) -> list[StoredPayment]:
        _check_owner(owner)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequest("claim limit must be a positive integer")
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int | float) or not lease_seconds > 0:
            raise InvalidRequest("lease_seconds must be positive")
        if not isinstance(ignore_backoff, bool):
            raise InvalidRequest("ignore_backoff must be a bool")
        now_us = to_micros(now, "now")
        expires_us = now_us + int(lease_seconds * 1_000_000)
        claimed: list[StoredPayment] = []
        with self._tx(write=True) as conn:
            while len(claimed) < limit:
                if ignore_backoff:
                    rows = conn.execute(_CLAIM_SELECT_ANY, (limit - len(claimed),)).fetchall()
                else:
                    rows = conn.execute(_CLAIM_SELECT, (now_us, limit - len(claimed))).fetchall()
                if not rows:
                    break
                for row in rows:
                    try:
                        payment = codec.decode_payment(row)
                    except DecodeProblem as exc:
                        self._quarantine(conn, row, exc.reason, now_us)
                        continue
                    conn.execute(
                        "UPDATE payments SET state = 'forwarding', claim_owner = ?, claimed_at = ?, "
                        "claim_expires_at = ?, claim_sent = 0, claimed_from = state, transition_code = NULL, "
                        "updated_at = ? WHERE seq = ?",
                        (owner, now_us, expires_us, now_us, row[0]),
                    )
                    claimed.append(replace(payment, state=PaymentState.FORWARDING, updated_at=_when(now_us)))
        return claimed

    @_drains_when_full
    def record_attempt(self, offline_id: str, owner: str, now: datetime, steps: Collection[str] = ()) -> StoredPayment:
        held = _held_by(offline_id, owner, now)
        names = codec.check_steps(steps)
        steps_sql = "steps_sent"
        if names:
            # json_set reads the column as it was before this statement: each step keeps its first time.
            pairs = []
            for i, name in enumerate(names):
                held[f"step{i}"] = f'$."{name}"'  # names are checked: no quote or backslash in them
                pairs.append(f":step{i}, json_array(coalesce(json_extract(steps_sent, :step{i} || '[0]'), :iso), :iso)")
            held["iso"] = codec.to_iso(now, "now")
            steps_sql = f"json_set(steps_sent, {', '.join(pairs)})"
        return self._update_held(
            "attempts = attempts + 1, claim_sent = 1, claimed_at = :now, "
            f"claim_expires_at = :now + (claim_expires_at - claimed_at), steps_sent = {steps_sql}, updated_at = :now",
            held,
            live_lease=True,
        )

    @_drains_when_full
    def record_intent(self, offline_id: str, owner: str, intent_id: str, now: datetime) -> StoredPayment:
        held = _held_by(offline_id, owner, now)
        held["intent_id"] = _check_intent(intent_id, optional=False)
        return self._update_held("intent_id = :intent_id, updated_at = :now", held)

    @_drains_when_full
    def start_key_generation(
        self, offline_id: str, owner: str, now: datetime, intent_id: str | None, *, generation: int | None = None
    ) -> StoredPayment:
        held = _held_by(offline_id, owner, now)
        held["intent_id"] = _check_intent(intent_id, optional=True)
        held["generation"] = _check_generation(generation)
        updated = self._update_held(
            "key_generation = max(key_generation + 1, coalesce(:generation, 0)), steps_sent = '{}', "
            "intent_id = :intent_id, updated_at = :now",
            held,
        )
        log.info(
            "payment_key_generation_started",
            offline_id=offline_id,
            key_generation=updated.key_generation,
            processor_has_intent=intent_id is not None,
        )
        return updated

    @_drains_when_full
    def complete(
        self,
        offline_id: str,
        owner: str,
        to_state: PaymentState,
        now: datetime,
        *,
        intent_id: str | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        decline_code: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> StoredPayment:
        held = _held_by(offline_id, owner, now)
        try:
            target = PaymentState(to_state)
        except ValueError:
            raise InvalidTransition(f"unknown payment state {to_state!r}") from None
        if target not in ALLOWED_TRANSITIONS[PaymentState.FORWARDING]:
            raise InvalidTransition(f"a claimed payment cannot move from forwarding to {target.value}")
        held.update(
            state=target.value,
            intent_id=_check_intent(intent_id, optional=True),
            code=error_code,
            message=error_message,
            decline=decline_code,
            next=None if next_attempt_at is None else to_micros(next_attempt_at, "next_attempt_at"),
        )
        purge = ", " + _PURGE_CARD + ", finalized_at = :now" if target in FINAL_STATES else ""
        # outcome_unknown means "a request went out without an answer": some attempt must exist.
        unknown = target is PaymentState.OUTCOME_UNKNOWN
        return self._update_held(
            "state = :state, intent_id = coalesce(:intent_id, intent_id), last_error_code = :code, "
            "last_error_message = :message, decline_code = :decline, transition_code = :code, next_attempt_at = :next, "
            f"updated_at = :now, {_CLEAR_CLAIM}{purge}",
            held,
            extra=" AND attempts > 0" if unknown else "",
            needs="sent" if unknown else "",
        )

    @_drains_when_full
    def record_outcome(
        self,
        offline_id: str,
        to_state: PaymentState,
        now: datetime,
        *,
        intent_id: str | None = None,
        error_code: str | None = None,
    ) -> StoredPayment | None:
        try:
            target = PaymentState(to_state)
        except ValueError:
            raise InvalidTransition(f"unknown payment state {to_state!r}") from None
        if target not in (PaymentState.FORWARDED, PaymentState.DECLINED, PaymentState.NEEDS_ATTENTION):
            raise InvalidTransition(
                f"an outcome decided elsewhere is forwarded, declined or needs_attention, not {target}"
            )
        params: dict[str, Any] = {
            "id": offline_id,
            "now": to_micros(now, "now"),
            "state": target.value,
            "intent_id": _check_intent(intent_id, optional=True),
            "code": error_code,
            "message": None if error_code is None else "decided by the store hub's forwarder",
            "decline": error_code if target is PaymentState.DECLINED else None,
        }
        purge = ", " + _PURGE_CARD + ", finalized_at = :now" if target in FINAL_STATES else ""
        with self._tx(write=True) as conn:
            row = conn.execute("SELECT state FROM payments WHERE offline_id = ?", (offline_id,)).fetchone()
            if row is None:
                raise PaymentNotFound(f"no stored payment {offline_id!r}")
            if row[0] not in _PENDING:
                return None
            if row[0] != PaymentState.FORWARDING.value:  # through forwarding: the transitions the schema allows
                conn.execute(
                    "UPDATE payments SET state = 'forwarding', transition_code = 'decided_by_hub', updated_at = :now, "
                    f"{_CLEAR_CLAIM} WHERE offline_id = :id",
                    params,
                )
            rows = conn.execute(
                "UPDATE payments SET state = :state, intent_id = coalesce(:intent_id, intent_id), "
                "last_error_code = :code, last_error_message = :message, decline_code = :decline, "
                "transition_code = 'decided_by_hub', "
                f"next_attempt_at = NULL, updated_at = :now, {_CLEAR_CLAIM}{purge} WHERE offline_id = :id" + _RETURNING,
                params,
            ).fetchall()
        return self._decode_or_view(rows[0])

    def _update_held(
        self, sets: str, params: dict[str, Any], *, live_lease: bool = False, extra: str = "", needs: str = ""
    ) -> StoredPayment:
        """One UPDATE of a payment ``params["owner"]`` holds the claim on, as one statement (see ``_statement``).

        ``live_lease``: the lease must not have expired either.  ``extra``/``needs``: a further condition, and
        its name for ``_not_held`` ("sent": some attempt ever).  A miss is explained by ``_not_held``.
        """
        lease = " AND claim_expires_at > :now" if live_lease else ""
        rows = self._statement(
            f"UPDATE payments SET {sets} WHERE offline_id = :id AND state = 'forwarding' AND claim_owner = :owner"
            f"{lease}{extra}" + _RETURNING,
            params,
        )
        if not rows:
            with self._tx(write=False) as conn:
                raise self._not_held(conn, params["id"], params["owner"], params["now"], needs=needs)
        return self._decode_or_view(rows[0])

    def _not_held(self, conn: Any, offline_id: str, owner: str, now_us: int, *, needs: str = "") -> StorageError:
        row = conn.execute(
            "SELECT state, claim_owner, claim_expires_at, attempts FROM payments WHERE offline_id = ?",
            (offline_id,),
        ).fetchone()
        if row is None:
            return PaymentNotFound(f"no stored payment {offline_id!r}")
        state, holder, expires, attempts = row
        if state != PaymentState.FORWARDING.value:
            return InvalidTransition(f"payment {offline_id} is {state}, not claimed")
        if holder != owner:
            return InvalidTransition(f"payment {offline_id} is claimed by another forwarder")
        if needs == "sent" and not attempts:
            return InvalidTransition(f"payment {offline_id} was never sent, so its outcome cannot be unknown")
        if expires is not None and expires <= now_us:
            return InvalidTransition(f"the claim on payment {offline_id} expired; claim it again")
        return InvalidTransition(f"payment {offline_id} cannot be updated")

    @_drains_when_full
    def release(self, owner: str, now: datetime) -> int:
        _check_owner(owner)
        now_us = to_micros(now, "now")
        return self._give_back("claim_owner = :owner", {"owner": owner, "now": now_us}, "'claim_released'")

    @_drains_when_full
    def recover_expired_claims(self, now: datetime, owner_gone: Callable[[str], bool] | None = None) -> int:
        now_us = to_micros(now, "now")
        gone: list[str] = []
        if owner_gone is not None:
            with self._tx(write=False) as conn:
                owners = [
                    str(r[0])
                    for r in conn.execute(
                        f"SELECT DISTINCT claim_owner FROM payments WHERE {UNCLAIMABLE_WHERE} AND state = 'forwarding' "
                        "AND claim_owner IS NOT NULL AND claim_expires_at > ?",
                        (now_us,),
                    ).fetchall()
                ]
            # Asked outside any transaction: the callback never holds the write lock.
            gone = [owner for owner in owners if owner_gone(owner)]
        params: dict[str, Any] = {"now": now_us}
        where = "claim_expires_at <= :now"
        if gone:
            where = f"({where} OR claim_owner IN (SELECT value FROM json_each(:gone)))"
            params["gone"] = json.dumps(gone)
        reason = "CASE WHEN claim_expires_at <= :now THEN 'claim_expired' ELSE 'claim_owner_gone' END"
        count = self._give_back(where, params, reason)
        if count:
            log.warning("storage_claims_recovered", count=count, owners_gone=len(gone))
        return count

    def _give_back(self, where: str, params: dict[str, Any], reason_sql: str) -> int:
        """Return claims to the queue: outcome_unknown if a request went out, else where they came from."""
        with self._tx(write=True) as conn:
            rows = conn.execute(
                f"UPDATE payments SET {_GIVE_BACK}, transition_code = {reason_sql}, updated_at = :now "
                f"WHERE {UNCLAIMABLE_WHERE} AND state = 'forwarding' AND {where} RETURNING offline_id",
                params,
            ).fetchall()
        return len(rows)

    @_drains_when_full
    def requeue(self, offline_id: str, now: datetime, *, reason: str | None = None) -> StoredPayment:
        """Operator action: put a needs_attention payment back in the queue (see the contract)."""
        now_us = to_micros(now, "now")
        if reason is not None:
            _check_text(reason, "reason")
        with self._tx(write=True) as conn:
            row = conn.execute(
                "UPDATE payments SET state = 'stored', next_attempt_at = NULL, transition_code = 'requeued', "
                "last_error_code = 'requeued', last_error_message = ?, updated_at = ? "
                "WHERE offline_id = ? AND state = 'needs_attention'" + _RETURNING,
                (reason, now_us, offline_id),
            ).fetchone()
            if row is None:
                found = conn.execute("SELECT state FROM payments WHERE offline_id = ?", (offline_id,)).fetchone()
                if found is None:
                    raise PaymentNotFound(f"no stored payment {offline_id!r}")
                raise InvalidTransition(f"payment {offline_id} is {found[0]}; only needs_attention can be requeued")
        log.info("payment_requeued", offline_id=offline_id)
        return self._decode_or_view(row)

    def history(self, offline_id: str) -> list[HistoryEntry]:
        with self._tx(write=False) as conn:
            found = conn.execute("SELECT recorded_at FROM payments WHERE offline_id = ?", (offline_id,)).fetchone()
            if found is None:
                raise PaymentNotFound(f"no stored payment {offline_id!r}")
            rows = conn.execute(
                "SELECT at, from_state, to_state, attempt, error_code FROM payment_history WHERE offline_id = ? "
                "ORDER BY n",
                (offline_id,),
            ).fetchall()
        return [codec.first_history(found[0]), *(codec.decode_history(r) for r in rows)]

    # -- the in-flight journal of online confirms ------------------------------------------

    @_drains_when_full
    def begin_online(self, attempt: OnlineAttempt) -> None:
        params = codec.online_row(attempt)
        self._check_file_in_place()
        columns = tuple(params)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "offline_id")
        with self._tx(write=True) as conn:
            changed = conn.execute(
                f"INSERT INTO online_attempts ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)}) "
                f"ON CONFLICT (offline_id) DO UPDATE SET {updates} WHERE online_attempts.resolution IS NULL",
                params,
            ).rowcount
        if changed != 1:
            raise InvalidTransition(f"the online attempt {attempt.offline_id} is already resolved; it is kept as is")
        self._check_file_in_place()  # removed during the commit: the entry went to a file no one will open again

    @_drains_when_full
    def end_online(self, offline_id: str) -> None:
        _check_text(offline_id, "offline_id")
        with self._tx(write=True) as conn:
            conn.execute("DELETE FROM online_attempts WHERE offline_id = ?", (offline_id,))

    @_drains_when_full
    def resolve_online(
        self,
        offline_id: str,
        resolution: str,
        now: datetime,
        *,
        intent_id: str | None = None,
        error_code: str | None = None,
    ) -> OnlineAttempt:
        _check_text(offline_id, "offline_id")
        _check_text(resolution, "resolution")
        if error_code is not None:
            _check_text(error_code, "error_code")
        params = {
            "id": offline_id,
            "resolution": resolution,
            "now": to_micros(now, "now"),
            "intent_id": _check_intent(intent_id, optional=True),
            "code": error_code,
        }
        with self._tx(write=True) as conn:
            row = conn.execute(
                "UPDATE online_attempts SET resolution = :resolution, resolved_at = :now, "
                "intent_id = coalesce(:intent_id, intent_id), error_code = :code WHERE offline_id = :id RETURNING "
                + ", ".join(codec.ONLINE_COLUMNS),
                params,
            ).fetchone()
        if row is None:
            raise PaymentNotFound(f"no online attempt {offline_id!r} in the journal")
        log.info("online_attempt_resolved", offline_id=offline_id, resolution=resolution)
        return codec.decode_online(row)

    def online_attempts(self, *, resolved: bool | None = None) -> list[OnlineAttempt]:
        if resolved is not None and not isinstance(resolved, bool):
            raise InvalidRequest("resolved is None, True or False")
        where = "" if resolved is None else f" WHERE resolution IS {'NOT ' if resolved else ''}NULL"
        with self._tx(write=False) as conn:
            rows = conn.execute(codec.SELECT_ONLINE + where + " ORDER BY started_at, rowid").fetchall()
        return [codec.decode_online(r) for r in rows]

    # -- retention -----------------------------------------------------------------

    @_drains_when_full
    def purge_expired(self, now: datetime) -> int:
        """Drop card data of finished payments, and their summaries (and resolved online attempts) after
        ``retention_days``."""
        now_us = to_micros(now, "now")
        cutoff = to_micros(now - timedelta(days=self.config.retention_days), "now")
        with self._tx(write=True) as conn:
            conn.execute(
                f"UPDATE payments SET {_PURGE_CARD} WHERE finalized_at IS NOT NULL AND card_purged_at IS NULL "
                f"AND state IN ({_FINAL})",
                {"now": now_us},
            )
            gone = conn.execute(
                f"DELETE FROM payments WHERE finalized_at IS NOT NULL AND finalized_at < ? AND state IN ({_FINAL}) "
                "RETURNING offline_id",
                (cutoff,),
            ).fetchall()
            conn.executemany("DELETE FROM payment_history WHERE offline_id = ?", gone)
            conn.execute(
                "DELETE FROM online_attempts WHERE resolution IS NOT NULL AND resolved_at < ?",
                (cutoff,),
            )
        if gone:
            log.info("storage_summaries_removed", count=len(gone), retention_days=self.config.retention_days)
        return len(gone)

    # -- key/value -------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT value FROM app_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @_drains_when_full
    def set_meta(self, key: str, value: str) -> None:
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidRequest("meta keys and values are strings")
        with self._tx(write=True) as conn:
            conn.execute(
                "INSERT INTO app_meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )


def _now() -> datetime:
    return datetime.now(UTC)


def _held_by(offline_id: str, owner: str, now: datetime) -> dict[str, Any]:
    """The parameters every claim update's statement matches on: the claim's owner and payment, and now."""
    _check_owner(owner)
    return {"now": to_micros(now, "now"), "id": offline_id, "owner": owner}


def _check_intent(intent_id: str | None, *, optional: bool) -> str | None:
    if intent_id is None and optional:
        return None
    if not isinstance(intent_id, str) or not intent_id or len(intent_id) > 255:
        raise InvalidRequest("an intent id is a non-empty string of at most 255 characters")
    return intent_id


def _check_generation(generation: int | None) -> int | None:
    if generation is not None and (type(generation) is not int or generation < 0):
        raise InvalidRequest("generation must be a non-negative integer or None")
    return generation


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise InvalidRequest(f"{what} must be a non-empty string of at most 255 characters")
    return value


def _check_owner(owner: str) -> None:
    if not isinstance(owner, str) or not owner:
        raise InvalidRequest("a claim owner is a non-empty string")


def _when(value: int) -> datetime:
    result = from_micros(value)
    assert result is not None
    return result


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does (its -wal/-shm inherit the mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror}", path=str(path)) from None
    os.close(fd)
    _tighten(path)


def _tighten(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            if p.stat().st_mode & 0o077:
                os.chmod(p, 0o600)
                log.warning("storage_permissions_tightened", path=str(p), mode="0600")


@contextlib.contextmanager
def _creation_lock(path: Path) -> Iterator[None]:
    """Serialise first-run creation between processes (one key, one schema)."""
    try:
        import fcntl
    except ImportError:  # Windows: SQLite's own locking still serialises the schema
        yield
        return
    lock = Path(f"{path}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:  # a read-only or vanished directory: the operator's to fix, said plainly
        raise StorageError(f"cannot open {lock}: {exc.strerror}", path=str(path)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def new_idempotency_key() -> str:
    """A fresh idempotency key for a payment that is about to be stored."""
    return "offterm-" + time_ordered_hex()  # time-ordered: see offterm.core.models.time_ordered_hex
