"""Stripe's ``Idempotency-Key`` on POST, persisted so a restarted service replays its answers.

* same key, same request (method, path, parameters): the saved answer (``Idempotent-Replayed: true``);
* same key, other parameters: 400 ``idempotency_error``;
* same key while the first request runs: 409 ``idempotency_key_in_use``.

A key is claimed in memory while its request runs and written to ``serve.sqlite3`` with its answer, in
the transaction that holds the request's own writes (one fsync per request, not three).  The claim was
never worth a commit of its own: a request still running when the process died has no answer, so its
key is forgotten at the next start and a retry runs again (the handlers themselves are safe to rerun:
the PaymentIntent record and the Terminal's journal say what happened to a payment).  One service per
data directory is assumed, as it always was (a start forgot every claim on disk, another process's
too), so memory sees every running request.  Keys are forgotten ``ttl`` seconds after first use.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from .db import transaction
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
        #: keys whose request runs now: fingerprint and time of first use
        self._running: dict[str, tuple[str, float]] = {}
        self._next_sweep = 0.0
        db.execute("DELETE FROM idempotency WHERE status IS NULL")  # claims an older version left on disk

    def begin(self, key: str, fp: str) -> Saved | None:
        """Claim ``key``; or the saved answer to replay.  Raises 400 (other request) or 409 (running)."""
        if not key or len(key) > MAX_KEY_LENGTH:
            raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters", type="idempotency_error")
        now = time.time()
        running = self._running.get(key)
        if running is not None:
            if running[0] != fp:
                raise _other_request()
            raise ApiError(
                409,
                "There is currently another in-progress request using this Idempotent Key (that probably means you "
                "submitted twice, and the other request is still going through). Please try again later.",
                type="idempotency_error",
                code="idempotency_key_in_use",
            )
        row = self._db.execute(
            "SELECT fingerprint, status, body FROM idempotency WHERE key = ? AND created >= ? AND status IS NOT NULL",
            (key, now - self._ttl),
        ).fetchone()
        if row is None:
            self._running[key] = (fp, now)
            return None
        saved_fp, status, body = row
        if saved_fp != fp:
            raise _other_request()
        return Saved(status, bytes(body))

    def finish(self, key: str, saved: Saved) -> None:
        """Keep the answer (inside the request's transaction: it commits with the request's writes)."""
        fp, created = self._running.pop(key)
        with transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO idempotency (key, fingerprint, created, status, body) VALUES (?, ?, ?, ?, ?)",
                (key, fp, created, saved.status, saved.body),
            )
            if created >= self._next_sweep:  # expired keys go at most once a minute, in a commit made anyway
                self._db.execute("DELETE FROM idempotency WHERE created < ?", (created - self._ttl,))
                self._next_sweep = created + 60.0

    def forget(self, key: str) -> None:
        """Refused before it ran, or failed unexpectedly: no answer is kept, a retry runs again."""
        self._running.pop(key, None)


def _other_request() -> ApiError:
    return ApiError(
        400,
        "Keys for idempotent requests can only be used with the same parameters they were first used with. "
        "Try using a key other than the one used in the original request.",
        type="idempotency_error",
    )
