"""A stored payment's status is what Stripe's Terminal SDK reports for an offline payment.

Stripe's SDKs return an offline-confirmed PaymentIntent as it will be once
forwarded: ``succeeded`` with automatic capture, ``requires_capture`` with
manual capture, and ``offlineDetails.requiresUpload`` true until it is
forwarded.  A manual-capture payment may be captured once ``requires_capture``
and ``requiresUpload`` false.  The processor's own intent is checked too.
"""

from __future__ import annotations

import httpx
import pytest

from offterm.core import CaptureMethod, IntentStatus, OfflineBehavior, Terminal, create_plugin_manager

EXPECTED = {CaptureMethod.AUTOMATIC: IntentStatus.SUCCEEDED, CaptureMethod.MANUAL: IntentStatus.REQUIRES_CAPTURE}


def _terminal(config, recorder):
    pm = create_plugin_manager(autoload=False, env={}, plugins={"recorder": recorder})
    return Terminal.from_config(config, plugin_manager=pm)


async def _collected(terminal, capture: CaptureMethod, behavior: OfflineBehavior):
    intent = await terminal.create_payment_intent(
        {"amount": 1250, "currency": "usd", "capture_method": capture.value}, offline_behavior=behavior
    )
    terminal.connected_reader.present_card("visa")
    return await terminal.collect_payment_method(intent)


def _processor_status(simulator, intent_id: str) -> str:
    answer = httpx.get(
        f"{simulator.url}/v1/payment_intents/{intent_id}",
        headers={"Authorization": f"Bearer {simulator.secret_key}"},
        timeout=10,
    )
    answer.raise_for_status()
    return str(answer.json()["status"])


@pytest.mark.parametrize("capture", list(CaptureMethod))
async def test_force_offline_reads_as_stripes_sdk_before_and_after_forwarding(
    capture, terminal_config, simulator, recorder
):
    async with _terminal(terminal_config, recorder) as terminal:
        [reader] = await terminal.discover_readers()
        await terminal.connect_reader(reader)
        intent = await _collected(terminal, capture, OfflineBehavior.FORCE_OFFLINE)
        intent = await terminal.confirm_payment_intent(intent)

        assert intent.status is EXPECTED[capture]
        assert intent.requires_upload and intent.id is None, "stored, not authorised, no processor id yet"
        assert intent.offline_details is not None and intent.offline_details.card_present_details is not None
        [stored_event] = recorder.of("payment_stored")
        assert stored_event["intent"].status is EXPECTED[capture]
        assert stored_event["intent"].requires_upload

        assert await terminal.forward_now() == 0
    [forwarded] = recorder.of("payment_intent_forwarded")
    assert forwarded["error"] is None
    after = forwarded["intent"]
    assert after.offline_id == intent.offline_id
    assert after.status is EXPECTED[capture] and not after.requires_upload, "ready (to capture, if manual)"
    assert _processor_status(simulator, after.id) == EXPECTED[capture].value, "the processor agrees"
    assert simulator.successful_charges()[intent.offline_id] == 1


async def test_the_same_status_when_stored_because_the_network_is_down(terminal_config, network, recorder):
    async with _terminal(terminal_config, recorder) as terminal:
        [reader] = await terminal.discover_readers()
        await terminal.connect_reader(reader)
        network.set_mode("down")
        for capture in CaptureMethod:
            intent = await _collected(terminal, capture, OfflineBehavior.PREFER_ONLINE)
            intent = await terminal.confirm_payment_intent(intent)
            assert intent.requires_upload
            assert intent.status is EXPECTED[capture]


async def test_a_declined_stored_payment_comes_back_requiring_a_payment_method(terminal_config, simulator, recorder):
    async with _terminal(terminal_config, recorder) as terminal:
        [reader] = await terminal.discover_readers()
        await terminal.connect_reader(reader)
        intent = await terminal.create_payment_intent(
            {"amount": 1250, "currency": "usd"}, offline_behavior=OfflineBehavior.FORCE_OFFLINE
        )
        terminal.connected_reader.present_card("4000000000000002")  # card_declined on the processor
        intent = await terminal.confirm_payment_intent(await terminal.collect_payment_method(intent))
        assert intent.status is IntentStatus.SUCCEEDED and intent.requires_upload, "not known yet: Stripe says so too"
        await terminal.forward_now()
    [forwarded] = recorder.of("payment_intent_forwarded")
    assert forwarded["error"] is not None and forwarded["error"].code == "card_declined"
    assert forwarded["intent"].status is IntentStatus.REQUIRES_PAYMENT_METHOD
    assert not forwarded["intent"].requires_upload
