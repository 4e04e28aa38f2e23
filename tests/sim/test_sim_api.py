"""The simulator's API: Stripe-shaped objects, device steps, decisions, the ledger."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import pytest

from offterm.sim.processor import SimHandle, running_simulator
from offterm.sim.processor.spec import StripeSpec
from offterm.sim.processor.testing import card_result


def _client(sim: SimHandle) -> httpx.Client:
    return httpx.Client(base_url=sim.url, timeout=10.0)


def _session(sim: SimHandle, client: httpx.Client) -> dict[str, str]:
    token = sim.connection_token()
    resp = client.post("/device/v1/sessions", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['secret']}"}


def _payment_method(client: httpx.Client, auth: dict[str, str], pan: str) -> httpx.Response:
    card = card_result(pan)
    return client.post(
        "/device/v1/payment_methods",
        headers=auth,
        data={
            "type": "card_present",
            "card_present[encrypted_data]": base64.b64encode(card.encrypted_card_data).decode(),
            "card_present[key_serial]": card.key_serial,
            "card_present[encryption_scheme]": card.encryption_scheme,
        },
    )


def _intent(client: httpx.Client, auth: dict[str, str], **extra: str) -> dict[str, Any]:
    data = {"amount": "1500", "currency": "usd", "payment_method_types[0]": "card_present", **extra}
    resp = client.post("/v1/payment_intents", headers=auth, data=data)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _secret(sim: SimHandle) -> dict[str, str]:
    return {"Authorization": f"Bearer {sim.secret_key}"}


def test_connection_token_matches_the_spec(sim: SimHandle, stripe_spec: StripeSpec) -> None:
    with _client(sim) as client:
        resp = client.post("/v1/terminal/connection_tokens", headers=_secret(sim), data={"location": "tml_123"})
    assert resp.status_code == 200
    body = resp.json()
    assert stripe_spec.check_object("terminal.connection_token", body) == []
    assert body["secret"].startswith("pst_test_") and body["location"] == "tml_123"
    assert resp.headers["request-id"].startswith("req_")


def test_connection_tokens_need_the_secret_key(sim: SimHandle, stripe_spec: StripeSpec) -> None:
    with _client(sim) as client:
        missing = client.post("/v1/terminal/connection_tokens")
        wrong = client.post("/v1/terminal/connection_tokens", headers={"Authorization": "Bearer sk_test_wrong"})
        auth = _session(sim, client)
        as_device = client.post("/v1/terminal/connection_tokens", headers=auth)
    assert missing.status_code == wrong.status_code == 401
    assert as_device.status_code == 403
    for resp in (missing, wrong, as_device):
        assert stripe_spec.check_object("error", resp.json()) == []
    assert "sk_test_wrong" not in wrong.text


def test_backend_endpoint_mints_tokens_and_checks_its_bearer() -> None:
    with running_simulator(backend_auth_token="backend-secret") as sim, _client(sim) as client:
        refused = client.post(sim.backend_url)
        wrong = client.post(sim.backend_url, headers={"Authorization": "Bearer nope"})
        ok = client.post(sim.backend_url, headers={"Authorization": "Bearer backend-secret"}, json={"reason": "x"})
        assert refused.status_code == wrong.status_code == 401
        assert ok.status_code == 200
        secret = ok.json()["secret"]
        session = client.post("/device/v1/sessions", headers={"Authorization": f"Bearer {secret}"})
        assert session.status_code == 200


def test_connection_token_is_single_use(sim: SimHandle, stripe_spec: StripeSpec) -> None:
    token = sim.connection_token()
    with _client(sim) as client:
        first = client.post("/device/v1/sessions", headers={"Authorization": f"Bearer {token}"})
        second = client.post("/device/v1/sessions", headers={"Authorization": f"Bearer {token}"})
        unknown = client.post("/device/v1/sessions", headers={"Authorization": "Bearer pst_test_nope"})
    assert first.status_code == 200
    assert first.json()["account"] == sim.config.account_id and first.json()["livemode"] is False
    assert second.status_code == 401
    assert second.json()["error"]["code"] == "connection_token_already_redeemed"
    assert unknown.json()["error"]["code"] == "connection_token_invalid"
    assert stripe_spec.check_object("error", second.json()) == []


def test_session_expires() -> None:
    with running_simulator(session_ttl=0.3) as sim, _client(sim) as client:
        auth = _session(sim, client)
        assert client.get("/v1/payment_intents", headers=auth).status_code == 200
        time.sleep(0.5)
        late = client.get("/v1/payment_intents", headers=auth)
    assert late.status_code == 401
    assert late.json()["error"]["code"] == "session_expired"


def test_unredeemed_connection_token_expires() -> None:
    with running_simulator(connection_token_ttl=0.2) as sim, _client(sim) as client:
        token = sim.connection_token()
        time.sleep(0.4)
        resp = client.post("/device/v1/sessions", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "connection_token_expired"


def test_payment_intent_lifecycle_objects_match_the_spec(sim: SimHandle, stripe_spec: StripeSpec) -> None:
    with _client(sim) as client:
        auth = _session(sim, client)
        pm = _payment_method(client, auth, "4242424242424242")
        assert pm.status_code == 200
        assert stripe_spec.check_object("payment_method", pm.json()) == []
        assert pm.json()["card_present"]["last4"] == "4242"

        intent = _intent(client, auth, capture_method="manual", **{"metadata[offterm_offline_id]": "off_1"})
        assert stripe_spec.check_object("payment_intent", intent) == []
        assert intent["status"] == "requires_payment_method"
        pid = intent["id"]

        confirmed = client.post(
            f"/v1/payment_intents/{pid}/confirm", headers=auth, data={"payment_method": pm.json()["id"]}
        )
        assert confirmed.status_code == 200
        assert confirmed.json()["status"] == "requires_capture"
        assert confirmed.json()["amount_capturable"] == 1500
        assert stripe_spec.check_object("payment_intent", confirmed.json()) == []

        captured = client.post(f"/v1/payment_intents/{pid}/capture", headers=_secret(sim))
        assert captured.json()["status"] == "succeeded" and captured.json()["amount_received"] == 1500
        assert stripe_spec.check_object("payment_intent", captured.json()) == []

        fetched = client.get(f"/v1/payment_intents/{pid}", headers=_secret(sim))
        assert fetched.json() == captured.json()

        refund = client.post("/v1/refunds", headers=_secret(sim), data={"payment_intent": pid, "amount": "500"})
        assert refund.status_code == 200
        assert stripe_spec.check_object("refund", refund.json()) == []
        too_much = client.post("/v1/refunds", headers=_secret(sim), data={"payment_intent": pid, "amount": "1001"})
        assert too_much.status_code == 400 and too_much.json()["error"]["code"] == "amount_too_large"

        other = _intent(client, auth)
        canceled = client.post(
            f"/v1/payment_intents/{other['id']}/cancel", headers=auth, data={"cancellation_reason": "abandoned"}
        )
        assert canceled.json()["status"] == "canceled"
        assert stripe_spec.check_object("payment_intent", canceled.json()) == []
        again = client.post(f"/v1/payment_intents/{other['id']}/cancel", headers=auth)
        assert again.status_code == 400 and again.json()["error"]["code"] == "payment_intent_unexpected_state"

        listed = client.get("/v1/payment_intents", headers=auth, params={"limit": "1"})
        assert listed.json()["object"] == "list" and len(listed.json()["data"]) == 1
        assert listed.json()["has_more"] is True
        nxt = client.get(
            "/v1/payment_intents", headers=auth, params={"limit": "5", "starting_after": listed.json()["data"][0]["id"]}
        )
        assert {i["id"] for i in nxt.json()["data"]} | {listed.json()["data"][0]["id"]} == {pid, other["id"]}

    assert sim._state is not None
    for charge in sim._state.books.charges.values():
        assert stripe_spec.check_object("charge", charge) == []
    ledger = sim.ledger()
    assert [e["status"] for e in ledger["off_1"]] == ["succeeded"]
    assert ledger["off_1"][0]["amount_refunded"] == 500


@pytest.mark.parametrize(
    ("pan", "brand", "code", "decline_code"),
    [
        ("4242424242424242", "visa", None, None),
        ("5555555555554444", "mastercard", None, None),
        ("378282246310005", "amex", None, None),
        ("4000000000000002", "visa", "card_declined", "generic_decline"),
        ("4000000000009995", "visa", "card_declined", "insufficient_funds"),
        ("4000000000000069", "visa", "expired_card", "expired_card"),
        ("4111111111111111", "visa", None, None),  # not a listed test card, Luhn-valid
        ("5425233430109903", "mastercard", None, None),
        ("4242424242424241", "visa", "invalid_number", None),  # Luhn fails
    ],
)
def test_decisions_follow_stripe_test_cards(
    sim: SimHandle, stripe_spec: StripeSpec, pan: str, brand: str, code: str | None, decline_code: str | None
) -> None:
    with _client(sim) as client:
        auth = _session(sim, client)
        pm = _payment_method(client, auth, pan).json()
        assert pm["card_present"]["brand"] == brand
        intent = _intent(client, auth, **{"metadata[offterm_offline_id]": "off_" + pan})
        resp = client.post(
            f"/v1/payment_intents/{intent['id']}/confirm", headers=auth, data={"payment_method": pm["id"]}
        )
    if code is None:
        assert resp.status_code == 200 and resp.json()["status"] == "succeeded"
        assert sim.successful_charges() == {"off_" + pan: 1}
    else:
        assert resp.status_code == 402
        error = resp.json()["error"]
        assert stripe_spec.check_object("error", resp.json()) == []
        assert error["type"] == "card_error" and error["code"] == code
        assert error.get("decline_code") == decline_code
        assert error["payment_intent"]["status"] == "requires_payment_method"
        assert error["payment_intent"]["last_payment_error"]["code"] == code
        assert sim.successful_charges() == {"off_" + pan: 0}
        assert [e["status"] for e in sim.ledger()["off_" + pan]] == ["failed"]


def test_card_data_under_another_key_is_refused(sim: SimHandle) -> None:
    card = card_result("4242424242424242", base_key_hex="11" * 32)
    with _client(sim) as client:
        auth = _session(sim, client)
        resp = client.post(
            "/device/v1/payment_methods",
            headers=auth,
            data={
                "type": "card_present",
                "card_present[encrypted_data]": base64.b64encode(card.encrypted_card_data).decode(),
                "card_present[key_serial]": card.key_serial,
            },
        )
        secret_key_only = client.post("/device/v1/payment_methods", headers=_secret(sim), data={"type": "card_present"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "card_data_undecryptable"
    assert secret_key_only.status_code == 401


def test_bad_parameters_are_named(sim: SimHandle, stripe_spec: StripeSpec) -> None:
    with _client(sim) as client:
        no_amount = client.post("/v1/payment_intents", headers=_secret(sim), data={"currency": "usd"})
        bad_amount = client.post("/v1/payment_intents", headers=_secret(sim), data={"amount": "x", "currency": "usd"})
        json_body = client.post("/v1/payment_intents", headers=_secret(sim), json={"amount": 1, "currency": "usd"})
        missing = client.get("/v1/payment_intents/pi_nope", headers=_secret(sim))
    assert no_amount.status_code == 400 and no_amount.json()["error"]["param"] == "amount"
    assert bad_amount.status_code == 400 and bad_amount.json()["error"]["param"] == "amount"
    assert json_body.status_code == 400
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "resource_missing"
    for resp in (no_amount, bad_amount, json_body, missing):
        assert stripe_spec.check_object("error", resp.json()) == []


def test_spec_checking_mode_refuses_nonconforming_requests(stripe_spec: StripeSpec) -> None:
    from offterm.sim.processor.spec import find_spec

    with running_simulator(spec_path=str(find_spec())) as sim, _client(sim) as client:
        ok = client.post("/v1/payment_intents", headers=_secret(sim), data={"amount": "100", "currency": "usd"})
        bad = client.post(
            "/v1/payment_intents",
            headers=_secret(sim),
            data={"amount": "100", "currency": "usd", "capture_method": "later", "not_a_param": "1"},
        )
    assert ok.status_code == 200
    assert bad.status_code == 400
    problems = sim.spec_violations()[0]["problems"]
    assert any("not_a_param" in p for p in problems) and any("capture_method" in p for p in problems)


def test_ledger_endpoint_matches_the_handle(sim: SimHandle) -> None:
    with _client(sim) as client:
        auth = _session(sim, client)
        for pan in ("4242424242424242", "4000000000000002"):
            pm = _payment_method(client, auth, pan).json()
            intent = _intent(client, auth, **{"metadata[offterm_offline_id]": "off_x"})
            client.post(f"/v1/payment_intents/{intent['id']}/confirm", headers=auth, data={"payment_method": pm["id"]})
        body = client.get("/_sim/ledger").json()
    assert body["charges_by_offline_id"] == sim.ledger()
    assert body["successful_counts"] == {"off_x": 1}
    assert [e["status"] for e in body["charges_by_offline_id"]["off_x"]] == ["succeeded", "failed"]


def test_request_log_keeps_no_credentials(sim: SimHandle) -> None:
    with _client(sim) as client:
        auth = _session(sim, client)
        _payment_method(client, auth, "4242424242424242")
    text = repr(sim.requests())
    assert sim.secret_key not in text
    assert auth["Authorization"].split()[1] not in text
    assert "4242424242424242" not in text
