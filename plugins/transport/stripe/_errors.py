"""Turning Stripe's answers and httpx's failures into offterm's typed errors.

The one rule that matters for exactly-once: if a request may have reached
the processor and no answer came back, it is ``OutcomeUnknown`` (retry with
the same idempotency key), never a plain failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import httpx

from offterm.core.errors import (
    AuthenticationFailed,
    CardDeclined,
    OutcomeUnknown,
    PermanentProcessorError,
    ProcessorError,
    TransientProcessorError,
)

from . import _intents as intents
from ._redact import scrub

#: Error codes that mean "this credential is no good": get a new session.
AUTH_CODES = frozenset(
    {
        "api_key_invalid",
        "api_key_expired",
        "session_expired",
        "connection_token_invalid",
        "connection_token_expired",
        "connection_token_already_redeemed",
    }
)
#: Codes worth retrying whatever the status says.
RETRY_CODES = frozenset({"lock_timeout", "rate_limit", "idempotency_key_in_use"})


def _should_retry(headers: Mapping[str, str]) -> bool | None:
    value = headers.get("stripe-should-retry")
    if value is None:
        return None
    return value.strip().lower() == "true"


def from_response(
    status: int, body: Any, headers: Mapping[str, str], *, step: str, method: str | None = None
) -> ProcessorError:
    """The typed error for a non-2xx answer from the processor.

    A 5xx to a POST is OutcomeUnknown: Stripe documents a 500's result as indeterminate (the change may
    have been made), so only a retry with the same idempotency key may follow, and an app must not be told
    the payment was not taken.

    The error's PaymentIntent, when Stripe includes one (a decline, a
    ``payment_intent_unexpected_state``), is kept twice, and nothing else of
    it (its client secret, the card's details): ``exc.payment_intent`` =
    ``{"id", "status"}``, and ``exc.intent_snapshot``, an ``IntentSnapshot``
    (None when the error carries no readable PaymentIntent).  A decline's
    snapshot without a ``last_payment_error`` gets the error's own code,
    decline code and message.
    """
    error = _classify(status, body, headers, step=step)
    if status >= 500 and method == "POST" and not isinstance(error, OutcomeUnknown):
        error = OutcomeUnknown(
            f"{error.args[0]}; the processor failed while handling it: retry with the same idempotency key",
            request_id=error.request_id,
            http_status=status,
            should_retry=error.should_retry,
        )
    err = body.get("error") if isinstance(body, dict) else None
    intent = err.get("payment_intent") if isinstance(err, dict) else None
    snapshot = intents.parse(intent, error.request_id)
    if snapshot is not None and snapshot.last_payment_error is None and isinstance(error, CardDeclined):
        snapshot = replace(snapshot, last_payment_error=intents.payment_error(err))
    # Attributes the core's ProcessorError does not declare: set through __dict__ (pickled with the error).
    error.__dict__.update(
        payment_intent={"id": intent.get("id"), "status": intent.get("status")} if isinstance(intent, dict) else None,
        intent_snapshot=snapshot,
    )
    return error


def _classify(status: int, body: Any, headers: Mapping[str, str], *, step: str) -> ProcessorError:
    request_id = headers.get("request-id")
    should_retry = _should_retry(headers)
    err = body.get("error") if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {}
    kind = str(err.get("type") or "")
    code = err.get("code")
    code = str(code) if code else None
    decline_code = err.get("decline_code")
    message = scrub(str(err.get("message") or f"HTTP {status} without a Stripe error body"))
    text = f"{step}: {message}"
    common: dict[str, Any] = {"request_id": request_id, "http_status": status, "should_retry": should_retry}

    if 300 <= status < 400:
        return redirect_error(status, step=step, request_id=request_id)
    if status == 401 or (code in AUTH_CODES):
        return AuthenticationFailed(text, code=None, **common)
    if should_retry is True or status in (409, 429) or status >= 500 or code in RETRY_CODES:
        if should_retry is False and status < 500:
            return PermanentProcessorError(text, code=code, **common)
        return TransientProcessorError(text, code=code, **common)
    if kind == "card_error" or status == 402:
        return CardDeclined(text, decline_code=str(decline_code or code or "generic_decline"), **common)
    if kind == "idempotency_error":
        return PermanentProcessorError(text, code="idempotency_error", **common)
    return PermanentProcessorError(text, code=code, **common)


def redirect_error(status: int, *, step: str, request_id: str | None) -> TransientProcessorError:
    """A 3xx: not the processor's answer but a captive portal's or a proxy's.

    The processor never redirects, so the request did not reach it: retry
    later with the same key.  The redirect is never followed.  ``http_status``
    stays None (as for a network failure): the processor itself did not answer.
    """
    return TransientProcessorError(
        f"{step}: the processor's address answered a redirect (HTTP {status}), not followed: "
        "a captive portal or a proxy is in the way",
        code="unexpected_redirect",
        request_id=request_id,
    )


def unreadable_error(reason: str, *, step: str, method: str, status: int, request_id: str | None) -> ProcessorError:
    """An answer that came back but was not read (too large, compressed unasked).

    The request was sent: a POST's outcome is unknown (retry with the same key).
    """
    if 300 <= status < 400:
        return redirect_error(status, step=step, request_id=request_id)
    text = f"{step}: unreadable answer from the processor (HTTP {status}): {reason}"
    if method == "POST":
        return OutcomeUnknown(text + "; retry with the same idempotency key", request_id=request_id, http_status=status)
    return TransientProcessorError(text, code="unreadable_answer", request_id=request_id, http_status=status)


def deadline_error(*, step: str, timeout: float, sent_may_commit: bool) -> ProcessorError:
    """The whole exchange outlived the transport's ``timeout``."""
    text = f"{step}: no complete answer within {timeout:g} s"
    if sent_may_commit:
        return OutcomeUnknown(text + "; retry with the same idempotency key")
    return TransientProcessorError(text + " (nothing was sent)", code="connection_error")


def from_transport_error(exc: httpx.HTTPError, *, step: str, sent_may_commit: bool) -> ProcessorError:
    """The typed error for a request that got no answer.

    Nothing was sent when connecting failed (or no pooled connection was
    free): transient.  Once the request may have been written, only POSTs
    can have taken effect: those are OutcomeUnknown.
    """
    name = type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout | httpx.ProxyError):
        return TransientProcessorError(f"{step}: could not reach the processor ({name})", code="connection_error")
    if sent_may_commit:
        return OutcomeUnknown(f"{step}: request sent, no answer ({name}); retry with the same idempotency key")
    return TransientProcessorError(f"{step}: no answer from the processor ({name})", code="connection_error")
