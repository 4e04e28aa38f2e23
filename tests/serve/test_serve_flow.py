"""The official ``stripe`` Python library drives ``offterm serve`` through a server-driven flow."""

from __future__ import annotations

import httpx
import stripe
from serve_kit import Receiver, Served, pay, wait_until


def test_online_payment_succeeds_with_webhooks_signed_like_stripe(served: Served, receiver: Receiver) -> None:
    intent_id, reader = pay(1500)
    assert reader.action.status == "succeeded"
    assert reader.action.process_payment_intent.payment_intent == intent_id
    intent = stripe.PaymentIntent.retrieve(intent_id)
    assert intent.status == "succeeded" and intent.amount_received == 1500
    assert intent.offline_details is None
    assert intent_id.startswith("pi_") and intent.offterm.processor_payment_intent == intent_id
    wait_until(lambda: len(receiver.events) >= 2, what="two webhooks")
    assert receiver.types() == ["terminal.reader.action_succeeded", "payment_intent.succeeded"]
    assert receiver.rejected == 0
    assert receiver.events[1].data.object.id == intent_id
    assert served.sim.successful_charges() == {intent.offterm.offline_id: 1}


def test_offline_payment_is_stored_then_forwarded_and_announced(served: Served, receiver: Receiver) -> None:
    pay(1000)  # online once: the service knows the account
    served.proxy.set_mode("down")
    intent_id, reader = pay(2500, metadata={"order": "A-2"})
    assert reader.action.status == "succeeded"
    intent = stripe.PaymentIntent.retrieve(intent_id)
    assert intent_id.startswith("offpi_")
    assert intent.status == "succeeded" and intent.offline_details.requires_upload is True
    assert intent.offline_details.card_present_details.last4 == "4242"
    assert intent.amount_received == 0, "stored, not yet authorised"
    status = httpx.get(f"{served.service.url}/v1/offterm/offline_status", headers=_auth(served)).json()
    assert status["offline_payments_count"] == 1 and status["offline_payment_amounts_by_currency"] == {"usd": 2500}
    stored = httpx.get(f"{served.service.url}/v1/offterm/stored_payments", headers=_auth(served)).json()
    assert [p["payment_intent"] for p in stored["data"]] == [intent_id]
    assert "card" not in stored["data"][0] and "encrypted_card_data" not in str(stored)

    served.proxy.set_mode("pass")
    forwarded = httpx.post(f"{served.service.url}/v1/offterm/forward", headers=_auth(served), timeout=60).json()
    assert forwarded["remaining"] == 0
    intent = wait_until(
        lambda: (i := stripe.PaymentIntent.retrieve(intent_id)).offterm.forwarding == "forwarded" and i,
        what="forwarding",
    )
    assert intent.offline_details.requires_upload is False and intent.offterm.processor_payment_intent
    assert intent.amount_received == 2500
    wait_until(lambda: receiver.types().count("payment_intent.succeeded") == 2, what="the forwarded webhook")
    per_payment = [e.type for e in receiver.events if _about(e.to_dict(), intent_id)]
    assert per_payment == ["terminal.reader.action_succeeded", "payment_intent.succeeded"]
    charges = {c["amount"]: c for entries in served.sim.ledger().values() for c in entries}
    assert sorted(charges) == [1000, 2500] and charges[2500]["offline"]["type"] == "deferred"


def test_a_stored_payment_declined_after_forwarding_says_so(served: Served, receiver: Receiver) -> None:
    pay(1000)
    served.proxy.set_mode("down")
    intent_id, reader = pay(3100, card="4000000000000002")
    assert reader.action.status == "succeeded", "offline, the card cannot be checked: stored"
    served.proxy.set_mode("pass")
    httpx.post(f"{served.service.url}/v1/offterm/forward", headers=_auth(served), timeout=60)
    intent = wait_until(
        lambda: (i := stripe.PaymentIntent.retrieve(intent_id)).offterm.forwarding == "declined" and i,
        what="the decline",
    )
    assert intent.status == "requires_payment_method"
    assert intent.last_payment_error.decline_code == "generic_decline"
    wait_until(lambda: "payment_intent.payment_failed" in receiver.types(), what="payment_failed")


def test_an_online_decline_fails_the_action(served: Served, receiver: Receiver) -> None:
    intent_id, reader = pay(1200, card="4000000000000002")
    assert reader.action.status == "failed" and reader.action.failure_code == "card_declined"
    intent = stripe.PaymentIntent.retrieve(intent_id)
    assert intent.status == "requires_payment_method" and intent.last_payment_error.code == "card_declined"
    wait_until(lambda: len(receiver.events) >= 2, what="webhooks")
    assert receiver.types() == ["terminal.reader.action_failed", "payment_intent.payment_failed"]


def test_force_offline_by_metadata_and_cancel_action(served: Served) -> None:
    pay(1000)
    intent_id, _ = pay(700, metadata={"offterm_offline_behavior": "force_offline"})
    assert stripe.PaymentIntent.retrieve(intent_id).offline_details is not None, "stored offline, though online"

    rid = stripe.terminal.Reader.list().data[0].id
    intent = stripe.PaymentIntent.create(amount=800, currency="usd", payment_method_types=["card_present"])
    stripe.terminal.Reader.process_payment_intent(rid, payment_intent=intent.id)
    reader = stripe.terminal.Reader.cancel_action(rid)
    assert reader.action.status == "failed" and reader.action.failure_code == "canceled"
    assert stripe.PaymentIntent.cancel(intent.id).status == "canceled"


def _auth(served: Served) -> dict[str, str]:
    return {"Authorization": f"Bearer {served.service.key}"}


def _about(event: dict, intent_id: str) -> bool:
    obj = event["data"]["object"]
    if obj["object"] == "payment_intent":
        return obj["id"] == intent_id
    return (obj.get("action") or {}).get("process_payment_intent", {}).get("payment_intent") == intent_id
