"""Forwarding transports: the processor side of the wire.

A transport makes single requests; the core decides which ones, in what order, and with which
idempotency keys (docs/forwarding.md, "One key per payment").  That split is what keeps a payment
charged once by the processor's own rules: the core records each step durably before it is sent,
remembers the intent id as soon as one comes back, and looks a payment up before resending a step
the processor may have forgotten (Stripe prunes idempotency keys after 24 h).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime

from ..models import CaptureMethod
from .readers import CardResult
from .tokens import ConnectionToken


@dataclass(frozen=True)
class ProcessorSession:
    """An authenticated session; which account and mode payments go to."""

    account_id: str
    livemode: bool
    secret: str = field(repr=False, default="")


@dataclass(frozen=True)
class IntentRequest:
    """What creating one PaymentIntent needs; the same bytes online and from the store."""

    offline_id: str
    amount: int
    currency: str
    capture_method: CaptureMethod
    metadata: dict[str, str]
    description: str | None = None


@dataclass(frozen=True)
class PaymentError:
    """An intent's ``last_payment_error``: why its last confirmation failed."""

    code: str | None = None
    decline_code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class IntentSnapshot:
    """A PaymentIntent as the processor reports it.

    ``status`` is the processor's word, kept as a string: the core judges it (docs/forwarding.md,
    "The status table"), and a status it does not know is never taken for "paid".
    """

    id: str
    status: str
    amount: int | None = None
    currency: str | None = None
    offline_id: str | None = None
    last_payment_error: PaymentError | None = None
    request_id: str | None = None


class ForwardingTransport(abc.ABC):
    """Talks to the processor.  Every method makes at most one request.

    Raise the typed errors of ``offterm.core.errors``: TransientProcessorError (nothing ran, or a
    5xx / 429), OutcomeUnknown (sent, no answer), PermanentProcessorError (refused; retrying will not
    help), AuthenticationFailed (the session was refused), CardDeclined only when a decline carries
    no PaymentIntent.  Idempotency keys are used exactly as given.
    """

    #: Seconds after an intent's creation before the processor's search is sure to find it (Stripe:
    #: "generally within a minute").
    search_delay: float = 60.0

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @abc.abstractmethod
    async def authenticate(self, token: ConnectionToken) -> ProcessorSession:
        """Redeem a single-use connection token for a session."""

    @abc.abstractmethod
    async def probe(self) -> bool:
        """True if the processor answers at all (no authentication)."""

    @abc.abstractmethod
    async def create_intent(
        self,
        session: ProcessorSession,
        request: IntentRequest,
        *,
        idempotency_key: str,
        payment_method: str | None = None,
    ) -> IntentSnapshot:
        """Create a card_present PaymentIntent.

        With ``payment_method`` it is created and confirmed in one request (Stripe's
        ``confirm=true``), and the snapshot says how the confirmation went, a decline included
        (``requires_payment_method`` with ``last_payment_error``).  The offline id travels in the
        intent's metadata, so :meth:`find_intent` can find it later.
        """

    @abc.abstractmethod
    async def create_payment_method(
        self,
        session: ProcessorSession,
        card: CardResult,
        *,
        idempotency_key: str,
        stored_at: datetime | None = None,
    ) -> str:
        """Turn the reader's encrypted card data into a payment method id (no money moves)."""

    @abc.abstractmethod
    async def confirm_intent(
        self, session: ProcessorSession, intent_id: str, *, payment_method: str, idempotency_key: str
    ) -> IntentSnapshot:
        """Confirm an existing intent with ``payment_method``.

        Returns the intent as the processor left it: confirmed, declined, or, when the processor
        refused because the intent was not confirmable (already paid, canceled), the intent as it is.
        """

    @abc.abstractmethod
    async def retrieve_intent(self, session: ProcessorSession, intent_id: str) -> IntentSnapshot:
        """The intent as it is now (a GET: nothing changes).  PaymentNotFound if the processor has none."""

    @abc.abstractmethod
    async def find_intent(self, session: ProcessorSession, offline_id: str) -> IntentSnapshot | None:
        """The intent whose metadata carries ``offline_id``, or None.

        Processors index for search with a delay (:attr:`search_delay`): None is only trusted for
        intents created longer ago than that.
        """

    @abc.abstractmethod
    async def cancel_intent(self, session: ProcessorSession, intent_id: str) -> IntentSnapshot:
        """Cancel an intent that was never paid; returns it as it is afterwards (already canceled is fine)."""
