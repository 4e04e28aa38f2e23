"""Host side of the reader protocol over any byte link, with reconnection.

A link plugin (serial, BLE) supplies a :class:`ByteLink` factory; this module
does the rest: the Hello/Info handshake, collect and cancel, keepalive, and
reconnecting with exponential backoff when the link drops.  A drop during a
collection ends it at once with ``ReaderDisconnected`` (nothing was read, so
nothing can be stored); the next collection works after the reconnect.

A collect is one write and one wake-up per answer: the request frame goes out
in a single write, the link hands over whatever one read returned, and the
frames in it are decoded in place; the host's own deadline is a plain loop
timer on the collection's future.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from offterm.core.contracts import CardDetails, CardResult, CollectRequest, ReaderConnection, ReaderInfo
from offterm.core.errors import (
    CardReadError,
    CollectionCanceled,
    ConfigError,
    ReaderDisconnected,
    ReaderError,
    ReaderNotConnected,
    ReaderProtocolError,
    ReaderTimeout,
)
from offterm.core.models import ReadMethod
from offterm.core.registrations import OptionSpec

from . import messages as m
from .framing import FrameDecoder

log = structlog.get_logger("offterm.readers")

OnBytes = Callable[[bytes], None]
OnLost = Callable[[str], None]


class ByteLink(abc.ABC):
    """A raw duplex byte link to one reader.

    ``open`` starts delivering received bytes to ``on_bytes`` and reports a
    lost link once to ``on_lost``; both are called in the event loop's thread.
    ``write`` raises ReaderDisconnected when the link is gone.
    """

    #: Where the link goes (a port path, a URL, a Bluetooth address); never secret.
    address: str = ""

    @abc.abstractmethod
    async def open(self, on_bytes: OnBytes, on_lost: OnLost) -> None: ...

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Close; safe to call twice; never calls ``on_lost``."""


@dataclass(frozen=True)
class LinkSettings:
    """Timing of one reader session (validated by the plugin that builds it)."""

    response_timeout: float = 2.0
    reconnect: bool = True
    #: 0: keep trying for ever.
    reconnect_attempts: int = 10
    reconnect_initial_delay: float = 0.2
    reconnect_max_delay: float = 5.0
    #: Seconds between liveness pings; 0 turns them off.
    keepalive_interval: float = 0.0


#: Timing options every link plugin offers; ``link_settings`` builds them.
LINK_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "timeout",
        (int, float),
        2.0,
        "Seconds to wait for the reader to answer a request.",
        exclusive_minimum=True,
        maximum=60,
    ),
    OptionSpec("reconnect", bool, True, "Reopen a lost link automatically, with backoff."),
    OptionSpec(
        "reconnect_attempts", int, 10, "Reconnect attempts before giving up (0: never give up).", maximum=1_000_000
    ),
    OptionSpec(
        "reconnect_initial_delay",
        (int, float),
        0.2,
        "Seconds before the second attempt; doubles after each.",
        exclusive_minimum=True,
        maximum=60,
    ),
    OptionSpec(
        "reconnect_max_delay",
        (int, float),
        5.0,
        "Longest wait between reconnect attempts (at least reconnect_initial_delay).",
        maximum=3600,
    ),
    OptionSpec(
        "keepalive",
        (int, float),
        0.0,
        "Seconds between liveness pings (0: off, else longer than timeout; a read error still counts).",
        maximum=3600,
    ),
)


def link_settings(opts: Mapping[str, Any], prefix: str) -> LinkSettings:
    """Timing from options the core validated against ``LINK_OPTIONS`` (every key present).

    Only what one option cannot say is checked here, naming the key: the longest reconnect
    delay is not below the first, and a keepalive is longer than the timeout.
    """
    timeout = float(opts["timeout"])
    initial = float(opts["reconnect_initial_delay"])
    maximum = float(opts["reconnect_max_delay"])
    if maximum < initial:
        raise ConfigError(f"{prefix}.reconnect_max_delay", "must be at least the initial delay, at most 3600", maximum)
    keepalive = float(opts["keepalive"])
    if keepalive and keepalive <= timeout:
        raise ConfigError(f"{prefix}.keepalive", "must be 0 (off) or longer than the timeout", keepalive)
    return LinkSettings(
        response_timeout=timeout,
        reconnect=opts["reconnect"],
        reconnect_attempts=opts["reconnect_attempts"],
        reconnect_initial_delay=initial,
        reconnect_max_delay=maximum,
        keepalive_interval=keepalive,
    )


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Delay after failed attempt ``attempt`` (1-based): doubling from ``initial``, capped."""
    return float(min(maximum, initial * 2.0 ** min(attempt - 1, 30)))


_ERRORS: dict[str, tuple[type[ReaderError], str]] = {
    m.ErrorCode.TIMEOUT: (ReaderTimeout, "no card was presented before the reader timed out"),
    m.ErrorCode.CANCELED: (CollectionCanceled, "the collection was canceled"),
    m.ErrorCode.CARD_REMOVED: (CardReadError, "the card was removed before the read completed; present it again"),
    m.ErrorCode.READ_METHOD_NOT_ALLOWED: (CardReadError, "the card was presented in a way this payment does not allow"),
    m.ErrorCode.CARD_READ_FAILED: (CardReadError, "the reader could not read the card; present it again"),
    m.ErrorCode.PIN_FAILED: (CardReadError, "PIN entry failed on the reader"),
    m.ErrorCode.BUSY: (ReaderError, "the reader is busy with another collection"),
    m.ErrorCode.BAD_REQUEST: (ReaderProtocolError, "the reader rejected the request as malformed"),
    m.ErrorCode.UNSUPPORTED: (ReaderProtocolError, "the reader does not support this request"),
}


def error_for(message: m.Error) -> ReaderError:
    """The typed error for a reader's Error message (built from the code, not the reader's text)."""
    cls, text = _ERRORS.get(message.code, (ReaderError, "the reader reported an error"))
    return cls(f"{text} (reader code {message.code[:64]!r})", reader_code=message.code[:64])


def card_result(result: m.Result) -> CardResult:
    card = result.card
    return CardResult(
        details=CardDetails(
            brand=card.brand,
            last4=card.last4,
            exp_month=card.exp_month,
            exp_year=card.exp_year,
            read_method=ReadMethod(card.read_method),
            cardholder_name=card.cardholder_name,
            pin_verified=card.pin_verified,
            issuer_country=card.issuer_country,
            networks=card.networks,
        ),
        encrypted_card_data=result.encrypted_card_data,
        key_serial=result.key_serial,
        encryption_scheme=result.encryption_scheme,
    )


@dataclass
class _Collection:
    txn: str
    future: asyncio.Future[CardResult]
    allowed: frozenset[str]
    events: list[str]


_COLLECTION_MESSAGES = (m.CardEvent, m.Result, m.PinResult, m.Error)


def _read_methods(methods: Iterable[ReadMethod]) -> tuple[frozenset[str], tuple[str, ...]]:
    """What a request allows, as the reader protocol names it: the set, and the Collect's list in protocol order."""
    allowed = frozenset(rm.value for rm in methods)
    return allowed, tuple(rm for rm in m.READ_METHODS if rm in allowed)


class ProtocolReaderConnection(ReaderConnection):
    """A ReaderConnection speaking the offterm reader protocol over a ByteLink.

    ``info.serial_number`` empty means "whichever reader answers" (discovery);
    otherwise the handshake must report that serial number.
    """

    def __init__(
        self,
        info: ReaderInfo,
        make_link: Callable[[], ByteLink],
        settings: LinkSettings | None = None,
    ) -> None:
        self.info = info
        self.settings = settings or LinkSettings()
        self._make_link = make_link
        self._link: ByteLink | None = None
        self._decoder = FrameDecoder()
        self._generation = 0
        self._connected = False
        self._closing = False
        self._gave_up = False
        self._session = ""
        self._collection: _Collection | None = None
        self._waiters: dict[tuple[str, Any], asyncio.Future[m.Message]] = {}
        self._reconnect_task: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._nonces = itertools.count(1)
        self.reconnect_attempt = 0
        #: Malformed frames seen on this connection (all links), for diagnostics.
        self.protocol_errors = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> ReaderInfo:
        """Open the link and shake hands; raises ReaderError (the link is closed again) on failure."""
        await self._establish()
        if self.settings.keepalive_interval > 0:
            self._keepalive_task = asyncio.get_running_loop().create_task(self._keepalive())
        return self.info

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def is_reconnecting(self) -> bool:
        return self._reconnect_task is not None and not self._reconnect_task.done()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._connected = False
        for task in (self._reconnect_task, self._keepalive_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: S110 - shutting down anyway
                    pass
        self._fail_all(ReaderDisconnected("the reader connection was closed during collection; nothing was stored"))
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    async def _establish(self) -> None:
        link = self._make_link()
        self._generation += 1
        generation = self._generation
        self._decoder = FrameDecoder()
        try:
            await link.open(
                lambda data: self._on_bytes(generation, data),
                lambda reason: self._on_lost(generation, reason),
            )
        except ReaderError:
            raise
        except Exception as exc:  # a link library's own error types
            raise ReaderError(f"cannot open the link to {link.address or 'the reader'}: {exc}") from exc
        self._link = link
        try:
            info = await self._handshake()
        except BaseException:
            self._link = None
            await link.close()
            raise
        expected = self.info.serial_number
        if expected and info.serial_number != expected:
            self._link = None
            await link.close()
            raise ReaderError(f"expected reader {expected} at {link.address} but reader {info.serial_number} answered")
        self.info = replace(
            self.info,
            serial_number=info.serial_number,
            reader_type=info.reader_type,
            firmware_version=info.firmware_version,
            location_id=info.location_id,
            address=link.address or self.info.address,
        )
        self._connected = True
        log.info("reader_link_up", reader=info.serial_number, address=link.address)

    async def _handshake(self) -> m.Info:
        """Hello until an Info for this session comes back (twice: the first may meet stale bytes)."""
        self._session = uuid.uuid4().hex[:16]
        last: ReaderError | None = None
        for _ in range(2):
            try:
                reply = await self._request(m.Hello(self._session), ("info", self._session))
            except ReaderTimeout as exc:
                last = exc
                continue
            assert isinstance(reply, m.Info)
            if reply.protocol != m.PROTOCOL_VERSION:
                raise ReaderProtocolError(f"reader speaks protocol {reply.protocol}, expected {m.PROTOCOL_VERSION}")
            return reply
        assert last is not None
        raise ReaderTimeout(f"no reader answered at {self._link.address if self._link else 'the link'}: {last.message}")

    # -- incoming ---------------------------------------------------------------------------------

    def _on_bytes(self, generation: int, data: bytes) -> None:
        if generation != self._generation:
            return
        decoder = self._decoder
        decoder.feed(data)
        while True:
            try:
                raw = decoder.next_raw()
                if raw is None:
                    return
                message = m.decode_payload(*raw)
            except ReaderProtocolError as exc:
                self._on_corrupt(exc)
                continue
            self._dispatch(message)

    def _on_corrupt(self, exc: ReaderProtocolError) -> None:
        self.protocol_errors += 1
        log.warning("reader_frame_dropped", reader=self.info.serial_number, reason=exc.details.get("reason"))
        if self._collection is not None:
            # The lost frame may have been the result: ask for it again (duplicates are ignored).
            self._send_soon(m.Resend(self._collection.txn))

    def _dispatch(self, message: m.Message) -> None:
        if isinstance(message, _COLLECTION_MESSAGES):
            self._on_collection_message(message)
        elif isinstance(message, m.Info):
            self._resolve(("info", message.session), message)
        elif isinstance(message, m.Pong):
            self._resolve(("pong", message.nonce), message)
        elif isinstance(message, m.Ack):
            self._resolve(("ack", message.of), message)
        elif isinstance(message, m.Ping):
            self._send_soon(m.Pong(message.nonce))

    def _on_collection_message(self, message: m.CardEvent | m.PinResult | m.Result | m.Error) -> None:
        active = self._collection
        if message.txn is None and isinstance(message, m.Error):
            # An error not tied to a collection answers the oldest request waiting.
            for key, waiter in self._waiters.items():
                if not waiter.done():
                    waiter.set_exception(error_for(message))
                    del self._waiters[key]
                    return
            return
        if active is None or message.txn != active.txn or active.future.done():
            log.debug("reader_stale_message", type=type(message).__name__)
            return
        if isinstance(message, m.CardEvent):
            active.events.append(message.event.value)
        elif isinstance(message, m.PinResult):
            active.events.append("pin_verified" if message.verified else "pin_failed")
        elif isinstance(message, m.Error):
            active.future.set_exception(error_for(message))
        elif message.card.read_method not in active.allowed:
            active.future.set_exception(
                CardReadError(f"the reader read the card by {message.card.read_method}, which this payment forbids")
            )
        else:
            active.future.set_result(card_result(message))

    def _resolve(self, key: tuple[str, Any], message: m.Message) -> None:
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    def _on_lost(self, generation: int, reason: str) -> None:
        if generation != self._generation or self._closing:
            return
        self._generation += 1  # ignore anything the dead link still delivers
        was_connected, self._connected = self._connected, False
        link, self._link = self._link, None
        if link is not None:
            asyncio.get_running_loop().create_task(link.close())
        serial = self.info.serial_number or "reader"
        log.warning("reader_link_lost", reader=serial, reason=reason)
        self._fail_all(
            ReaderDisconnected(
                f"the link to reader {serial} was lost during collection ({reason}); nothing was stored, collect again"
            )
        )
        if not was_connected:
            return  # lost during a handshake: the opener reports it
        if self.settings.reconnect:
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect(reason))
        else:
            self.notify("disconnected", reason=reason)

    def _fail_all(self, error: ReaderError) -> None:
        if self._collection is not None and not self._collection.future.done():
            self._collection.future.set_exception(error)
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            if not waiter.done():
                waiter.set_exception(error)

    # -- outgoing ---------------------------------------------------------------------------------

    async def _send(self, message: m.Message) -> None:
        link = self._link
        if link is None:
            raise ReaderDisconnected(f"reader {self.info.serial_number or ''} is not connected".replace("  ", " "))
        await link.write(m.encode(message))

    def _send_soon(self, message: m.Message) -> None:
        """Fire-and-forget send (answers, resend requests, cancels while unwinding)."""

        async def send() -> None:
            try:
                await self._send(message)
            except ReaderError as exc:
                log.debug("reader_send_dropped", type=type(message).__name__, error=exc.code)

        asyncio.get_running_loop().create_task(send())

    async def _request(self, message: m.Message, key: tuple[str, Any]) -> m.Message:
        waiter: asyncio.Future[m.Message] = asyncio.get_running_loop().create_future()
        self._waiters[key] = waiter
        try:
            await self._send(message)
            async with asyncio.timeout(self.settings.response_timeout):  # not wait_for: it can swallow a cancel
                return await waiter
        except TimeoutError:
            raise ReaderTimeout(
                f"the reader did not answer {type(message).__name__} within {self.settings.response_timeout:g} s"
            ) from None
        finally:
            if self._waiters.get(key) is waiter:
                del self._waiters[key]

    # -- ReaderConnection -------------------------------------------------------------------------

    def _require_connected(self) -> None:
        if self._connected:
            return
        serial = self.info.serial_number
        if self.is_reconnecting:
            raise ReaderNotConnected(f"reader {serial} is reconnecting (attempt {self.reconnect_attempt})")
        raise ReaderNotConnected(f"reader {serial} is not connected")

    async def collect(self, request: CollectRequest) -> CardResult:
        self._require_connected()
        if self._collection is not None:
            raise ReaderError("a collection is already in progress on this reader")
        allowed, read_methods = _read_methods(request.allowed_read_methods)
        if not allowed:
            raise CardReadError("no read method is allowed for this payment")
        txn = os.urandom(8).hex()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CardResult] = loop.create_future()
        active = self._collection = _Collection(txn, future, allowed, [])
        timeout = max(0.0, float(request.timeout))
        timer: asyncio.TimerHandle | None = None
        try:
            try:
                await self._send(
                    m.Collect(
                        txn=txn,
                        amount=request.amount,
                        currency=request.currency.lower(),
                        read_methods=read_methods,
                        timeout_ms=int(timeout * 1000),
                    )
                )
            except ReaderDisconnected:
                lost = future.exception() if future.done() and not future.cancelled() else None
                if lost is not None:
                    raise lost from None  # the link-loss error says it all
                raise ReaderDisconnected(
                    f"the link to reader {self.info.serial_number} failed while starting the collection; "
                    "nothing was stored, collect again"
                ) from None
            # The reader enforces the timeout; the margin covers a reader that went silent.
            timer = loop.call_later(timeout + self.settings.response_timeout, self._collect_expired, active, timeout)
            try:
                return await future
            except asyncio.CancelledError:
                # Cancelling this task cancels the future too; unless the reader already
                # ended the collection, tell it to stop.
                if not future.done() or future.cancelled():
                    self._send_soon(m.Cancel(txn))
                raise
        finally:
            if timer is not None:
                timer.cancel()
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # retrieved: the error (if any) was raised above
            self._collection = None

    def _collect_expired(self, active: _Collection, timeout: float) -> None:
        """The host's deadline for a collection passed without an answer: stop the reader, fail it."""
        if active.future.done():
            return
        self._send_soon(m.Cancel(active.txn))
        active.future.set_exception(ReaderTimeout(f"no card was presented within {timeout:g} s"))

    async def cancel_collect(self) -> None:
        active = self._collection
        if active is None or active.future.done():
            return
        if self._link is not None:
            self._send_soon(m.Cancel(active.txn))
        active.future.set_exception(CollectionCanceled("the collection was canceled"))

    async def display(self, *lines: str) -> None:
        """Show up to four short lines on the reader's screen."""
        self._require_connected()
        if len(lines) > m.MAX_DISPLAY_LINES or any(len(line) > m.MAX_DISPLAY_CHARS for line in lines):
            raise ReaderError(f"a reader shows at most {m.MAX_DISPLAY_LINES} lines of {m.MAX_DISPLAY_CHARS} characters")
        await self._request(m.Display(tuple(lines)), ("ack", m.MessageType.DISPLAY))

    async def ping(self) -> None:
        """Round trip a Ping; raises ReaderTimeout or ReaderDisconnected."""
        self._require_connected()
        nonce = next(self._nonces) & 0xFFFFFFFF
        await self._request(m.Ping(nonce), ("pong", nonce))

    # -- reconnection and liveness ---------------------------------------------------------------

    async def _reconnect(self, reason: str) -> None:
        s = self.settings
        last = reason
        attempt = 0
        while not self._closing:
            attempt += 1
            if s.reconnect_attempts and attempt > s.reconnect_attempts:
                break
            self.reconnect_attempt = attempt
            self.notify("reconnecting", attempt=attempt)
            try:
                await self._establish()
            except ReaderError as exc:
                last = exc.message
                log.info("reader_reconnect_failed", reader=self.info.serial_number, attempt=attempt, error=exc.code)
            else:
                self.notify("reconnected", attempt=attempt)
                return
            await asyncio.sleep(backoff_delay(attempt, s.reconnect_initial_delay, s.reconnect_max_delay))
        if not self._closing:
            self._gave_up = True
            self.notify("disconnected", attempt=attempt - 1, reason=f"gave up after {attempt - 1} attempts: {last}")

    async def _keepalive(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.settings.keepalive_interval)
            if not self._connected:
                continue
            generation = self._generation
            try:
                await self.ping()
            except ReaderTimeout:
                self._on_lost(generation, "the reader stopped answering")
            except ReaderError:
                continue


async def probe(info: ReaderInfo, make_link: Callable[[], ByteLink], settings: LinkSettings) -> ReaderInfo:
    """Open a link, learn who answers, close it again (discovery)."""
    connection = ProtocolReaderConnection(info, make_link, replace(settings, reconnect=False, keepalive_interval=0))
    try:
        return await connection.start()
    finally:
        await connection.close()
