"""The hub forwarder's queue on PostgreSQL: leases on silent lanes' payments (``FOR UPDATE SKIP LOCKED``).

Connects as the hub forwarder's role (a member of ``offterm_forwarder``: it reads every row and
writes only the lease, ledger and outcome columns).  A lease is ``lease_owner`` with
``lease_expires_at``; a payment whose retry is not due yet has no owner and a ``lease_expires_at``
in the future.  The hub's own ledger of a payment (``hub_key_generation``, ``hub_steps_sent``,
``hub_intent_id``) is merged with the lane's view at each takeover, so a payment is always sent
under the key generation and the steps either side last knew.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from offterm.core.contracts.replication import HubClaim, HubLeaseLost, HubQueue
from offterm.core.contracts.storage import StoredPayment

from . import sealing

_TAKE = sa.text(
    "SELECT p.offline_id FROM hub_payments p JOIN hub_lanes l ON l.lane = p.lane "
    "WHERE p.state IN ('stored', 'forwarding', 'outcome_unknown') AND p.hub_state IS NULL "
    "AND coalesce(l.last_heartbeat, l.last_replicated_at, '-infinity') < :silent_before "
    "AND (p.lease_expires_at IS NULL OR p.lease_expires_at <= :now) "
    "ORDER BY p.stored_at, p.offline_id LIMIT :limit FOR UPDATE OF p SKIP LOCKED"
)
_LEASE = sa.text(
    "UPDATE hub_payments SET lease_owner = :owner, lease_expires_at = :until WHERE offline_id = ANY(:ids) "
    "RETURNING offline_id, lane, amount, currency, state, attempts, stored_at, updated_at, card_data, key_serial, "
    "encryption_scheme, sealed, hub_key_generation, hub_steps_sent, hub_intent_id"
)


def merge(lane_view: StoredPayment, generation: int | None, steps: Any, intent_id: str | None) -> StoredPayment:
    """The lane's view and the hub's ledger as one: the later key generation; within one, every step sent."""
    from dataclasses import replace

    if generation is None or lane_view.key_generation > generation:
        return lane_view
    hub_steps = sealing.steps_from(steps)
    if generation > lane_view.key_generation:
        return replace(lane_view, key_generation=generation, steps_sent=hub_steps, intent_id=intent_id)
    merged = dict(lane_view.steps_sent)
    for step, (first, last) in hub_steps.items():
        if step in merged:
            merged[step] = (min(first, merged[step][0]), max(last, merged[step][1]))
        else:
            merged[step] = (first, last)
    return replace(lane_view, steps_sent=merged, intent_id=intent_id or lane_view.intent_id)


class _HubConnection(Protocol):
    """What the queue needs of the replicator's connection (a Protocol: the replicator imports this module)."""

    def open(self, hub_key: bytes) -> None: ...

    def close(self) -> None: ...

    def _require_key(self) -> bytes: ...

    def _tx(self) -> AbstractContextManager[sa.Connection]: ...


class PostgresHubQueue(HubQueue):
    def __init__(self, connection: _HubConnection) -> None:
        self._conn = connection

    def __repr__(self) -> str:
        return "PostgresHubQueue(<hub>)"

    def open(self, hub_key: bytes) -> None:
        self._conn.open(hub_key)

    def close(self) -> None:
        self._conn.close()

    def take_over(
        self, owner: str, limit: int, lease_seconds: float, silent_before: datetime, now: datetime
    ) -> list[HubClaim]:
        key = self._conn._require_key()
        with self._conn._tx() as conn:
            ids = [r[0] for r in conn.execute(_TAKE, {"silent_before": silent_before, "now": now, "limit": limit})]
            if not ids:
                return []
            until = now + timedelta(seconds=lease_seconds)
            rows = conn.execute(_LEASE, {"owner": owner, "until": until, "ids": ids}).mappings().all()
        claims = []
        for row in sorted(rows, key=lambda r: (r["stored_at"], r["offline_id"])):
            data = sealing.open_sealed(key, row["lane"], row["offline_id"], bytes(row["sealed"]))
            fields: dict[str, Any] = dict(row)
            view = sealing.payment_from(fields, data)
            view = merge(view, row["hub_key_generation"], row["hub_steps_sent"], row["hub_intent_id"])
            claims.append(HubClaim(row["lane"], view))
        return claims

    def save_ledger(
        self,
        offline_id: str,
        owner: str,
        now: datetime,
        *,
        key_generation: int,
        steps_sent: dict[str, tuple[datetime, datetime]],
        intent_id: str | None,
        attempt: bool,
        lease_seconds: float,
    ) -> None:
        with self._conn._tx() as conn:
            done = conn.execute(
                sa.text(
                    "UPDATE hub_payments SET hub_key_generation = :gen, hub_steps_sent = CAST(:steps AS jsonb), "
                    "hub_intent_id = :intent, hub_attempts = hub_attempts + :attempt, lease_expires_at = :until "
                    "WHERE offline_id = :id AND lease_owner = :owner AND lease_expires_at > :now AND hub_state IS NULL"
                ),
                {
                    "gen": key_generation,
                    "steps": json.dumps(sealing.steps_json(steps_sent)),
                    "intent": intent_id,
                    "attempt": 1 if attempt else 0,
                    "until": now + timedelta(seconds=lease_seconds),
                    "id": offline_id,
                    "owner": owner,
                    "now": now,
                },
            )
            if done.rowcount != 1:
                raise HubLeaseLost(f"the hub forwarder's lease on payment {offline_id} is gone")

    def decide(
        self, offline_id: str, owner: str, state: str, now: datetime, *, intent_id: str | None, error_code: str | None
    ) -> bool:
        with self._conn._tx() as conn:
            done = conn.execute(
                sa.text(
                    "UPDATE hub_payments SET hub_state = :state, hub_intent_id = coalesce(:intent, hub_intent_id), "
                    "hub_decided_at = clock_timestamp(), hub_error_code = :code, lease_owner = NULL, "
                    "lease_expires_at = NULL WHERE offline_id = :id AND lease_owner = :owner AND hub_state IS NULL"
                ),
                {"state": state, "intent": intent_id, "code": error_code, "id": offline_id, "owner": owner},
            )
            return done.rowcount == 1

    def retry_later(self, offline_id: str, owner: str, not_before: datetime, error_code: str | None) -> None:
        with self._conn._tx() as conn:
            conn.execute(
                sa.text(
                    "UPDATE hub_payments SET lease_owner = NULL, lease_expires_at = :at, hub_error_code = :code "
                    "WHERE offline_id = :id AND lease_owner = :owner AND hub_state IS NULL"
                ),
                {"at": not_before, "code": error_code, "id": offline_id, "owner": owner},
            )

    def release(self, owner: str) -> int:
        with self._conn._tx() as conn:
            done = conn.execute(
                sa.text("UPDATE hub_payments SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = :o"),
                {"o": owner},
            )
            return max(done.rowcount, 0)
