"""The Stripe transport against a real simulator on loopback."""

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

from offterm.core.contracts import ConnectionToken, ProcessorSession, Submission
from offterm.core.errors import (
    AuthenticationFailed,
    CardDeclined,
    ConfigError,
    OutcomeUnknown,
    PermanentProcessorError,
    TransientProcessorError,
)
from offterm.core.models import CaptureMethod, IntentStatus
from offterm.core.registrations import ComponentContext, ForwardingTransportRegistration
from offterm.plugins.transport import stripe as stripe_plugin
from offterm.plugins.transport.stripe import StripeTransport, step_key
from offterm.sim.netproxy import FaultProxy
from offterm.sim.processor import SimHandle, running_simulator
from offterm.sim.processor.spec import StripeSpec, find_spec
from offterm.sim.processor.testing import card_result

PUBLIC_PREFIX = "/v1/"


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


def _submission(pan: str = "4242424242424242", **overrides: Any) -> Submission:
    values: dict[str, Any] = {
        "offline_id": "offpi_" + uuid.uuid4().hex,
        "idempotency_key": "offterm-" + uuid.uuid4().hex,
        "amount": 2599,
        "currency": "usd",
        "capture_method": CaptureMethod.AUTOMATIC,
        "metadata": {"order": "A-17"},
        "card": card_result(pan),
        "description": "coffee",
    }
    values.update(overrides)
    return Submission(**values)


# -- wire conventions --------------------------------------------------------------------------


async def test_submit_speaks_stripes_wire_conventions(spec_sim: SimHandle, stripe_spec: StripeSpec) -> None:
    t = StripeTransport(spec_sim.url, stripe_version="2023-08-16")
    try:
        session = await _session(t, spec_sim)
        stored_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        sub = _submission(stored_at=stored_at)
        result = await t.submit(session, sub)
    finally:
        await t.close()
    assert result.status is IntentStatus.SUCCEEDED and result.replayed is False
    assert spec_sim.spec_violations() == []
    requests = [r for r in spec_sim.requests() if r["auth"] == "session"]
    assert [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in requests] == [
        ("POST", "payment_intents"),
        ("POST", "payment_methods"),
        ("POST", "confirm"),
    ]
    assert [r["idempotency_key"] for r in requests] == [
        step_key(sub.idempotency_key, s) for s in ("create", "payment_method", "confirm")
    ]
    for r in requests:
        assert r["stripe_version"] == "2023-08-16"
        assert r["content_type"] == "application/x-www-form-urlencoded"
        assert r["status"] == 200
        if r["path"].startswith(PUBLIC_PREFIX):
            assert stripe_spec.check_request(r["method"], r["path"], r["params"]) == []
    create = requests[0]["params"]
    assert create["metadata"] == {"order": "A-17", "offterm_offline_id": sub.offline_id}
    assert create["payment_method_types"] == ["card_present"]
    assert create["amount"] == "2599" and create["capture_method"] == "automatic"
    # When it was stored travels with the device step, as a header (outside the parameters a key compares).
    assert [r["stored_at"] for r in requests] == [None, stored_at.isoformat(), None]
    [charge] = spec_sim.ledger()[sub.offline_id]
    assert charge["offline"] == {"stored_at": int(stored_at.timestamp()), "type": "deferred"}
    assert spec_sim.successful_charges() == {sub.offline_id: 1}


async def test_every_public_request_conforms_to_the_spec(spec_sim: SimHandle, stripe_spec: StripeSpec) -> None:
    t = StripeTransport(spec_sim.url)
    try:
        session = await _session(t, spec_sim)
        sub = _submission(capture_method=CaptureMethod.MANUAL)
        result = await t.submit(session, sub)
        assert result.status is IntentStatus.REQUIRES_CAPTURE
        assert await t.capture_intent(session, result.intent_id, idempotency_key=sub.idempotency_key, amount=2000) == (
            IntentStatus.SUCCEEDED
        )
        assert (await t.retrieve_intent(session, result.intent_id))["amount_received"] == 2000
        await t.refund(session, result.intent_id, idempotency_key=sub.idempotency_key, amount=500)
        other = await t.create_intent(
            session,
            offline_id="offpi_x",
            amount=100,
            currency="EUR",
            capture_method=CaptureMethod.AUTOMATIC,
            metadata={},
            description=None,
            idempotency_key="offpi_x-create",
        )
        await t.cancel_intent(session, other)
        await t.cancel_intent(session, other)  # already canceled: fine
    finally:
        await t.close()
    assert spec_sim.spec_violations() == []
    public = [r for r in spec_sim.requests() if r["path"].startswith(PUBLIC_PREFIX) and r["auth"] == "session"]
    steps = {r["path"].rsplit("/", 1)[-1] for r in public}
    assert steps >= {"payment_intents", "confirm", "capture", "cancel", "refunds"}
    for r in public:
        assert stripe_spec.check_request(r["method"], r["path"], r["params"]) == [], r
        if r["method"] == "POST":
            assert r["idempotency_key"]


async def test_retry_replays_every_step(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    sub = _submission()
    first = await transport.submit(session, sub)
    again = await transport.submit(session, sub)
    assert again.intent_id == first.intent_id and again.replayed is True
    assert sim.successful_charges() == {sub.offline_id: 1}


async def test_submit_with_an_existing_intent(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    sub = _submission()
    intent_id = await transport.create_intent(
        session,
        offline_id=sub.offline_id,
        amount=sub.amount,
        currency=sub.currency,
        capture_method=sub.capture_method,
        metadata=sub.metadata,
        description=None,
        idempotency_key=f"{sub.offline_id}-create",
    )
    result = await transport.submit(session, _submission(offline_id=sub.offline_id, intent_id=intent_id))
    assert result.intent_id == intent_id and result.status is IntentStatus.SUCCEEDED
    assert len([r for r in sim.requests() if r["path"] == "/v1/payment_intents"]) == 1


# -- error classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pan", "decline_code"),
    [
        ("4000000000000002", "generic_decline"),
        ("4000000000009995", "insufficient_funds"),
        ("4000000000000069", "expired_card"),
        ("4242424242424241", "invalid_number"),
    ],
)
async def test_declines_carry_the_decline_code(
    sim: SimHandle, transport: StripeTransport, pan: str, decline_code: str
) -> None:
    session = await _session(transport, sim)
    sub = _submission(pan)
    with pytest.raises(CardDeclined) as info:
        await transport.submit(session, sub)
    assert info.value.decline_code == decline_code
    assert info.value.http_status == 402 and info.value.request_id and info.value.request_id.startswith("req_")
    assert pan not in str(info.value)
    # A retry replays the decline: still no charge.
    with pytest.raises(CardDeclined):
        await transport.submit(session, sub)
    assert sim.successful_charges() == {sub.offline_id: 0}
    assert len(sim.ledger()[sub.offline_id]) == 1


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
        await transport.submit(session, _submission())
    assert isinstance(info.value, OutcomeUnknown) is unknown
    assert info.value.http_status == status and info.value.should_retry is should_retry


async def test_conflicting_use_of_a_key_is_permanent(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    sub = _submission()
    await transport.submit(session, sub)
    with pytest.raises(PermanentProcessorError) as info:
        await transport.submit(session, _submission(idempotency_key=sub.idempotency_key, amount=1))
    assert info.value.code == "idempotency_error"


async def test_concurrent_use_of_a_key_is_transient() -> None:
    with running_simulator(faults={"latency": 0.5}) as sim:
        t = StripeTransport(sim.url)
        try:
            session = await _session(t, sim)
            kwargs: dict[str, Any] = {
                "offline_id": "offpi_c",
                "amount": 100,
                "currency": "usd",
                "capture_method": CaptureMethod.AUTOMATIC,
                "metadata": {},
                "description": None,
                "idempotency_key": "same-key",
            }
            first = asyncio.create_task(t.create_intent(session, **kwargs))
            await asyncio.sleep(0.15)
            with pytest.raises(TransientProcessorError) as info:
                await t.create_intent(session, **kwargs)
            assert info.value.http_status == 409
            assert (await first).startswith("pi_")
        finally:
            await t.close()


async def test_invalid_requests_are_permanent(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    with pytest.raises(PermanentProcessorError) as info:
        await transport.submit(session, _submission(currency="us dollars"))
    assert info.value.http_status == 400 and info.value.code == "parameter_invalid"
    with pytest.raises(PermanentProcessorError):
        await transport.submit(session, _submission(metadata={"k" * 41: "v"}))


async def test_refused_credentials_are_authentication_failures(sim: SimHandle, transport: StripeTransport) -> None:
    token = ConnectionToken(sim.connection_token())
    session = await transport.authenticate(token)
    assert session.account_id == sim.config.account_id and session.livemode is False
    with pytest.raises(AuthenticationFailed) as info:
        await transport.authenticate(token)  # single-use
    assert token.secret not in str(info.value)
    forged = ProcessorSession(account_id=session.account_id, livemode=False, secret="dss_forged")
    with pytest.raises(AuthenticationFailed) as info2:
        await transport.submit(forged, _submission())
    assert "dss_forged" not in str(info2.value) and info2.value.http_status == 401


async def test_expired_session_is_an_authentication_failure() -> None:
    with running_simulator(session_ttl=0.3) as sim:
        t = StripeTransport(sim.url)
        try:
            session = await _session(t, sim)
            await asyncio.sleep(0.5)
            with pytest.raises(AuthenticationFailed):
                await t.submit(session, _submission())
        finally:
            await t.close()


async def test_unreachable_processor_is_transient_not_unknown() -> None:
    with running_simulator() as sim:
        url = sim.url
    t = StripeTransport(url, connect_timeout=0.5)
    try:
        with pytest.raises(TransientProcessorError) as info:
            await t.submit(ProcessorSession("acct", False, "dss_x"), _submission())
        assert not isinstance(info.value, OutcomeUnknown) and info.value.http_status is None
        assert await t.probe() is False
    finally:
        await t.close()


# -- unknown outcomes and exactly-once ----------------------------------------------------------------


async def test_commit_then_drop_is_unknown_and_the_retry_charges_once(
    sim: SimHandle, transport: StripeTransport
) -> None:
    session = await _session(transport, sim)
    sub = _submission()
    sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents/",))  # only confirm
    with pytest.raises(OutcomeUnknown) as info:
        await transport.submit(session, sub)
    assert info.value.http_status is None
    assert sim.successful_charges() == {sub.offline_id: 1}  # it did happen
    sim.set_faults()
    result = await transport.submit(session, sub)
    assert result.status is IntentStatus.SUCCEEDED and result.replayed is True
    assert sim.successful_charges() == {sub.offline_id: 1}


async def test_answer_after_the_timeout_is_unknown_and_the_retry_charges_once() -> None:
    with running_simulator() as sim:
        t = StripeTransport(sim.url, timeout=0.4)
        try:
            session = await _session(t, sim)
            sub = _submission()
            sim.set_faults(commit_delay_rate=1.0, commit_delay=1.5)
            with pytest.raises(OutcomeUnknown):
                await t.submit(session, sub)
            sim.set_faults()
            result = await t.submit(session, sub)
            assert result.status is IntentStatus.SUCCEEDED
            # The create step's answer was lost too: the retry must land on the same intent.
            assert sim.successful_charges() == {sub.offline_id: 1}
            assert len(sim.ledger()[sub.offline_id]) == 1
        finally:
            await t.close()


async def test_connection_cut_after_sending_is_unknown(sim: SimHandle) -> None:
    with FaultProxy(sim.port) as proxy:
        t = StripeTransport(proxy.url, timeout=0.5)
        try:
            session = await _session(t, sim)
            proxy.set_mode("blackhole")
            with pytest.raises(OutcomeUnknown):
                await t.submit(session, _submission())
            proxy.set_mode("down")
            with pytest.raises(TransientProcessorError) as info:
                await t.submit(session, _submission())
            assert not isinstance(info.value, OutcomeUnknown)
            assert await t.probe() is False
            proxy.set_mode("pass")
            assert await t.probe() is True
            assert (await t.submit(session, _submission())).status is IntentStatus.SUCCEEDED
        finally:
            await t.close()


def _bodies_by_key(sim: SimHandle, key: str) -> dict[str, set[str]]:
    """Idempotency key -> the digests of every body sent under it, for one payment's keys."""
    out: dict[str, set[str]] = {}
    for r in sim.requests():
        if r["idempotency_key"] and r["idempotency_key"].startswith(key + "-"):
            out.setdefault(r["idempotency_key"], set()).add(r["body_sha256"])
    return out


async def test_online_and_stored_attempts_send_byte_identical_steps(sim: SimHandle, transport: StripeTransport) -> None:
    """An online attempt that fell back offline is finished from the store under the same keys: every step
    (create, payment_method, confirm, capture) must send the very same bytes, or Stripe refuses the key."""
    session = await _session(transport, sim)
    online = _submission(metadata={"order": "A-17", "lane": "3"}, capture_method=CaptureMethod.MANUAL)
    # As the store gives it back: metadata in another order, and when it was stored.
    stored = replace(online, metadata={"lane": "3", "order": "A-17"}, stored_at=datetime.now(UTC))
    sim.set_faults(commit_drop_rate=1.0, paths=("/device/v1/payment_methods",))
    with pytest.raises(OutcomeUnknown):  # create ran; the card step ran, its answer was lost
        await transport.submit(session, online)
    sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents/",))
    with pytest.raises(OutcomeUnknown):  # both replayed; confirm ran, its answer was lost
        await transport.submit(session, online)
    sim.set_faults()
    result = await transport.submit(session, stored)
    assert result.status is IntentStatus.REQUIRES_CAPTURE and result.replayed is True
    sim.set_faults(commit_drop_rate=1.0, paths=("/v1/payment_intents/",))
    with pytest.raises(OutcomeUnknown):
        await transport.capture_intent(session, result.intent_id, idempotency_key=online.idempotency_key)
    sim.set_faults()
    assert await transport.capture_intent(session, result.intent_id, idempotency_key=stored.idempotency_key) == (
        IntentStatus.SUCCEEDED
    )

    bodies = _bodies_by_key(sim, online.idempotency_key)
    steps = ("create", "payment_method", "confirm", "capture")
    assert set(bodies) == {step_key(online.idempotency_key, s) for s in steps}
    assert all(len(digests) == 1 for digests in bodies.values()), bodies
    assert not [r for r in sim.requests() if r["status"] == 400]
    assert sim.successful_charges() == {online.offline_id: 1}


async def test_every_exchange_logs_under_its_own_request_id(sim: SimHandle, transport: StripeTransport) -> None:
    session = await _session(transport, sim)
    sim.set_faults(error_rates={503: 1.0})
    capture = structlog.testing.LogCapture()
    saved = structlog.get_config()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        for _ in range(2):
            with pytest.raises(TransientProcessorError):
                await transport.submit(session, _submission())
    finally:
        structlog.configure(**saved)
    errors = [e for e in capture.entries if e["event"] == "stripe_error"]
    assert len(errors) == 2
    ours = [e["request_id"] for e in errors]
    assert all(rid.startswith("req_") for rid in ours) and len(set(ours)) == 2
    assert all(e["stripe_request_id"] and e["stripe_request_id"] != e["request_id"] for e in errors)
    assert structlog.contextvars.get_contextvars().get("request_id") is None  # unbound after each exchange


async def test_a_differently_keyed_confirm_of_a_done_intent_counts_as_done(
    sim: SimHandle, transport: StripeTransport
) -> None:
    session = await _session(transport, sim)
    sub = _submission()
    first = await transport.submit(session, sub)
    # Same intent, new key (e.g. an online attempt used another one): Stripe says "already succeeded".
    again = await transport.submit(session, _submission(offline_id=sub.offline_id, intent_id=first.intent_id))
    assert again.intent_id == first.intent_id and again.status is IntentStatus.SUCCEEDED and again.replayed
    assert sim.successful_charges() == {sub.offline_id: 1}


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
    assert {o.key for o in reg.options} >= {"api_base", "stripe_version", "timeout", "connect_timeout"}
    assert all(o.help for o in reg.options)
    defaults = {o.key: o.default for o in reg.options}
    t = reg.factory(ComponentContext("stripe", {**defaults, "api_base": "http://127.0.0.1:9"}, tmp_path))
    assert isinstance(t, StripeTransport) and t.http.stripe_version == "2023-08-16"
    with pytest.raises(ConfigError) as info:
        reg.factory(ComponentContext("stripe", {**defaults, "api_base": "http://example.com"}, tmp_path))
    assert info.value.key == "api_base"
    with pytest.raises(ConfigError) as info:
        reg.factory(ComponentContext("stripe", {**defaults, "timeout": 0}, tmp_path))
    assert info.value.key == "timeout"


async def test_exactly_once_under_mixed_faults() -> None:
    """200 payments through 40% injected faults: each approved card charged once, each decline recorded once."""
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
            pans = ["4242424242424242", "5555555555554444", "4000000000009995"]
            subs = [_submission(pans[i % 3]) for i in range(200)]
            outcomes: dict[str, str] = {}
            retries = 0

            async def forward(sub: Submission) -> None:
                nonlocal retries
                for _ in range(50):
                    try:
                        await t.submit(session, sub)
                        outcomes[sub.offline_id] = "charged"
                        return
                    except CardDeclined:
                        outcomes[sub.offline_id] = "declined"
                        return
                    except TransientProcessorError:
                        retries += 1
                outcomes[sub.offline_id] = "gave_up"

            queue = list(subs)

            async def worker() -> None:
                while queue:
                    await forward(queue.pop())

            await asyncio.gather(*(worker() for _ in range(8)))
        finally:
            await t.close()
        counts = sim.successful_charges()
        ledger = sim.ledger()
        injected = sim.injected()
    assert retries > 50 and set(injected) == {"500", "503", "429", "reset", "drop", "commit_drop"}
    for i, sub in enumerate(subs):
        if i % 3 == 2:
            assert outcomes[sub.offline_id] == "declined"
            assert counts[sub.offline_id] == 0 and len(ledger[sub.offline_id]) == 1
        else:
            assert outcomes[sub.offline_id] == "charged"
            assert counts[sub.offline_id] == 1 and len(ledger[sub.offline_id]) == 1
