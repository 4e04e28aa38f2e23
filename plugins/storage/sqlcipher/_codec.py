"""Turning payments into rows and rows back into payments.

Decoding is strict: a row that does not decode yields a ``DecodeProblem``
naming the field (never its content), so the store can quarantine that one
record instead of failing every read.
"""

# SQL here is assembled only from module constants; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from offterm.core.contracts.readers import CardDetails, CardResult
from offterm.core.contracts.storage import HistoryEntry, NewPayment, OnlineAttempt, PaymentState, StoredPayment
from offterm.core.errors import InvalidRequest
from offterm.core.models import CaptureMethod, ReadMethod

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAST4 = re.compile(r"^[0-9]{4}$")
_CURRENCY = re.compile(r"^[a-z]{3}$")
#: A step name: short, and safe inside a JSON path without quoting rules.
_STEP = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

#: Columns read for a StoredPayment, in this order.
PAYMENT_COLUMNS: tuple[str, ...] = (
    "seq",
    "offline_id",
    "idempotency_key",
    "amount",
    "currency",
    "capture_method",
    "metadata",
    "account_id",
    "livemode",
    "stored_at",
    "recorded_at",
    "state",
    "attempts",
    "card_details",
    "card_data",
    "key_serial",
    "encryption_scheme",
    "intent_id",
    "description",
    "last_error_code",
    "last_error_message",
    "decline_code",
    "next_attempt_at",
    "updated_at",
    "card_purged_at",
    "claim_sent",
    "claimed_from",
    "key_generation",
    "steps_sent",
)
SELECT_PAYMENT = "SELECT " + ", ".join(PAYMENT_COLUMNS) + " FROM payments"


#: ``last_error_code`` of a quarantined record.
UNDECODABLE = "undecodable_record"


class DecodeProblem(Exception):
    """A stored record cannot be turned back into a payment; ``reason`` names the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def to_micros(value: datetime, what: str = "timestamp") -> int:
    """Timezone-aware datetime -> integer microseconds since the epoch (UTC)."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequest(f"{what} must be a timezone-aware datetime")
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int | None) -> datetime | None:
    if value is None:
        return None
    return _EPOCH + timedelta(microseconds=int(value))


def to_iso(value: datetime, what: str = "timestamp") -> str:
    """Timezone-aware datetime -> ISO 8601 text in UTC, always with microseconds (what steps_sent holds)."""
    when = from_micros(to_micros(value, what))
    assert when is not None
    return when.isoformat(timespec="microseconds")


def check_steps(steps: Collection[str]) -> list[str]:
    """Step names, validated and without duplicates (order kept)."""
    if isinstance(steps, str) or not isinstance(steps, Collection):
        raise InvalidRequest("steps must be a collection of step names")
    names: list[str] = []
    for step in steps:
        if not isinstance(step, str) or not _STEP.match(step):
            raise InvalidRequest("a step name is 1-64 letters, digits, '_', '.', ':' or '-'")
        if step not in names:
            names.append(step)
    return names


def encode_steps(steps: Mapping[str, tuple[datetime, datetime]]) -> str:
    """``steps_sent`` as JSON text: {step: [first ISO, last ISO]}."""
    if not isinstance(steps, Mapping):
        raise InvalidRequest("steps_sent must map step names to (first sent, last sent)")
    check_steps(list(steps))
    data: dict[str, list[str]] = {}
    for name, times in steps.items():
        if not isinstance(times, tuple | list) or len(times) != 2:
            raise InvalidRequest("steps_sent: each step maps to (first sent, last sent)")
        data[name] = [to_iso(times[0], "steps_sent"), to_iso(times[1], "steps_sent")]
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def decode_steps(raw: object) -> dict[str, tuple[datetime, datetime]]:
    """JSON text from ``encode_steps`` (or the SQL that updates it) -> steps_sent; raises DecodeProblem."""
    try:
        data = json.loads(raw)  # type: ignore[arg-type]
        if not isinstance(data, dict):
            raise TypeError("not an object")
        steps: dict[str, tuple[datetime, datetime]] = {}
        for name, times in data.items():
            first, last = (datetime.fromisoformat(t) for t in times)
            if first.tzinfo is None or last.tzinfo is None or len(times) != 2:
                raise ValueError("naive or malformed")
            steps[str(name)] = (first, last)
        return steps
    except (ValueError, TypeError) as exc:
        raise DecodeProblem(f"steps_sent: {type(exc).__name__}") from None


def encode_details(details: CardDetails) -> str:
    """Non-sensitive card facts as JSON; refuses anything that looks like more than a last4."""
    if not isinstance(details, CardDetails):
        raise InvalidRequest("card details are missing")
    if not isinstance(details.last4, str) or not _LAST4.match(details.last4):
        raise InvalidRequest("card details: last4 must be exactly 4 digits")
    return json.dumps(
        {
            "brand": details.brand,
            "last4": details.last4,
            "exp_month": details.exp_month,
            "exp_year": details.exp_year,
            "read_method": str(details.read_method),
            "cardholder_name": details.cardholder_name,
            "pin_verified": bool(details.pin_verified),
            "issuer_country": details.issuer_country,
            "networks": list(details.networks),
        },
        separators=(",", ":"),
    )


def decode_details(raw: str | None) -> CardDetails | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        last4 = str(data["last4"])
        if not _LAST4.match(last4):
            raise ValueError("last4")
        return CardDetails(
            brand=str(data["brand"]),
            last4=last4,
            exp_month=int(data["exp_month"]),
            exp_year=int(data["exp_year"]),
            read_method=ReadMethod(data["read_method"]),
            cardholder_name=None if data.get("cardholder_name") is None else str(data["cardholder_name"]),
            pin_verified=bool(data.get("pin_verified", False)),
            issuer_country=None if data.get("issuer_country") is None else str(data["issuer_country"]),
            networks=tuple(str(n) for n in data.get("networks") or ()),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise DecodeProblem(f"card_details: {type(exc).__name__}") from None


def strip_personal(raw: str | None) -> str | None:
    """Card details kept for reconciliation after a purge: no cardholder name."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if isinstance(data, dict):
        data["cardholder_name"] = None
        return json.dumps(data, separators=(",", ":"))
    return None


def encode_metadata(metadata: Mapping[str, str]) -> str:
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidRequest("metadata must map strings to strings")
    return json.dumps(dict(metadata), separators=(",", ":"), sort_keys=True)


def payment_row(payment: NewPayment, now_us: int) -> dict[str, Any]:
    """Validate a NewPayment and build its INSERT parameters."""
    if not isinstance(payment, NewPayment):
        raise InvalidRequest("store() takes a NewPayment")
    for name in ("offline_id", "idempotency_key", "account_id"):
        value = getattr(payment, name)
        if not isinstance(value, str) or not value or len(value) > 255:
            raise InvalidRequest(f"{name} must be a non-empty string of at most 255 characters")
    if isinstance(payment.amount, bool) or not isinstance(payment.amount, int) or payment.amount <= 0:
        raise InvalidRequest("amount must be a positive integer in minor units")
    if not isinstance(payment.currency, str) or not _CURRENCY.match(payment.currency.lower()):
        raise InvalidRequest("currency must be a 3-letter ISO 4217 code")
    card = payment.card
    if not isinstance(card, CardResult) or not isinstance(card.encrypted_card_data, bytes | bytearray):
        raise InvalidRequest("card must be a CardResult with encrypted card data")
    if not card.encrypted_card_data:
        raise InvalidRequest("card: encrypted card data is empty")
    return {
        "offline_id": payment.offline_id,
        "idempotency_key": payment.idempotency_key,
        "amount": payment.amount,
        "currency": payment.currency.lower(),
        "capture_method": CaptureMethod(payment.capture_method).value,
        "metadata": encode_metadata(payment.metadata),
        "account_id": payment.account_id,
        "livemode": 1 if payment.livemode else 0,
        "stored_at": to_micros(payment.stored_at, "stored_at"),
        "recorded_at": now_us,
        "state": PaymentState.STORED.value,
        "card_details": encode_details(card.details),
        "card_data": bytes(card.encrypted_card_data),
        "key_serial": card.key_serial,
        "encryption_scheme": card.encryption_scheme,
        "intent_id": payment.intent_id,
        "description": payment.description,
        "updated_at": now_us,
        "steps_sent": encode_steps(payment.steps_sent),
    }


def decode_payment(row: Any) -> StoredPayment:
    """A row (in PAYMENT_COLUMNS order) -> StoredPayment; raises DecodeProblem."""
    r = dict(zip(PAYMENT_COLUMNS, row, strict=True))
    state = PaymentState(r["state"])  # guarded by a CHECK constraint
    try:
        metadata = json.loads(r["metadata"])
    except (ValueError, TypeError):
        raise DecodeProblem("metadata: not valid JSON") from None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise DecodeProblem("metadata: not a mapping of strings")
    try:
        capture = CaptureMethod(r["capture_method"])
    except ValueError:
        raise DecodeProblem("capture_method: unknown value") from None
    if not _CURRENCY.match(str(r["currency"])):
        raise DecodeProblem("currency: not a 3-letter code")
    details = decode_details(r["card_details"])
    card: CardResult | None = None
    if r["card_data"] is not None:
        if details is None:
            raise DecodeProblem("card_details: missing while card data is present")
        if not isinstance(r["card_data"], bytes) or not r["card_data"]:
            raise DecodeProblem("card_data: empty or not bytes")
        card = CardResult(
            details=details,
            encrypted_card_data=r["card_data"],
            key_serial=r["key_serial"] or "",
            encryption_scheme=r["encryption_scheme"] or "offterm-aesgcm-v1",
        )
    elif r["card_purged_at"] is None and state not in (PaymentState.FORWARDED, PaymentState.DECLINED):
        raise DecodeProblem("card_data: missing but never purged")
    return StoredPayment(
        offline_id=r["offline_id"],
        idempotency_key=r["idempotency_key"],
        amount=r["amount"],
        currency=r["currency"],
        capture_method=capture,
        metadata=metadata,
        account_id=r["account_id"],
        livemode=bool(r["livemode"]),
        stored_at=_when(r["stored_at"]),
        state=state,
        attempts=r["attempts"],
        card_details=details,
        card=card,
        intent_id=r["intent_id"],
        description=r["description"],
        last_error_code=r["last_error_code"],
        last_error_message=r["last_error_message"],
        decline_code=r["decline_code"],
        next_attempt_at=from_micros(r["next_attempt_at"]),
        updated_at=from_micros(r["updated_at"]),
        key_generation=int(r["key_generation"]),
        steps_sent=decode_steps(r["steps_sent"]),
    )


def decode_quarantined(row: Any, reason: str) -> StoredPayment:
    """Best-effort view of a record that did not decode (no card, no metadata).

    Its state is the stored one: needs_attention once quarantined, or a final
    state (final records are not moved).
    """
    r = dict(zip(PAYMENT_COLUMNS, row, strict=True))
    try:
        capture = CaptureMethod(r["capture_method"])
    except ValueError:
        capture = CaptureMethod.AUTOMATIC
    try:
        details = decode_details(r["card_details"])
    except DecodeProblem:
        details = None
    return StoredPayment(
        offline_id=r["offline_id"],
        idempotency_key=r["idempotency_key"],
        amount=r["amount"],
        currency=str(r["currency"]),
        capture_method=capture,
        metadata={},
        account_id=r["account_id"],
        livemode=bool(r["livemode"]),
        stored_at=_when(r["stored_at"]),
        state=PaymentState(r["state"]),
        attempts=r["attempts"],
        card_details=details,
        card=None,
        intent_id=r["intent_id"],
        description=r["description"],
        last_error_code=r["last_error_code"] or UNDECODABLE,
        last_error_message=r["last_error_message"] or reason,
        updated_at=from_micros(r["updated_at"]),
        key_generation=int(r["key_generation"] or 0),
        steps_sent=_steps_or_empty(r["steps_sent"]),
    )


def _steps_or_empty(raw: object) -> dict[str, tuple[datetime, datetime]]:
    try:
        return decode_steps(raw)
    except DecodeProblem:
        return {}


#: Columns read for an OnlineAttempt, in this order.
ONLINE_COLUMNS: tuple[str, ...] = (
    "offline_id",
    "idempotency_key",
    "amount",
    "currency",
    "owner",
    "started_at",
    "intent_id",
    "steps_sent",
    "resolution",
    "resolved_at",
    "error_code",
)
SELECT_ONLINE = "SELECT " + ", ".join(ONLINE_COLUMNS) + " FROM online_attempts"


def _short_text(value: object, name: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > 255:
        raise InvalidRequest(f"{name} must be a non-empty string of at most 255 characters")
    return value


def online_row(attempt: OnlineAttempt) -> dict[str, Any]:
    """Validate an unresolved OnlineAttempt and build its INSERT parameters (there is no card data in it)."""
    if not isinstance(attempt, OnlineAttempt):
        raise InvalidRequest("begin_online() takes an OnlineAttempt")
    if attempt.resolution is not None or attempt.resolved_at is not None:
        raise InvalidRequest("begin_online() journals an unresolved attempt; use resolve_online() to resolve it")
    for name in ("offline_id", "idempotency_key", "owner"):
        _short_text(getattr(attempt, name), name)
    _short_text(attempt.intent_id, "intent_id", optional=True)
    _short_text(attempt.error_code, "error_code", optional=True)
    if isinstance(attempt.amount, bool) or not isinstance(attempt.amount, int) or attempt.amount <= 0:
        raise InvalidRequest("amount must be a positive integer in minor units")
    if not isinstance(attempt.currency, str) or not _CURRENCY.match(attempt.currency.lower()):
        raise InvalidRequest("currency must be a 3-letter ISO 4217 code")
    return {
        "offline_id": attempt.offline_id,
        "idempotency_key": attempt.idempotency_key,
        "amount": attempt.amount,
        "currency": attempt.currency.lower(),
        "owner": attempt.owner,
        "started_at": to_micros(attempt.started_at, "started_at"),
        "intent_id": attempt.intent_id,
        "steps_sent": encode_steps(attempt.steps_sent),
        "error_code": attempt.error_code,
    }


def decode_online(row: Any) -> OnlineAttempt:
    """A row (in ONLINE_COLUMNS order) -> OnlineAttempt.  Bad steps_sent text reads as no steps."""
    r = dict(zip(ONLINE_COLUMNS, row, strict=True))
    return OnlineAttempt(
        offline_id=r["offline_id"],
        idempotency_key=r["idempotency_key"],
        amount=r["amount"],
        currency=r["currency"],
        owner=r["owner"],
        started_at=_when(r["started_at"]),
        intent_id=r["intent_id"],
        steps_sent=_steps_or_empty(r["steps_sent"]),
        resolution=r["resolution"],
        resolved_at=from_micros(r["resolved_at"]),
        error_code=r["error_code"],
    )


def first_history(recorded_at: int) -> HistoryEntry:
    """The implicit first entry: the payment row was written in state stored."""
    return HistoryEntry(at=_when(recorded_at), from_state=None, to_state=PaymentState.STORED, attempt=0)


def decode_history(row: Any) -> HistoryEntry:
    at, from_state, to_state, attempt, error_code = row
    return HistoryEntry(
        at=_when(at),
        from_state=None if from_state is None else PaymentState(from_state),
        to_state=PaymentState(to_state),
        attempt=attempt,
        error_code=error_code,
    )


def _when(value: int) -> datetime:
    result = from_micros(value)
    assert result is not None
    return result
