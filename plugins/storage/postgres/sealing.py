"""What leaves the lane encrypted: everything of a payment but amount, currency, states and times.

AES-256-GCM under the hub key, a fresh 96-bit nonce per record, and the lane and offline id as
associated data: a sealed record copied onto another row does not open.  The card data is not
re-encrypted: it travels as the reader sealed it (readable only by the processor).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from offterm.core.contracts.replication import WrongHubKey
from offterm.core.contracts.storage import HistoryEntry, StoredPayment

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
        "steps_sent": {step: [_when(a), _when(b)] for step, (a, b) in payment.steps_sent.items()},
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
