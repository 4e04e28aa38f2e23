"""The durable event outbox: every event is a row before anyone is told of it.

Events are numbered by ``seq`` (SQLite AUTOINCREMENT: never reused, always rising), which is the SSE
``id`` and the webhook cursor.  Each webhook URL has a cursor (the last ``seq`` it acknowledged), so a
restart resumes delivery where it stopped and nothing is lost; events go to each URL one at a time in
``seq`` order, hence in order per payment.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

API_VERSION = "2024-06-20"


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    id: str
    type: str
    body: bytes


class Outbox:
    def __init__(self, db: sqlite3.Connection, livemode: bool = False) -> None:
        self._db = db
        self.livemode = livemode
        self._changed: asyncio.Event | None = None
        #: set as the server shuts down: event streams end, so connections close without waiting out the grace
        self.closing = False

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def append(self, type: str, obj: dict[str, Any], payment: str | None = None) -> StoredEvent:
        """Write the event (durable), then wake the webhook workers and SSE streams."""
        event_id = "evt_" + secrets.token_hex(12)
        event = {
            "id": event_id,
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": {"object": obj},
            "livemode": self.livemode,
            "pending_webhooks": 0,
            "request": {"id": None, "idempotency_key": None},
            "type": type,
        }
        body = json.dumps(event, separators=(",", ":")).encode()
        cur = self._db.execute(
            "INSERT INTO events (id, type, payment, body) VALUES (?, ?, ?, ?)", (event_id, type, payment, body)
        )
        assert cur.lastrowid is not None
        changed = self._event()
        changed.set()
        self._changed = asyncio.Event()
        return StoredEvent(cur.lastrowid, event_id, type, body)

    def notify(self) -> None:
        """Wake the waiters without an event: something they show besides events changed (offline status)."""
        changed = self._event()
        changed.set()
        self._changed = asyncio.Event()

    def close_streams(self) -> None:
        """End every event stream (they check ``closing`` when woken)."""
        self.closing = True
        self.notify()

    def after(self, seq: int, limit: int = 100) -> list[StoredEvent]:
        rows = self._db.execute(
            "SELECT seq, id, type, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [StoredEvent(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    def last_seq(self) -> int:
        row = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def waiter(self) -> asyncio.Event:
        """Take it *before* reading with ``after``: it is set by the next append, so none is missed."""
        return self._event()

    @staticmethod
    async def wait(changed: asyncio.Event, timeout: float) -> None:
        """Return when ``changed`` (a ``waiter()``) is set by an append, or after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await changed.wait()
        except TimeoutError:
            pass

    def cursor(self, url: str) -> int:
        row = self._db.execute("SELECT delivered_seq FROM webhook_cursor WHERE url = ?", (url,)).fetchone()
        if row is None:
            # A URL added to the configuration starts with the events from now on, not the whole history.
            start = self.last_seq()
            self._db.execute("INSERT INTO webhook_cursor (url, delivered_seq) VALUES (?, ?)", (url, start))
            return start
        return int(row[0])

    def acknowledge(self, url: str, seq: int) -> None:
        self._db.execute("UPDATE webhook_cursor SET delivered_seq = ? WHERE url = ?", (seq, url))
