"""Conformance kit for forwarding transports, run against the processor simulator.

:class:`ForwardingTransportConformance` is a pytest test class.  A transport
plugin's test suite subclasses it (as ``Test...``) and provides one fixture,
``transport_factory``: a callable building the transport under test for a
base URL (the simulator's, on 127.0.0.1)::

    import pytest
    from offterm.testing import ForwardingTransportConformance


    class TestAcmeTransport(ForwardingTransportConformance):
        @pytest.fixture
        def transport_factory(self):
            return lambda url: AcmeTransport(api_base=url, timeout=5.0)

Each check gets a fresh simulator (``offterm.sim.processor``), plays the
core's part (keys from ``offterm.core._engine.keys.step_key``, one request per
method) and checks the answers and the simulator's own books (ledger,
request log).  Sessions come from a fresh connection token minted the way
an integrator's backend does (:meth:`connection_token`; override it to fetch
one through another path of the simulator).

What the kit checks, per ``offterm.core.contracts.forwarding``: authenticate
redeems a single-use token; probe is True against the simulator and False
against a closed port; create_payment_method + create_intent with the
payment method charge once and return a paid snapshot; the same key and
request replay (one charge on the ledger); confirm_intent on a created
intent; a decline returns a snapshot with ``last_payment_error`` (not
raised); confirming a paid intent returns its snapshot; retrieve_intent,
and ``PaymentNotFound`` for an unknown intent; find_intent by offline id,
None when absent; cancel_intent twice; ``OutcomeUnknown`` when the answer is
lost after the processor committed; ``TransientProcessorError`` for a 503;
``AuthenticationFailed`` for an expired session; and idempotency keys sent
exactly as given (the simulator's request log).

The kit's tests are synchronous and run their coroutines with ``asyncio.run``
(no asyncio pytest plugin needed).  The simulator is imported when a test
runs, so importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import pytest

from offterm.core._engine.keys import Step, step_key
from offterm.core.contracts import CardResult, ConnectionToken, ForwardingTransport, ProcessorSession
from offterm.core.contracts.forwarding import IntentRequest, IntentSnapshot, PaymentError
from offterm.core.errors import (
    AuthenticationFailed,
    OutcomeUnknown,
    PaymentNotFound,
    TransientProcessorError,
)
from offterm.core.models import CaptureMethod

if TYPE_CHECKING:
    from offterm.sim.processor import SimHandle

__all__ = ["ForwardingTransportConformance", "TransportFactory"]

#: What the ``transport_factory`` fixture returns: base URL -> the transport under test.
TransportFactory: TypeAlias = Callable[[str], ForwardingTransport]

#: Stripe's test cards: approved, and declined (generic_decline).
APPROVED_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"
#: Statuses in which an intent has been paid (authorised).
PAID_STATUSES = frozenset({"succeeded", "requires_capture"})

Body: TypeAlias = Callable[[ForwardingTransport, "SimHandle"], Awaitable[None]]


def _closed_port_url() -> str:
    """A loopback URL nobody listens on (a port bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class ForwardingTransportConformance:
    """Checks a :class:`ForwardingTransport` against ``offterm.core.contracts.forwarding`` on the simulator.

    Subclass it as ``Test...`` and provide the ``transport_factory`` fixture.
    """

    #: Keyword options of the simulator each test starts (``offterm.sim.processor.SimConfig`` fields).
    simulator_options: ClassVar[dict[str, Any]] = {}
    #: Upper bound on one kit test's coroutine (a hung transport fails, never hangs the suite).
    test_timeout: ClassVar[float] = 60.0
    #: How long ``probe`` may take against a closed port.
    probe_timeout: ClassVar[float] = 15.0

    # -- fixtures ---------------------------------------------------------------------------------

    @pytest.fixture
    def transport_factory(self) -> TransportFactory:
        """``factory(base_url) -> transport``.  Override in the subclass."""
        pytest.fail(f"{type(self).__name__}: define a `transport_factory` fixture: base URL -> transport")

    @pytest.fixture
    def conformance_simulator(self) -> Iterator[SimHandle]:
        """A fresh processor simulator on 127.0.0.1 for one check."""
        from offterm.sim.processor import running_simulator

        with running_simulator(**self.simulator_options) as sim:
            yield sim

    # -- overridable hooks ------------------------------------------------------------------------

    def connection_token(self, sim: SimHandle) -> ConnectionToken:
        """A fresh single-use connection token for ``sim`` (minted as an integrator's backend does)."""
        return ConnectionToken(sim.connection_token())

    def card(self, pan: str) -> CardResult:
        """What a reader hands the POS for test card ``pan``: encrypted for the simulator's key."""
        from offterm.sim.processor.testing import card_result

        return card_result(pan)

    # -- helpers ----------------------------------------------------------------------------------

    def _run(self, factory: TransportFactory, sim: SimHandle, body: Body, url: str | None = None) -> None:
        async def main() -> None:
            async with asyncio.timeout(self.test_timeout):
                transport = factory(url or sim.url)
                assert isinstance(transport, ForwardingTransport), "transport_factory must give a ForwardingTransport"
                await transport.open()
                try:
                    await body(transport, sim)
                finally:
                    await transport.close()

        asyncio.run(main())

    async def _session(self, transport: ForwardingTransport, sim: SimHandle) -> ProcessorSession:
        session = await transport.authenticate(self.connection_token(sim))
        assert isinstance(session, ProcessorSession), "authenticate must return a ProcessorSession"
        return session

    @staticmethod
    def _request(**overrides: Any) -> IntentRequest:
        values: dict[str, Any] = {
            "offline_id": "offpi_" + uuid.uuid4().hex,
            "amount": 2599,
            "currency": "usd",
            "capture_method": CaptureMethod.AUTOMATIC,
            "metadata": {"order": "A-17"},
            "description": "conformance",
        }
        values.update(overrides)
        return IntentRequest(**values)

    @staticmethod
    def _key() -> str:
        return "offterm-kit-" + uuid.uuid4().hex

    async def _pay(
        self,
        transport: ForwardingTransport,
        session: ProcessorSession,
        request: IntentRequest,
        key: str,
        card: CardResult,
    ) -> IntentSnapshot:
        """A stored payment with no intent yet, as the core forwards it: card step, then create-and-confirm."""
        pm = await transport.create_payment_method(session, card, idempotency_key=step_key(key, Step.PAYMENT_METHOD))
        assert isinstance(pm, str) and pm, "create_payment_method must return a payment method id"
        return await transport.create_intent(
            session, request, idempotency_key=step_key(key, Step.CREATE_AND_CONFIRM), payment_method=pm
        )

    @staticmethod
    def _check_snapshot(snapshot: IntentSnapshot, request: IntentRequest, status: str | None = None) -> None:
        assert isinstance(snapshot, IntentSnapshot), f"expected an IntentSnapshot, got {type(snapshot).__name__}"
        assert isinstance(snapshot.id, str) and snapshot.id, "a snapshot carries the intent's id"
        if status is not None:
            assert snapshot.status == status, f"status {snapshot.status!r}, expected {status!r}"
        assert snapshot.offline_id == request.offline_id, "the offline id travels in the intent's metadata"
        assert snapshot.amount == request.amount
        assert snapshot.currency is not None and snapshot.currency.lower() == request.currency.lower()

    @staticmethod
    def _keys_sent(sim: SimHandle, since: int) -> list[str | None]:
        """Idempotency keys of the POSTs made with a session after the first ``since`` logged requests."""
        return [
            r["idempotency_key"] for r in sim.requests()[since:] if r["method"] == "POST" and r["auth"] == "session"
        ]

    # -- the checks -------------------------------------------------------------------------------

    def test_authenticate_redeems_a_fresh_token_once(
        self, transport_factory: TransportFactory, conformance_simulator: SimHandle
    ) -> None:
        async def body(transport: ForwardingTransport, sim: SimHandle) -> None:
            token = self.connection_token(sim)
            session = await transport.authenticate(token)
            assert isinstance(session, ProcessorSession)
            assert session.account_id == sim.config.account_id and session.livemode is sim.config.livemode
            assert session.secret, "a session carries its secret"
            if session.secret in repr(session):
                pytest.fail("repr(ProcessorSession) shows the session secret", pytrace=False)
            with pytest.raises(AuthenticationFailed) as info:
                await transport.authenticate(token)  # single-use
            if token.secret in str(info.value):
                pytest.fail("the AuthenticationFailed message shows the connection token", pytrace=False)

        self._run(transport_factory, conformance_simulator, body)

    def test_probe_is_true_against_the_processor(
        self, transport_factory: TransportFactory, conformance_simulator: SimHandle
    ) -> None:
        async def body(transport: ForwardingTransport, sim: SimHandle) -> None:
            assert await transport.probe() is True

        self._run(transport_factory, conformance_simulator, body)

    def test_probe_is_false_against_a_closed_port(
        self, transport_factory: TransportFactory, conformance_simulator: SimHandle
    ) -> None:
        async def body(transport: ForwardingTransport, sim: SimHandle) -> None:
            async with asyncio.timeout(self.probe_timeout):
                assert await transport.probe() is False

        self._run(transport_factory, conformance_simulator, body, url=_closed_port_url())

    def test_create_and_confirm_charges_once_with_the_keys_given(
        self, transport_factory: TransportFactory, conformance_simulator: SimHandle
    ) -> None:
        async def body(transport: ForwardingTransport, sim: SimHandle) -> None:
            session = await self._session(transport, sim)
            request, key = self._request(), self._key()
            since = len(sim.requests())
            snapshot = await self._pay(transport, session, request, key, self.card(APPROVED_CARD))
            self._check_snapshot(snapshot, request, "succeeded")
            assert snapshot.last_payment_error is None
            assert sim.successful_charges() == {request.offline_id: 1}
            # One request per method, each with its key exactly as given.
            keys = [step_key(key, Step.PAYMENT_METHOD), step_key(key, Step.CREATE_AND_CONFIRM)]
            assert self._keys_sent(sim, since) == keys

        self._run(transport_factory, conformance_simulator, body)

    def test_the_same_key_and_request_replay(
        self, transport_factory: TransportFactory, conformance_simulator: SimHandle
    ) -> None:
        async def body(transport: ForwardingTransport, sim: SimHandle) -> None:
            session = await self._session(transport, sim)
            request, key, card = self._request(), self._key(), self.card(APPROVED_CARD)
            first = await self._pay(transport, session, request, key, card)
            since = len(sim.requests())
            again = await self._pay(transport, session, request, key, card)
            assert (again.id, again.status) == (first.id, "succeeded")
            replays = [r for r in sim.requests()[since:] if r["method"] == "POST" and r["auth"] == "session"]
            assert [r["replayed"] for r in replays] == [True, True], "the retry must replay under the same keys"
            assert sim.successful_charges() == {request.offline_id: 1}
            assert len(sim.ledger()[request.offline_id]) == 1

        self._run(transport_factory, conformance_simulator, body)

    def test_confirm_a_created_intent(
        self, transport_factory: TransportFactory, conformance_simulator: SimHandle
    ) -> None:
        async def body(transport: ForwardingTransport, sim: SimHandle) -> None:
            session = await self._session(transport, sim)
            request, key = self._request(), self._key()
            since = len(sim.requests())
            created = await transport.create_intent(session, request, idempotency_key=step_key(key, Step.CREATE))
            self._check_snapshot(created, request)
            assert created.status not in PAID_STATUSES, "an intent created without a payment method is not paid"
            assert sim.successful_charges().get(request.offline_id, 0) == 0
            pm = await transport.create_payment_method(
                session, self.card(APPROVED_CARD), idempotency_key=step_key(key, Step.PAYMENT_METHOD)
            )
            confirmed = await transport.confirm_intent(
                session, created.id, payment_method=pm, idempotency_key=step_key(key, Step.CONFIRM)
            )
            self._check_snapshot(confirmed, request, "succeeded")
            assert confirmed.id == created.id
            assert sim.successful_charges() == {request.offline_id: 1}
            assert self._keys_sent(sim, since) == [
                step_key(key, s) for s in (Step.CREATE, Step.PAYMENT_METHOD, Step.CONFIRM)
            ]

        self._run(transport_factory, conformance_simulator, body)

    def test_a_decline_is_returned_with_last_payment_error(
        self, transport_factory: TransportFactory, conformance_simulator: SimHandle
    ) -> None:
        async def body(transport: ForwardingTransport, sim: SimHandle) -> None:
            session = await self._session(transport, sim)
            request, key = self._request(), self._key()
            snapshot = await self._pay(transport, session, request, key, self.card(DECLINED_CARD))
            self._check_snapshot(snapshot, request)
            assert snapshot.status not in PAID_STATUSES
            error = snapshot.last_payment_error
            assert isinstance(error, PaymentError), "a decline carries last_payment_error"
            assert error.code == "card_declined" and error.decline_code == "generic_decline"
            if DECLINED_CARD in repr(snapshot) or DECLINED_CARD[-4:] in repr(snapshot):
                pytest.fail("the snapshot holds card data", pytrace=False)
            assert sim.successful_charges() == {request.offline_id: 0}

        self._run(transport_factory, conformance_simulator, body)

    def test_confirming_a_paid_intent_returns_it(
        self, transport_factory: TransportFactory, conformance_simulator: SimHandle
    ) -> None:
        async def body(transport: ForwardingTransport, sim: SimHandle) -> None:
            session = await self._session(transport, sim)
            request, key = self._request(), self._key()
            paid = await self._pay(transport, session, request, key, self.card(APPROVED_CARD))
            # After a lookup the core moves to a new key generation; the processor refuses the confirm.
            pm = await transport.create_payment_method(
                session, self.card(APPROVED_CARD), idempotency_key=step_key(key, Step.PAYMENT_METHOD, 1)
            )
            again = await transport.confirm_intent(
                session, paid.id, payment_method=pm, idempotency_key=step_key(key, Step.CONFIRM, 1)
            )
            self._check_snapshot(again, request, "succeeded")
            assert again.id == paid.id
            assert sim.successful_charges() == {request.offline_id: 1}

        self._run(transport_factory, conformance_simulator, body)

    def test_retrieve_intent_and_payment_not_found(
        self, transport_factory: TransportFactory, conformance_simulator: SimHandle
    ) -> None:
        async def body(transport: ForwardingTransport, sim: SimHandle) -> None:
            session = await self._session(transport, sim)
            request = self._request(amount=1234, currency="gbp")
            paid = await self._pay(transport, session, request, self._key(), self.card(APPROVED_CARD))
            since = len(sim.requests())
            snapshot = await transport.retrieve_intent(session, paid.id)
            self._check_snapshot(snapshot, request, "succeeded")
            assert snapshot.id == paid.id
            assert [(r["method"], r["idempotency_key"]) for r in sim.requests()[since:]] == [("GET", None)]
            with pytest.raises(PaymentNotFound):
                await transport.retrieve_intent(session, "pi_" + uuid.uuid4().hex[:24])

        self._run(transport_factory, conformance_simulator, body)

    def test_find_intent_by_offline_id(
        self, transport_factory: TransportFactory, conformance_simulator: SimHandle
    ) -> None:
        async def body(transport: ForwardingTransport, sim: SimHandle) -> None:
            session = await self._session(transport, sim)
            request = self._request()
            paid = await self._pay(transport, session, request, self._key(), self.card(APPROVED_CARD))
            await self._pay(transport, session, self._request(), self._key(), self.card(APPROVED_CARD))  # another
            sim.advance_clock(transport.search_delay + 1)  # past the search lag the transport declares
            session = await self._session(transport, sim)  # the clock moved past the old session's life
            found = await transport.find_intent(session, request.offline_id)
            assert found is not None, "find_intent must find the intent by its offline id"
            self._check_snapshot(found, request, "succeeded")
            assert found.id == paid.id
            assert await transport.find_intent(session, "offpi_" + uuid.uuid4().hex) is None

        self._run(transport_factory, conformance_simulator, body)

    def test_cancel_intent_twice(self, transport_factory: TransportFactory, conformance_simulator: SimHandle) -> None:
        async def body(transport: ForwardingTransport, sim: SimHandle) -> None:
            session = await self._session(transport, sim)
            request = self._request()
            created = await transport.create_intent(session, request, idempotency_key=self._key())
            first = await transport.cancel_intent(session, created.id)
            second = await transport.cancel_intent(session, created.id)  # already canceled is fine
            for snapshot in (first, second):
                self._check_snapshot(snapshot, request, "canceled")
                assert snapshot.id == created.id
            assert sim.successful_charges().get(request.offline_id, 0) == 0

        self._run(transport_factory, conformance_simulator, body)

    def test_an_answer_lost_after_commit_is_outcome_unknown(
        self, transport_factory: TransportFactory, conformance_simulator: SimHandle
    ) -> None:
        async def body(transport: ForwardingTransport, sim: SimHandle) -> None:
            session = await self._session(transport, sim)
            request, key, card = self._request(), self._key(), self.card(APPROVED_CARD)
            pm = await transport.create_payment_method(
                session, card, idempotency_key=step_key(key, Step.PAYMENT_METHOD)
            )
            sim.set_faults(commit_drop_rate=1.0)  # the processor runs the request, then the answer is lost
            try:
                with pytest.raises(OutcomeUnknown):
                    await transport.create_intent(
                        session, request, idempotency_key=step_key(key, Step.CREATE_AND_CONFIRM), payment_method=pm
                    )
            finally:
                sim.set_faults()
            assert sim.successful_charges() == {request.offline_id: 1}, "it did happen"
            again = await self._pay(transport, session, request, key, card)  # the core retries under the same keys
            self._check_snapshot(again, request, "succeeded")
            assert sim.successful_charges() == {request.offline_id: 1}
            assert len(sim.ledger()[request.offline_id]) == 1

        self._run(transport_factory, conformance_simulator, body)

    def test_a_503_is_transient(self, transport_factory: TransportFactory, conformance_simulator: SimHandle) -> None:
        async def body(transport: ForwardingTransport, sim: SimHandle) -> None:
            session = await self._session(transport, sim)
            sim.set_faults(error_rates={503: 1.0})
            try:
                with pytest.raises(TransientProcessorError):  # OutcomeUnknown (a subclass) is allowed for a POST
                    await transport.create_intent(session, self._request(), idempotency_key=self._key())
                with pytest.raises(TransientProcessorError) as info:
                    await transport.retrieve_intent(session, "pi_" + uuid.uuid4().hex[:24])
                assert not isinstance(info.value, OutcomeUnknown), "a GET that was answered changed nothing"
            finally:
                sim.set_faults()

        self._run(transport_factory, conformance_simulator, body)

    def test_an_expired_session_is_authentication_failed(
        self, transport_factory: TransportFactory, conformance_simulator: SimHandle
    ) -> None:
        async def body(transport: ForwardingTransport, sim: SimHandle) -> None:
            session = await self._session(transport, sim)
            sim.advance_clock(sim.config.session_ttl + 1)
            with pytest.raises(AuthenticationFailed) as info:
                await transport.create_intent(session, self._request(), idempotency_key=self._key())
            if session.secret in str(info.value):
                pytest.fail("the AuthenticationFailed message shows the session secret", pytrace=False)
            assert sim.successful_charges() == {}

        self._run(transport_factory, conformance_simulator, body)
