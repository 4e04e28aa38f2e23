"""An in-process simulated card reader, like Stripe's simulated reader.

It lets the Terminal, the tests and the demo run every card scenario without
hardware: the test (or demo) chooses which card the "customer" presents next
with :meth:`SimulatedReaderConnection.present_card`, and ``collect`` reads it,
encrypts it for the processor with the card-data wire codec and returns only
the ciphertext plus receipt-safe details.

Presentations are queued per reader (they survive a reconnect); when the
queue is empty the configured ``default_card`` is presented.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from offterm.core.config import validate_options
from offterm.core.contracts import (
    CardDetails,
    CardResult,
    CollectRequest,
    ReaderConnection,
    ReaderInfo,
    ReaderTransport,
)
from offterm.core.errors import (
    CardReadError,
    CollectionCanceled,
    ConfigError,
    ReaderDisconnected,
    ReaderError,
    ReaderNotConnected,
    ReaderTimeout,
)
from offterm.core.hookspecs import hookimpl
from offterm.core.models import ReadMethod
from offterm.core.registrations import ComponentContext, OptionSpec, ReaderTransportRegistration

from . import card_encryption, test_cards

TRANSPORT_NAME = "simulated"
FIRMWARE_VERSION = "offterm-sim-1.0"


@dataclass(frozen=True)
class Presentation:
    """What the customer does at the next collection."""

    card: test_cards.CardProfile
    read_method: ReadMethod
    pin_verified: bool
    expired: bool = False
    cardholder_name: str | None = None
    remove_early: bool = False
    never: bool = False
    disconnect: bool = False
    reconnect: bool = False


@dataclass(frozen=True)
class SimulatedReaderSettings:
    """Validated options of the ``simulated`` transport."""

    count: int = 1
    reader_type: str = "simulated_wisepad3"
    location_id: str | None = None
    card_key: bytes = bytes.fromhex(card_encryption.TEST_BASE_KEY_HEX)
    default_card: test_cards.CardProfile = test_cards.CARDS["visa"]
    read_method: ReadMethod = ReadMethod.CONTACT_EMV
    pin_verified: bool = True
    read_delay: float = 0.0

    def __repr__(self) -> str:  # never show the key
        return f"SimulatedReaderSettings(count={self.count}, reader_type={self.reader_type!r})"


def settings_from(options: Mapping[str, Any], prefix: str = "reader.simulated") -> SimulatedReaderSettings:
    """Settings from options the core validated against ``OPTIONS`` (every key present).

    The default card is the one thing only the catalogue can judge; its error never echoes a number.
    """
    try:
        card = test_cards.resolve(options["default_card"])
    except ValueError as exc:
        raise ConfigError(f"{prefix}.default_card", str(exc)) from None
    return SimulatedReaderSettings(
        count=options["count"],
        reader_type=options["reader_type"],
        location_id=options["location_id"],
        card_key=bytes.fromhex(options["card_key"]),
        default_card=card,
        read_method=ReadMethod(options["read_method"]),
        pin_verified=options["pin_verified"],
        read_delay=float(options["read_delay"]),
    )


def parse_options(options: Mapping[str, Any] | None, prefix: str = "reader.simulated") -> SimulatedReaderSettings:
    """Settings from a raw options table, validated by the core as the configuration is."""
    return settings_from(validate_options(prefix, OPTIONS, dict(options or {}), env={}), prefix)


class _SimulatedReader:
    """One simulated device: its identity and the queue of cards waiting to be presented."""

    def __init__(self, info: ReaderInfo) -> None:
        self.info = info
        self.queue: collections.deque[Presentation] = collections.deque()
        self.connection: SimulatedReaderConnection | None = None


class SimulatedReaderConnection(ReaderConnection):
    """A link to one simulated reader; tests drive the customer through its public methods."""

    def __init__(self, device: _SimulatedReader, settings: SimulatedReaderSettings) -> None:
        self.info = device.info
        self._device = device
        self._settings = settings
        self._connected = True
        self._closed = False
        self._interrupt: asyncio.Future[ReaderError] | None = None
        self._collecting = asyncio.Event()
        self._collections = 0

    # -- scenario control (tests and the demo) ----------------------------------------------

    def present_card(
        self,
        card: str = "visa",
        *,
        read_method: ReadMethod | str | None = None,
        pin: bool | None = None,
        expired: bool | None = None,
        cardholder_name: str | None = None,
        remove_early: bool = False,
        never: bool = False,
        disconnect: bool = False,
        reconnect: bool = False,
    ) -> None:
        """Queue what the customer does at the next collection.

        :param card: a ``test_cards`` name ("visa", "interac", "eftpos_visa"...) or a card number.
        :param read_method: contact_emv (insert), contactless_emv (tap) or magnetic_stripe
            (swipe); default: the reader's ``read_method`` option.
        :param pin: whether a PIN is verified; default: the ``pin_verified`` option for
            an inserted card, False for a tap or swipe.
        :param expired: the card's printed expiry lies in the past (default: the catalogue's value).
        :param remove_early: the card is pulled out mid-read (CardReadError).
        :param never: nobody presents a card (ReaderTimeout after the request's timeout).
        :param disconnect: the reader drops its link mid-read (ReaderDisconnected).
        :param reconnect: with ``disconnect``, the link comes back by itself right after.
        :raises ValueError: unknown card name or invalid number (the number is not echoed).
        """
        profile = test_cards.resolve(card)
        method = ReadMethod(read_method) if read_method is not None else self._settings.read_method
        if pin is None:
            pin = self._settings.pin_verified if method is ReadMethod.CONTACT_EMV else False
        self._device.queue.append(
            Presentation(
                card=profile,
                read_method=method,
                pin_verified=pin,
                expired=profile.expired if expired is None else expired,
                cardholder_name=cardholder_name,
                remove_early=remove_early,
                never=never,
                disconnect=disconnect,
                reconnect=reconnect,
            )
        )

    @property
    def pending_presentations(self) -> int:
        return len(self._device.queue)

    def clear_presentations(self) -> None:
        self._device.queue.clear()

    def simulate_disconnect(self, *, reconnect: bool = False) -> None:
        """The link drops (battery, range); a collection in progress fails with ReaderDisconnected.

        Without ``reconnect`` the connection is gone for good and reports "disconnected".
        With it, it reports "reconnecting" (attempt 1), then on the next loop turn
        comes back and reports "reconnected", as a real reader's retry would.
        """
        if not self._connected:
            return
        self._connected = False
        self._interrupt_with(ReaderDisconnected("the simulated reader disconnected during collection"))
        if not reconnect:
            if self._device.connection is self:
                self._device.connection = None
            self.notify("disconnected", reason="simulated link loss")
            return
        self.notify("reconnecting", attempt=1, reason="simulated link loss")
        try:
            asyncio.get_running_loop().call_soon(self._restore)
        except RuntimeError:  # no loop running: come back at once
            self._restore()

    def _restore(self) -> None:
        if self._device.connection is self and not self._closed:
            self._connected = True
            self.notify("reconnected", attempt=1)

    @property
    def is_collecting(self) -> bool:
        return self._interrupt is not None

    async def wait_until_collecting(self, timeout: float = 5.0) -> None:
        """Return once a collection is waiting for the customer (to cancel or disconnect it mid-way)."""
        async with asyncio.timeout(timeout):
            await self._collecting.wait()

    @property
    def collections(self) -> int:
        """How many collections were started on this connection."""
        return self._collections

    # -- the ReaderConnection contract ----------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def collect(self, request: CollectRequest) -> CardResult:
        if not self._connected:
            raise ReaderNotConnected(f"reader {self.info.serial_number} is not connected")
        if self._interrupt is not None:
            raise ReaderError("a collection is already in progress on this reader")
        presentation = self._device.queue.popleft() if self._device.queue else self._default_presentation()
        self._collections += 1
        self._interrupt = asyncio.get_running_loop().create_future()
        self._collecting.set()
        try:
            if presentation.never:
                await self._wait(request.timeout)
                raise ReaderTimeout(f"no card was presented within {request.timeout:g} s")
            await self._wait(self._settings.read_delay)
            if presentation.disconnect:
                self.simulate_disconnect(reconnect=presentation.reconnect)
                await self._wait(0)
            if presentation.remove_early:
                raise CardReadError("the card was removed before the read completed; present it again")
            if presentation.read_method not in request.allowed_read_methods:
                raise CardReadError(f"read method {presentation.read_method.value} is not allowed for this payment")
            return self._read(presentation)
        finally:
            self._interrupt = None
            self._collecting.clear()

    async def cancel_collect(self) -> None:
        self._interrupt_with(CollectionCanceled("the collection was canceled"))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._connected = False
        if self._device.connection is self:
            self._device.connection = None
        self._interrupt_with(ReaderDisconnected("the reader connection was closed during collection"))

    # -- internals -------------------------------------------------------------------------------------

    def _default_presentation(self) -> Presentation:
        card = self._settings.default_card
        method = self._settings.read_method
        return Presentation(
            card=card,
            read_method=method,
            pin_verified=self._settings.pin_verified if method is ReadMethod.CONTACT_EMV else False,
            expired=card.expired,
        )

    def _interrupt_with(self, error: ReaderError) -> None:
        if self._interrupt is not None and not self._interrupt.done():
            self._interrupt.set_result(error)

    async def _wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; raise at once if the collection is canceled or the link drops."""
        interrupt = self._interrupt
        assert interrupt is not None
        if not interrupt.done():
            await asyncio.wait({interrupt}, timeout=max(seconds, 0.0))
        if interrupt.done():
            raise interrupt.result()

    def _read(self, p: Presentation) -> CardResult:
        month, year = test_cards.expiry(datetime.now(UTC).date(), expired=p.expired)
        swipe = p.read_method is ReadMethod.MAGNETIC_STRIPE
        sensitive = card_encryption.SensitiveCard(
            pan=p.card.pan,
            exp_month=month,
            exp_year=year,
            cardholder_name=p.cardholder_name,
            track2=test_cards.track2(p.card.pan, month, year) if swipe else None,
            read_method=p.read_method.value,
            pin_verified=p.pin_verified,
        )
        blob, ksn = card_encryption.encrypt(sensitive, self._settings.card_key)
        details = CardDetails(
            brand=p.card.brand,
            last4=p.card.last4,
            exp_month=month,
            exp_year=year,
            read_method=p.read_method,
            cardholder_name=p.cardholder_name,
            pin_verified=p.pin_verified,
            issuer_country=p.card.issuer_country,
            networks=p.card.networks,
        )
        return CardResult(
            details=details, encrypted_card_data=blob, key_serial=ksn, encryption_scheme=card_encryption.SCHEME
        )


class SimulatedReaderTransport(ReaderTransport):
    """Finds ``count`` simulated readers; each can be connected once at a time."""

    def __init__(self, settings: SimulatedReaderSettings | None = None) -> None:
        self.settings = settings or SimulatedReaderSettings()
        self._readers: dict[str, _SimulatedReader] = {}
        for i in range(1, self.settings.count + 1):
            serial = f"SIMULATOR-{i}"
            self._readers[serial] = _SimulatedReader(
                ReaderInfo(
                    serial_number=serial,
                    reader_type=self.settings.reader_type,
                    transport=TRANSPORT_NAME,
                    address=f"sim://{serial}",
                    label=f"Simulated reader {i}",
                    firmware_version=FIRMWARE_VERSION,
                    location_id=self.settings.location_id,
                )
            )

    async def discover(self, timeout: float = 5.0) -> list[ReaderInfo]:
        await asyncio.sleep(0)
        return [r.info for r in self._readers.values()]

    async def connect(self, reader: ReaderInfo) -> SimulatedReaderConnection:
        device = self._readers.get(reader.serial_number)
        if device is None or reader.transport != TRANSPORT_NAME:
            raise ReaderError(f"no simulated reader with serial number {reader.serial_number!r}")
        if device.connection is not None and device.connection.is_connected:
            raise ReaderError(f"simulated reader {reader.serial_number} is already connected")
        device.connection = SimulatedReaderConnection(device, self.settings)
        return device.connection

    def connection(self, serial_number: str | None = None) -> SimulatedReaderConnection | None:
        """The open connection to a reader (the first reader by default), for scenario control."""
        serial = serial_number or next(iter(self._readers))
        device = self._readers.get(serial)
        return device.connection if device else None

    async def close(self) -> None:
        for device in self._readers.values():
            if device.connection is not None:
                await device.connection.close()


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("count", int, 1, "How many simulated readers discovery finds (1-100).", minimum=1, maximum=100),
    OptionSpec("reader_type", str, "simulated_wisepad3", "Device type the simulated readers report.", min_length=1),
    OptionSpec(
        "location_id", (str, type(None)), None, "Location the readers are registered to (None: none).", min_length=1
    ),
    OptionSpec(
        "card_key",
        str,
        card_encryption.TEST_BASE_KEY_HEX,
        "Base key (64 hex characters) card data is encrypted under for the processor; default: the test key.",
        secret=True,
        pattern="[0-9A-Fa-f]{64}",
        pattern_help="64 hexadecimal characters (a 256-bit key)",
    ),
    OptionSpec("default_card", str, "visa", "Card presented when none was queued: a test card name or a number."),
    OptionSpec(
        "read_method",
        str,
        ReadMethod.CONTACT_EMV.value,
        "Default read method.",
        choices=tuple(m.value for m in ReadMethod),
    ),
    OptionSpec("pin_verified", bool, True, "Whether an inserted card's PIN is verified by default."),
    OptionSpec("read_delay", (int, float), 0.0, "Seconds the simulated customer takes to present a card.", maximum=60),
)


def _factory(context: ComponentContext) -> SimulatedReaderTransport:
    return SimulatedReaderTransport(settings_from(context.options, prefix=f"reader.{context.name}"))


@hookimpl
def offterm_reader_transports() -> Iterator[ReaderTransportRegistration]:
    yield ReaderTransportRegistration(
        name=TRANSPORT_NAME,
        factory=_factory,
        description="In-process simulated readers presenting Stripe test cards (no hardware).",
        options=OPTIONS,
    )
