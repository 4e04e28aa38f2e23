"""Reading Stripe's PaymentIntent objects, and the one search query offterm sends.

A PaymentIntent object carries much more than the core needs, some of it
sensitive (a ``client_secret``; in ``last_payment_error``, the card's
payment method with its last4 and cardholder name).  Only what an
``IntentSnapshot`` holds is read from it, and messages are scrubbed, so
nothing else of the object ever leaves this module: not on a snapshot,
not on an exception, not in a log.
"""

from __future__ import annotations

import re
from typing import Any

from offterm.core.contracts.forwarding import IntentSnapshot, PaymentError

from ._redact import scrub

#: The metadata key carrying the payment's offline id; search and the simulator's ledger use it.
OFFLINE_ID_KEY = "offterm_offline_id"
#: Statuses under which the money is authorised (or taken): preferred when a search finds several intents.
PAID_STATUSES = frozenset({"succeeded", "requires_capture"})

#: Offline ids are ours ("offpi_" + hex): anything else is refused before it can reach a search query.
_OFFLINE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


def parse(obj: Any, request_id: str | None) -> IntentSnapshot | None:
    """The snapshot of a PaymentIntent object, or None if ``obj`` is not one (no string id or status)."""
    if not isinstance(obj, dict) or obj.get("object") != "payment_intent":
        return None
    intent_id, status = obj.get("id"), obj.get("status")
    if not isinstance(intent_id, str) or not intent_id or not isinstance(status, str) or not status:
        return None
    amount = obj.get("amount")
    currency = obj.get("currency")
    metadata = obj.get("metadata")
    offline_id = metadata.get(OFFLINE_ID_KEY) if isinstance(metadata, dict) else None
    return IntentSnapshot(
        id=intent_id,
        status=status,
        amount=amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
        currency=currency if isinstance(currency, str) else None,
        offline_id=offline_id if isinstance(offline_id, str) else None,
        last_payment_error=payment_error(obj.get("last_payment_error")),
        request_id=request_id,
    )


def payment_error(obj: Any) -> PaymentError | None:
    """``last_payment_error`` (or an error object) reduced to its code, decline code and message."""
    if not isinstance(obj, dict):
        return None
    code, decline_code, message = obj.get("code"), obj.get("decline_code"), obj.get("message")
    return PaymentError(
        code=code if isinstance(code, str) and code else None,
        decline_code=decline_code if isinstance(decline_code, str) and decline_code else None,
        message=scrub(message) if isinstance(message, str) and message else None,
    )


def created(obj: Any) -> int:
    """An object's ``created`` time (0 when absent): orders several search matches, newest first."""
    value = obj.get("created") if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def check_offline_id(offline_id: str) -> bool:
    """True for an id that can go into a search query as is (letters, digits, ``_``, ``-``)."""
    return isinstance(offline_id, str) and _OFFLINE_ID.fullmatch(offline_id) is not None


def search_query(offline_id: str) -> str:
    """Stripe's search query for the intent carrying ``offline_id`` in its metadata.

    The id has been checked by :func:`check_offline_id` (no quote or
    backslash can be in it); escaping anyway keeps the query well formed
    should that check ever loosen.
    """
    value = offline_id.replace("\\", "\\\\").replace("'", "\\'")
    return f"metadata['{OFFLINE_ID_KEY}']:'{value}'"
