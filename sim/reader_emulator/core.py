"""The emulated reader itself, free of I/O: bytes in, bytes out, timers via a scheduler.

The same core runs behind a pseudo-terminal, a TCP socket, or a fake BlueZ
GATT service; each runner only moves bytes and provides ``call_later``.  Card
data is sealed for the processor with the card-data codec under a fresh key
serial number per transaction; only receipt-safe details go out in clear.

Like a DUKPT device keeping its future keys ready, the emulator derives the
next transaction's key once a collection's answer is sent (while the host
reads it), not while the host waits: each key has its own KSN and seals one
card only.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from offterm.core.errors import ReaderProtocolError
from offterm.plugins.readers import card_encryption, test_cards
from offterm.plugins.readers.protocol import messages as m
from offterm.plugins.readers.protocol.framing import FrameDecoder

from .script import Presentation

EVENT_FOR_METHOD = {
    "contact_emv": m.CardEventKind.INSERTED,
    "contactless_emv": m.CardEventKind.TAPPED,
    "magnetic_stripe": m.CardEventKind.SWIPED,
}


class Handle(Protocol):
    def cancel(self) -> Any: ...


class Scheduler(Protocol):
    """What the core needs from an event loop (asyncio's loop fits as is)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle: ...


@dataclass(frozen=True)
class Identity:
    serial_number: str = "OFFTERM-EMU-0001"
    reader_type: str = "offterm_emulator"
    firmware_version: str = "offterm-emu-1.0"
    location_id: str | None = None


@dataclass
class _Collection:
    request: m.Collect
    presentation: Presentation | None = None
    timers: list[Handle] = field(default_factory=list)


class ReaderEmulator:
    """One emulated reader.

    :param send: writes bytes to the host (the runner's link).
    :param scheduler: gives ``call_later``.
    :param drop_link: the runner drops the link for the given seconds (scripted disconnects).
    :param on_event: receives ``(name, fields)`` for the control channel; never card data.
    :param default: presented when nothing is queued; None makes a collection wait for a script.
    """

    def __init__(
        self,
        send: Callable[[bytes], None],
        scheduler: Scheduler,
        *,
        identity: Identity | None = None,
        card_key: bytes = bytes.fromhex(card_encryption.TEST_BASE_KEY_HEX),
        default: Presentation | None = None,
        drop_link: Callable[[float], None] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        if len(card_key) != 32:
            raise ValueError("card key must be 32 bytes")
        self.identity = identity or Identity()
        self._send = send
        self._scheduler = scheduler
        self._card_key = card_key
        self.default = default
        self._drop_link = drop_link
        self._on_event = on_event
        self._decoder = FrameDecoder()
        self.queue: collections.deque[Presentation] = collections.deque()
        self._active: _Collection | None = None
        self.session = ""
        self.display: tuple[str, ...] = ()
        self.collections = 0
        self.results = 0
        #: The final frame of the last collection, repeated on Resend.
        self._last_txn = ""
        self._last_frame = b""
        #: The key the next card is sealed under (its KSN is fresh; used once, then replaced).
        self._next_key: card_encryption.TransactionKey | None = card_encryption.TransactionKey(card_key)

    # -- runner side --------------------------------------------------------------------------

    def present(self, presentation: Presentation) -> None:
        """Queue what the next customer does; starts at once if a collection is waiting for it."""
        active = self._active
        if active is not None and active.presentation is None:
            self._start(active, presentation)
        else:
            self.queue.append(presentation)

    def link_reset(self) -> None:
        """A new link (a reconnecting host): forget partial frames and any collection in progress."""
        self._decoder.reset()
        self._abort("link reset")

    def status(self) -> dict[str, Any]:
        active = self._active
        return {
            "serial_number": self.identity.serial_number,
            "queued": [p.describe() for p in self.queue],
            "collecting": active.request.txn if active else None,
            "display": list(self.display),
            "collections": self.collections,
            "results": self.results,
            "frame_errors": self._decoder.errors,
        }

    def receive(self, data: bytes) -> None:
        """Bytes from the host."""
        decoder = self._decoder
        decoder.feed(data)
        while True:
            try:
                raw = decoder.next_raw()
                if raw is None:
                    return
                message = m.decode_payload(*raw)
            except ReaderProtocolError as exc:
                self._event("frame_error", reason=exc.details.get("reason", ""))
                reason = exc.details.get("reason")
                if reason == "type":
                    self._reply(m.Error(None, m.ErrorCode.UNSUPPORTED, exc.message))
                elif reason == "payload":
                    self._reply(m.Error(None, m.ErrorCode.BAD_REQUEST, exc.message))
                continue
            self._handle(message)

    # -- protocol -----------------------------------------------------------------------------

    def _event(self, name: str, **fields: Any) -> None:
        if self._on_event is not None:
            self._on_event(name, fields)

    def _reply(self, *messages: m.Message) -> list[bytes]:
        """Send the messages in one write; returns their frames."""
        frames = [m.encode(msg) for msg in messages]
        self._send(b"".join(frames))
        return frames

    def _handle(self, message: m.Message) -> None:
        if isinstance(message, m.Collect):  # the common case first
            self._collect(message)
        elif isinstance(message, m.Hello):
            self._abort("new session")
            self.session = message.session
            if m.PROTOCOL_VERSION not in message.protocols:
                self._reply(m.Error(None, m.ErrorCode.UNSUPPORTED, "no common protocol version"))
                return
            ident = self.identity
            self._reply(
                m.Info(
                    session=message.session,
                    serial_number=ident.serial_number,
                    reader_type=ident.reader_type,
                    firmware_version=ident.firmware_version,
                    location_id=ident.location_id,
                    encryption_scheme=card_encryption.SCHEME,
                )
            )
            self._event("hello")
        elif isinstance(message, m.Ping):
            self._reply(m.Pong(message.nonce))
        elif isinstance(message, m.Display):
            self.display = message.lines
            self._reply(m.Ack(m.MessageType.DISPLAY))
            self._event("display", lines=list(message.lines))
        elif isinstance(message, m.Cancel):
            active = self._active
            if active is not None and active.request.txn == message.txn:
                self._finish(active, m.Error(message.txn, m.ErrorCode.CANCELED, "canceled by the host"))
                self._event("canceled")
        elif isinstance(message, m.Resend):
            if self._last_txn == message.txn and self._last_frame:
                self._send(self._last_frame)
        elif isinstance(message, m.Pong):
            pass
        else:
            self._reply(m.Error(None, m.ErrorCode.UNSUPPORTED, f"a reader does not accept {type(message).__name__}"))

    def _collect(self, request: m.Collect) -> None:
        if self._active is not None:
            self._reply(m.Error(request.txn, m.ErrorCode.BUSY, "a collection is already running"))
            return
        self.collections += 1
        active = _Collection(request)
        self._active = active
        if self._on_event is not None:
            self._event("collect", amount=request.amount, currency=request.currency, methods=list(request.read_methods))
        presentation = self.queue.popleft() if self.queue else self.default
        if presentation is None:
            # Wait for the control channel to present a card, up to the request's timeout.
            active.timers.append(self._scheduler.call_later(request.timeout_ms / 1000, lambda: self._timeout(active)))
            return
        self._start(active, presentation)

    def _start(self, active: _Collection, p: Presentation) -> None:
        for timer in active.timers:
            timer.cancel()
        active.timers.clear()
        active.presentation = p
        if p.never:
            active.timers.append(
                self._scheduler.call_later(active.request.timeout_ms / 1000, lambda: self._timeout(active))
            )
        elif p.delay > 0:
            active.timers.append(self._scheduler.call_later(p.delay, lambda: self._read(active)))
        else:
            self._read(active)

    def _timeout(self, active: _Collection) -> None:
        if self._active is active:
            self._finish(active, m.Error(active.request.txn, m.ErrorCode.TIMEOUT, "no card was presented"))
            self._event("timeout")

    def _read(self, active: _Collection) -> None:
        if self._active is not active:
            return
        p = active.presentation
        assert p is not None
        txn = active.request.txn
        event = m.CardEvent(txn, EVENT_FOR_METHOD[p.read_method])
        if p.disconnect is not None:
            self._reply(event)
            self._event("disconnect", seconds=p.disconnect, during="collect")
            self._abort("scripted disconnect")
            if self._drop_link is not None:
                self._drop_link(p.disconnect)
            return
        if p.remove_early:
            self._finish(
                active,
                event,
                m.CardEvent(txn, m.CardEventKind.REMOVED),
                m.Error(txn, m.ErrorCode.CARD_REMOVED, "card removed early"),
            )
            self._event("card_removed")
            return
        if p.read_method not in active.request.read_methods:
            self._finish(active, event, m.Error(txn, m.ErrorCode.READ_METHOD_NOT_ALLOWED, p.read_method))
            self._event("read_method_not_allowed", method=p.read_method)
            return
        pin: tuple[m.Message, ...] = () if p.pin is None else (m.PinResult(txn, p.pin),)
        if p.pin is False:
            self._finish(active, event, *pin, m.Error(txn, m.ErrorCode.PIN_FAILED, "wrong PIN"))
            self._event("pin_failed")
            return
        result = self._seal(txn, p)
        self.results += 1
        self._finish(active, event, *pin, result)
        if self._on_event is not None:
            self._event("result", card=p.card.name, brand=p.card.brand, last4=p.card.last4, method=p.read_method)

    def _seal(self, txn: str, p: Presentation) -> m.Result:
        month, year = test_cards.expiry(datetime.now(UTC).date(), expired=p.expired)
        swipe = p.read_method == "magnetic_stripe"
        sensitive = card_encryption.SensitiveCard(
            pan=p.card.pan,
            exp_month=month,
            exp_year=year,
            cardholder_name=p.cardholder_name,
            track2=test_cards.track2(p.card.pan, month, year) if swipe else None,
            read_method=p.read_method,
            pin_verified=bool(p.pin),
        )
        key, self._next_key = self._next_key, None
        if key is None:  # none made ahead: an earlier seal failed before its collection finished
            key = card_encryption.TransactionKey(self._card_key)
        blob, ksn = key.seal(sensitive)
        return m.Result(
            txn=txn,
            card=m.CardSummary(
                brand=p.card.brand,
                last4=p.card.last4,
                exp_month=month,
                exp_year=year,
                read_method=p.read_method,
                cardholder_name=p.cardholder_name,
                pin_verified=bool(p.pin),
                issuer_country=p.card.issuer_country,
                networks=p.card.networks,
            ),
            encrypted_card_data=blob,
            key_serial=ksn,
            encryption_scheme=card_encryption.SCHEME,
        )

    def _finish(self, active: _Collection, *messages: m.Message) -> None:
        """Send the last messages of a collection (one write) and become idle."""
        for timer in active.timers:
            timer.cancel()
        self._active = None
        frames = self._reply(*messages)
        self._last_txn = active.request.txn
        self._last_frame = frames[-1]
        if self._next_key is None:
            # The answer is on its way: make the next transaction's key while the host reads it.
            self._next_key = card_encryption.TransactionKey(self._card_key)

    def _abort(self, reason: str) -> None:
        active, self._active = self._active, None
        if active is not None:
            for timer in active.timers:
                timer.cancel()
            self._event("aborted", reason=reason)
