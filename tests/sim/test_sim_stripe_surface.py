"""The simulator answers like Stripe where a merchant's backend touches it (issue #14).

Unknown parameters are refused with ``parameter_unknown`` (checked against the subset of
Stripe's spec shipped with offterm), unknown routes get Stripe's JSON 404, and the charges,
payment-method and test-PaymentMethod endpoints work with the official ``stripe`` library.
"""

from __future__ import annotations

import importlib.util
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from offterm.sim.processor import OFFLINE_ID_KEY, TEST_PAYMENT_METHODS, SimHandle, running_simulator
from offterm.sim.processor.spec import SUBSET_PATH, StripeSpec, find_spec

ROOT = Path(__file__).resolve().parents[2]


def _secret(sim: SimHandle) -> dict[str, str]:
    return {"Authorization": f"Bearer {sim.secret_key}"}


def _library(sim: SimHandle) -> stripe.StripeClient:
    return stripe.StripeClient(sim.secret_key, base_addresses={"api": sim.url}, max_network_retries=0)


@pytest.fixture
def full_spec_sim() -> Iterator[SimHandle]:
    """Checked against Stripe's whole spec when it is present (else the shipped subset, completely)."""
    path = find_spec() or SUBSET_PATH
    with running_simulator(spec_path=str(path)) as handle:
        yield handle
        assert handle.spec_violations() == []


# -- the shipped subset of Stripe's spec ---------------------------------------------------------


def test_the_subset_ships_with_the_package_and_names_its_version_and_source() -> None:
    subset = json.loads(SUBSET_PATH.read_text())
    assert subset["info"]["version"] == "2023-08-16"
    assert "github.com/stripe/openapi" in subset["info"]["x-offterm-source"]
    readme = (SUBSET_PATH.parent / "README.md").read_text()
    assert "2023-08-16" in readme and "github.com/stripe/openapi" in readme and "MIT" in readme
    assert (SUBSET_PATH.parent / "extract.py").is_file()
    assert "/v1/charges/{charge}" in subset["paths"] and "/device/v1/sessions" not in subset["paths"]
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = package_data["offterm.sim.processor"]
    assert any(SUBSET_PATH.relative_to(ROOT / "sim" / "processor").match(glob) for glob in shipped)


def test_the_subset_is_what_extract_py_makes_of_stripes_spec(stripe_spec: StripeSpec) -> None:
    source = importlib.util.spec_from_file_location("extract", SUBSET_PATH.parent / "extract.py")
    assert source is not None and source.loader is not None
    extract = importlib.util.module_from_spec(source)
    source.loader.exec_module(extract)
    assert extract.extract(stripe_spec.raw) == json.loads(SUBSET_PATH.read_text())


# -- unknown parameters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "params", "name"),
    [
        ("POST", "/v1/payment_intents", {"amount": "100", "currency": "usd", "bogus": "1"}, "bogus"),
        (
            "POST",
            "/v1/payment_intents",
            {"amount": "100", "currency": "usd", "payment_method_options[card_present][bogus]": "x"},
            "payment_method_options[card_present][bogus]",
        ),
        ("GET", "/v1/payment_intents", {"limit": "3", "colour": "red"}, "colour"),
        ("GET", "/v1/charges", {"payment_intent": "pi_1", "bogus": "1"}, "bogus"),
        ("POST", "/v1/refunds", {"charge": "ch_1", "bogus[deep]": "1"}, "bogus"),
    ],
)
def test_unknown_parameters_are_refused_like_stripe(
    sim: SimHandle, method: str, path: str, params: dict[str, str], name: str
) -> None:
    assert sim.config.spec_path is None  # the shipped subset, no path needed
    with httpx.Client(base_url=sim.url, timeout=10.0) as client:
        if method == "GET":
            resp = client.get(path, params=params, headers=_secret(sim))
        else:
            resp = client.post(path, data=params, headers=_secret(sim))
    assert resp.status_code == 400, resp.text
    assert resp.json() == {
        "error": {
            "type": "invalid_request_error",
            "code": "parameter_unknown",
            "param": name,
            "message": f"Received unknown parameter: {name}",
        }
    }
    assert resp.headers["request-id"].startswith("req_")


def test_metadata_keys_are_free_and_known_parameters_pass(sim: SimHandle) -> None:
    form = {"amount": "100", "currency": "usd", "metadata[anything_at_all]": "x", "expand[0]": "latest_charge"}
    with httpx.Client(base_url=sim.url, timeout=10.0) as client:
        resp = client.post("/v1/payment_intents", data=form, headers=_secret(sim))
    assert resp.status_code == 200, resp.text
    assert resp.json()["metadata"] == {"anything_at_all": "x"}


def test_a_refused_unknown_parameter_is_not_saved_under_its_idempotency_key(sim: SimHandle) -> None:
    headers = {**_secret(sim), "Idempotency-Key": "k-unknown-1"}
    with httpx.Client(base_url=sim.url, timeout=10.0) as client:
        first = client.post("/v1/payment_intents", data={"amount": "100", "currency": "usd", "x": "1"}, headers=headers)
        second = client.post("/v1/payment_intents", data={"amount": "100", "currency": "usd"}, headers=headers)
    assert first.json()["error"]["code"] == "parameter_unknown"
    assert second.status_code == 200 and "idempotent-replayed" not in second.headers


def test_the_device_api_and_the_backend_are_not_checked_against_stripes_spec(sim: SimHandle) -> None:
    with httpx.Client(base_url=sim.url, timeout=10.0) as client:
        backend = client.post("/backend/connection_token", data={"pos_lane": "3"})
        session = client.post(
            "/device/v1/sessions",
            data={"reader_serial": "SIM-1"},
            headers={"Authorization": f"Bearer {backend.json()['secret']}"},
        )
    assert backend.status_code == 200 and session.status_code == 200, session.text


def test_unknown_parameters_can_be_accepted_when_asked() -> None:
    with running_simulator(refuse_unknown_params=False) as sim:
        with httpx.Client(base_url=sim.url, timeout=10.0) as client:
            resp = client.post(
                "/v1/payment_intents", data={"amount": "1", "currency": "usd", "x": "1"}, headers=_secret(sim)
            )
    assert resp.status_code == 200, resp.text


def test_the_official_library_sees_parameter_unknown(sim: SimHandle) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        _library(sim).v1.payment_intents.create(params={"amount": 100, "currency": "usd", "colour": "red"})  # type: ignore[typeddict-unknown-key]
    assert refused.value.code == "parameter_unknown" and refused.value.param == "colour"
    assert refused.value.http_status == 400


def test_a_full_spec_still_refuses_wrong_types_and_enums() -> None:
    with (
        running_simulator(spec_path=str(find_spec() or SUBSET_PATH)) as sim,
        httpx.Client(base_url=sim.url, timeout=10.0) as client,
    ):
        wrong = client.post(
            "/v1/payment_intents",
            data={"amount": "100", "currency": "usd", "capture_method": "later"},
            headers=_secret(sim),
        )
        unknown = client.post(
            "/v1/payment_intents", data={"amount": "1", "currency": "usd", "bogus": "1"}, headers=_secret(sim)
        )
    assert wrong.status_code == 400 and "capture_method" in wrong.json()["error"]["message"]
    assert unknown.json()["error"]["code"] == "parameter_unknown" and unknown.json()["error"]["param"] == "bogus"
    violations = sim.spec_violations()
    assert len(violations) == 2 and violations[1]["problems"][0] == "bogus"


# -- unknown routes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/foo"),
        ("POST", "/v1/customers"),
        ("DELETE", "/v1/payment_intents"),  # a known path, another method: Stripe answers 404 too
        ("GET", "/v1/payment_intents/pi_123/confirm"),
        ("GET", "/"),
    ],
)
def test_unknown_routes_get_stripes_json_404(sim: SimHandle, method: str, path: str) -> None:
    with httpx.Client(base_url=sim.url, timeout=10.0) as client:
        resp = client.request(method, path, headers=_secret(sim))
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(
        f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs"
    )
    assert resp.headers["request-id"].startswith("req_")


def test_the_official_library_reports_an_unknown_route_as_invalid_request(sim: SimHandle) -> None:
    library = _library(sim)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        library.raw_request("get", "/v1/unicorns")
    assert refused.value.http_status == 404 and "Unrecognized request URL (GET: /v1/unicorns)" in str(refused.value)


# -- charges, payment methods, Stripe's test PaymentMethods ---------------------------------------


@pytest.mark.parametrize(
    ("name", "brand", "last4"),
    [("pm_card_visa", "visa", "4242"), ("pm_card_mastercard", "mastercard", "4444"), ("pm_card_amex", "amex", "0005")],
)
def test_online_confirm_with_a_test_payment_method(full_spec_sim: SimHandle, name: str, brand: str, last4: str) -> None:
    library = _library(full_spec_sim)
    pi = library.v1.payment_intents.create(
        params={"amount": 1999, "currency": "usd", "payment_method": name, "confirm": True, "metadata": {"order": "o1"}}
    )
    assert pi.status == "succeeded" and pi.amount_received == 1999
    assert isinstance(pi.payment_method, str) and pi.payment_method.startswith("pm_") and pi.payment_method != name

    pm = library.v1.payment_methods.retrieve(pi.payment_method)
    assert pm.type == "card" and pm.card is not None and (pm.card.brand, pm.card.last4) == (brand, last4)

    charges = library.v1.charges.list(params={"payment_intent": pi.id})
    assert [c.id for c in charges.data] == [pi.latest_charge]
    charge = library.v1.charges.retrieve(str(pi.latest_charge))
    assert charge.status == "succeeded" and charge.paid and charge.captured and charge.amount == 1999
    assert charge.payment_method == pi.payment_method and charge.metadata["order"] == "o1"
    details = charge.payment_method_details
    assert details is not None and details.type == "card" and details.card is not None
    assert (details.card.brand, details.card.last4) == (brand, last4)


def test_objects_of_online_payments_match_stripes_schemas(sim: SimHandle, stripe_spec: StripeSpec) -> None:
    with httpx.Client(base_url=sim.url, timeout=10.0, headers=_secret(sim)) as client:
        pi = client.post(
            "/v1/payment_intents",
            data={"amount": "500", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"},
        ).json()
        charge = client.get(f"/v1/charges/{pi['latest_charge']}").json()
        pm = client.get(f"/v1/payment_methods/{pi['payment_method']}").json()
        listed = client.get("/v1/charges", params={"payment_intent": pi["id"]}).json()
    assert stripe_spec.check_object("payment_intent", pi) == []
    assert stripe_spec.check_object("charge", charge) == []
    assert stripe_spec.check_object("payment_method", pm) == []
    assert listed["object"] == "list" and listed["url"] == "/v1/charges" and listed["data"] == [charge]


@pytest.mark.parametrize(
    ("name", "code", "decline_code"),
    [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_visa_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
    ],
)
def test_declining_test_payment_methods_decline_and_record_a_failed_charge(
    sim: SimHandle, name: str, code: str, decline_code: str
) -> None:
    library = _library(sim)
    with pytest.raises(stripe.CardError) as declined:
        library.v1.payment_intents.create(
            params={
                "amount": 700,
                "currency": "usd",
                "payment_method": name,
                "confirm": True,
                "metadata": {OFFLINE_ID_KEY: f"off_{name}"},
            }
        )
    assert declined.value.http_status == 402 and declined.value.code == code
    error: Any = declined.value.error
    assert error is not None and error.decline_code == decline_code
    pi_id = error.payment_intent.id
    assert library.v1.payment_intents.retrieve(pi_id).status == "requires_payment_method"
    [charge] = library.v1.charges.list(params={"payment_intent": pi_id}).data
    assert charge.status == "failed" and charge.failure_code == code and not charge.paid
    assert sim.ledger()[f"off_{name}"][0]["status"] == "failed"
    assert sim.successful_charges() == {f"off_{name}": 0}


def test_confirming_a_card_intent_with_a_test_payment_method(sim: SimHandle) -> None:
    library = _library(sim)
    pi = library.v1.payment_intents.create(
        params={
            "amount": 1200,
            "currency": "eur",
            "payment_method_types": ["card"],
            "metadata": {OFFLINE_ID_KEY: "off_c1"},
        }
    )
    assert pi.status == "requires_payment_method"
    confirmed = library.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_mastercard"})
    assert confirmed.status == "succeeded"
    # Charges of test PaymentMethods are in the ledger like any other, under the offline id.
    assert sim.successful_charges() == {"off_c1": 1}
    [entry] = sim.ledger()["off_c1"]
    assert entry["charge"] == confirmed.latest_charge and entry["amount"] == 1200 and entry["offline"] is None


def test_a_card_present_only_intent_refuses_an_online_card(sim: SimHandle) -> None:
    library = _library(sim)
    pi = library.v1.payment_intents.create(
        params={"amount": 1200, "currency": "usd", "payment_method_types": ["card_present"]}
    )
    with pytest.raises(stripe.InvalidRequestError) as refused:
        library.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_visa"})
    assert refused.value.code == "payment_intent_incompatible_payment_method"


def test_the_test_payment_methods_cover_stripes_documented_ones() -> None:
    for name in ("pm_card_visa", "pm_card_mastercard", "pm_card_amex", "pm_card_chargeDeclined"):
        assert name in TEST_PAYMENT_METHODS
    assert "pm_card_chargeDeclinedInsufficientFunds" in TEST_PAYMENT_METHODS


def test_charges_list_filters_and_pages_newest_first(sim: SimHandle) -> None:
    library = _library(sim)
    intents = [
        library.v1.payment_intents.create(
            params={"amount": 100 + i, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
        )
        for i in range(5)
    ]
    first = library.v1.charges.list(params={"limit": 2})
    assert [c.amount for c in first.data] == [104, 103] and first.has_more
    after = library.v1.charges.list(params={"limit": 2, "starting_after": first.data[-1].id})
    assert [c.amount for c in after.data] == [102, 101] and after.has_more
    before = library.v1.charges.list(params={"limit": 2, "ending_before": after.data[0].id})
    assert [c.amount for c in before.data] == [104, 103]
    every = [c.amount for c in library.v1.charges.list(params={"limit": 2}).auto_paging_iter()]
    assert every == [104, 103, 102, 101, 100]
    only = library.v1.charges.list(params={"payment_intent": intents[2].id})
    assert [c.payment_intent for c in only.data] == [intents[2].id] and not only.has_more
    with pytest.raises(stripe.InvalidRequestError) as missing:
        library.v1.charges.list(params={"starting_after": "ch_nope"})
    assert missing.value.code == "resource_missing"


def test_unknown_charge_and_payment_method_are_resource_missing(sim: SimHandle) -> None:
    library = _library(sim)
    with pytest.raises(stripe.InvalidRequestError) as charge:
        library.v1.charges.retrieve("ch_nope")
    with pytest.raises(stripe.InvalidRequestError) as pm:
        library.v1.payment_methods.retrieve("pm_nope")
    assert charge.value.http_status == 404 and charge.value.code == "resource_missing"
    assert pm.value.http_status == 404 and pm.value.code == "resource_missing"
