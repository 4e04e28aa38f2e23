"""Card data encryption between a reader and the processor (wire codec).

The POS only ever holds the ciphertext.  Scheme ``offterm-aesgcm-v1``:

* every transaction gets a fresh 12-byte key serial number (KSN), random;
* the per-transaction key is HKDF-SHA256(base derivation key, salt=KSN,
  info="offterm card data v1"): a leaked transaction key reveals nothing
  about the base key or any other transaction (the property DUKPT gives);
* the card data (JSON) is sealed with AES-256-GCM under that key, with the
  KSN as associated data, so a blob cannot be replayed under another KSN.

It is simpler than ANSI X9.24-3 AES DUKPT (no transaction counter tree,
no key registers) because both ends here are software; a hardware reader
plugin may use DUKPT and name its own ``encryption_scheme``.

A reader may derive the next transaction's key while it is idle
(:class:`TransactionKey`, as DUKPT devices keep future keys ready): each one
has its own fresh KSN and seals exactly one card, then refuses.

The processor simulator imports this module to decrypt; readers (and the
reader emulator) import it to encrypt.  Nothing else should.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SCHEME = "offterm-aesgcm-v1"
_INFO = b"offterm card data v1"
_NONCE_BYTES = 12

#: A base derivation key for test mode only (the simulator and emulator share it).
TEST_BASE_KEY_HEX = "6f66667465726d2d746573742d6b65792d646f2d6e6f742d7573652d6c697665"


class CardDecryptionError(Exception):
    """The blob was not sealed under this key and KSN, or was altered."""


@dataclass(frozen=True)
class SensitiveCard:
    """Card data as the reader reads it.  Lives only inside readers and the processor."""

    pan: str = field(repr=False)
    exp_month: int
    exp_year: int
    cardholder_name: str | None = None
    track2: str | None = field(default=None, repr=False)
    read_method: str = "contact_emv"
    pin_verified: bool = False


def _transaction_key(base_key: bytes, ksn: bytes) -> bytes:
    if len(base_key) != 32:
        raise ValueError("base derivation key must be 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ksn, info=_INFO).derive(base_key)


def new_ksn() -> str:
    return os.urandom(12).hex()


class TransactionKey:
    """The key of one transaction, derived ahead of use: seals one card, then refuses.

    A reader makes the next one while idle, so deriving it is not part of a
    collection's latency.  It holds the KSN (fresh and random unless given),
    the AES-GCM key derived for it, and the nonce; nothing shows in ``repr``.
    """

    __slots__ = ("_aead", "_ksn_bytes", "_nonce", "ksn")

    def __init__(self, base_key: bytes, ksn: str | None = None) -> None:
        self.ksn = ksn or new_ksn()
        self._ksn_bytes = bytes.fromhex(self.ksn)
        self._aead: AESGCM | None = AESGCM(_transaction_key(base_key, self._ksn_bytes))
        self._nonce = os.urandom(_NONCE_BYTES)

    def __repr__(self) -> str:
        return f"TransactionKey(used={self.used})"

    @property
    def used(self) -> bool:
        return self._aead is None

    def seal(self, card: SensitiveCard) -> tuple[bytes, str]:
        """Seal ``card``; returns (blob, ksn hex).  A second call raises RuntimeError."""
        aead, self._aead = self._aead, None
        if aead is None:
            raise RuntimeError("a transaction key seals one card only")
        payload = json.dumps(
            {
                "pan": card.pan,
                "exp_month": card.exp_month,
                "exp_year": card.exp_year,
                "cardholder_name": card.cardholder_name,
                "track2": card.track2,
                "read_method": card.read_method,
                "pin_verified": card.pin_verified,
            }
        ).encode()
        return self._nonce + aead.encrypt(self._nonce, payload, self._ksn_bytes), self.ksn


def encrypt(card: SensitiveCard, base_key: bytes, ksn: str | None = None) -> tuple[bytes, str]:
    """Seal ``card``; returns (blob, ksn hex)."""
    return TransactionKey(base_key, ksn).seal(card)


def decrypt(blob: bytes, ksn: str, base_key: bytes) -> SensitiveCard:
    """Open a blob sealed by :func:`encrypt`; raises CardDecryptionError."""
    try:
        ksn_bytes = bytes.fromhex(ksn)
        nonce, sealed = blob[:_NONCE_BYTES], blob[_NONCE_BYTES:]
        payload = AESGCM(_transaction_key(base_key, ksn_bytes)).decrypt(nonce, sealed, ksn_bytes)
        data = json.loads(payload)
        return SensitiveCard(
            pan=str(data["pan"]),
            exp_month=int(data["exp_month"]),
            exp_year=int(data["exp_year"]),
            cardholder_name=data.get("cardholder_name"),
            track2=data.get("track2"),
            read_method=str(data.get("read_method", "contact_emv")),
            pin_verified=bool(data.get("pin_verified", False)),
        )
    except (InvalidTag, ValueError, KeyError, TypeError) as exc:
        raise CardDecryptionError("card data could not be decrypted with this key") from exc
