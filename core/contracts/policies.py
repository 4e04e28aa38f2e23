"""Policies: may a payment be taken offline, and how stored ones are forwarded."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime

from ..errors import OfflineRefused
from .readers import CardDetails, ReaderInfo
from .replication import StateTotals
from .storage import StoredPayment, StoreSummary


@dataclass(frozen=True)
class FleetExposure:
    """The other lanes' waiting payments, as the store hub last said (store-wide limits, docs/fleet.md).

    ``totals`` is None while the hub has not answered since this Terminal opened (unreachable, or not
    asked yet); ``age_seconds`` is how long ago it answered (None with no answer).  A policy decides
    itself how old an answer it still trusts.
    """

    totals: StateTotals | None
    age_seconds: float | None


@dataclass(frozen=True)
class AcceptanceRequest:
    """Everything a policy may look at.  ``card`` is None before collection."""

    amount: int
    currency: str
    card: CardDetails | None
    summary: StoreSummary
    now: datetime
    merchant_country: str
    reader: ReaderInfo | None
    reader_last_online_at: datetime | None
    reader_last_online_location: str | None
    location_id: str | None
    #: the rest of the store (other lanes) as the hub last said; None when this lane has no hub
    fleet: FleetExposure | None = None


class OfflineAcceptancePolicy(abc.ABC):
    """Every registered policy must approve an offline payment."""

    @abc.abstractmethod
    def evaluate(self, request: AcceptanceRequest) -> OfflineRefused | None:
        """Return None to approve, or the refusal (not raised) with its reason."""


class ForwardingPolicy(abc.ABC):
    """Order, retry pacing and when to give up. Chosen by name."""

    def order(self, payments: list[StoredPayment]) -> list[StoredPayment]:
        """Order a claimed batch; default oldest first."""
        return sorted(payments, key=lambda p: p.stored_at)

    @abc.abstractmethod
    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait after ``attempts`` failed tries."""

    @abc.abstractmethod
    def give_up_reason(self, payment: StoredPayment, now: datetime) -> str | None:
        """A reason to stop retrying (moves it to needs_attention), or None."""
