"""What leaves the lane encrypted: everything of a payment but amount, currency, states and times.

AES-256-GCM under the hub key, a fresh 96-bit nonce per record, and the lane and offline id as
associated data: a sealed record copied onto another row does not open.  The card data is not
re-encrypted: it travels as the reader sealed it (readable only by the processor).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from offterm.core.contracts.readers import CardDetails, CardResult
from offterm.core.contracts.replication import WrongHubKey
from offterm.core.contracts.storage import HistoryEntry, PaymentState, StoredPayment
from offterm.core.models import CaptureMethod, ReadMethod

KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_CHECK_PLAINTEXT = b"offterm hub key check v1"
_KEY_CHECK_AAD = b"offterm-hub-key-check"


def check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise WrongHubKey("a hub key is exactly 32 bytes")


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _aad(lane: str, offline_id: str) -> bytes:
    return f"offterm-hub-v1|{lane}|{offline_id}".encode()


def payload(payment: StoredPayment, history: Sequence[HistoryEntry]) -> dict[str, Any]:
    """The private part of a record, as JSON-ready data."""
    details = asdict(payment.card_details) if payment.card_details is not None else None
    if details is not None:
        details["read_method"] = str(details["read_method"])
        details["networks"] = list(details["networks"])
    return {
        "idempotency_key": payment.idempotency_key,
        "capture_method": str(payment.capture_method),
        "metadata": dict(payment.metadata),
        "description": payment.description,
        "account_id": payment.account_id,
        "livemode": payment.livemode,
        "card_details": details,
        "intent_id": payment.intent_id,
        "last_error_code": payment.last_error_code,
        "last_error_message": payment.last_error_message,
        "decline_code": payment.decline_code,
        "next_attempt_at": _when(payment.next_attempt_at),
        "key_generation": payment.key_generation,
        "steps_sent": steps_json(payment.steps_sent),
        "history": [
            {
                "at": _when(h.at),
                "from": str(h.from_state) if h.from_state is not None else None,
                "to": str(h.to_state),
                "attempt": h.attempt,
                "error_code": h.error_code,
            }
            for h in history
        ],
    }


def seal(key: bytes, lane: str, payment: StoredPayment, history: Sequence[HistoryEntry]) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    plain = json.dumps(payload(payment, history), separators=(",", ":"), sort_keys=True).encode()
    return nonce + AESGCM(key).encrypt(nonce, plain, _aad(lane, payment.offline_id))


def open_sealed(key: bytes, lane: str, offline_id: str, sealed: bytes) -> dict[str, Any]:
    """The private part of a hub row; ``WrongHubKey`` if it does not open (key, lane or row differ)."""
    try:
        plain = AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(lane, offline_id))
    except InvalidTag:
        raise WrongHubKey(f"the record of payment {offline_id} does not open with this hub key") from None
    data: dict[str, Any] = json.loads(plain)
    return data


def key_check(key: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, _KEY_CHECK_PLAINTEXT, _KEY_CHECK_AAD)


def verify_key_check(key: bytes, value: bytes) -> None:
    try:
        plain = AESGCM(key).decrypt(value[:NONCE_BYTES], value[NONCE_BYTES:], _KEY_CHECK_AAD)
    except InvalidTag:
        plain = b""
    if plain != _KEY_CHECK_PLAINTEXT:
        raise WrongHubKey(
            "this lane's hub key is not the key the hub was initialised with: nothing was sent "
            "(check [hub] key_provider; the lane's own payments are untouched)"
        )


def _at(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def steps_from(raw: Mapping[str, Sequence[str | None]] | None) -> dict[str, tuple[datetime, datetime]]:
    """``steps_sent`` as sealed (or as the hub forwarder's ledger holds it) -> datetimes."""
    out: dict[str, tuple[datetime, datetime]] = {}
    for step, (first, last) in (raw or {}).items():
        a, b = _at(first), _at(last)
        if a is not None and b is not None:
            out[step] = (a, b)
    return out


def steps_json(steps: Mapping[str, tuple[datetime, datetime]]) -> dict[str, list[str | None]]:
    return {step: [_when(a), _when(b)] for step, (a, b) in steps.items()}


def payment_from(row: Mapping[str, Any], data: Mapping[str, Any]) -> StoredPayment:
    """A hub row (clear columns) and its opened private part, as the lane's ``StoredPayment``.

    The card data is the reader's, as replicated; the history is not part of it.
    """
    details = data.get("card_details")
    card_details = None
    if details is not None:
        card_details = CardDetails(
            **{**details, "read_method": ReadMethod(details["read_method"]), "networks": tuple(details["networks"])}
        )
    card = None
    if row["card_data"] is not None and card_details is not None:
        card = CardResult(
            details=card_details,
            encrypted_card_data=bytes(row["card_data"]),
            key_serial=row["key_serial"] or "",
            encryption_scheme=row["encryption_scheme"] or "offterm-aesgcm-v1",
        )
    return StoredPayment(
        offline_id=row["offline_id"],
        idempotency_key=data["idempotency_key"],
        amount=int(row["amount"]),
        currency=row["currency"],
        capture_method=CaptureMethod(data["capture_method"]),
        metadata=dict(data["metadata"]),
        account_id=data["account_id"],
        livemode=bool(data["livemode"]),
        stored_at=row["stored_at"],
        state=PaymentState(row["state"]),
        attempts=int(row["attempts"]),
        card_details=card_details,
        card=card,
        intent_id=data.get("intent_id"),
        description=data.get("description"),
        last_error_code=data.get("last_error_code"),
        last_error_message=data.get("last_error_message"),
        decline_code=data.get("decline_code"),
        next_attempt_at=_at(data.get("next_attempt_at")),
        updated_at=row["updated_at"],
        key_generation=int(data.get("key_generation") or 0),
        steps_sent=steps_from(data.get("steps_sent")),
    )
