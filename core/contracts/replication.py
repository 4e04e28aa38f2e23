"""Replication: copying each lane's stored payments to a store hub.

A lane (one POS) keeps its own store as the first durable copy: it works with no LAN.  A
``Replicator`` copies every stored payment, its state changes and its history to a hub that
all the lanes of a store share, so a payment survives the loss of the device that took it and
the store has one view of every lane (docs/fleet.md).

Like stores, replicators are synchronous: the core calls each (sync mode builds a second, for the
confirms' sends) from a worker thread of its own, never from the event loop, never twice at once.

Guarantees every replicator gives:

* **Durable.**  ``replicate`` returns only once the hub has committed every record durably.  It
  is all or nothing: when it raises, the lane assumes none of the batch reached the hub and
  sends it again later.
* **Idempotent.**  A payment replicated twice is one row on the hub; a record older than what
  the hub holds (by ``updated_at``) never overwrites it.  Catch-up may therefore resend freely.
* **Own rows only.**  A lane writes only its own payments: the hub refuses a record of another
  lane (``HubPermissionDenied``) instead of overwriting it.
* **Only what is needed in clear.**  Amounts, currency, state and times travel in clear (for
  totals); the card data as the reader sealed it; everything else (metadata, card details,
  idempotency key, history...) is encrypted under the hub key before it leaves the lane.
* **Typed failures, nothing lost.**  Every failure is a ``HubError``; the lane's own store is
  never touched by a replicator.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ..errors import OfftermError
from .storage import HistoryEntry, StoredPayment


class HubError(OfftermError):
    """The store hub failed; the lane's own store is untouched and replication resumes later."""

    code = "hub_error"


class HubUnavailable(HubError):
    """The hub cannot be reached (down, LAN cut, timeout): nothing was committed on it."""

    code = "hub_unavailable"


class HubNotInitialised(HubError):
    """The hub database has no offterm schema yet: run ``offterm hub init``."""

    code = "hub_not_initialised"


class HubSchemaTooNew(HubError):
    """The hub's schema was made by a newer offterm than this one; it is left untouched."""

    code = "hub_schema_too_new"


class WrongHubKey(HubError):
    """This lane's hub key is not the key the hub was initialised with: nothing is sent."""

    code = "wrong_hub_key"


class HubLeaseLost(HubError):
    """The hub forwarder's lease on a payment is gone (expired, or another forwarder holds it)."""

    code = "hub_lease_lost"


class HubPermissionDenied(HubError):
    """The hub refused the write: a lane may write only its own rows (row-level security)."""

    code = "hub_permission_denied"


@dataclass(frozen=True)
class ReplicationRecord:
    """One payment as a lane sends it: the payment as its store holds it now, with its history."""

    lane: str
    payment: StoredPayment
    history: Sequence[HistoryEntry]

    @property
    def changed_at(self) -> datetime:
        """When the payment last changed on the lane (its position in the replication order)."""
        return self.payment.updated_at or self.payment.stored_at


@dataclass(frozen=True)
class HubOutcome:
    """What the hub knows happened to one of this lane's payments (e.g. a hub forwarder's result)."""

    offline_id: str
    #: forwarded, declined or needs_attention
    state: str
    intent_id: str | None
    decided_at: datetime
    #: the decline code or the reason it needs a person; None when forwarded
    error_code: str | None = None


@dataclass(frozen=True)
class StateTotals:
    count: int = 0
    amounts_by_currency: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LaneStatus:
    """One lane as the hub sees it."""

    lane: str
    #: state ("stored", "forwarding", "needs_attention"; "forwarding" includes outcome_unknown) -> totals
    states: dict[str, StateTotals]
    oldest_stored_at: datetime | None
    last_heartbeat: datetime | None
    #: how far behind the lane's replication was at its last heartbeat (0 when caught up); None: never said
    replication_lag_seconds: float | None


@dataclass(frozen=True)
class HubClaim:
    """A payment the hub forwarder took over from a silent lane, under a lease.

    ``payment`` is the payment as the lane last replicated it (card data as the reader sealed it),
    with the hub forwarder's own ledger merged in: the later key generation of the two, the steps
    sent within it by either, and the intent id either learnt.  Forwarded under the idempotency
    key the lane stored, so the lane and the hub can never make two charges of it.
    """

    lane: str
    payment: StoredPayment


class HubQueue(abc.ABC):
    """The hub forwarder's side of the hub: leases on silent lanes' payments (docs/fleet.md).

    Leases are rows of the hub (``FOR UPDATE SKIP LOCKED``): several hub forwarders split the work
    and a payment is held by one at a time.  Synchronous, like ``Replicator``; one call at a time.
    """

    @abc.abstractmethod
    def open(self, hub_key: bytes) -> None:
        """Connect and check the hub (schema, key), as ``Replicator.open``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections.  Idempotent."""

    @abc.abstractmethod
    def take_over(
        self, owner: str, limit: int, lease_seconds: float, silent_before: datetime, now: datetime
    ) -> list[HubClaim]:
        """Lease up to ``limit`` payments (oldest first) of lanes whose last heartbeat is before ``silent_before``.

        Only payments the lane left waiting (stored, forwarding, outcome_unknown), not decided by
        the hub, whose lease is free or ran out (and whose retry is due).
        """

    @abc.abstractmethod
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
        """Durably record what the hub forwarder is about to send (``attempt``) or learnt; renews the lease.

        :raises HubLeaseLost: ``owner`` no longer holds the payment's lease.
        """

    @abc.abstractmethod
    def decide(
        self, offline_id: str, owner: str, state: str, now: datetime, *, intent_id: str | None, error_code: str | None
    ) -> bool:
        """Record a final outcome (forwarded, declined, needs_attention) for the lane; False if the lease was lost."""

    @abc.abstractmethod
    def retry_later(self, offline_id: str, owner: str, not_before: datetime, error_code: str | None) -> None:
        """Give the lease back; the payment may be taken over again from ``not_before``."""

    @abc.abstractmethod
    def release(self, owner: str) -> int:
        """Give back every lease ``owner`` holds (a clean stop); how many."""


class Replicator(abc.ABC):
    """Copies one lane's payments to a store hub (see the module docstring for the guarantees)."""

    @abc.abstractmethod
    def open(self, hub_key: bytes) -> None:
        """Connect and check the hub: its schema version and that ``hub_key`` is the hub's key.

        :param hub_key: the 32-byte key shared by every lane of the store (never logged).
        :raises HubUnavailable: the hub cannot be reached.
        :raises HubNotInitialised: no offterm schema on the hub.
        :raises HubSchemaTooNew: the schema is newer than this code knows (left untouched).
        :raises WrongHubKey: the key is not the hub's.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections.  Idempotent."""

    @abc.abstractmethod
    def initialise(self, hub_key: bytes) -> int:
        """Create or migrate the hub's schema (an administrator's action); return its version.

        Records a check value of ``hub_key`` the first time, so every lane's key can be verified.
        Never drops or rewrites replicated rows.

        :raises HubSchemaTooNew: the schema is newer than this code knows (left untouched).
        :raises WrongHubKey: the hub was initialised with another key.
        """

    @abc.abstractmethod
    def replicate(self, records: Sequence[ReplicationRecord]) -> int:
        """Upsert ``records`` on the hub in one durable transaction; return how many changed a row.

        Idempotent: a record the hub already holds at the same or a newer ``updated_at`` changes
        nothing.  All or nothing: when it raises, nothing of the batch is committed.

        :raises HubPermissionDenied: a record belongs to another lane (nothing committed).
        :raises HubUnavailable: the hub went away (nothing committed, as far as the lane knows).
        """

    @abc.abstractmethod
    def heartbeat(self, lane: str, now: datetime, oldest_unreplicated: datetime | None) -> None:
        """Tell the hub the lane is alive, and how far behind its replication is.

        :param oldest_unreplicated: when the oldest change not yet on the hub was made; None when
            caught up.
        """

    @abc.abstractmethod
    def outcomes(self, lane: str, since: datetime | None) -> list[HubOutcome]:
        """Outcomes the hub recorded for ``lane``'s payments after ``since`` (oldest first)."""

    @abc.abstractmethod
    def status(self) -> list[LaneStatus]:
        """Every lane the hub knows (that this connection may see), in one query, sorted by lane."""

    def exposure(self, exclude_lane: str | None = None) -> StateTotals:
        """Store-wide offline exposure: payments every lane (but ``exclude_lane``) still waits to forward.

        Counts what the hub holds in stored, forwarding or outcome_unknown and the hub forwarder has
        not decided; totals per currency.  Used by store-wide acceptance limits; a replicator that
        cannot tell raises ``HubError`` (the policy then falls back to its per-lane share).
        """
        raise HubError(f"{type(self).__name__} cannot report store-wide exposure")

    def hub_queue(self) -> HubQueue:
        """The hub forwarder's queue on this hub (``offterm hub forward``), with this replicator's options."""
        raise HubError(f"{type(self).__name__} has no hub forwarder")
