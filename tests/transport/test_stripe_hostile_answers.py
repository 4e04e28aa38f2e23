"""The Stripe transport against answers no processor sends: redirects, floods, drips.

A captive portal, a misconfigured proxy or a broken middlebox may answer in
the processor's place.  None of it may park a payment, grow the POS's memory
or hold the forwarder: each is a typed, retryable error, and the retry under
the same keys charges once.  The first tests drive the transport directly;
the last ones (moved from the torture suite's found-bugs list) drive a
Terminal's forwarder.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from stripe_hostile import HostileFront

from offterm.core import OfflineBehavior, Terminal
from offterm.core._engine.keys import Step, step_key
from offterm.core.contracts import CardResult, ConnectionToken, ProcessorSession
from offterm.core.contracts.forwarding import IntentRequest, IntentSnapshot
from offterm.core.errors import CardDeclined, OutcomeUnknown, TransientProcessorError
from offterm.core.models import CaptureMethod
from offterm.plugins.transport.stripe import StripeTransport
from offterm.sim.processor import SimHandle
from offterm.sim.processor.testing import card_result
from offterm.testing import terminal_config

#: What a client that reads without limit would have taken in; a capped one stops far below.
FLOOD_CEILING = 16 << 20

STEP_PATHS = {
    "payment_method": ("/device/v1/payment_methods",),
    "create_and_confirm": ("/v1/payment_intents",),
    "confirm": ("/v1/payment_intents/",),
}


@pytest.fixture
async def transport(hostile: HostileFront) -> AsyncIterator[StripeTransport]:
    t = StripeTransport(hostile.url, timeout=2.0, connect_timeout=1.0)
    yield t
    await t.close()


async def _session(t: StripeTransport, sim: SimHandle) -> ProcessorSession:
    return await t.authenticate(ConnectionToken(sim.connection_token()))


class _Payment:
    """One payment as the core forwards it, under fixed keys: the card step, then create-and-confirm
    (or, once ``intent_id`` is known, confirm)."""

    def __init__(self) -> None:
        self.request = IntentRequest(
            offline_id="offpi_" + uuid.uuid4().hex,
            amount=1250,
            currency="usd",
            capture_method=CaptureMethod.AUTOMATIC,
            metadata={},
        )
        self.key = "offterm-" + uuid.uuid4().hex
        self.card: CardResult = card_result()
        self.intent_id: str | None = None

    async def send(self, t: StripeTransport, session: ProcessorSession) -> IntentSnapshot:
        pm = await t.create_payment_method(session, self.card, idempotency_key=step_key(self.key, Step.PAYMENT_METHOD))
        if self.intent_id is None:
            return await t.create_intent(
                session,
                self.request,
                idempotency_key=step_key(self.key, Step.CREATE_AND_CONFIRM),
                payment_method=pm,
            )
        return await t.confirm_intent(
            session, self.intent_id, payment_method=pm, idempotency_key=step_key(self.key, Step.CONFIRM)
        )


async def _created(t: StripeTransport, session: ProcessorSession) -> _Payment:
    """A payment whose intent was created (online, unconfirmed), so its next step is a confirm."""
    payment = _Payment()
    snapshot = await t.create_intent(session, payment.request, idempotency_key=step_key(payment.key, Step.CREATE))
    payment.intent_id = snapshot.id
    return payment


async def _retry_charges_once(t: StripeTransport, session: ProcessorSession, sim: SimHandle, p: _Payment) -> None:
    snapshot = await p.send(t, session)
    assert snapshot.status == "succeeded"
    assert sim.successful_charges() == {p.request.offline_id: 1}


# -- cookies ---------------------------------------------------------------------------------------


async def test_cookies_set_by_the_processor_are_never_sent_back(
    sim: SimHandle, hostile: HostileFront, transport: StripeTransport
) -> None:
    hostile.set_cookie = "session=from-the-processor; Path=/; Max-Age=3600"
    session = await _session(transport, sim)
    first, second = _Payment(), _Payment()
    for payment in (first, second):
        assert (await payment.send(transport, session)).status == "succeeded"
    assert len(hostile.seen) >= 5, "a session, then two requests per payment, all through the front"
    assert all("cookie" not in headers for _, _, headers in hostile.seen), "no request carried a cookie back"
    assert sim.successful_charges() == {first.request.offline_id: 1, second.request.offline_id: 1}


# -- redirects -------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", list(STEP_PATHS))
async def test_a_redirect_is_transient_and_never_followed(
    sim: SimHandle, hostile: HostileFront, transport: StripeTransport, step: str
) -> None:
    visits: list[bytes] = []

    async def elsewhere_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        visits.append(await reader.read(1024))
        writer.close()

    elsewhere = await asyncio.start_server(elsewhere_handler, "127.0.0.1", 0)
    try:
        hostile.redirect_to = f"http://127.0.0.1:{elsewhere.sockets[0].getsockname()[1]}/steal"
        session = await _session(transport, sim)
        payment = await _created(transport, session) if step == "confirm" else _Payment()
        hostile.arm("redirect", paths=STEP_PATHS[step])
        with pytest.raises(TransientProcessorError) as info:
            await payment.send(transport, session)
        await asyncio.sleep(0.05)  # a followed redirect would have connected by now
    finally:
        elsewhere.close()
        await elsewhere.wait_closed()
    assert not isinstance(info.value, OutcomeUnknown), "the processor never saw it: nothing can have happened"
    assert info.value.code == "unexpected_redirect" and "302" in str(info.value)
    assert info.value.http_status is None, "not the processor's answer"
    assert visits == [], "a payment request must never go to another host"
    await _retry_charges_once(transport, session, sim, payment)


async def test_a_probe_answered_by_a_redirect_finds_the_processor_unreachable(
    hostile: HostileFront, transport: StripeTransport
) -> None:
    hostile.arm("redirect", paths=("/healthcheck",))
    assert await transport.probe() is False
    assert await transport.probe() is True


async def test_a_redirected_lookup_is_transient(
    sim: SimHandle, hostile: HostileFront, transport: StripeTransport
) -> None:
    session = await _session(transport, sim)
    payment = _Payment()
    paid = await payment.send(transport, session)
    hostile.arm("redirect", paths=("/v1/payment_intents/search",))
    with pytest.raises(TransientProcessorError) as info:
        await transport.find_intent(session, payment.request.offline_id)
    assert info.value.code == "unexpected_redirect"
    found = await transport.find_intent(session, payment.request.offline_id)
    assert found is not None and found.id == paid.id


# -- answers that are not what was asked for -----------------------------------------------------------


async def test_a_decline_without_an_intent_is_card_declined(
    sim: SimHandle, hostile: HostileFront, transport: StripeTransport
) -> None:
    """Stripe's decline of a confirm carries the PaymentIntent (returned as a snapshot); one that does not
    cannot be returned as an intent, so it stays CardDeclined."""
    session = await _session(transport, sim)
    payment = _Payment()
    hostile.arm("bare_decline", paths=STEP_PATHS["create_and_confirm"])
    with pytest.raises(CardDeclined) as info:
        await payment.send(transport, session)
    assert info.value.decline_code == "do_not_honor" and info.value.http_status == 402
    assert info.value.request_id == "req_hostile"
    assert sim.successful_charges() == {}, "the front answered: the processor never saw the request"


@pytest.mark.parametrize("step", ["create_and_confirm", "confirm"])
async def test_a_posts_answer_that_is_not_an_intent_is_an_unknown_outcome(
    sim: SimHandle, hostile: HostileFront, transport: StripeTransport, step: str
) -> None:
    session = await _session(transport, sim)
    payment = await _created(transport, session) if step == "confirm" else _Payment()
    hostile.arm("not_an_intent", paths=STEP_PATHS[step])
    with pytest.raises(OutcomeUnknown) as info:
        await payment.send(transport, session)
    assert "not a PaymentIntent" in str(info.value)
    await _retry_charges_once(transport, session, sim, payment)


async def test_a_lookups_answer_that_is_not_what_was_asked_is_transient(
    sim: SimHandle, hostile: HostileFront, transport: StripeTransport
) -> None:
    session = await _session(transport, sim)
    payment = _Payment()
    paid = await payment.send(transport, session)
    hostile.arm("not_an_intent", paths=(f"/v1/payment_intents/{paid.id}",))
    with pytest.raises(TransientProcessorError) as info:
        await transport.retrieve_intent(session, paid.id)
    assert not isinstance(info.value, OutcomeUnknown), "a GET changes nothing"
    assert info.value.code == "unreadable_answer"
    hostile.arm("not_an_intent", paths=("/v1/payment_intents/search",))
    with pytest.raises(TransientProcessorError) as info:
        await transport.find_intent(session, payment.request.offline_id)
    assert not isinstance(info.value, OutcomeUnknown) and info.value.code == "unreadable_answer"
    assert (await transport.retrieve_intent(session, paid.id)).status == "succeeded"


# -- answers too large to read -----------------------------------------------------------------------


@pytest.mark.parametrize("act", ["endless", "huge", "gzip_bomb"])
async def test_a_flood_is_cut_off_as_an_unknown_outcome(
    sim: SimHandle, hostile: HostileFront, transport: StripeTransport, act: str
) -> None:
    session = await _session(transport, sim)
    payment = _Payment()
    hostile.arm(act, paths=STEP_PATHS["create_and_confirm"])
    with pytest.raises(OutcomeUnknown) as info:  # a POST went out; its answer could not be read
        await payment.send(transport, session)
    assert info.value.http_status == 200
    assert hostile.sent[act] < FLOOD_CEILING, hostile.sent[act]
    [(_, _, headers)] = [seen for seen in hostile.seen if seen[1] == "/v1/payment_intents"]
    assert headers.get("accept-encoding") == "identity"
    await _retry_charges_once(transport, session, sim, payment)


async def test_a_flooded_read_is_transient_not_unknown(
    sim: SimHandle, hostile: HostileFront, transport: StripeTransport
) -> None:
    session = await _session(transport, sim)
    intent_id = (await _Payment().send(transport, session)).id
    hostile.arm("endless", paths=(f"/v1/payment_intents/{intent_id}",))
    with pytest.raises(TransientProcessorError) as info:
        await transport.retrieve_intent(session, intent_id)
    assert not isinstance(info.value, OutcomeUnknown), "a GET changes nothing"
    assert info.value.code == "unreadable_answer"
    assert (await transport.retrieve_intent(session, intent_id)).status == "succeeded"


# -- the total deadline --------------------------------------------------------------------------------


async def test_a_dripped_answer_ends_at_the_total_deadline(sim: SimHandle, hostile: HostileFront) -> None:
    t = StripeTransport(hostile.url, timeout=0.5, connect_timeout=0.5)
    try:
        session = await _session(t, sim)
        payment = await _created(t, session)
        hostile.arm("drip", paths=STEP_PATHS["confirm"])  # ~150 bytes at 0.2 s each: half a minute
        async with asyncio.timeout(20):  # liveness only: without a total deadline this takes ~30 s
            with pytest.raises(OutcomeUnknown) as info:
                await payment.send(t, session)
        assert "within 0.5 s" in str(info.value) and info.value.http_status is None
        assert 0 < hostile.sent["drip"] < 100, "abandoned mid-drip"
        await _retry_charges_once(t, session, sim, payment)
    finally:
        await t.close()


async def test_a_deadline_spent_waiting_for_a_connection_is_transient_not_unknown(
    sim: SimHandle, hostile: HostileFront
) -> None:
    t = StripeTransport(hostile.url, timeout=0.5, connect_timeout=0.5, max_connections=1)
    try:
        session = await _session(t, sim)
        hostile.arm("endless", paths=("/hold",))
        async with t.http.client.stream("GET", hostile.url + "/hold"):  # holds the only connection
            with pytest.raises(TransientProcessorError) as info:
                await _Payment().send(t, session)
        assert not isinstance(info.value, OutcomeUnknown), "nothing was sent"
        assert not [r for r in sim.requests() if r["auth"] == "session"]
    finally:
        await t.close()


# -- through a Terminal's forwarder (moved from tests/torture/test_found_bugs.py) -------------------------


def _config(data_dir: Path, sim: SimHandle, front: HostileFront) -> dict[str, Any]:
    """Everything the POS sends goes through ``front``; short timeouts, quick retries."""
    return terminal_config(
        sim,
        data_dir,
        tokens={"providers": ["http"], "http": {"url": front.url + "/backend/connection_token", "timeout": 2.0}},
        forwarding={
            "interval": 60.0,
            "close_timeout": 0.5,
            "stripe": {"api_base": front.url, "timeout": 1.0, "connect_timeout": 0.5, "probe_timeout": 0.5},
        },
        forwarding_policy={"default": {"base_delay": 0.01, "max_delay": 0.05, "seed": 7}},
    )


async def _stored_payment(terminal: Terminal) -> str:
    [reader] = await terminal.discover_readers()
    await terminal.connect_reader(reader)
    intent = await terminal.create_payment_intent(
        {"amount": 2500, "currency": "usd"}, offline_behavior=OfflineBehavior.FORCE_OFFLINE
    )
    terminal.connected_reader.present_card("visa")
    intent = await terminal.collect_payment_method(intent)
    stored = await terminal.confirm_payment_intent(intent)
    assert stored.requires_upload
    return stored.offline_id


async def _forward_all(terminal: Terminal) -> None:
    for _ in range(50):  # a liveness bound
        if await terminal.forward_now(timeout=10) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the stored payment was never forwarded")


async def _forwarded_once(terminal: Terminal, sim: SimHandle, offline_id: str) -> list[str | None]:
    """The payment's history error codes, after checking it was forwarded and charged exactly once."""
    [payment] = await terminal.list_stored_payments()
    assert payment.state.value == "forwarded", (payment.state.value, payment.last_error_code)
    assert sim.successful_charges() == {offline_id: 1}
    return [entry.error_code for entry in await terminal.payment_history(offline_id)]


async def test_a_captive_portal_redirect_does_not_park_stored_payments(
    sim: SimHandle, hostile: HostileFront, tmp_path: Path
) -> None:
    async with Terminal.from_config(_config(tmp_path / "pos", sim, hostile)) as terminal:
        offline_id = await _stored_payment(terminal)
        hostile.arm("redirect")
        await _forward_all(terminal)
        codes = await _forwarded_once(terminal, sim, offline_id)
    assert "unexpected_redirect" in codes, codes


async def test_an_endless_answer_is_not_read_without_limit(
    sim: SimHandle, hostile: HostileFront, tmp_path: Path
) -> None:
    async with Terminal.from_config(_config(tmp_path / "pos", sim, hostile)) as terminal:
        offline_id = await _stored_payment(terminal)
        hostile.arm("endless")
        await _forward_all(terminal)
        codes = await _forwarded_once(terminal, sim, offline_id)
    # A processor answer is a few kilobytes; 16 MiB is a generous ceiling for any client-side limit.
    assert hostile.sent["endless"] < FLOOD_CEILING, hostile.sent["endless"]
    assert "outcome_unknown" in codes, codes


async def test_a_dripped_answer_is_abandoned_after_the_transport_timeout(
    sim: SimHandle, hostile: HostileFront, tmp_path: Path
) -> None:
    async with Terminal.from_config(_config(tmp_path / "pos", sim, hostile)) as terminal:
        offline_id = await _stored_payment(terminal)
        hostile.arm("drip")  # ~150 bytes at 0.2 s each; the transport timeout is 1 s
        await _forward_all(terminal)
        codes = await _forwarded_once(terminal, sim, offline_id)
    assert "outcome_unknown" in codes, codes
    assert hostile.sent["drip"] < 100, "abandoned mid-drip, not waited out"
