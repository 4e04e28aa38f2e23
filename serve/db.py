"""The service's own SQLite file, ``serve.sqlite3`` in the data directory.

Why not the payment store's meta area: the idempotency table, the PaymentIntent records and the event
outbox need ordered, indexed queries (events after a sequence number, keys older than a day), which a
key/value area cannot answer, and the store is a plugin (memory, SQLCipher, a third party's) whose
contract should not grow for a service on top of it.  Nothing here is card data: objects carry amounts,
metadata and at most a brand and last four digits, so the file is plain SQLite (0600, in the 0700 data
directory).  WAL with ``synchronous=FULL``: an answer or event is on disk before the client hears of it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

DB_FILE = "serve.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    created REAL NOT NULL,
    status INTEGER,          -- NULL while the request runs
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
