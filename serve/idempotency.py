"""Stripe's ``Idempotency-Key`` on POST, persisted so a restarted service replays its answers.

* same key, same request (method, path, parameters): the saved answer (``Idempotent-Replayed: true``);
* same key, other parameters: 400 ``idempotency_error``;
* same key while the first request runs: 409 ``idempotency_key_in_use``.

A request still running when the process died has no answer: at start those keys are forgotten, so a
retry runs again (the handlers themselves are safe to rerun: the PaymentIntent record and the Terminal's
journal say what happened to a payment).  Keys are forgotten ``ttl`` seconds after first use.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from .errors import ApiError

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Saved:
    status: int
    body: bytes


def fingerprint(method: str, path: str, params: dict[str, Any]) -> str:
    return json.dumps([method.upper(), path, params], sort_keys=True, separators=(",", ":"))


class IdempotencyTable:
    def __init__(self, db: sqlite3.Connection, ttl: float) -> None:
        self._db = db
        self._ttl = ttl
        db.execute("DELETE FROM idempotency WHERE status IS NULL")  # requests of a process that died

    def begin(self, key: str, fp: str) -> Saved | None:
        """Claim ``key``; or the saved answer to replay.  Raises 400 (other request) or 409 (running)."""
        if not key or len(key) > MAX_KEY_LENGTH:
            raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters", type="idempotency_error")
        now = time.time()
        self._db.execute("DELETE FROM idempotency WHERE created < ? AND status IS NOT NULL", (now - self._ttl,))
        row = self._db.execute("SELECT fingerprint, status, body FROM idempotency WHERE key = ?", (key,)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO idempotency (key, fingerprint, created) VALUES (?, ?, ?)", (key, fp, now))
            return None
        saved_fp, status, body = row
        if saved_fp != fp:
            raise ApiError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they were first used with. "
                "Try using a key other than the one used in the original request.",
                type="idempotency_error",
            )
        if status is None:
            raise ApiError(
                409,
                "There is currently another in-progress request using this Idempotent Key (that probably means you "
                "submitted twice, and the other request is still going through). Please try again later.",
                type="idempotency_error",
                code="idempotency_key_in_use",
            )
        return Saved(status, bytes(body))

    def finish(self, key: str, saved: Saved | None) -> None:
        """Keep the answer, or (``None``: refused before it ran) forget the key."""
        if saved is None:
            self._db.execute("DELETE FROM idempotency WHERE key = ?", (key,))
        else:
            self._db.execute(
                "UPDATE idempotency SET status = ?, body = ? WHERE key = ?", (saved.status, saved.body, key)
            )
