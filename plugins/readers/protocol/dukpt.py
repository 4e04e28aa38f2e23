"""AES DUKPT key derivation (ANSI X9.24-3-2017), built on ``cryptography``.

For reader plugins that talk to hardware which seals card data under AES
DUKPT.  The bundled emulator uses the simpler ``offterm-aesgcm-v1`` scheme of
``card_encryption`` (the processor simulator decrypts that; the reason is
written there); this module gives a hardware plugin, or a processor, the
standard derivation, checked in the tests against the standard's published
test vectors.

Terms: the base derivation key (BDK) and an 8-byte initial key ID give the
reader's initial key (IK); a 12-byte key serial number (KSN) is the initial
key ID plus a 32-bit transaction counter with at most 16 one-bits; each KSN
gives one transaction key, and from it a working key per usage.
"""

from __future__ import annotations

import enum
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KSN_LEN = 12
IK_ID_LEN = 8
MAX_ONE_BITS = 16


class DukptError(ValueError):
    """A key, initial key ID or KSN that AES DUKPT cannot use (never echoes key material)."""


class KeyType(enum.IntEnum):
    """Algorithm indicator of the derivation data, with the key length in bits."""

    TDES2 = 0x0000
    TDES3 = 0x0001
    AES128 = 0x0002
    AES192 = 0x0003
    AES256 = 0x0004

    @property
    def bits(self) -> int:
        return {0: 128, 1: 192, 2: 128, 3: 192, 4: 256}[self.value]


class KeyUsage(enum.IntEnum):
    """Key usage indicator of the derivation data."""

    KEY_ENCRYPTION_KEY = 0x0002
    PIN_ENCRYPTION = 0x1000
    MAC_GENERATION = 0x2000
    MAC_VERIFICATION = 0x2001
    MAC_BOTH = 0x2002
    DATA_ENCRYPT = 0x3000
    DATA_DECRYPT = 0x3001
    DATA_BOTH = 0x3002
    KEY_DERIVATION = 0x8000
    INITIAL_KEY = 0x8001


def _key_type(key: bytes) -> KeyType:
    types = {16: KeyType.AES128, 24: KeyType.AES192, 32: KeyType.AES256}
    if len(key) not in types:
        raise DukptError("an AES DUKPT derivation key is 16, 24 or 32 bytes")
    return types[len(key)]


def derivation_data(usage: KeyUsage, key_type: KeyType, ik_id: bytes, counter: int, block: int = 1) -> bytes:
    """The 16-byte block X9.24-3 encrypts to derive a key (version 1)."""
    if usage is KeyUsage.INITIAL_KEY:
        tail = ik_id
    else:
        tail = ik_id[4:8] + struct.pack(">I", counter)
    return struct.pack(">BBHHH", 1, block, usage, key_type, key_type.bits) + tail


def derive_key(derivation_key: bytes, key_type: KeyType, data: bytes) -> bytes:
    """Encrypt the derivation data under ``derivation_key`` (AES-ECB), once per 128 bits of output."""
    _key_type(derivation_key)
    encryptor = Cipher(algorithms.AES(derivation_key), modes.ECB()).encryptor()  # noqa: S305 - one block per call, as specified
    out = b""
    for block in range(1, (key_type.bits + 127) // 128 + 1):
        out += encryptor.update(data[:1] + bytes([block]) + data[2:])
    return out[: key_type.bits // 8]


def _check_ik_id(ik_id: bytes) -> None:
    if len(ik_id) != IK_ID_LEN:
        raise DukptError("the initial key ID is 8 bytes")


def initial_key(bdk: bytes, ik_id: bytes) -> bytes:
    """The reader's initial key, derived from the BDK (same key type as the BDK)."""
    _check_ik_id(ik_id)
    key_type = _key_type(bdk)
    return derive_key(bdk, key_type, derivation_data(KeyUsage.INITIAL_KEY, key_type, ik_id, 0))


def split_ksn(ksn: bytes) -> tuple[bytes, int]:
    """(initial key ID, transaction counter) of a valid 12-byte KSN."""
    if len(ksn) != KSN_LEN:
        raise DukptError("an AES DUKPT key serial number is 12 bytes")
    counter = struct.unpack(">I", ksn[8:])[0]
    if counter == 0 or bin(counter).count("1") > MAX_ONE_BITS:
        raise DukptError("the transaction counter must be non-zero with at most 16 one-bits")
    return ksn[:8], counter


def transaction_key(ik: bytes, ksn: bytes) -> bytes:
    """The key for one transaction: walk the counter's one-bits from the highest, deriving at each."""
    ik_id, counter = split_ksn(ksn)
    key_type = _key_type(ik)
    key, working = ik, 0
    for bit in range(31, -1, -1):
        mask = 1 << bit
        if counter & mask:
            working |= mask
            key = derive_key(key, key_type, derivation_data(KeyUsage.KEY_DERIVATION, key_type, ik_id, working))
    return key


def working_key(txn_key: bytes, ksn: bytes, usage: KeyUsage, key_type: KeyType = KeyType.AES128) -> bytes:
    """A key for one usage (data encryption, PIN, MAC) from a transaction key."""
    ik_id, counter = split_ksn(ksn)
    return derive_key(txn_key, key_type, derivation_data(usage, key_type, ik_id, counter))


def next_ksn(ksn: bytes) -> bytes | None:
    """The reader's next KSN: counters with more than 16 one-bits are skipped; None when exhausted."""
    ik_id, counter = ksn[:8], struct.unpack(">I", ksn[8:])[0]
    counter += 1
    while counter <= 0xFFFFFFFF and bin(counter).count("1") > MAX_ONE_BITS:
        counter += counter & -counter
    if counter > 0xFFFFFFFF:
        return None
    return ik_id + struct.pack(">I", counter)
