"""The service's PaymentIntent and Reader records, and their Stripe shapes.

A record is what the service knows of an object across restarts (persisted as JSON in
``serve.sqlite3``); ``render`` gives the object exactly as Stripe's API shapes it, plus:

* ``offline_details`` on a PaymentIntent stored offline (``stored_at``, ``requires_upload``, the card's
  brand and last four; null online), as Stripe Terminal's SDKs mark offline payments;
* ``offterm``: the local ``offline_id``, the processor's intent id once known, the offline behaviour,
  and where a stored payment is in forwarding.

No card data is ever in a record: the card stays encrypted inside the Terminal's store.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, fields
from typing import Any

from offterm.core.contracts import ReaderInfo
from offterm.core.models import PaymentIntent

#: phases of a PaymentIntent through the service
CREATED, IN_ACTION, CONFIRMING, DONE = "created", "in_action", "confirming", "done"


@dataclass
class IntentRecord:
    id: str
    offline_id: str
    amount: int
    currency: str
    capture_method: str
    metadata: dict[str, str]
    description: str | None
    created: int
    status: str
    offline_behavior: str
    livemode: bool = False
    phase: str = CREATED
    processor_intent_id: str | None = None
    offline_details: dict[str, Any] | None = None
    last_payment_error: dict[str, Any] | None = None
    cancellation_reason: str | None = None
    canceled_at: int | None = None
    forwarding: str | None = None
    #: the Terminal's live object (not persisted): gone after a restart
    core: PaymentIntent | None = field(default=None, repr=False, compare=False)

    def persisted(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every field, the Terminal's live PaymentIntent included,
        # only to drop it (~40 us a save, three saves a payment); the caller serialises at once.
        return {name: getattr(self, name) for name in _PERSISTED}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> IntentRecord:
        return cls(**data)

    def render(self) -> dict[str, Any]:
        received = self.amount if self.status == "succeeded" and not self.offline_details_pending else 0
        return {
            "id": self.id,
            "object": "payment_intent",
            "amount": self.amount,
            "amount_capturable": self.amount if self.status == "requires_capture" else 0,
            "amount_received": received,
            "canceled_at": self.canceled_at,
            "cancellation_reason": self.cancellation_reason,
            "capture_method": self.capture_method,
            "client_secret": None,
            "confirmation_method": "automatic",
            "created": self.created,
            "currency": self.currency,
            "description": self.description,
            "last_payment_error": self.last_payment_error,
            "latest_charge": None,
            "livemode": self.livemode,
            "metadata": dict(self.metadata),
            "payment_method": None,
            "payment_method_types": ["card_present"],
            "status": self.status,
            "offline_details": self.offline_details,
            "offterm": {
                "offline_id": self.offline_id,
                "processor_payment_intent": self.processor_intent_id,
                "offline_behavior": self.offline_behavior,
                "forwarding": self.forwarding,
            },
        }

    @property
    def offline_details_pending(self) -> bool:
        return bool(self.offline_details and self.offline_details.get("requires_upload"))


_PERSISTED = tuple(f.name for f in fields(IntentRecord) if f.name != "core")


def offline_details(intent: PaymentIntent) -> dict[str, Any] | None:
    details = intent.offline_details
    if details is None:
        return None
    card = details.card_present_details
    return {
        "stored_at": int(details.stored_at.timestamp()),
        "requires_upload": details.requires_upload,
        "card_present_details": None
        if card is None
        else {
            "brand": card.brand,
            "last4": card.last4,
            "exp_month": card.exp_month,
            "exp_year": card.exp_year,
            "read_method": card.read_method.value,
        },
    }


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def reader_id(info: ReaderInfo) -> str:
    return "tmr_" + _UNSAFE.sub("_", info.serial_number)[:60]


def render_reader(info: ReaderInfo, *, online: bool, action: dict[str, Any] | None, livemode: bool) -> dict[str, Any]:
    return {
        "id": reader_id(info),
        "object": "terminal.reader",
        "action": action,
        "device_sw_version": info.firmware_version or None,
        "device_type": info.reader_type,
        "ip_address": None,
        "label": info.label or info.serial_number,
        "livemode": livemode,
        "location": info.location_id,
        "metadata": {},
        "serial_number": info.serial_number,
        "status": "online" if online else "offline",
        "offterm": {"transport": info.transport},
    }


def process_action(payment_intent: str, status: str = "in_progress") -> dict[str, Any]:
    return {
        "failure_code": None,
        "failure_message": None,
        "process_payment_intent": {"payment_intent": payment_intent},
        "status": status,
        "type": "process_payment_intent",
    }


def now() -> int:
    return int(time.time())
