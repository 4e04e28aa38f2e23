"""Reader transports: find readers, open connections, collect a card.

The POS never sees a card number: a reader returns an opaque blob encrypted
for the processor, plus the few non-sensitive details a receipt needs.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from ..models import ReadMethod


@dataclass(frozen=True)
class ReaderInfo:
    """A reader found by discovery; pass it back to ``connect``."""

    serial_number: str
    reader_type: str
    transport: str
    address: str
    label: str = ""
    firmware_version: str = ""
    location_id: str | None = None


@dataclass(frozen=True)
class CollectRequest:
    amount: int
    currency: str
    allowed_read_methods: tuple[ReadMethod, ...] = tuple(ReadMethod)
    timeout: float = 60.0


@dataclass(frozen=True)
class CardDetails:
    """Non-sensitive card facts the reader reports alongside the blob.

    ``networks`` lists every scheme on a co-badged card (e.g. eftpos and
    Visa), first the one the reader chose; ``brand`` is the routing brand.
    """

    brand: str
    last4: str
    exp_month: int
    exp_year: int
    read_method: ReadMethod
    cardholder_name: str | None = None
    pin_verified: bool = False
    issuer_country: str | None = None
    networks: tuple[str, ...] = ()

    def is_expired(self, now: datetime) -> bool:
        return (self.exp_year, self.exp_month) < (now.year, now.month)


@dataclass(frozen=True)
class CardResult:
    """What a collection produces.

    ``encrypted_card_data`` is readable only by the processor; ``key_serial``
    identifies the per-transaction key it was encrypted under.  Neither is
    shown in ``repr``.
    """

    details: CardDetails
    encrypted_card_data: bytes = field(repr=False)
    key_serial: str = field(default="", repr=False)
    encryption_scheme: str = "offterm-aesgcm-v1"


#: Reader link events a connection reports to the Terminal.
READER_EVENTS = ("reconnecting", "reconnected", "disconnected")

ReaderListener = Callable[[str, ReaderInfo, int, str], None]
"""listener(event, reader, attempt, reason): event is one of READER_EVENTS."""


class ReaderConnection(abc.ABC):
    """An open link to one reader.

    A connection that loses its link reconnects by itself (with backoff) and
    reports each step to the listener the Terminal installs with
    ``set_listener``: "reconnecting" (attempt n), "reconnected", and
    "disconnected" (gave up, or the link closed; ``reason`` says why).
    """

    info: ReaderInfo
    _listener: ReaderListener | None = None

    def set_listener(self, listener: ReaderListener | None) -> None:
        self._listener = listener

    def notify(self, event: str, attempt: int = 0, reason: str = "") -> None:
        """For implementations: report a link event (never raises)."""
        if self._listener is not None:
            try:
                self._listener(event, self.info, attempt, reason)
            except Exception:  # noqa: S110 - a listener must not break the reader link
                pass

    @abc.abstractmethod
    async def collect(self, request: CollectRequest) -> CardResult:
        """Ask the customer for a card and return the result.

        Raises ReaderDisconnected, ReaderTimeout, CollectionCanceled or
        CardReadError; on any error nothing has been stored.
        """

    @abc.abstractmethod
    async def cancel_collect(self) -> None:
        """Cancel a collection in progress (no-op if none)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the link; safe to call twice."""

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...


class ReaderTransport(abc.ABC):
    """One way of reaching readers (Bluetooth LE, USB serial, simulated...)."""

    @abc.abstractmethod
    async def discover(self, timeout: float = 5.0) -> list[ReaderInfo]:
        """Readers reachable now."""

    @abc.abstractmethod
    async def connect(self, reader: ReaderInfo) -> ReaderConnection:
        """Open a connection; raises ReaderError if it cannot."""

    async def close(self) -> None:
        """Release transport-wide resources (scanners, stale links)."""
        return None
