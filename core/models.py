"""Stripe-shaped objects the app sees: PaymentIntent, OfflineStatus and friends.

Field names follow Stripe Terminal (snake_case), so code written against
Stripe reads naturally here.  Nothing in these objects is card data: the
encrypted card blob travels separately and is never part of ``repr``.
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class OfflineBehavior(enum.StrEnum):
    """What to do when the processor cannot be reached (Stripe's three modes)."""

    PREFER_ONLINE = "prefer_online"
    REQUIRE_ONLINE = "require_online"
    FORCE_OFFLINE = "force_offline"


class NetworkStatus(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


class IntentStatus(enum.StrEnum):
    REQUIRES_PAYMENT_METHOD = "requires_payment_method"
    REQUIRES_CONFIRMATION = "requires_confirmation"
    REQUIRES_CAPTURE = "requires_capture"
    SUCCEEDED = "succeeded"
    CANCELED = "canceled"


class CaptureMethod(enum.StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


class ReadMethod(enum.StrEnum):
    CONTACT_EMV = "contact_emv"
    CONTACTLESS_EMV = "contactless_emv"
    MAGNETIC_STRIPE = "magnetic_stripe"


def new_offline_id() -> str:
    """A local id, assigned at creation and stable forever."""
    return "offpi_" + time_ordered_hex()


def time_ordered_hex() -> str:
    """32 hex digits: the time in milliseconds (12), then 80 random bits (20), as in UUIDv7.

    Unique and unguessable like a random UUID, but ids made later sort later, so a store's unique
    indexes on them grow at their right edge: each insert dirties one leaf page instead of a random
    one, which keeps the writes per offline payment flat however many are already stored.
    """
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


@dataclass(frozen=True)
class CardPresentDetails:
    """Non-sensitive facts about the card, safe to show and to log."""

    brand: str
    last4: str
    exp_month: int
    exp_year: int
    read_method: ReadMethod
    cardholder_name: str | None = None


@dataclass(frozen=True)
class OfflineDetails:
    """Present on an intent that was stored offline.

    ``requires_upload`` is True until the processor has the payment: the
    intent is stored, NOT authorised, until then.

    ``replicated_to_hub`` says whether the store hub (docs/fleet.md) had committed the payment
    when the confirm returned: True in ``sync`` mode when it did, False when the confirm fell
    back to local-only (the hub was down or slower than ``[hub] sync_timeout``; it catches up
    later) and in ``async`` mode (replicated in the background, after the confirm), None when
    no hub is configured.  Only True means the payment survives the loss of this device.
    """

    stored_at: datetime
    requires_upload: bool
    card_present_details: CardPresentDetails | None = None
    replicated_to_hub: bool | None = None


@dataclass
class PaymentIntentParams:
    """What the app asks for when creating an intent."""

    amount: int
    currency: str
    capture_method: CaptureMethod = CaptureMethod.AUTOMATIC
    metadata: dict[str, str] = field(default_factory=dict)
    description: str | None = None

    @classmethod
    def coerce(cls, params: PaymentIntentParams | dict[str, Any]) -> PaymentIntentParams:
        if isinstance(params, PaymentIntentParams):
            return params
        unknown = set(params) - {"amount", "currency", "capture_method", "metadata", "description"}
        if unknown:
            from .errors import InvalidRequest

            raise InvalidRequest(f"unknown payment intent parameter(s): {', '.join(sorted(unknown))}")
        return cls(
            amount=params["amount"],
            currency=params["currency"],
            capture_method=CaptureMethod(params.get("capture_method", "automatic")),
            metadata=dict(params.get("metadata") or {}),
            description=params.get("description"),
        )


@dataclass
class PaymentIntent:
    """A payment in progress, as the app sees it.

    ``id`` is None until the processor assigns one; ``offline_id`` is ours and
    never changes, so reconcile on it.
    """

    offline_id: str
    amount: int
    currency: str
    status: IntentStatus = IntentStatus.REQUIRES_PAYMENT_METHOD
    capture_method: CaptureMethod = CaptureMethod.AUTOMATIC
    metadata: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    id: str | None = None
    offline_behavior: OfflineBehavior = OfflineBehavior.PREFER_ONLINE
    offline_details: OfflineDetails | None = None
    created_at: datetime | None = None

    @property
    def requires_upload(self) -> bool:
        return self.offline_details is not None and self.offline_details.requires_upload

    @property
    def is_stored_offline(self) -> bool:
        """True while the payment sits in the local store, not yet authorised."""
        return self.requires_upload


@dataclass(frozen=True)
class OfflineStatusDetails:
    network_status: NetworkStatus
    offline_payments_count: int
    offline_payment_amounts_by_currency: dict[str, int]
    needs_attention_count: int = 0
    oldest_stored_at: datetime | None = None


@dataclass(frozen=True)
class OfflineStatus:
    """Mirrors Stripe's OfflineStatus: ``sdk`` describes this POS's store."""

    sdk: OfflineStatusDetails
