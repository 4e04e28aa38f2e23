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
import os
from collections.abc import Callable, Collection, Iterator, Sequence
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
    AttemptUpdate,
    AttemptWithdrawal,
    ClaimUpdate,
    DrainChannel,
    HistoryEntry,
    NewPayment,
    OutcomeUpdate,
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
)
from offterm.core.models import CaptureMethod, time_ordered_hex
from offterm.core.paths import make_private_dir

from . import codec
from .codec import PAYMENT_COLUMNS, SELECT_PAYMENT, DecodeProblem, from_micros, to_micros
from .connection import Durability, classify, connect, load_driver, verify_key
from .migrate import ensure_schema
from .reserve import SpaceReserve
from .schema import CLAIMABLE_WHERE, UNCLAIMABLE_WHERE
from .writer_process import WriterProcess

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
    #: After this many claim updates written in-process, the drain's bookkeeping moves to a writer
    #: process (``writer_process.py``); None: never.
    writer_process_after: int | None = 256


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


#: The drain's own store calls, by name, undecorated: what the writer process runs (``writer_process.py``).
WRITER_CALLS: dict[str, Callable[..., Any]] = {}


def _in_writer_process(method: _F) -> _F:
    """Run this call in the store's writer process when there is one (the drain's bookkeeping).

    The drain's claims and claim updates then share one connection, and its page cache, in a process with
    a GIL of its own.  Errors come back typed, as raised there.  If no writer process can be started, the
    call runs here (as do all calls until the writer process is ready).
    """
    name = method.__name__
    WRITER_CALLS[name] = method

    @functools.wraps(method)
    def wrapper(self: SqlCipherStore, *args: Any, **kwargs: Any) -> Any:
        writer = self._writer
        if writer is not None and writer.ready():
            return writer.call(name, args, kwargs)
        result = method(self, *args, **kwargs)
        if writer is not None and name == "apply_claim_updates":
            writer.note_written_here(len(args[0]))
        return result

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
        self._writer: WriterProcess | None = None

    # -- opening -------------------------------------------------------------------

    def open(self, keys: StorageKeyProvider) -> None:
        if self._engine is not None:
            return
        driver = load_driver()
        make_private_dir(self.path.parent, StorageError, "database directory")
        with _creation_lock(self.path):
            exists = self._exists()
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
        if self.config.writer_process_after is not None:
            self._writer = WriterProcess(self.config, key, after=self.config.writer_process_after)
            self._writer.note_written_here(0)  # with after=0 it starts now
        try:
            if not self._reserve.ensure():
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
        main = _size(self.path)
        wal = _size(Path(f"{self.path}-wal"))
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

    def drain_channel(self) -> DrainChannel | None:
        """The writer process's event-loop socket, once it is ready (``PaymentStore.drain_channel``)."""
        writer = self._writer
        return writer.channel() if writer is not None else None

    @property
    def writer_process(self) -> WriterProcess | None:
        """The drain's writer process (started or not), or None when disabled or the store is closed."""
        return self._writer

    def open_for_writer(self, keys: StorageKeyProvider) -> None:
        """Open an existing, already checked store for the ``WRITER_CALLS`` only (in the writer process).

        No creation, migration, reserve or housekeeping: the process that started this one did them.
        """
        driver = load_driver()
        key = keys.get_key(self.config.store_id, create=False)
        if key is None:
            raise StorageKeyUnavailable("no key was handed to the writer process")
        self._driver = driver
        self._engine = self._make_engine(driver, key)
        self._identity = _identity(self.path)
        self._schema_version()  # it really opens and reads the file before saying it is ready

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
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
    @_in_writer_process
    def claim(self, owner: str, limit: int, lease_seconds: float, now: datetime) -> list[StoredPayment]:
        _check_owner(owner)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequest("claim limit must be a positive integer")
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int | float) or not lease_seconds > 0:
            raise InvalidRequest("lease_seconds must be positive")
        now_us = to_micros(now, "now")
        expires_us = now_us + int(lease_seconds * 1_000_000)
        claimed: list[StoredPayment] = []
        with self._tx(write=True) as conn:
            while len(claimed) < limit:
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
    def record_attempt(self, offline_id: str, owner: str, now: datetime) -> StoredPayment:
        return self._apply_one(AttemptUpdate(offline_id, owner, now))

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
        return self._apply_one(
            OutcomeUpdate(
                offline_id,
                owner,
                to_state,
                now,
                intent_id=intent_id,
                error_code=error_code,
                error_message=error_message,
                decline_code=decline_code,
                next_attempt_at=next_attempt_at,
            )
        )

    @_drains_when_full
    def withdraw_attempt(self, offline_id: str, owner: str, now: datetime) -> StoredPayment:
        return self._apply_one(AttemptWithdrawal(offline_id, owner, now))

    def _apply_one(self, update: ClaimUpdate) -> StoredPayment:
        """One claim update as one statement, its own transaction (see ``_statement``)."""
        sql, params, needs = self._claim_update_statement(update)
        rows = self._statement(sql, params)
        if not rows:
            with self._tx(write=False) as conn:
                raise self._not_held(conn, params["id"], params["owner"], params["now"], needs=needs)
        return self._decode_or_view(rows[0])

    # -- group commit: several claim updates, one transaction ---------------------------------

    @_drains_when_full
    @_in_writer_process
    def apply_claim_updates(self, updates: Sequence[ClaimUpdate]) -> list[StoredPayment | Exception]:
        """Every update in ONE write transaction (one commit, one fsync), each exactly as its single call.

        Each update is one UPDATE statement, and SQLite makes a statement atomic inside its transaction:
        one that matches no row (a lost claim) changes nothing, one that a trigger refuses is undone by
        itself (``RAISE(ABORT)``), and either way the others stand.  Such an update's result is the error
        its single call would raise.  Anything else (the disk, the database) fails the whole transaction:
        nothing is applied and this raises.  Results are decoded only after the commit.

        During a drain this runs in the store's writer process (``writer_process.py``).
        """
        results: list[StoredPayment | Exception | None] = [None] * len(updates)
        statements: list[tuple[int, str, dict[str, Any], str]] = []
        for i, update in enumerate(updates):
            try:
                sql, params, needs = self._claim_update_statement(update)
            except OfftermError as exc:  # refused before any I/O, as the single call would be
                results[i] = exc
                continue
            statements.append((i, sql, params, needs))
        rows: dict[int, Any] = {}
        if statements:
            driver = self._driver
            with self._tx(write=True) as conn:
                for i, sql, params, needs in statements:
                    try:
                        found = conn.execute(sql, params).fetchall()
                    except Exception as exc:
                        if driver is None or not isinstance(exc, driver.Error) or "offterm:" not in str(exc):
                            raise  # not about this update: the transaction fails as a whole
                        results[i] = self._translate(exc)  # a trigger refused it; the statement was undone
                        continue
                    if not found:
                        results[i] = self._not_held(conn, params["id"], params["owner"], params["now"], needs=needs)
                    else:
                        rows[i] = found[0]
        for i, row in rows.items():
            results[i] = self._decode_or_view(row)
        return [r for r in results if r is not None]

    @staticmethod
    def _claim_update_statement(update: ClaimUpdate) -> tuple[str, dict[str, Any], str]:
        """(sql, parameters, what the row needs beyond a live claim) of one update.

        The third item names the extra condition ("" none, "sent": some attempt ever, "attempt": one in this
        claim) so a miss can be
        explained (``_not_held``).  Refusals that need no I/O raise here.
        """
        if not isinstance(update, AttemptUpdate | AttemptWithdrawal | OutcomeUpdate):
            raise InvalidRequest(f"not a claim update: {type(update).__name__}")
        _check_owner(update.owner)
        if isinstance(update, AttemptUpdate):
            return (
                "UPDATE payments SET attempts = attempts + 1, claim_sent = 1, claimed_at = :now, "
                "claim_expires_at = :now + (claim_expires_at - claimed_at), updated_at = :now "
                "WHERE offline_id = :id AND state = 'forwarding' AND claim_owner = :owner AND claim_expires_at > :now"
                + _RETURNING,
                _held_by(update),
                "",
            )
        if isinstance(update, AttemptWithdrawal):
            return (
                "UPDATE payments SET attempts = attempts - 1, claim_sent = 0, updated_at = :now "
                "WHERE offline_id = :id AND state = 'forwarding' AND claim_owner = :owner AND claim_sent = 1 "
                "AND attempts > 0" + _RETURNING,
                _held_by(update),
                "attempt",
            )
        try:
            to_state = PaymentState(update.to_state)
        except ValueError:
            raise InvalidTransition(f"unknown payment state {update.to_state!r}") from None
        if to_state not in ALLOWED_TRANSITIONS[PaymentState.FORWARDING]:
            raise InvalidTransition(f"a claimed payment cannot move from forwarding to {to_state.value}")
        held = _held_by(update)
        nxt = update.next_attempt_at
        next_us = None if nxt is None else to_micros(nxt, "next_attempt_at")
        purge = ", " + _PURGE_CARD + ", finalized_at = :now" if to_state in FINAL_STATES else ""
        # outcome_unknown means "a request went out without an answer": some attempt must exist.
        unknown = to_state is PaymentState.OUTCOME_UNKNOWN
        guard = " AND attempts > 0" if unknown else ""
        return (
            "UPDATE payments SET state = :state, intent_id = coalesce(:intent_id, intent_id), "
            "last_error_code = :code, last_error_message = :message, decline_code = :decline, "
            f"transition_code = :code, next_attempt_at = :next, updated_at = :now, {_CLEAR_CLAIM}{purge} "
            f"WHERE offline_id = :id AND state = 'forwarding' AND claim_owner = :owner{guard}" + _RETURNING,
            {
                "state": to_state.value,
                "intent_id": update.intent_id,
                "code": update.error_code,
                "message": update.error_message,
                "decline": update.decline_code,
                "next": next_us,
                **held,
            },
            "sent" if unknown else "",
        )

    def _not_held(self, conn: Any, offline_id: str, owner: str, now_us: int, *, needs: str = "") -> StorageError:
        row = conn.execute(
            "SELECT state, claim_owner, claim_expires_at, attempts, claim_sent FROM payments WHERE offline_id = ?",
            (offline_id,),
        ).fetchone()
        if row is None:
            return PaymentNotFound(f"no stored payment {offline_id!r}")
        state, holder, expires, attempts, sent = row
        if state != PaymentState.FORWARDING.value:
            return InvalidTransition(f"payment {offline_id} is {state}, not claimed")
        if holder != owner:
            return InvalidTransition(f"payment {offline_id} is claimed by another forwarder")
        if needs == "sent" and not attempts:
            return InvalidTransition(f"payment {offline_id} was never sent, so its outcome cannot be unknown")
        if needs == "attempt" and not (sent and attempts):
            return InvalidTransition(f"payment {offline_id} has no attempt in this claim to take back")
        if expires is not None and expires <= now_us:
            return InvalidTransition(f"the claim on payment {offline_id} expired; claim it again")
        return InvalidTransition(f"payment {offline_id} cannot be updated")

    @_drains_when_full
    @_in_writer_process
    def release(self, owner: str, now: datetime) -> int:
        _check_owner(owner)
        return self._give_back("claim_owner = ?", (owner,), to_micros(now, "now"), "claim_released")

    @_drains_when_full
    @_in_writer_process
    def recover_expired_claims(self, now: datetime) -> int:
        now_us = to_micros(now, "now")
        return self._give_back("claim_expires_at <= ?", (now_us,), now_us, "claim_expired")

    def _give_back(self, where: str, params: tuple[Any, ...], now_us: int, reason: str) -> int:
        """Return claims to the queue: outcome_unknown if a request went out, else where they came from."""
        with self._tx(write=True) as conn:
            rows = conn.execute(
                f"UPDATE payments SET {_GIVE_BACK}, transition_code = ?, updated_at = ? "
                f"WHERE {UNCLAIMABLE_WHERE} AND state = 'forwarding' AND {where} RETURNING offline_id",
                (reason, now_us, *params),
            ).fetchall()
        if rows and reason == "claim_expired":
            log.warning("storage_claims_recovered", count=len(rows))
        return len(rows)

    @_drains_when_full
    def requeue(self, offline_id: str, now: datetime) -> StoredPayment:
        """Operator action: put a needs_attention payment back in the queue."""
        now_us = to_micros(now, "now")
        with self._tx(write=True) as conn:
            row = conn.execute(
                "UPDATE payments SET state = 'stored', next_attempt_at = NULL, transition_code = 'requeued', "
                "updated_at = ? WHERE offline_id = ? AND state = 'needs_attention'" + _RETURNING,
                (now_us, offline_id),
            ).fetchone()
            if row is None:
                found = conn.execute("SELECT state FROM payments WHERE offline_id = ?", (offline_id,)).fetchone()
                if found is None:
                    raise PaymentNotFound(f"no stored payment {offline_id!r}")
                raise InvalidTransition(f"payment {offline_id} is {found[0]}; only needs_attention can be requeued")
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

    # -- retention -----------------------------------------------------------------

    @_drains_when_full
    def purge_expired(self, now: datetime) -> int:
        """Drop card data of finished payments, and their summaries after ``retention_days``."""
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


def _held_by(update: ClaimUpdate) -> dict[str, Any]:
    """The parameters every claim update's statement matches on: the claim's owner and payment, and now."""
    return {"now": to_micros(update.now, "now"), "id": update.offline_id, "owner": update.owner}


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
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def new_idempotency_key() -> str:
    """A fresh idempotency key for a payment that is about to be stored."""
    return "offterm-" + time_ordered_hex()  # time-ordered: see offterm.core.models.time_ordered_hex
