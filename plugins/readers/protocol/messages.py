"""Messages of the reader protocol (version 1): types, fields and validation.

Each payload is a UTF-8 JSON object.  Decoding checks every field's presence,
type and range, so whatever arrives on the wire becomes either a typed message
or a ``ReaderProtocolError`` naming the field; nothing else escapes.  Card
numbers never travel in the clear: a ``Result`` carries the encrypted blob,
its key serial number and the receipt-safe details only.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from offterm.core.errors import ReaderProtocolError

from .framing import Frame, encode_frame

PROTOCOL_VERSION = 1

#: Compact JSON, as every payload is written (``ensure_ascii``: payloads are ASCII).
_JSON = json.JSONEncoder(separators=(",", ":"))


class MessageType(enum.IntEnum):
    HELLO = 0x01
    INFO = 0x02
    DISPLAY = 0x03
    COLLECT = 0x04
    CANCEL = 0x05
    CARD_EVENT = 0x06
    PIN_RESULT = 0x07
    RESULT = 0x08
    ERROR = 0x09
    ACK = 0x0A
    PING = 0x0B
    PONG = 0x0C
    RESEND = 0x0D


class CardEventKind(enum.StrEnum):
    INSERTED = "inserted"
    REMOVED = "removed"
    TAPPED = "tapped"
    SWIPED = "swiped"


_EVENT_KINDS = {kind.value: kind for kind in CardEventKind}
_EVENT_VALUES = tuple(_EVENT_KINDS)


class ErrorCode(enum.StrEnum):
    """Why a reader refused or ended a request."""

    TIMEOUT = "timeout"  # nobody presented a card in time
    CANCELED = "canceled"  # the host canceled
    CARD_REMOVED = "card_removed"  # the card left before the read completed
    READ_METHOD_NOT_ALLOWED = "read_method_not_allowed"
    CARD_READ_FAILED = "card_read_failed"
    PIN_FAILED = "pin_failed"
    BUSY = "busy"  # a collection is already running
    BAD_REQUEST = "bad_request"
    UNSUPPORTED = "unsupported"


READ_METHODS = ("contact_emv", "contactless_emv", "magnetic_stripe")
MAX_DISPLAY_LINES = 4
MAX_DISPLAY_CHARS = 40


# -- field checks -----------------------------------------------------------------------


def _bad(field: str, why: str) -> ReaderProtocolError:
    return ReaderProtocolError(f"message field {field!r} {why}", reason="payload", field=field)


def _str(obj: Mapping[str, Any], key: str, *, optional: bool = False, max_len: int = 256) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _bad(key, "must be a string")
    if len(value) > max_len:
        raise _bad(key, f"is longer than {max_len} characters")
    return value


def _int(obj: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, "must be an integer")
    if not lo <= value <= hi:
        raise _bad(key, f"must be from {lo} to {hi}")
    return value


def _bool(obj: Mapping[str, Any], key: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise _bad(key, "must be true or false")
    return value


def _choice(obj: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = _str(obj, key)
    if value not in choices:
        raise _bad(key, f"must be one of {', '.join(choices)}")
    return str(value)


def _str_list(obj: Mapping[str, Any], key: str, max_items: int, max_len: int = 64) -> tuple[str, ...]:
    value = obj.get(key)
    if not isinstance(value, list) or len(value) > max_items:
        raise _bad(key, f"must be a list of at most {max_items} strings")
    for item in value:
        if not isinstance(item, str) or len(item) > max_len:
            raise _bad(key, f"must hold strings of at most {max_len} characters")
    return tuple(value)


def _txn(obj: Mapping[str, Any], *, optional: bool = False) -> Any:
    return _str(obj, "txn", optional=optional, max_len=64)


# -- messages ---------------------------------------------------------------------------


class Message:
    """Base of every message; ``TYPE`` is its one-byte frame type."""

    TYPE: ClassVar[MessageType]

    def to_payload(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> str:
        """The payload as compact JSON text (what ``encode`` frames)."""
        return _JSON.encode(self.to_payload())

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> Message:
        raise NotImplementedError


@dataclass(frozen=True)
class Hello(Message):
    """Host -> reader: start a session.  A reader ends any collection of an earlier session."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    session: str
    protocols: tuple[int, ...] = (PROTOCOL_VERSION,)

    def to_payload(self) -> dict[str, Any]:
        return {"session": self.session, "protocols": list(self.protocols)}

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> Hello:
        protocols = obj.get("protocols")
        if not isinstance(protocols, list) or not protocols or len(protocols) > 8:
            raise _bad("protocols", "must be a non-empty list of versions")
        if not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 256 for p in protocols):
            raise _bad("protocols", "must hold versions from 1 to 255")
        return cls(_str(obj, "session", max_len=64), tuple(protocols))


@dataclass(frozen=True)
class Info(Message):
    """Reader -> host: who the reader is (answers Hello)."""

    TYPE: ClassVar[MessageType] = MessageType.INFO
    session: str
    serial_number: str
    reader_type: str
    firmware_version: str
    location_id: str | None
    encryption_scheme: str
    protocol: int = PROTOCOL_VERSION

    def to_payload(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "protocol": self.protocol,
            "serial_number": self.serial_number,
            "reader_type": self.reader_type,
            "firmware_version": self.firmware_version,
            "location_id": self.location_id,
            "encryption_scheme": self.encryption_scheme,
        }

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> Info:
        return cls(
            session=_str(obj, "session", max_len=64),
            serial_number=_str(obj, "serial_number", max_len=64),
            reader_type=_str(obj, "reader_type", max_len=64),
            firmware_version=_str(obj, "firmware_version", max_len=64),
            location_id=_str(obj, "location_id", optional=True, max_len=64),
            encryption_scheme=_str(obj, "encryption_scheme", max_len=64),
            protocol=_int(obj, "protocol", 1, 255),
        )


@dataclass(frozen=True)
class Display(Message):
    """Host -> reader: show text to the customer (answered by Ack)."""

    TYPE: ClassVar[MessageType] = MessageType.DISPLAY
    lines: tuple[str, ...]

    def to_payload(self) -> dict[str, Any]:
        return {"lines": list(self.lines)}

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> Display:
        return cls(_str_list(obj, "lines", MAX_DISPLAY_LINES, MAX_DISPLAY_CHARS))


@dataclass(frozen=True)
class Collect(Message):
    """Host -> reader: ask for a card for this amount."""

    TYPE: ClassVar[MessageType] = MessageType.COLLECT
    txn: str
    amount: int
    currency: str
    read_methods: tuple[str, ...]
    timeout_ms: int

    def to_payload(self) -> dict[str, Any]:
        return {
            "txn": self.txn,
            "amount": self.amount,
            "currency": self.currency,
            "read_methods": list(self.read_methods),
            "timeout_ms": self.timeout_ms,
        }

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> Collect:
        methods = _str_list(obj, "read_methods", len(READ_METHODS))
        if not methods or any(m not in READ_METHODS for m in methods):
            raise _bad("read_methods", f"must list some of {', '.join(READ_METHODS)}")
        currency = _str(obj, "currency", max_len=3)
        if len(currency) != 3 or not (currency.isascii() and currency.isalpha()):
            raise _bad("currency", "must be a three-letter code")
        return cls(
            txn=_txn(obj),
            amount=_int(obj, "amount", 0, 10**12),
            currency=currency,
            read_methods=methods,
            timeout_ms=_int(obj, "timeout_ms", 0, 3_600_000),
        )


@dataclass(frozen=True)
class Cancel(Message):
    """Host -> reader: stop the collection ``txn`` (answered by Error canceled)."""

    TYPE: ClassVar[MessageType] = MessageType.CANCEL
    txn: str

    def to_payload(self) -> dict[str, Any]:
        return {"txn": self.txn}

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> Cancel:
        return cls(_txn(obj))


@dataclass(frozen=True)
class CardEvent(Message):
    """Reader -> host: the customer did something with the card (informational)."""

    TYPE: ClassVar[MessageType] = MessageType.CARD_EVENT
    txn: str
    event: CardEventKind

    def to_payload(self) -> dict[str, Any]:
        return {"txn": self.txn, "event": self.event.value}

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> CardEvent:
        event = _choice(obj, "event", _EVENT_VALUES)
        return cls(_txn(obj), _EVENT_KINDS[event])


@dataclass(frozen=True)
class PinResult(Message):
    """Reader -> host: the outcome of PIN entry on the reader (the PIN never leaves it)."""

    TYPE: ClassVar[MessageType] = MessageType.PIN_RESULT
    txn: str
    verified: bool

    def to_payload(self) -> dict[str, Any]:
        return {"txn": self.txn, "verified": self.verified}

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> PinResult:
        return cls(_txn(obj), _bool(obj, "verified"))


@dataclass(frozen=True)
class CardSummary:
    """The receipt-safe facts inside a Result."""

    brand: str
    last4: str
    exp_month: int
    exp_year: int
    read_method: str
    cardholder_name: str | None = None
    pin_verified: bool = False
    issuer_country: str | None = None
    networks: tuple[str, ...] = ()

    def to_payload(self) -> dict[str, Any]:
        return {
            "brand": self.brand,
            "last4": self.last4,
            "exp_month": self.exp_month,
            "exp_year": self.exp_year,
            "read_method": self.read_method,
            "cardholder_name": self.cardholder_name,
            "pin_verified": self.pin_verified,
            "issuer_country": self.issuer_country,
            "networks": list(self.networks),
        }

    @classmethod
    def from_payload(cls, obj: Any) -> CardSummary:
        if not isinstance(obj, dict):
            raise _bad("card", "must be an object")
        last4 = _str(obj, "last4", max_len=4)
        if len(last4) != 4 or not (last4.isascii() and last4.isdigit()):
            raise _bad("last4", "must be four digits")
        return cls(
            brand=_str(obj, "brand", max_len=32),
            last4=last4,
            exp_month=_int(obj, "exp_month", 1, 12),
            exp_year=_int(obj, "exp_year", 1970, 2999),
            read_method=_choice(obj, "read_method", READ_METHODS),
            cardholder_name=_str(obj, "cardholder_name", optional=True, max_len=64),
            pin_verified=_bool(obj, "pin_verified"),
            issuer_country=_str(obj, "issuer_country", optional=True, max_len=2),
            networks=_str_list(obj, "networks", 8, 32),
        )


@dataclass(frozen=True)
class Result(Message):
    """Reader -> host: the card was read; card data is sealed for the processor."""

    TYPE: ClassVar[MessageType] = MessageType.RESULT
    txn: str
    card: CardSummary
    encrypted_card_data: bytes
    key_serial: str
    encryption_scheme: str

    def __repr__(self) -> str:  # the blob and KSN stay out of logs
        return f"Result(txn={self.txn!r}, card={self.card!r})"

    def to_payload(self) -> dict[str, Any]:
        return {
            "txn": self.txn,
            "card": self.card.to_payload(),
            "encrypted_card_data": base64.b64encode(self.encrypted_card_data).decode("ascii"),
            "key_serial": self.key_serial,
            "encryption_scheme": self.encryption_scheme,
        }

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> Result:
        blob_text = _str(obj, "encrypted_card_data", max_len=3000)
        try:
            blob = base64.b64decode(blob_text, validate=True)
        except (binascii.Error, ValueError):
            raise _bad("encrypted_card_data", "must be base64") from None
        if not blob:
            raise _bad("encrypted_card_data", "must not be empty")
        ksn = _str(obj, "key_serial", max_len=64)
        try:
            bytes.fromhex(ksn)
        except ValueError:
            raise _bad("key_serial", "must be hexadecimal") from None
        return cls(
            txn=_txn(obj),
            card=CardSummary.from_payload(obj.get("card")),
            encrypted_card_data=blob,
            key_serial=ksn,
            encryption_scheme=_str(obj, "encryption_scheme", max_len=64),
        )


@dataclass(frozen=True)
class Error(Message):
    """Reader -> host: a request failed or a collection ended without a card."""

    TYPE: ClassVar[MessageType] = MessageType.ERROR
    txn: str | None
    code: str
    message: str = ""

    def to_payload(self) -> dict[str, Any]:
        return {"txn": self.txn, "code": self.code, "message": self.message}

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> Error:
        return cls(_txn(obj, optional=True), _str(obj, "code", max_len=64), _str(obj, "message", max_len=512))


@dataclass(frozen=True)
class Ack(Message):
    """Reader -> host: a request without other answer (Display) was done."""

    TYPE: ClassVar[MessageType] = MessageType.ACK
    of: int
    txn: str | None = None

    def to_payload(self) -> dict[str, Any]:
        return {"of": self.of, "txn": self.txn}

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> Ack:
        return cls(_int(obj, "of", 0, 255), _txn(obj, optional=True))


@dataclass(frozen=True)
class Ping(Message):
    """Either side: are you there?  Answered by Pong with the same nonce."""

    TYPE: ClassVar[MessageType] = MessageType.PING
    nonce: int

    def to_payload(self) -> dict[str, Any]:
        return {"nonce": self.nonce}

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> Ping:
        return cls(_int(obj, "nonce", 0, 2**32 - 1))


@dataclass(frozen=True)
class Pong(Message):
    TYPE: ClassVar[MessageType] = MessageType.PONG
    nonce: int

    def to_payload(self) -> dict[str, Any]:
        return {"nonce": self.nonce}

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> Pong:
        return cls(_int(obj, "nonce", 0, 2**32 - 1))


@dataclass(frozen=True)
class Resend(Message):
    """Host -> reader: a frame of ``txn`` arrived corrupt; send the last one again."""

    TYPE: ClassVar[MessageType] = MessageType.RESEND
    txn: str

    def to_payload(self) -> dict[str, Any]:
        return {"txn": self.txn}

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> Resend:
        return cls(_txn(obj))


M = TypeVar("M", bound=Message)

_DECODERS: dict[int, Callable[[Mapping[str, Any]], Message]] = {
    cls.TYPE: cls.from_payload
    for cls in (Hello, Info, Display, Collect, Cancel, CardEvent, PinResult, Result, Error, Ack, Ping, Pong, Resend)
}


def encode(message: Message) -> bytes:
    """One complete frame for ``message``."""
    return encode_frame(message.TYPE, message.to_json().encode())


def decode_payload(msg_type: int, payload: bytes) -> Message:
    """The message a frame of this type and payload carries; raises ReaderProtocolError naming what is wrong."""
    decoder = _DECODERS.get(msg_type)
    if decoder is None:
        raise ReaderProtocolError(f"unknown message type 0x{msg_type:02x}", reason="type")
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ReaderProtocolError("message payload is not UTF-8 JSON", reason="payload") from None
    if not isinstance(obj, dict):
        raise ReaderProtocolError("message payload is not a JSON object", reason="payload")
    return decoder(obj)


def decode(frame: Frame) -> Message:
    """The message a frame carries; raises ReaderProtocolError naming what is wrong."""
    return decode_payload(frame.type, frame.payload)
