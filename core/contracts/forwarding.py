"""Forwarding transports: the processor side of the wire."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime

from ..models import CaptureMethod, IntentStatus
from .readers import CardResult
from .tokens import ConnectionToken


@dataclass(frozen=True)
class ProcessorSession:
    """An authenticated session; which account and mode payments go to."""

    account_id: str
    livemode: bool
    secret: str = field(repr=False, default="")


@dataclass(frozen=True)
class Submission:
    """One payment to authorise, online or from the store.

    ``idempotency_key`` is the payment's persisted key; transports derive one
    key per step from it, so a retry can never charge twice.
    """

    offline_id: str
    idempotency_key: str = field(repr=False)
    amount: int
    currency: str
    capture_method: CaptureMethod
    metadata: dict[str, str]
    card: CardResult
    intent_id: str | None = None
    description: str | None = None
    stored_at: datetime | None = None


@dataclass(frozen=True)
class SubmissionResult:
    intent_id: str
    status: IntentStatus
    replayed: bool = False


class ForwardingTransport(abc.ABC):
    """Talks to the processor. Raise the typed errors of ``offterm.core.errors``:

    CardDeclined (with decline_code), TransientProcessorError, OutcomeUnknown
    (sent, no answer), PermanentProcessorError, AuthenticationFailed.
    """

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @abc.abstractmethod
    async def authenticate(self, token: ConnectionToken) -> ProcessorSession:
        """Redeem a single-use connection token for a session."""

    @abc.abstractmethod
    async def create_intent(
        self,
        session: ProcessorSession,
        *,
        offline_id: str,
        amount: int,
        currency: str,
        capture_method: CaptureMethod,
        metadata: dict[str, str],
        description: str | None,
        idempotency_key: str,
    ) -> str:
        """Create a PaymentIntent online and return its processor id."""

    @abc.abstractmethod
    async def submit(self, session: ProcessorSession, submission: Submission) -> SubmissionResult:
        """Authorise (and, for automatic capture, capture) one payment."""

    @abc.abstractmethod
    async def cancel_intent(self, session: ProcessorSession, intent_id: str) -> None: ...

    @abc.abstractmethod
    async def probe(self) -> bool:
        """True if the processor answers at all (no authentication)."""
