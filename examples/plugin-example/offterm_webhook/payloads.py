"""Turn offterm events into webhook bodies: identifiers, amounts, states, and never card data.

Fields are picked one by one (an allow-list), so a new field on an offterm
object can never slip into a request.  Free text goes through offterm's
redaction as a second line of defence.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from offterm.core.errors import CardDeclined, OfftermError
from offterm.core.logs import redact_text, redact_value
from offterm.core.models import OfflineStatus, PaymentIntent


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def intent_data(intent: PaymentIntent) -> dict[str, Any]:
    details = intent.offline_details
    return {
        "offline_id": intent.offline_id,
        "id": intent.id,
        "amount": intent.amount,
        "currency": intent.currency,
        "status": str(intent.status),
        "capture_method": str(intent.capture_method),
        "description": redact_text(intent.description) if intent.description else None,
        "metadata": redact_value(dict(intent.metadata)),
        "created_at": _iso(intent.created_at),
        "stored_at": _iso(details.stored_at) if details else None,
        "requires_upload": intent.requires_upload,
    }


def error_data(error: OfftermError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {
        "type": type(error).__name__,
        "code": error.code,
        "message": redact_text(error.message),
        "decline_code": getattr(error, "decline_code", None),
    }


def status_data(status: OfflineStatus) -> dict[str, Any]:
    sdk = status.sdk
    return {
        "network_status": str(sdk.network_status),
        "offline_payments_count": sdk.offline_payments_count,
        "offline_payment_amounts_by_currency": dict(sdk.offline_payment_amounts_by_currency),
        "needs_attention_count": sdk.needs_attention_count,
        "oldest_stored_at": _iso(sdk.oldest_stored_at),
    }


def outcome(error: OfftermError | None) -> str:
    if error is None:
        return "authorized"
    if isinstance(error, CardDeclined):
        return "declined"
    return "needs_attention"


def build_event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """The envelope every delivery has: a unique id (for deduplication), the type, the time."""
    return {
        "id": "evt_" + uuid.uuid4().hex,
        "type": event_type,
        "created": datetime.now(UTC).isoformat(),
        "data": data,
    }
