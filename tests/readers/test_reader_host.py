"""The host side of the protocol against the emulator core, over an in-memory byte link.

Fast and deterministic: covers every collection outcome, cancel, timeouts,
corrupt frames, keepalive, and reconnecting with its events.  The same code
runs over real ptys, sockets and BlueZ in the other test modules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from offterm.core.config import validate_options
from offterm.core.contracts import CollectRequest, ReaderInfo
from offterm.core.errors import (
    CardReadError,
    CollectionCanceled,
    ConfigError,
    ReaderDisconnected,
    ReaderError,
    ReaderNotConnected,
    ReaderTimeout,
)
from offterm.core.models import ReadMethod
from offterm.plugins.readers import card_encryption
from offterm.plugins.readers.protocol import messages as m
from offterm.plugins.readers.protocol.framing import FrameDecoder
from offterm.plugins.readers.protocol.host import (
    LINK_OPTIONS,
    ByteLink,
    LinkSettings,
    OnBytes,
    OnLost,
    ProtocolReaderConnection,
    backoff_delay,
    link_settings,
    probe,
)
from offterm.sim.reader_emulator import Identity, ReaderEmulator, parse_presentation
from offterm.sim.reader_emulator.script import NEVER

KEY = bytes.fromhex(card_encryption.TEST_BASE_KEY_HEX)
FAST = LinkSettings(response_timeout=0.5, reconnect_attempts=5, reconnect_initial_delay=0.01, reconnect_max_delay=0.05)


class Reader:
    """One emulated reader reachable over MemoryLinks; ``up`` False refuses new links."""

    def __init__(self, serial: str = "EMU-1", default: str | None = None) -> None:
        self.links: list[MemoryLink] = []
        self.up = True
        self.mute = False
        self.tamper: Callable[[bytes], bytes] | None = None
        self.sent_types: list[int] = []
        self.emulator = ReaderEmulator(
            self._send,
            asyncio.get_running_loop(),
            identity=Identity(serial_number=serial),
            default=parse_presentation(default.split()) if default else None,
            drop_link=self._drop,
        )

    def present(self, script: str) -> None:
        self.emulator.present(parse_presentation(script.split()))

    @property
    def current(self) -> MemoryLink | None:
        return self.links[-1] if self.links and self.links[-1].open_ else None

    def _send(self, data: bytes) -> None:
        link = self.current
        if link is None or self.mute:
            return
        if self.tamper is not None:
            data = self.tamper(data)
        link.deliver(data)

    def _drop(self, seconds: float) -> None:
        if self.current is not None:
            self.current.lose("reader hung up")
        self.up = False
        asyncio.get_running_loop().call_later(seconds, self._back)

    def _back(self) -> None:
        self.up = True

    def make_link(self) -> MemoryLink:
        return MemoryLink(self)


class MemoryLink(ByteLink):
    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.address = f"mem://{reader.emulator.identity.serial_number}"
        self.open_ = False
        self._on_bytes: OnBytes | None = None
        self._on_lost: OnLost | None = None
        self.decoder = FrameDecoder()

    async def open(self, on_bytes: OnBytes, on_lost: OnLost) -> None:
        if not self.reader.up:
            raise ReaderError("connection refused")
        self._on_bytes, self._on_lost = on_bytes, on_lost
        self.open_ = True
        self.reader.links.append(self)
        self.reader.emulator.link_reset()

    def deliver(self, data: bytes) -> None:
        assert self._on_bytes is not None
        asyncio.get_running_loop().call_soon(self._on_bytes, data)

    async def write(self, data: bytes) -> None:
        if not self.open_:
            raise ReaderDisconnected("link closed")
        self.decoder.feed(data)
        self.reader.sent_types += [f.type for f in self.decoder.frames()[0]]
        asyncio.get_running_loop().call_soon(self.reader.emulator.receive, data)

    def lose(self, reason: str) -> None:
        if self.open_:
            self.open_ = False
            assert self._on_lost is not None
            self._on_lost(reason)

    async def close(self) -> None:
        self.open_ = False


async def connect(reader: Reader, settings: LinkSettings = FAST, serial: str = "EMU-1") -> ProtocolReaderConnection:
    info = ReaderInfo(serial_number=serial, reader_type="", transport="memory", address="mem://")
    conn = ProtocolReaderConnection(info, reader.make_link, settings)
    await conn.start()
    return conn


def request(timeout: float = 5.0, methods: tuple[ReadMethod, ...] = tuple(ReadMethod)) -> CollectRequest:
    return CollectRequest(amount=1234, currency="EUR", allowed_read_methods=methods, timeout=timeout)


def record(conn: ProtocolReaderConnection) -> list[tuple[str, int, str]]:
    events: list[tuple[str, int, str]] = []
    conn.set_listener(lambda event, info, attempt, reason: events.append((event, attempt, reason)))
    return events


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls another process's effects
            await asyncio.sleep(0.005)


# -- handshake ---------------------------------------------------------------------------------------


async def test_handshake_reports_the_readers_identity() -> None:
    reader = Reader("EMU-7")
    info = ReaderInfo(serial_number="", reader_type="", transport="memory", address="mem://")
    found = await probe(info, reader.make_link, FAST)
    assert (found.serial_number, found.reader_type, found.firmware_version) == (
        "EMU-7",
        "offterm_emulator",
        "offterm-emu-1.0",
    )
    assert reader.current is None  # probing closed its link


async def test_a_different_reader_on_the_link_is_refused() -> None:
    with pytest.raises(ReaderError, match="expected reader EMU-2"):
        await connect(Reader("EMU-1"), serial="EMU-2")


async def test_a_silent_link_times_out_with_a_typed_error() -> None:
    reader = Reader()
    reader.mute = True
    with pytest.raises(ReaderTimeout, match="no reader answered"):
        await connect(reader)


# -- collection outcomes -------------------------------------------------------------------------------


async def test_inserted_card_with_pin_returns_only_sealed_card_data() -> None:
    reader = Reader()
    conn = await connect(reader)
    reader.present("visa_de insert pin name=JANE")
    result = await conn.collect(request())
    d = result.details
    assert (d.brand, d.last4, d.read_method, d.pin_verified, d.issuer_country) == (
        "visa",
        "0016",
        ReadMethod.CONTACT_EMV,
        True,
        "DE",
    )
    assert d.cardholder_name == "JANE" and not d.is_expired(datetime.now(UTC))
    assert b"4000002760000016" not in result.encrypted_card_data
    assert "4000002760000016" not in repr(result)
    # Only the processor's key opens it, and only under this transaction's key serial number.
    card = card_encryption.decrypt(result.encrypted_card_data, result.key_serial, KEY)
    assert card.pan == "4000002760000016" and card.pin_verified and card.track2 is None
    with pytest.raises(card_encryption.CardDecryptionError):
        card_encryption.decrypt(result.encrypted_card_data, "00" * 12, KEY)
    await conn.close()


async def test_every_transaction_gets_its_own_key_serial_number() -> None:
    reader = Reader(default="visa tap")
    conn = await connect(reader)
    serials = {(await conn.collect(request())).key_serial for _ in range(5)}
    assert len(serials) == 5
    await conn.close()


@pytest.mark.parametrize(
    ("script", "method", "pin"),
    [
        ("mastercard tap", ReadMethod.CONTACTLESS_EMV, False),
        ("amex swipe", ReadMethod.MAGNETIC_STRIPE, False),
        ("discover insert nopin", ReadMethod.CONTACT_EMV, False),
    ],
)
async def test_read_methods(script: str, method: ReadMethod, pin: bool) -> None:
    reader = Reader()
    conn = await connect(reader)
    reader.present(script)
    result = await conn.collect(request())
    assert result.details.read_method is method and result.details.pin_verified is pin
    card = card_encryption.decrypt(result.encrypted_card_data, result.key_serial, KEY)
    assert (card.track2 is not None) is (method is ReadMethod.MAGNETIC_STRIPE)
    await conn.close()


async def test_expired_and_cobadged_cards_report_their_facts() -> None:
    reader = Reader()
    conn = await connect(reader)
    reader.present("visa_expired insert")
    reader.present("eftpos_visa insert")
    expired = await conn.collect(request())
    assert expired.details.is_expired(datetime.now(UTC))
    cobadged = await conn.collect(request())
    assert cobadged.details.brand == "visa" and cobadged.details.networks == ("eftpos_au", "visa")
    await conn.close()


@pytest.mark.parametrize(
    ("script", "error", "text"),
    [
        ("visa insert remove-early", CardReadError, "removed"),
        ("visa insert pin-fail", CardReadError, "PIN"),
        ("visa swipe", CardReadError, "does not allow"),
    ],
)
async def test_failed_reads_are_typed_and_the_next_collection_works(script: str, error: type, text: str) -> None:
    reader = Reader()
    conn = await connect(reader)
    reader.present(script)
    with pytest.raises(error, match=text):
        await conn.collect(request(methods=(ReadMethod.CONTACT_EMV, ReadMethod.CONTACTLESS_EMV)))
    reader.present("visa tap")
    assert (await conn.collect(request())).details.last4 == "4242"
    await conn.close()


async def test_a_customer_who_never_presents_times_out() -> None:
    reader = Reader()
    conn = await connect(reader)
    reader.emulator.present(NEVER)
    with pytest.raises(ReaderTimeout):
        await conn.collect(request(timeout=0.05))
    await conn.close()


async def test_a_silent_reader_during_collection_times_out_on_the_host() -> None:
    reader = Reader()
    conn = await connect(reader)
    reader.mute = True
    with pytest.raises(ReaderTimeout, match="within 0.05 s"):
        await conn.collect(request(timeout=0.05))
    await until(lambda: m.MessageType.CANCEL in reader.sent_types)  # the reader is told to stop
    await conn.close()


async def test_cancel_stops_the_reader_and_raises_canceled() -> None:
    reader = Reader()  # no default card: the reader waits for a customer
    conn = await connect(reader)
    task = asyncio.create_task(conn.collect(request()))
    await until(lambda: reader.emulator.status()["collecting"] is not None)
    await conn.cancel_collect()
    with pytest.raises(CollectionCanceled):
        await task
    await until(lambda: reader.emulator.status()["collecting"] is None)
    await conn.cancel_collect()  # nothing in progress: a no-op
    await conn.close()


async def test_cancelling_the_collecting_task_stops_the_reader() -> None:
    reader = Reader()  # no default card: the reader waits for a customer
    conn = await connect(reader)
    task = asyncio.create_task(conn.collect(request()))
    await until(lambda: reader.emulator.status()["collecting"] is not None)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The reader is told to stop, so the next collection is not refused as busy.
    await until(lambda: reader.emulator.status()["collecting"] is None)
    assert m.MessageType.CANCEL in reader.sent_types
    reader.present("visa tap")
    assert (await conn.collect(request())).details.last4 == "4242"
    await conn.close()


async def test_every_collection_is_sealed_under_its_own_key() -> None:
    """The emulator derives the next key ahead of time; each KSN still seals exactly one card."""
    reader = Reader(default="visa tap")
    conn = await connect(reader)
    serials = []
    for _ in range(5):
        ahead = reader.emulator._next_key
        assert ahead is not None and not ahead.used
        result = await conn.collect(request())
        assert result.key_serial == ahead.ksn and ahead.used  # the key made ahead, now spent
        assert card_encryption.decrypt(result.encrypted_card_data, result.key_serial, KEY).pan == "4242424242424242"
        serials.append(result.key_serial)
    reader.present("visa insert pin-fail")  # ends without sealing anything: the key waits, unused
    ahead = reader.emulator._next_key
    with pytest.raises(CardReadError):
        await conn.collect(request())
    assert reader.emulator._next_key is ahead and ahead is not None and not ahead.used
    serials.append((await conn.collect(request())).key_serial)
    assert len(set(serials)) == len(serials)
    await conn.close()


async def test_a_card_presented_while_waiting_completes_the_collection() -> None:
    reader = Reader()
    conn = await connect(reader)
    task = asyncio.create_task(conn.collect(request()))
    await until(lambda: reader.emulator.status()["collecting"] is not None)
    reader.present("jcb tap")
    assert (await task).details.brand == "jcb"
    await conn.close()


async def test_only_one_collection_at_a_time() -> None:
    reader = Reader()
    conn = await connect(reader)
    task = asyncio.create_task(conn.collect(request()))
    await until(lambda: reader.emulator.status()["collecting"] is not None)
    with pytest.raises(ReaderError, match="already in progress"):
        await conn.collect(request())
    reader.present("visa tap")
    await task
    await conn.close()


async def test_display_is_acknowledged() -> None:
    reader = Reader()
    conn = await connect(reader)
    await conn.display("Total", "EUR 12.34")
    assert reader.emulator.display == ("Total", "EUR 12.34")
    with pytest.raises(ReaderError, match="at most"):
        await conn.display("x" * 41)
    await conn.close()


async def test_a_corrupt_result_frame_is_requested_again() -> None:
    reader = Reader(default="visa tap")
    conn = await connect(reader)
    corrupted: list[bool] = []

    def tamper(data: bytes) -> bytes:
        if not corrupted and b'"encrypted_card_data"' in data:
            corrupted.append(True)
            i = data.index(b'"encrypted_card_data"') + 30
            return data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1 :]
        return data

    reader.tamper = tamper
    result = await conn.collect(request())
    assert corrupted and result.details.last4 == "4242"
    assert m.MessageType.RESEND in reader.sent_types and conn.protocol_errors == 1
    card_encryption.decrypt(result.encrypted_card_data, result.key_serial, KEY)
    await conn.close()


# -- link loss and reconnection -------------------------------------------------------------------------


async def test_disconnect_during_collection_raises_then_reconnects() -> None:
    reader = Reader()
    conn = await connect(reader)
    events = record(conn)
    reader.present("visa insert disconnect=0.05")
    with pytest.raises(ReaderDisconnected, match="nothing was stored"):
        await conn.collect(request())
    assert not conn.is_connected
    with pytest.raises(ReaderNotConnected):
        await conn.collect(request())
    await until(lambda: conn.is_connected)
    assert events[0] == ("reconnecting", 1, "") and events[-1][0] == "reconnected"
    assert [e for e, _, _ in events[:-1]] == ["reconnecting"] * (len(events) - 1)
    reader.present("visa tap")
    assert (await conn.collect(request())).details.last4 == "4242"  # collectable again
    await conn.close()


async def test_giving_up_reports_disconnected() -> None:
    reader = Reader()
    conn = await connect(reader, LinkSettings(0.5, True, 3, 0.01, 0.01))
    events = record(conn)
    reader.up = False
    assert reader.current is not None
    reader.current.lose("cable pulled")
    await until(lambda: any(e == "disconnected" for e, _, _ in events))
    assert [(e, a) for e, a, _ in events] == [("reconnecting", 1), ("reconnecting", 2), ("reconnecting", 3)] + [
        ("disconnected", 3)
    ]
    assert "gave up after 3 attempts" in events[-1][2]
    assert not conn.is_connected and not conn.is_reconnecting
    await conn.close()


async def test_without_reconnect_a_lost_link_is_reported_at_once() -> None:
    reader = Reader()
    conn = await connect(reader, LinkSettings(reconnect=False))
    events = record(conn)
    assert reader.current is not None
    reader.current.lose("cable pulled")
    assert events == [("disconnected", 0, "cable pulled")]
    await conn.close()


async def test_keepalive_notices_a_reader_that_stopped_answering() -> None:
    reader = Reader()
    conn = await connect(reader, LinkSettings(0.05, True, 0, 0.01, 0.02, keepalive_interval=0.06))
    events = record(conn)
    reader.mute = True
    await until(lambda: any(e == "reconnecting" for e, _, _ in events))
    reader.mute = False
    await until(lambda: conn.is_connected and events[-1][0] == "reconnected")
    await conn.close()


async def test_close_during_collection_and_twice() -> None:
    reader = Reader()
    conn = await connect(reader)
    events = record(conn)
    task = asyncio.create_task(conn.collect(request()))
    await until(lambda: reader.emulator.status()["collecting"] is not None)
    await conn.close()
    with pytest.raises(ReaderDisconnected):
        await task
    await conn.close()
    assert events == []  # a requested close is not a link event


async def test_a_new_session_ends_a_stale_collection_on_the_reader() -> None:
    reader = Reader()
    first = await connect(reader)
    task = asyncio.create_task(first.collect(request()))
    await until(lambda: reader.emulator.status()["collecting"] is not None)
    # The host crashes (its link stays half-open); a new host says Hello on a new link.
    second = await connect(reader)
    assert reader.emulator.status()["collecting"] is None
    reader.present("visa tap")
    assert (await second.collect(request())).details.last4 == "4242"
    task.cancel()
    await first.close()
    await second.close()


# -- settings -------------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_delay(n, 0.2, 1.0) for n in range(1, 6)] == [0.2, 0.4, 0.8, 1.0, 1.0]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"timeout": 0}, "reader.x.timeout"),
        ({"reconnect_attempts": -1}, "reader.x.reconnect_attempts"),
        ({"reconnect_initial_delay": 2, "reconnect_max_delay": 1}, "reader.x.reconnect_max_delay"),
        ({"keepalive": 1, "timeout": 2}, "reader.x.keepalive"),
    ],
)
def test_link_settings_name_the_bad_key(options: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as err:
        link_settings(validate_options("reader.x", LINK_OPTIONS, options, env={}), "reader.x")
    assert err.value.key == key
