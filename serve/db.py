"""The service's own SQLite file, ``serve.sqlite3`` in the data directory.

Why not the payment store's meta area: the idempotency table, the PaymentIntent records and the event
outbox need ordered, indexed queries (events after a sequence number, keys older than a day), which a
key/value area cannot answer, and the store is a plugin (memory, SQLCipher, a third party's) whose
contract should not grow for a service on top of it.  Nothing here is card data: objects carry amounts,
metadata and at most a brand and last four digits, so the file is plain SQLite (0600, in the 0700 data
directory).  WAL with ``synchronous=FULL``: an answer or event is on disk before the client hears of it.

Every commit is therefore an fsync (~0.3 ms on a VM disk, far more on a busy one), so writes that belong
together share one: :func:`transaction`.  A request's writes (its PaymentIntent record, its reader action,
its event, its Idempotency-Key answer) are one transaction, and so is each step of a reader action.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

DB_FILE = "serve.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    created REAL NOT NULL,
    status INTEGER,          -- always set now; NULL was a running request's claim (older versions)
    body BLOB
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency(created);
CREATE TABLE IF NOT EXISTS intents (
    id TEXT PRIMARY KEY,
    offline_id TEXT NOT NULL UNIQUE,
    phase TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS readers (
    id TEXT PRIMARY KEY,
    action TEXT
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    payment TEXT,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_cursor (
    url TEXT PRIMARY KEY,
    delivered_seq INTEGER NOT NULL
);
"""


def open_db(data_dir: Path) -> sqlite3.Connection:
    path = data_dir / DB_FILE
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """The writes inside, committed together: one durable commit, one fsync.

    A block inside another joins it.  Synchronous on purpose: nothing can ``await`` inside, so no other
    task's statement can slip into the transaction, and nobody is told of a write (an event woken, an
    answer sent) before the commit, which happens as the block ends, before the task next yields.  An
    exception inside rolls the whole block back.
    """
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")  # deferred: a block that writes nothing costs nothing
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
