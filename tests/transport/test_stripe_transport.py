"""The Stripe transport against a real simulator on loopback.

Each transport method makes one request with the key it is given; these
tests play the core's part (choosing keys and order, as ``offterm.core._engine.keys``
does) and check what the simulator saw and charged.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
import structlog.testing

from offterm.core._engine.keys import Step, step_key
from offterm.core.config import validate_options
from offterm.core.contracts import CardResult, ConnectionToken, ProcessorSession
from offterm.core.contracts.forwarding import IntentRequest, IntentSnapshot, PaymentError
from offterm.core.errors import (
    AuthenticationFailed,
    ConfigError,
    InvalidRequest,
    OutcomeUnknown,
    PaymentNotFound,
    PermanentProcessorError,
    TransientProcessorError,
)
from offterm.core.models import CaptureMethod
from offterm.core.registrations import ComponentContext, ForwardingTransportRegistration
from offterm.plugins.transport import stripe as stripe_plugin
from offterm.plugins.transport.stripe import StripeTransport
from offterm.sim.netproxy import FaultProxy
from offterm.sim.processor import SimHandle, running_simulator
from offterm.sim.processor.spec import StripeSpec, find_spec
from offterm.sim.processor.testing import card_result

PUBLIC_PREFIX = "/v1/"
VISA = "4242424242424242"


@pytest.fixture
def spec_sim() -> Iterator[SimHandle]:
    """A simulator that refuses any public request not conforming to Stripe's spec."""
    path = find_spec()
    if path is None:
        pytest.skip("Stripe's OpenAPI spec is absent (set OFFTERM_STRIPE_SPEC or place ../shared/stripe-openapi)")
    with running_simulator(spec_path=str(path)) as handle:
        yield handle


@pytest.fixture
async def transport(sim: SimHandle) -> AsyncIterator[StripeTransport]:
    t = StripeTransport(sim.url, timeout=2.0, connect_timeout=1.0)
    yield t
    await t.close()


async def _session(t: StripeTransport, sim: SimHandle) -> ProcessorSession:
    return await t.authenticate(ConnectionToken(sim.connection_token()))


def _request(**overrides: Any) -> IntentRequest:
    values: dict[str, Any] = {
        "offline_id": "offpi_" + uuid.uuid4().hex,
        "amount": 2599,
        "currency": "usd",
        "capture_method": CaptureMethod.AUTOMATIC,
        "metadata": {"order": "A-17"},
        "description": "coffee",
    }
    values.update(overrides)
    return IntentRequest(**values)


def _key() -> str:
    return "offterm-" + uuid.uuid4().hex


async def _pay(
    t: StripeTransport,
    session: ProcessorSession,
    request: IntentRequest,
    key: str,
    card: CardResult | str = VISA,
    *,
    stored_at: datetime | None = None,
) -> IntentSnapshot:
    """A stored payment with no intent yet, as the core forwards it: card step, then create-and-confirm.

    A retry passes the same ``CardResult`` (as the store keeps it): encrypting a card again gives other bytes.
    """
    if isinstance(card, str):
        card = card_result(card)
    pm = await t.create_payment_method(
        session, card, idempotency_key=step_key(key, Step.PAYMENT_METHOD), stored_at=stored_at
    )
    return await t.create_intent(
        session, request, idempotency_key=step_key(key, Step.CREATE_AND_CONFIRM), payment_method=pm
    )


def _charges(sim: SimHandle, offline_id: str) -> int:
    return sim.successful_charges().get(offline_id, 0)


# -- wire conventions --------------------------------------------------------------------------


async def test_a_stored_payment_is_two_requests_in_stripes_wire_conventions(
    spec_sim: SimHandle, stripe_spec: StripeSpec
) -> None:
    t = StripeTransport(spec_sim.url, stripe_version="2023-08-16")
    try:
        session = await _session(t, spec_sim)
        stored_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        request, key = _request(), _key()
        snapshot = await _pay(t, session, request, key, stored_at=stored_at)
    finally:
        await t.close()
    assert snapshot.id.startswith("pi_") and snapshot.status == "succeeded"
    assert (snapshot.amount, snapshot.currency, snapshot.offline_id) == (2599, "usd", request.offline_id)
    assert snapshot.last_payment_error is None and snapshot.request_id and snapshot.request_id.startswith("req_")
    assert spec_sim.spec_violations() == []
    requests = [r for r in spec_sim.requests() if r["auth"] == "session"]
    assert [(r["method"], r["path"]) for r in requests] == [
        ("POST", "/device/v1/payment_methods"),
        ("POST", "/v1/payment_intents"),
    ]
    # Keys exactly as given: the transport derives none of its own.
    assert [r["idempotency_key"] for r in requests] == [f"{key}-payment_method", f"{key}-create_and_confirm"]
    for r in requests:
        assert r["stripe_version"] == "2023-08-16"
        assert r["content_type"] == "application/x-www-form-urlencoded"
        assert r["status"] == 200
    create = requests[1]["params"]
    assert stripe_spec.check_request("POST", "/v1/payment_intents", create) == []
    assert create["metadata"] == {"order": "A-17", "offterm_offline_id": request.offline_id}
    assert create["payment_method_types"] == ["card_present"]
    assert create["amount"] == "2599" and create["capture_method"] == "automatic" and create["currency"] == "usd"
    assert create["confirm"] == "true" and create["payment_method"].startswith("pm_")
    assert create["description"] == "coffee"
    # When it was stored travels with the device step, as a header (outside the parameters a key compares).
    assert [r["stored_at"] for r in requests] == [stored_at.isoformat(), None]
    [charge] = spec_sim.ledger()[request.offline_id]
    assert charge["offline"] == {"stored_at": int(stored_at.timestamp()), "type": "deferred"}
    assert spec_sim.successful_charges() == {request.offline_id: 1}


async def test_every_public_request_conforms_to_the_spec(spec_sim: SimHandle, stripe_spec: StripeSpec) -> None:
    t = StripeTransport(spec_sim.url)
    try:
        session = await _session(t, spec_sim)
        request, key = _request(capture_method=CaptureMethod.MANUAL, currency="EUR"), _key()
        created = await t.create_intent(session, request, idempotency_key=step_key(key, Step.CREATE))
        assert created.status == "requires_payment_method" and created.currency == "eur"
        pm = await t.create_payment_method(session, card_result(), idempotency_key=step_key(key, Step.PAYMENT_METHOD))
        confirmed = await t.confirm_intent(
            session, created.id, payment_method=pm, idempotency_key=step_key(key, Step.CONFIRM)
        )
        assert confirmed.id == created.id and confirmed.status == "requires_capture"
        captured = await t.capture_intent(session, created.id, idempotency_key=f"{key}-capture", amount=2000)
        assert captured.status == "succeeded"
        assert (await t.retrieve_intent(session, created.id)).status == "succeeded"
        await t.refund(session, created.id, idempotency_key=f"{key}-refund", amount=500)
        found = await t.find_intent(session, request.offline_id)
        assert found is not None and found.id == created.id
        other = await t.create_intent(session, _request(metadata={}, description=None), idempotency_key=_key())
        assert (await t.cancel_intent(session, other.id)).status == "canceled"
        assert (await t.cancel_intent(session, other.id)).status == "canceled"  # already canceled: fine
    finally:
        await t.close()
    assert spec_sim.spec_violations() == []
    public = [r for r in spec_sim.requests() if r["path"].startswith(PUBLIC_PREFIX) and r["auth"] == "session"]
    steps = {r["path"].rsplit("/", 1)[-1] for r in public}
    assert steps >= {"payment_intents", "confirm", "capture", "cancel", "refunds", "search", created.id}
    for r in public:
        assert stripe_spec.check_request(r["method"], r["path"], r["params"]) == [], r
        if r["method"] == "POST":
            assert r["idempotency_key"]
        else:
            assert r["idempotency_key"] is None


# -- create, with and without a payment method -----------------------------------------------------


async def test_create_without_a_payment_method_makes_an_unconfirmed_intent_and_replays(
    sim: SimHandle, transport: StripeTransport
) -> None:
    session = await _session(transport, sim)
    request, key = _request(), _key()
    first = await transport.create_intent(session, request, idempotency_key=key)
    again = await transport.create_intent(session, request, idempotency_key=key)
    assert first.status == "requires_payment_method" and first.offline_id == request.offline_id
    assert again.id == first.id and again.status == first.status
    [create, replay] = [r for r in sim.requests() if r["path"] == "/v1/payment_intents"]
    assert create["idempotency_key"] == replay["idempotency_key"] == key
    assert replay["replayed"] is True and create["body_sha256"] == replay["body_sha256"]
    assert "confirm" not in create["params"] and "payment_method" not in create["params"]
    assert sim.successful_charges() == {}


async def test_create_and_confirm_replays_under_the_same_key_and_charges_once(
    sim: SimHandle, transport: StripeTransport
) -> None:
    session = await _session(transport, sim)
    request, key, card = _request(), _key(), card_result()
    first = await _pay(transport, session, request, key, card)
    again = await _pay(transport, session, request, key, card)
    assert again == replace(first, request_id=again.request_id) and again.status == "succeeded"
    assert [r["replayed"] for r in sim.requests() if r["auth"] == "session"] == [False, False, True, True]
    assert _charges(sim, request.offline_id) == 1 and len(sim.ledger()[request.offline_id]) == 1


async def test_online_and_stored_attempts_send_byte_identical_requests(
    sim: SimHandle, transport: StripeTransport
) -> None:
    """An online attempt that fell back offline is finished from the store under the same keys: every
    request must carry the very same bytes, or Stripe refuses the key."""
    session = await _session(transport, sim)
    online = _request(metadata={"order": "A-17", "lane": "3"}, capture_method=CaptureMethod.MANUAL)
    # As the store gives it back: metadata in another order (and when it was stored, for the card step).
    stored = replace(online, metadata={"lane": "3", "order": "A-17"})
    key, card = _key(), card_result()
    sim.set_faults(commit_drop_rate=1.0, paths=("/device/v1/payment_methods",))
    with pytest.raises(OutcomeUnknown):  # the card step ran; its answer was lost
        await _pay(transport, session, online, key, card)
    sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents",))
    with pytest.raises(OutcomeUnknown):  # card step replayed; create-and-confirm ran, its answer was lost
        await _pay(transport, session, online, key, card)
    sim.set_faults()
    snapshot = await _pay(transport, session, stored, key, card, stored_at=datetime.now(UTC))
    assert snapshot.status == "requires_capture"
    sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents/",))
    with pytest.raises(OutcomeUnknown):
        await transport.capture_intent(session, snapshot.id, idempotency_key=f"{key}-capture")
    sim.set_faults()
    assert (await transport.capture_intent(session, snapshot.id, idempotency_key=f"{key}-capture")).status == (
        "succeeded"
    )

    bodies: dict[str, set[str]] = {}
    for r in sim.requests():
        if r["idempotency_key"] and r["idempotency_key"].startswith(key + "-"):
            bodies.setdefault(r["idempotency_key"], set()).add(r["body_sha256"])
    assert set(bodies) == {f"{key}-payment_method", f"{key}-create_and_confirm", f"{key}-capture"}
    assert all(len(digests) == 1 for digests in bodies.values()), bodies
    assert not [r for r in sim.requests() if r["status"] == 400]
    assert sim.successful_charges() == {online.offline_id: 1}


def test_create_parameters_depend_on_the_request_only() -> None:
    from offterm.plugins.transport.stripe._forms import encode
    from offterm.plugins.transport.stripe._transport import intent_params

    online = _request(metadata={"b": "2", "a": "1"}, currency="USD")
    stored = replace(online, metadata={"a": "1", "b": "2"}, currency="usd")
    assert encode(intent_params(online)) == encode(intent_params(stored))
    assert list(intent_params(online)["metadata"]) == ["a", "b", "offterm_offline_id"]


async def test_a_confirm_with_an_existing_intent(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    request, key = _request(), _key()
    created = await transport.create_intent(session, request, idempotency_key=step_key(key, Step.CREATE))
    pm = await transport.create_payment_method(
        session, card_result(), idempotency_key=step_key(key, Step.PAYMENT_METHOD)
    )
    snapshot = await transport.confirm_intent(
        session, created.id, payment_method=pm, idempotency_key=step_key(key, Step.CONFIRM)
    )
    again = await transport.confirm_intent(
        session, created.id, payment_method=pm, idempotency_key=step_key(key, Step.CONFIRM)
    )
    assert snapshot.id == again.id == created.id and snapshot.status == again.status == "succeeded"
    assert len([r for r in sim.requests() if r["path"] == "/v1/payment_intents"]) == 1
    assert _charges(sim, request.offline_id) == 1


# -- declines and unexpected states: the intent is returned ------------------------------------------


@pytest.mark.parametrize(
    ("pan", "code", "decline_code"),
    [
        ("4000000000000002", "card_declined", "generic_decline"),
        ("4000000000009995", "card_declined", "insufficient_funds"),
        ("4000000000000069", "expired_card", "expired_card"),
        ("4242424242424241", "invalid_number", None),
    ],
)
async def test_a_decline_returns_the_intent_with_its_last_payment_error(
    sim: SimHandle, transport: StripeTransport, pan: str, code: str, decline_code: str | None
) -> None:
    session = await _session(transport, sim)
    request, key, card = _request(), _key(), card_result(pan)
    snapshot = await _pay(transport, session, request, key, card)
    assert snapshot.id.startswith("pi_") and snapshot.status == "requires_payment_method"
    assert snapshot.offline_id == request.offline_id and snapshot.request_id
    error = snapshot.last_payment_error
    assert isinstance(error, PaymentError) and error.message
    assert error.code == code and error.decline_code == decline_code
    assert pan not in repr(snapshot) and pan[-4:] not in repr(snapshot)  # no card details kept
    [decline] = [r for r in sim.requests() if r["path"] == "/v1/payment_intents"]
    assert decline["status"] == 402
    # A retry replays the decline: the same intent, still no charge.
    again = await _pay(transport, session, request, key, card)
    assert again.id == snapshot.id and again.last_payment_error == error
    assert sim.successful_charges() == {request.offline_id: 0}
    assert len(sim.ledger()[request.offline_id]) == 1


async def test_a_declined_confirm_returns_the_intent_and_a_new_card_can_pay_it(
    sim: SimHandle, transport: StripeTransport
) -> None:
    session = await _session(transport, sim)
    request, key = _request(), _key()
    created = await transport.create_intent(session, request, idempotency_key=f"{key}-create")
    declined_pm = await transport.create_payment_method(
        session, card_result("4000000000009995"), idempotency_key=f"{key}-pm1"
    )
    declined = await transport.confirm_intent(
        session, created.id, payment_method=declined_pm, idempotency_key=f"{key}-confirm1"
    )
    assert declined.id == created.id and declined.status == "requires_payment_method"
    assert declined.last_payment_error is not None
    assert declined.last_payment_error.decline_code == "insufficient_funds"
    good_pm = await transport.create_payment_method(session, card_result(), idempotency_key=f"{key}-pm2")
    paid = await transport.confirm_intent(session, created.id, payment_method=good_pm, idempotency_key=f"{key}-c2")
    assert paid.status == "succeeded" and paid.last_payment_error is None
    assert _charges(sim, request.offline_id) == 1 and len(sim.ledger()[request.offline_id]) == 2


async def test_confirming_a_paid_intent_under_another_key_returns_it_as_it_is(
    sim: SimHandle, transport: StripeTransport
) -> None:
    """Stripe answers payment_intent_unexpected_state with the intent: the transport returns it, the core
    judges it (already paid here), and nothing is charged twice."""
    session = await _session(transport, sim)
    request, key = _request(), _key()
    first = await _pay(transport, session, request, key)
    pm = await transport.create_payment_method(
        session, card_result(), idempotency_key=step_key(key, "payment_method", 1)
    )
    again = await transport.confirm_intent(
        session, first.id, payment_method=pm, idempotency_key=step_key(key, Step.CONFIRM, 1)
    )
    assert again.id == first.id and again.status == "succeeded" and again.offline_id == request.offline_id
    [refused] = [r for r in sim.requests() if r["path"].endswith("/confirm")]
    assert refused["status"] == 400
    assert sim.successful_charges() == {request.offline_id: 1}


async def test_confirming_a_canceled_intent_returns_it_canceled(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    request, key = _request(), _key()
    created = await transport.create_intent(session, request, idempotency_key=f"{key}-create")
    await transport.cancel_intent(session, created.id)
    pm = await transport.create_payment_method(session, card_result(), idempotency_key=f"{key}-payment_method")
    snapshot = await transport.confirm_intent(session, created.id, payment_method=pm, idempotency_key=f"{key}-c")
    assert snapshot.id == created.id and snapshot.status == "canceled"
    assert sim.successful_charges() == {}


async def test_a_processing_answer_is_returned_and_confirming_it_again_returns_it_too(
    sim: SimHandle, transport: StripeTransport
) -> None:
    session = await _session(transport, sim)
    request, key = _request(), _key()
    sim.set_faults(confirm_status={"processing": 1.0})
    snapshot = await _pay(transport, session, request, key)
    assert snapshot.status == "processing"
    sim.set_faults()
    pm = await transport.create_payment_method(session, card_result(), idempotency_key=f"{key}-g1-payment_method")
    again = await transport.confirm_intent(session, snapshot.id, payment_method=pm, idempotency_key=f"{key}-g1-c")
    assert again.id == snapshot.id and again.status == "processing"
    sim.advance_clock(5)
    assert (await transport.retrieve_intent(session, snapshot.id)).status == "succeeded"
    assert _charges(sim, request.offline_id) == 1


async def test_other_refusals_of_a_confirm_still_raise(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    created = await transport.create_intent(session, _request(), idempotency_key=_key())
    with pytest.raises(PermanentProcessorError) as info:
        await transport.confirm_intent(session, created.id, payment_method="pm_nope", idempotency_key=_key())
    assert info.value.code == "resource_missing" and info.value.http_status == 404
    with pytest.raises(PermanentProcessorError) as info:
        await transport.confirm_intent(session, "pi_nope", payment_method="pm_nope", idempotency_key=_key())
    assert info.value.code == "resource_missing"


# -- retrieve, find, cancel ---------------------------------------------------------------------------


async def test_retrieve_gives_the_intent_as_it_is(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    request = _request(amount=1234, currency="GBP")
    paid = await _pay(transport, session, request, _key())
    snapshot = await transport.retrieve_intent(session, paid.id)
    assert (snapshot.id, snapshot.status, snapshot.amount, snapshot.currency) == (paid.id, "succeeded", 1234, "gbp")
    assert snapshot.offline_id == request.offline_id and snapshot.request_id != paid.request_id
    [get] = [r for r in sim.requests() if r["method"] == "GET"]
    assert get["path"] == f"/v1/payment_intents/{paid.id}" and get["idempotency_key"] is None


async def test_retrieving_an_unknown_intent_is_payment_not_found(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    with pytest.raises(PaymentNotFound) as info:
        await transport.retrieve_intent(session, "pi_doesnotexist")
    assert "pi_doesnotexist" in str(info.value) and session.secret not in str(info.value)
    assert info.value.details["request_id"].startswith("req_")


@pytest.mark.parametrize("intent_id", ["", "pi_x/../../v1/refunds", "pi_x?expand=y", "pi x", "pi_é"])
async def test_an_intent_id_that_is_no_id_is_refused_before_sending(
    sim: SimHandle, transport: StripeTransport, intent_id: str
) -> None:
    session = await _session(transport, sim)
    for call in (
        transport.retrieve_intent(session, intent_id),
        transport.cancel_intent(session, intent_id),
        transport.confirm_intent(session, intent_id, payment_method="pm_x", idempotency_key="k"),
    ):
        with pytest.raises(InvalidRequest):
            await call
    assert [r for r in sim.requests() if r["auth"] == "session"] == [], "nothing was sent"


async def test_cancel_twice_returns_the_canceled_intent_both_times(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    request = _request()
    created = await transport.create_intent(session, request, idempotency_key=_key())
    first = await transport.cancel_intent(session, created.id)
    second = await transport.cancel_intent(session, created.id)
    assert first.id == second.id == created.id and first.status == second.status == "canceled"
    assert second.offline_id == request.offline_id
    cancels = [r for r in sim.requests() if r["path"].endswith("/cancel")]
    assert [r["idempotency_key"] for r in cancels] == [f"{created.id}-cancel"] * 2


async def test_a_paid_intent_cannot_be_canceled(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    paid = await _pay(transport, session, _request(), _key())
    with pytest.raises(PermanentProcessorError) as info:
        await transport.cancel_intent(session, paid.id)
    assert info.value.code == "payment_intent_unexpected_state"
    assert (await transport.retrieve_intent(session, paid.id)).status == "succeeded"


async def test_find_intent_finds_it_by_offline_id(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    request = _request()
    paid = await _pay(transport, session, request, _key())
    await _pay(transport, session, _request(), _key())  # another payment: never mistaken for this one
    found = await transport.find_intent(session, request.offline_id)
    assert found is not None and (found.id, found.status, found.offline_id) == (
        paid.id,
        "succeeded",
        request.offline_id,
    )
    [search] = [r for r in sim.requests() if r["path"] == "/v1/payment_intents/search"]
    assert search["method"] == "GET" and search["status"] == 200
    assert search["params"]["query"] == f"metadata['offterm_offline_id']:'{request.offline_id}'"


async def test_find_intent_finds_nothing(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    await _pay(transport, session, _request(), _key())
    assert await transport.find_intent(session, "offpi_" + uuid.uuid4().hex) is None


async def test_of_several_intents_find_prefers_the_paid_one_and_warns(
    sim: SimHandle, transport: StripeTransport
) -> None:
    session = await _session(transport, sim)
    request = _request()
    paid = await _pay(transport, session, request, _key())
    newer = await transport.create_intent(session, request, idempotency_key=_key())  # same offline id, unpaid
    capture = structlog.testing.LogCapture()
    saved = structlog.get_config()
    structlog.configure(processors=[capture])
    try:
        found = await transport.find_intent(session, request.offline_id)
    finally:
        structlog.configure(**saved)
    assert found is not None and found.id == paid.id and newer.id != paid.id
    [warning] = [e for e in capture.entries if e["event"] == "stripe_search_several_intents"]
    assert warning["log_level"] == "warning" and warning["count"] == 2 and warning["chosen"] == paid.id


async def test_of_several_unpaid_intents_find_takes_the_newest(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    request = _request()
    older = await transport.create_intent(session, request, idempotency_key=_key())
    sim.advance_clock(2)
    newer = await transport.create_intent(session, request, idempotency_key=_key())
    await transport.cancel_intent(session, older.id)
    found = await transport.find_intent(session, request.offline_id)
    assert found is not None and found.id == newer.id and found.status == "requires_payment_method"


async def test_find_intent_sees_only_what_the_index_holds() -> None:
    """Stripe's search lags (``search_delay``): a fresh intent is not found yet, later it is."""
    with running_simulator(search_delay=60.0) as sim:
        t = StripeTransport(sim.url)
        try:
            assert t.search_delay == 3600.0
            session = await _session(t, sim)
            request = _request()
            paid = await _pay(t, session, request, _key())
            assert await t.find_intent(session, request.offline_id) is None
            sim.advance_clock(61)
            found = await t.find_intent(session, request.offline_id)
            assert found is not None and found.id == paid.id
        finally:
            await t.close()


@pytest.mark.parametrize(
    "offline_id", ["", "offpi_'x", "offpi_x' OR metadata['a']:'b", 'offpi_"x', "offpi_\\", "offpi x", "x" * 201]
)
async def test_find_intent_refuses_an_offline_id_that_is_not_ours(
    sim: SimHandle, transport: StripeTransport, offline_id: str
) -> None:
    session = await _session(transport, sim)
    with pytest.raises(InvalidRequest) as info:
        await transport.find_intent(session, offline_id)
    assert "'" not in info.value.message.split("(")[-1]
    assert [r for r in sim.requests() if r["auth"] == "session"] == [], "nothing was sent"


# -- error classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "should_retry", "unknown"), [(500, None, True), (502, None, True), (503, True, True), (429, True, False)]
)
async def test_server_errors_are_transient(
    sim: SimHandle, transport: StripeTransport, status: int, should_retry: bool | None, unknown: bool
) -> None:
    """Retried with the same key; a 5xx to a POST is also OutcomeUnknown (Stripe: a 500's result is
    indeterminate), a 429 is not (the request was turned away before anything ran)."""
    session = await _session(transport, sim)
    sim.set_faults(error_rates={status: 1.0})
    with pytest.raises(TransientProcessorError) as info:
        await transport.create_intent(session, _request(), idempotency_key=_key())
    assert isinstance(info.value, OutcomeUnknown) is unknown
    assert info.value.http_status == status and info.value.should_retry is should_retry
    with pytest.raises(TransientProcessorError) as info:  # a GET changed nothing: never unknown
        await transport.retrieve_intent(session, "pi_x")
    assert not isinstance(info.value, OutcomeUnknown) and info.value.http_status == status


async def test_conflicting_use_of_a_key_is_permanent(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    request, key = _request(), _key()
    await transport.create_intent(session, request, idempotency_key=key)
    with pytest.raises(PermanentProcessorError) as info:
        await transport.create_intent(session, replace(request, amount=1), idempotency_key=key)
    assert info.value.code == "idempotency_error"


async def test_concurrent_use_of_a_key_is_transient() -> None:
    with running_simulator(faults={"latency": 0.5}) as sim:
        t = StripeTransport(sim.url)
        try:
            session = await _session(t, sim)
            request = _request()
            first = asyncio.create_task(t.create_intent(session, request, idempotency_key="same-key"))
            await asyncio.sleep(0.15)
            with pytest.raises(TransientProcessorError) as info:
                await t.create_intent(session, request, idempotency_key="same-key")
            assert info.value.http_status == 409
            assert (await first).id.startswith("pi_")
        finally:
            await t.close()


async def test_invalid_requests_are_permanent(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    with pytest.raises(PermanentProcessorError) as info:
        await transport.create_intent(session, _request(currency="us dollars"), idempotency_key=_key())
    assert info.value.http_status == 400 and info.value.code == "parameter_invalid"
    with pytest.raises(PermanentProcessorError):
        await transport.create_intent(session, _request(metadata={"k" * 41: "v"}), idempotency_key=_key())


async def test_refused_credentials_are_authentication_failures(sim: SimHandle, transport: StripeTransport) -> None:
    token = ConnectionToken(sim.connection_token())
    session = await transport.authenticate(token)
    assert session.account_id == sim.config.account_id and session.livemode is False
    with pytest.raises(AuthenticationFailed) as info:
        await transport.authenticate(token)  # single-use
    assert token.secret not in str(info.value)
    forged = ProcessorSession(account_id=session.account_id, livemode=False, secret="dss_forged")
    for call in (
        transport.create_intent(forged, _request(), idempotency_key=_key()),
        transport.retrieve_intent(forged, "pi_x"),
        transport.find_intent(forged, "offpi_x"),
    ):
        with pytest.raises(AuthenticationFailed) as info2:
            await call
        assert "dss_forged" not in str(info2.value) and info2.value.http_status == 401


async def test_expired_session_is_an_authentication_failure() -> None:
    with running_simulator(session_ttl=0.3) as sim:
        t = StripeTransport(sim.url)
        try:
            session = await _session(t, sim)
            await asyncio.sleep(0.5)
            with pytest.raises(AuthenticationFailed):
                await t.create_intent(session, _request(), idempotency_key=_key())
        finally:
            await t.close()


async def test_unreachable_processor_is_transient_not_unknown() -> None:
    with running_simulator() as sim:
        url = sim.url
    t = StripeTransport(url, connect_timeout=0.5)
    try:
        with pytest.raises(TransientProcessorError) as info:
            await t.create_intent(ProcessorSession("acct", False, "dss_x"), _request(), idempotency_key=_key())
        assert not isinstance(info.value, OutcomeUnknown) and info.value.http_status is None
        assert await t.probe() is False
    finally:
        await t.close()


# -- unknown outcomes and exactly-once ----------------------------------------------------------------


async def test_commit_then_drop_is_unknown_and_the_retry_charges_once(
    sim: SimHandle, transport: StripeTransport
) -> None:
    session = await _session(transport, sim)
    request, key, card = _request(), _key(), card_result()
    sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents",))  # only create-and-confirm
    with pytest.raises(OutcomeUnknown) as info:
        await _pay(transport, session, request, key, card)
    assert info.value.http_status is None
    assert sim.successful_charges() == {request.offline_id: 1}  # it did happen
    sim.set_faults()
    snapshot = await _pay(transport, session, request, key, card)
    assert snapshot.status == "succeeded"
    assert sim.successful_charges() == {request.offline_id: 1}
    # What the core does once a key may have been pruned: look it up instead of sending anything new.
    found = await transport.find_intent(session, request.offline_id)
    assert found is not None and found.id == snapshot.id


async def test_answer_after_the_timeout_is_unknown_and_the_retry_charges_once() -> None:
    with running_simulator() as sim:
        t = StripeTransport(sim.url, timeout=0.4)
        try:
            session = await _session(t, sim)
            request, key, card = _request(), _key(), card_result()
            sim.set_faults(commit_delay_rate=1.0, commit_delay=1.5)
            with pytest.raises(OutcomeUnknown):
                await _pay(t, session, request, key, card)
            sim.set_faults()
            assert (await _pay(t, session, request, key, card)).status == "succeeded"
            assert sim.successful_charges() == {request.offline_id: 1}
            assert len(sim.ledger()[request.offline_id]) == 1
        finally:
            await t.close()


async def test_connection_cut_after_sending_is_unknown(sim: SimHandle) -> None:
    with FaultProxy(sim.port) as proxy:
        t = StripeTransport(proxy.url, timeout=0.5)
        try:
            session = await _session(t, sim)
            proxy.set_mode("blackhole")
            with pytest.raises(OutcomeUnknown):
                await t.create_intent(session, _request(), idempotency_key=_key())
            with pytest.raises(TransientProcessorError) as info:
                await t.retrieve_intent(session, "pi_x")
            assert not isinstance(info.value, OutcomeUnknown), "a GET changes nothing"
            proxy.set_mode("down")
            with pytest.raises(TransientProcessorError) as info:
                await t.create_intent(session, _request(), idempotency_key=_key())
            assert not isinstance(info.value, OutcomeUnknown)
            assert await t.probe() is False
            proxy.set_mode("pass")
            assert await t.probe() is True
            assert (await _pay(t, session, _request(), _key())).status == "succeeded"
        finally:
            await t.close()


async def test_every_exchange_logs_under_its_own_request_id(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    sim.set_faults(error_rates={503: 1.0})
    capture = structlog.testing.LogCapture()
    saved = structlog.get_config()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        for _ in range(2):
            with pytest.raises(TransientProcessorError):
                await transport.create_intent(session, _request(), idempotency_key=_key())
    finally:
        structlog.configure(**saved)
    errors = [e for e in capture.entries if e["event"] == "stripe_error"]
    assert len(errors) == 2
    ours = [e["request_id"] for e in errors]
    assert all(rid.startswith("req_") for rid in ours) and len(set(ours)) == 2
    assert all(e["stripe_request_id"] and e["stripe_request_id"] != e["request_id"] for e in errors)
    assert structlog.contextvars.get_contextvars().get("request_id") is None  # unbound after each exchange


# -- probe, TLS rule, registration -------------------------------------------------------------------


async def test_probe_counts_any_answer(sim: SimHandle, transport: StripeTransport) -> None:
    assert await transport.probe() is True
    sim.set_faults(error_rates={500: 1.0})
    assert await transport.probe() is True


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1", "http://127.8.9.10", "http://localhost:4242", "http://[::1]:80", "https://x.test"]
)
def test_allowed_api_bases(url: str) -> None:
    StripeTransport(url)


@pytest.mark.parametrize(
    "url", ["http://api.stripe.com", "http://10.0.0.1", "http://[2001:db8::1]", "ftp://127.0.0.1", "not a url"]
)
def test_plain_http_beyond_loopback_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        StripeTransport(url)
    assert info.value.key == "api_base"


def test_tls_is_verified() -> None:
    t = StripeTransport("https://api.stripe.com")
    pool = t.http.client._transport._pool  # type: ignore[attr-defined]
    assert pool._ssl_context.verify_mode is ssl.CERT_REQUIRED
    assert pool._ssl_context.check_hostname is True


def test_registration_and_factory(tmp_path: Any) -> None:
    regs = list(stripe_plugin.offterm_forwarding_transports())
    assert len(regs) == 1 and isinstance(regs[0], ForwardingTransportRegistration)
    reg = regs[0]
    assert reg.name == "stripe"
    assert {o.key for o in reg.options} >= {"api_base", "stripe_version", "timeout", "connect_timeout", "search_delay"}
    assert all(o.help for o in reg.options)
    defaults = {o.key: o.default for o in reg.options}
    assert defaults["search_delay"] == 3600.0
    t = reg.factory(ComponentContext("stripe", {**defaults, "api_base": "http://127.0.0.1:9"}, tmp_path))
    assert isinstance(t, StripeTransport) and t.http.stripe_version == "2023-08-16" and t.search_delay == 3600.0
    t = reg.factory(
        ComponentContext("stripe", {**defaults, "api_base": "http://127.0.0.1:9", "search_delay": 5}, tmp_path)
    )
    assert t.search_delay == 5.0
    with pytest.raises(ConfigError) as info:
        reg.factory(ComponentContext("stripe", {**defaults, "api_base": "http://example.com"}, tmp_path))
    assert info.value.key == "api_base"
    with pytest.raises(ConfigError) as info:  # the core refuses it before any factory runs
        validate_options("forwarding.stripe", reg.options, {"timeout": 0}, env={})
    assert info.value.key == "forwarding.stripe.timeout"


async def test_exactly_once_under_mixed_faults() -> None:
    """200 payments through 40% injected faults, each retried under its keys as the core would: each
    approved card charged once, each decline returned as the intent and recorded once."""
    faults = {
        "error_rates": {500: 0.08, 503: 0.05, 429: 0.05},
        "reset_rate": 0.05,
        "drop_rate": 0.05,
        "commit_drop_rate": 0.12,
        "seed": 7,
    }
    with running_simulator() as sim:
        t = StripeTransport(sim.url, timeout=2.0, max_connections=8)
        try:
            session = await _session(t, sim)
            sim.set_faults(**faults)
            pans = [VISA, "5555555555554444", "4000000000009995"]
            payments = [(_request(), _key(), card_result(pans[i % 3])) for i in range(200)]
            outcomes: dict[str, str] = {}
            retries = 0

            async def forward(request: IntentRequest, key: str, card: CardResult) -> None:
                nonlocal retries
                for _ in range(50):
                    try:
                        snapshot = await _pay(t, session, request, key, card)
                    except TransientProcessorError:
                        retries += 1
                        continue
                    outcomes[request.offline_id] = snapshot.status
                    return
                outcomes[request.offline_id] = "gave_up"

            queue = list(payments)

            async def worker() -> None:
                while queue:
                    await forward(*queue.pop())

            await asyncio.gather(*(worker() for _ in range(8)))
        finally:
            await t.close()
        counts = sim.successful_charges()
        ledger = sim.ledger()
        injected = sim.injected()
    assert retries > 50 and set(injected) == {"500", "503", "429", "reset", "drop", "commit_drop"}
    for i, (request, _, _) in enumerate(payments):
        if i % 3 == 2:
            assert outcomes[request.offline_id] == "requires_payment_method"
            assert counts[request.offline_id] == 0 and len(ledger[request.offline_id]) == 1
        else:
            assert outcomes[request.offline_id] == "succeeded"
            assert counts[request.offline_id] == 1 and len(ledger[request.offline_id]) == 1
