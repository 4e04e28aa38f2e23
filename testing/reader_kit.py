"""Conformance kit for reader transports: subclass it to prove a reader plugin meets the contract.

:class:`ReaderTransportConformance` is a pytest test class.  A reader
plugin's test suite subclasses it (the subclass's name must start with
``Test``) and provides fixtures; every check in the kit then runs against
the plugin's own transport::

    import pytest
    from offterm.testing import ReaderTransportConformance


    class TestAcmeReader(ReaderTransportConformance):
        transport_name = "acme"          # ReaderInfo.transport must say so
        supports_link_loss = True        # opt in to the link-loss checks

        @pytest.fixture
        def reader_transport(self, acme_bench):
            return AcmeReaderTransport(port=acme_bench.port)

        @pytest.fixture
        def present_card(self, acme_bench):
            def present(connection, card):   # card: a test card name, e.g. "visa"
                acme_bench.queue_card(card)  # the next collection reads it
            return present

        @pytest.fixture
        def drop_link(self, acme_bench):
            return lambda connection: acme_bench.unplug(seconds=0.5)

Fixtures the subclass provides (each may return plain or ``async`` callables):

* ``reader_transport`` (required) - the :class:`ReaderTransport` under test,
  or a zero-argument callable making it (called inside the test's event loop,
  for a transport that needs one when it is built).  The kit closes it.
* ``present_card`` (required) - ``present(connection, card)``: the customer
  presents the test card ``card`` (a name from
  ``offterm.plugins.readers.test_cards``) at the next collection.
* ``withhold_card`` - ``withhold(connection)``: nobody presents a card at the
  next collection.  The default does nothing, which suits a reader that waits
  for a card until the request's timeout.
* ``drop_link`` - ``drop(connection)``: the link to the reader is lost (and,
  for a reader that reconnects, comes back).  Only used with
  ``supports_link_loss = True``.

What the kit checks: ``discover`` returns :class:`ReaderInfo` objects with
the documented fields; ``connect`` / ``close`` (twice); ``collect`` returns a
:class:`CardResult` whose encrypted data the processor side decrypts to the
presented card, while the details and the result's ``repr`` carry no card
number; a collection cancelled with ``cancel_collect`` or by cancelling its
task ends typed and leaves the connection usable; a collection nobody
answers ends with ``ReaderTimeout``; with ``supports_link_loss``, a lost link
ends a collection with ``ReaderDisconnected`` and the listener hears about
it; and in every test, no card number appears in a log record (stdlib
logging through ``caplog``, and structlog) or in an error the kit sees.

The kit's tests are synchronous and run their coroutines with
``asyncio.run``, so they need no asyncio pytest plugin (and work alongside
one).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import pytest
import structlog.testing

from offterm.core.contracts import (
    CardDetails,
    CardResult,
    CollectRequest,
    ReaderConnection,
    ReaderInfo,
    ReaderTransport,
)
from offterm.core.contracts.readers import READER_EVENTS
from offterm.core.errors import CollectionCanceled, OfftermError, ReaderDisconnected, ReaderTimeout
from offterm.core.models import ReadMethod

if TYPE_CHECKING:
    from offterm.plugins.readers.card_encryption import SensitiveCard
    from offterm.plugins.readers.test_cards import CardProfile

__all__ = [
    "CardPresenter",
    "LinkAction",
    "ReaderTransportConformance",
    "TransportSource",
]

#: ``present(connection, card)``: the next collection on ``connection`` reads the test card named ``card``.
CardPresenter: TypeAlias = Callable[[ReaderConnection, str], Awaitable[None] | None]
#: ``action(connection)``: withhold the next card, or drop the link.
LinkAction: TypeAlias = Callable[[ReaderConnection], Awaitable[None] | None]
#: What the ``reader_transport`` fixture returns: the transport, or a callable making it.
TransportSource: TypeAlias = ReaderTransport | Callable[[], ReaderTransport]

LinkEvent: TypeAlias = tuple[str, ReaderInfo, int, str]


async def _call(action: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    """Call a fixture's action, awaiting it if it is async."""
    outcome = action(*args)
    if inspect.isawaitable(outcome):
        await outcome


def _refuse_card_number(text: str, pan: str, what: str) -> None:
    """Fail the test if ``text`` holds the card number (without showing either in the report)."""
    if _leaks(text, pan):
        pytest.fail(f"{what} holds the card number", pytrace=False)


def _leaks(text: str, pan: str) -> bool:
    """Whether ``text`` holds the card number, also when written with spaces or dashes."""
    if pan in text:
        return True
    squeezed = text.replace(" ", "").replace("-", "")
    return pan in squeezed


class ReaderTransportConformance:
    """Checks a :class:`ReaderTransport` and its connections against ``offterm.core.contracts.readers``.

    Subclass it as ``Test...`` and provide the fixtures described in the
    module docstring; tune the class attributes below when a reader needs it.
    """

    #: The test card presented (a name in ``offterm.plugins.readers.test_cards``; approved by the processor).
    card: ClassVar[str] = "visa"
    #: Expected ``ReaderInfo.transport`` (the plugin's registered name); None: any non-empty name.
    transport_name: ClassVar[str | None] = None
    #: Opt in: the transport notices a lost link and reports it to the listener.
    supports_link_loss: ClassVar[bool] = False
    #: The processor side's card-data key (hex); None: the processor simulator's default (the public test key).
    processor_card_key_hex: ClassVar[str | None] = None
    #: ``discover(timeout=...)`` in the kit.
    discover_timeout: ClassVar[float] = 5.0
    #: ``CollectRequest.timeout`` of collections that are answered.
    collect_timeout: ClassVar[float] = 10.0
    #: ``CollectRequest.timeout`` of the collection nobody answers.
    short_timeout: ClassVar[float] = 0.5
    #: How much later than ``short_timeout`` the ReaderTimeout may come (a host's own margin).
    timeout_grace: ClassVar[float] = 5.0
    #: Seconds a started collection is given to reach the reader before the kit cancels it.
    settle: ClassVar[float] = 0.3
    #: Seconds to wait for link events after ``drop_link``, and for a reconnect.
    link_event_timeout: ClassVar[float] = 20.0
    #: Upper bound on one kit test's coroutine (a hung reader fails, never hangs the suite).
    test_timeout: ClassVar[float] = 90.0

    # -- fixtures the subclass provides -------------------------------------------------------------

    @pytest.fixture
    def reader_transport(self) -> TransportSource:
        """The transport under test (or a callable making it).  Override in the subclass."""
        pytest.fail(f"{type(self).__name__}: define a `reader_transport` fixture returning the transport under test")

    @pytest.fixture
    def present_card(self) -> CardPresenter:
        """``present(connection, card)``.  Override in the subclass."""
        pytest.fail(f"{type(self).__name__}: define a `present_card` fixture: present(connection, card_name)")

    @pytest.fixture
    def withhold_card(self) -> LinkAction:
        """``withhold(connection)``: nobody presents a card next.  Default: nothing to do."""

        def withhold(connection: ReaderConnection) -> None:
            return None

        return withhold

    @pytest.fixture
    def drop_link(self) -> LinkAction:
        """``drop(connection)``: the link is lost.  Override when ``supports_link_loss`` is True."""
        pytest.fail(f"{type(self).__name__}: supports_link_loss is True: define a `drop_link` fixture")

    # -- overridable hooks ------------------------------------------------------------------------

    def choose_reader(self, readers: list[ReaderInfo]) -> ReaderInfo:
        """The discovered reader the kit connects to (the first by default)."""
        return readers[0]

    def open_card_data(self, result: CardResult) -> SensitiveCard:
        """Decrypt the result as the processor does (scheme ``offterm-aesgcm-v1`` under the processor's key).

        A reader with another scheme overrides this with its processor's decryption.
        """
        from offterm.plugins.readers import card_encryption

        key_hex = self.processor_card_key_hex or card_encryption.TEST_BASE_KEY_HEX
        assert result.encryption_scheme == card_encryption.SCHEME, (
            f"encryption scheme {result.encryption_scheme!r} is not one the processor simulator decrypts; "
            "override open_card_data for another scheme"
        )
        return card_encryption.decrypt(result.encrypted_card_data, result.key_serial, bytes.fromhex(key_hex))

    def _profile(self) -> CardProfile:
        from offterm.plugins.readers import test_cards

        return test_cards.resolve(self.card)

    # -- the watch on card numbers (every test) -----------------------------------------------------

    @pytest.fixture(autouse=True)
    def _no_card_numbers_logged(self, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
        pan = self._profile().pan
        caplog.set_level(logging.DEBUG)
        with structlog.testing.capture_logs() as events:
            yield
        for event in events:
            _refuse_card_number(repr(event), pan, f"structlog event {str(event.get('event'))[:60]!r}")
        # In teardown ``caplog.records`` holds only teardown's records: look at the test's own phases.
        for phase in ("setup", "call", "teardown"):
            for record in caplog.get_records(phase):
                text = repr(vars(record)) + record.getMessage()
                _refuse_card_number(text, pan, f"a log record of {record.name!r} ({phase})")

    def _check_error(self, error: BaseException) -> None:
        """An error the kit sees names no card number, in its message or its details."""
        pan = self._profile().pan
        texts = [str(error), repr(error), repr(error.args)]
        if isinstance(error, OfftermError):
            texts.append(repr(error.details))
        for text in texts:
            _refuse_card_number(text, pan, f"the {type(error).__name__} raised")

    # -- helpers ----------------------------------------------------------------------------------

    def _run(self, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(self.test_timeout):
                await main()

        asyncio.run(bounded())

    @staticmethod
    def _build(source: TransportSource) -> ReaderTransport:
        transport = source if isinstance(source, ReaderTransport) else source()
        assert isinstance(transport, ReaderTransport), "reader_transport must give a ReaderTransport"
        return transport

    async def _connect(self, transport: ReaderTransport) -> ReaderConnection:
        readers = await transport.discover(timeout=self.discover_timeout)
        assert readers, "discover found no reader"
        connection = await transport.connect(self.choose_reader(readers))
        assert isinstance(connection, ReaderConnection)
        return connection

    def _request(self, timeout: float | None = None) -> CollectRequest:
        return CollectRequest(amount=1250, currency="usd", timeout=self.collect_timeout if timeout is None else timeout)

    async def _collect_card(self, connection: ReaderConnection, present: CardPresenter) -> CardResult:
        await _call(present, connection, self.card)
        return await connection.collect(self._request())

    async def _started(self, connection: ReaderConnection, timeout: float) -> asyncio.Task[CardResult]:
        """A collection nobody answers yet, given time to reach the reader."""
        task = asyncio.get_running_loop().create_task(connection.collect(self._request(timeout)))
        await asyncio.sleep(self.settle)
        assert not task.done(), f"collect ended before anyone presented a card: {task.exception()!r}"
        return task

    async def _with_connection(
        self, source: TransportSource, body: Callable[[ReaderTransport, ReaderConnection], Awaitable[None]]
    ) -> None:
        transport = self._build(source)
        try:
            connection = await self._connect(transport)
            try:
                await body(transport, connection)
            finally:
                await connection.close()
        finally:
            await transport.close()

    def _check_card_result(self, result: CardResult) -> None:
        profile = self._profile()
        assert isinstance(result, CardResult), f"collect returned {type(result).__name__}, not a CardResult"
        details = result.details
        assert isinstance(details, CardDetails)
        assert details.last4 == profile.last4 and details.brand == profile.brand
        assert isinstance(details.read_method, ReadMethod)
        assert 1 <= details.exp_month <= 12 and details.exp_year >= 2000
        for f in dataclasses.fields(details):
            _refuse_card_number(repr(getattr(details, f.name)), profile.pan, f"CardDetails.{f.name}")
        _refuse_card_number(repr(result), profile.pan, "repr(CardResult)")
        data = result.encrypted_card_data
        assert isinstance(data, bytes) and data, "encrypted_card_data must be non-empty bytes"
        if profile.pan.encode() in data:
            pytest.fail("the card number is in the clear in encrypted_card_data", pytrace=False)
        if data.hex() in repr(result) or repr(data) in repr(result):
            pytest.fail("repr(CardResult) shows the encrypted card data", pytrace=False)
        card = self.open_card_data(result)
        if card.pan != profile.pan:
            pytest.fail("the processor side decrypted another card than the one presented", pytrace=False)
        assert (card.exp_month, card.exp_year) == (details.exp_month, details.exp_year)
        assert card.read_method == details.read_method.value

    # -- the checks ------------------------------------------------------------------------------------

    def test_discover_returns_reader_info(self, reader_transport: TransportSource) -> None:
        async def main() -> None:
            transport = self._build(reader_transport)
            try:
                readers = await transport.discover(timeout=self.discover_timeout)
            finally:
                await transport.close()
            assert isinstance(readers, list) and readers, "discover must return a non-empty list here"
            for info in readers:
                assert isinstance(info, ReaderInfo)
                for name in ("serial_number", "reader_type", "transport"):
                    value = getattr(info, name)
                    assert isinstance(value, str) and value, f"ReaderInfo.{name} must be a non-empty string"
                for name in ("address", "label", "firmware_version"):
                    assert isinstance(getattr(info, name), str), f"ReaderInfo.{name} must be a string"
                assert info.location_id is None or isinstance(info.location_id, str)
                if self.transport_name is not None:
                    assert info.transport == self.transport_name
            serials = [info.serial_number for info in readers]
            assert len(set(serials)) == len(serials), "discover listed a reader twice"

        self._run(main)

    def test_connect_and_close(self, reader_transport: TransportSource) -> None:
        async def main() -> None:
            transport = self._build(reader_transport)
            try:
                readers = await transport.discover(timeout=self.discover_timeout)
                chosen = self.choose_reader(readers)
                connection = await transport.connect(chosen)
                assert isinstance(connection, ReaderConnection)
                assert connection.is_connected
                assert isinstance(connection.info, ReaderInfo)
                assert connection.info.serial_number == chosen.serial_number
                assert connection.info.transport == chosen.transport
                await connection.cancel_collect()  # nothing in progress: a no-op
                assert connection.is_connected
                await connection.close()
                assert not connection.is_connected
                await connection.close()  # safe twice
                again = await transport.connect(chosen)  # the reader is free again
                assert again.is_connected
                await again.close()
            finally:
                await transport.close()
            await transport.close()  # safe twice

        self._run(main)

    def test_collect_returns_card_data_only_the_processor_reads(
        self, reader_transport: TransportSource, present_card: CardPresenter
    ) -> None:
        async def body(transport: ReaderTransport, connection: ReaderConnection) -> None:
            first = await self._collect_card(connection, present_card)
            self._check_card_result(first)
            second = await self._collect_card(connection, present_card)
            self._check_card_result(second)
            assert second.encrypted_card_data != first.encrypted_card_data, "two reads sealed to the same bytes"
            assert connection.is_connected

        self._run(lambda: self._with_connection(reader_transport, body))

    def test_cancel_collect_leaves_the_connection_usable(
        self, reader_transport: TransportSource, present_card: CardPresenter, withhold_card: LinkAction
    ) -> None:
        async def body(transport: ReaderTransport, connection: ReaderConnection) -> None:
            await _call(withhold_card, connection)
            task = await self._started(connection, self.collect_timeout)
            await connection.cancel_collect()
            async with asyncio.timeout(self.timeout_grace):
                with pytest.raises(CollectionCanceled) as info:
                    await task
            self._check_error(info.value)
            assert connection.is_connected
            self._check_card_result(await self._collect_card(connection, present_card))

        self._run(lambda: self._with_connection(reader_transport, body))

    def test_a_cancelled_collect_task_leaves_the_connection_usable(
        self, reader_transport: TransportSource, present_card: CardPresenter, withhold_card: LinkAction
    ) -> None:
        async def body(transport: ReaderTransport, connection: ReaderConnection) -> None:
            await _call(withhold_card, connection)
            task = await self._started(connection, self.collect_timeout)
            task.cancel()
            async with asyncio.timeout(self.timeout_grace):
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert connection.is_connected
            self._check_card_result(await self._collect_card(connection, present_card))

        self._run(lambda: self._with_connection(reader_transport, body))

    def test_a_collect_nobody_answers_times_out_typed(
        self, reader_transport: TransportSource, present_card: CardPresenter, withhold_card: LinkAction
    ) -> None:
        async def body(transport: ReaderTransport, connection: ReaderConnection) -> None:
            await _call(withhold_card, connection)
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with asyncio.timeout(self.short_timeout + self.timeout_grace):
                with pytest.raises(ReaderTimeout) as info:
                    await connection.collect(self._request(self.short_timeout))
            assert loop.time() - started >= self.short_timeout * 0.9, "ReaderTimeout came before the timeout"
            self._check_error(info.value)
            assert connection.is_connected
            self._check_card_result(await self._collect_card(connection, present_card))

        self._run(lambda: self._with_connection(reader_transport, body))

    def test_a_lost_link_is_reported_to_the_listener(
        self,
        reader_transport: TransportSource,
        present_card: CardPresenter,
        withhold_card: LinkAction,
        request: pytest.FixtureRequest,
    ) -> None:
        if not self.supports_link_loss:
            pytest.skip("the transport does not report link loss (opt in with supports_link_loss = True)")
        drop: LinkAction = request.getfixturevalue("drop_link")

        async def body(transport: ReaderTransport, connection: ReaderConnection) -> None:
            events: list[LinkEvent] = []
            connection.set_listener(lambda event, info, attempt, reason: events.append((event, info, attempt, reason)))
            await _call(withhold_card, connection)
            task = await self._started(connection, self.collect_timeout)
            await _call(drop, connection)
            async with asyncio.timeout(self.link_event_timeout):
                with pytest.raises(ReaderDisconnected) as info:
                    await task
                self._check_error(info.value)
                while not events or events[-1][0] not in ("reconnected", "disconnected"):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            pan = self._profile().pan
            assert events[0][0] in ("reconnecting", "disconnected"), f"first link event: {events[0][0]!r}"
            for event, info_, attempt, reason in events:
                assert event in READER_EVENTS, f"unknown link event {event!r}"
                assert isinstance(info_, ReaderInfo) and info_.serial_number == connection.info.serial_number
                assert isinstance(attempt, int) and attempt >= 0 and isinstance(reason, str)
                _refuse_card_number(reason, pan, f"the reason of link event {event!r}")
            if events[-1][0] == "disconnected":
                assert not connection.is_connected
                return
            assert connection.is_connected, "the connection reported 'reconnected' but is not connected"
            self._check_card_result(await self._collect_card(connection, present_card))

        self._run(lambda: self._with_connection(reader_transport, body))
