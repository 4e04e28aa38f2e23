"""The device-only steps, which Stripe keeps off its public API.

Stripe's Terminal SDKs do two things no public endpoint offers:

1. redeem a single-use **connection token** for an authenticated session;
2. turn the reader's **encrypted card data** into a ``card_present``
   PaymentMethod (the public ``payment_method_data`` cannot carry it).

Everything else the transport sends is public Stripe API.  This module is
the only place that knows the device protocol, so a processor with a real
device API replaces just these two functions (and ``DEVICE_PATHS``).  The
protocol spoken here is the one of offterm's processor simulator:

* ``POST {device_base}/device/v1/sessions`` with ``Authorization: Bearer
  <connection token>`` -> ``{"secret", "account", "livemode", "expires_at"}``;
* ``POST {device_base}/device/v1/payment_methods`` (session bearer, form:
  ``type=card_present``, ``card_present[encrypted_data]`` base64,
  ``card_present[key_serial]``, ``card_present[encryption_scheme]``; for a
  payment collected offline, the header ``Offterm-Stored-At: <ISO 8601>``)
  -> a Stripe ``payment_method`` object.  The simulator records the time as
  the charge's ``card_present.offline.stored_at``, as Stripe does.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from offterm.core.contracts import CardResult, ConnectionToken, ProcessorSession
from offterm.core.errors import AuthenticationFailed, OutcomeUnknown

from ._http import StripeHttp

DEVICE_PATHS = {"session": "/device/v1/sessions", "payment_method": "/device/v1/payment_methods"}
#: When a stored payment was collected; a header, so it is not among the parameters a key compares.
STORED_AT_HEADER = "Offterm-Stored-At"


async def open_session(http: StripeHttp, device_base: str, token: ConnectionToken) -> ProcessorSession:
    """Redeem a connection token (single-use) for a session."""
    answer = await http.request(
        "POST", device_base + DEVICE_PATHS["session"], step="authenticate", bearer=token.secret, params={}
    )
    body = answer.body
    secret, account = body.get("secret"), body.get("account")
    if not isinstance(secret, str) or not isinstance(account, str) or not isinstance(body.get("livemode"), bool):
        raise AuthenticationFailed("authenticate: the processor's session answer is incomplete")
    return ProcessorSession(account_id=account, livemode=body["livemode"], secret=secret)


async def create_card_present_method(
    http: StripeHttp,
    device_base: str,
    session: ProcessorSession,
    card: CardResult,
    idempotency_key: str,
    *,
    stored_at: datetime | None = None,
) -> str:
    """Hand the encrypted card data to the processor; returns the PaymentMethod id.

    ``stored_at`` (a payment collected offline) goes in the ``Offterm-Stored-At``
    header, not the form: the parameters stay those of an online attempt under
    the same key, so a retry from the store always matches it.
    """
    answer = await http.request(
        "POST",
        device_base + DEVICE_PATHS["payment_method"],
        step="payment_method",
        bearer=session.secret,
        idempotency_key=idempotency_key,
        headers={STORED_AT_HEADER: stored_at.astimezone(UTC).isoformat()} if stored_at is not None else None,
        params={
            "type": "card_present",
            "card_present": {
                "encrypted_data": base64.b64encode(card.encrypted_card_data).decode("ascii"),
                "key_serial": card.key_serial,
                "encryption_scheme": card.encryption_scheme,
            },
        },
    )
    pm_id = answer.body.get("id")
    if not isinstance(pm_id, str):
        raise OutcomeUnknown("payment_method: the processor's answer has no id", request_id=answer.request_id)
    return pm_id
