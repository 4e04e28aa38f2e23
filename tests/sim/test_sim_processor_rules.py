"""Stripe's rules in the simulator (issue #12): the account's clock, idempotency keys that
expire, PaymentIntent search with an indexing delay, and confirms answered "processing" or
"requires_action"."""

from __future__ import annotations

import base64
import concurrent.futures
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import stripe

from offterm.sim.processor import FaultConfig, SimConfig, SimHandle, running_simulator
from offterm.sim.processor.books import parse_search_query
from offterm.sim.processor.errors import SimError
from offterm.sim.processor.server import READY_PREFIX
from offterm.sim.processor.spec import StripeSpec, find_spec
from offterm.sim.processor.testing import card_result

HOUR = 3600.0
VISA = "4242424242424242"
DECLINED = "4000000000000002"


# -- helpers ---------------------------------------------------------------------------


def _client(sim: SimHandle) -> httpx.Client:
    return httpx.Client(base_url=sim.url, timeout=10.0)


def _secret(sim: SimHandle) -> dict[str, str]:
    return {"Authorization": f"Bearer {sim.secret_key}"}


def _payment_method(sim: SimHandle, client: httpx.Client, pan: str = VISA) -> str:
    """A card-present payment method made the way a reader's card reaches the processor."""
    token = sim.connection_token()
    session = client.post("/device/v1/sessions", headers={"Authorization": f"Bearer {token}"})
    assert session.status_code == 200, session.text
    card = card_result(pan)
    resp = client.post(
        "/device/v1/payment_methods",
        headers={"Authorization": f"Bearer {session.json()['secret']}"},
        data={
            "type": "card_present",
            "card_present[encrypted_data]": base64.b64encode(card.encrypted_card_data).decode(),
            "card_present[key_serial]": card.key_serial,
            "card_present[encryption_scheme]": card.encryption_scheme,
        },
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def _intent_form(offline_id: str, **extra: str) -> dict[str, str]:
    return {
        "amount": "1250",
        "currency": "usd",
        "payment_method_types[0]": "card_present",
        "metadata[offterm_offline_id]": offline_id,
        **extra,
    }


def _create(client: httpx.Client, sim: SimHandle, form: dict[str, str], key: str | None = None) -> httpx.Response:
    headers = _secret(sim) if key is None else {**_secret(sim), "Idempotency-Key": key}
    return client.post("/v1/payment_intents", headers=headers, data=form)


def _confirm(client: httpx.Client, sim: SimHandle, intent_id: str, pm: str | None = None) -> httpx.Response:
    data = {"payment_method": pm} if pm else {}
    return client.post(f"/v1/payment_intents/{intent_id}/confirm", headers=_secret(sim), data=data)


def _get(client: httpx.Client, sim: SimHandle, intent_id: str) -> dict[str, Any]:
    resp = client.get(f"/v1/payment_intents/{intent_id}", headers=_secret(sim))
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _search(client: httpx.Client, sim: SimHandle, query: str, **params: str) -> httpx.Response:
    return client.get("/v1/payment_intents/search", headers=_secret(sim), params={"query": query, **params})


@pytest.fixture
def spec_sim(stripe_spec: StripeSpec) -> Iterator[SimHandle]:
    """A simulator that refuses (and records) any request the Stripe spec does not allow."""
    with running_simulator(spec_path=str(find_spec())) as handle:
        yield handle
    assert handle.spec_violations() == []


# -- the clock and idempotency keys ------------------------------------------------------


def test_a_key_replays_within_the_window_and_executes_again_after_it(sim: SimHandle) -> None:
    with _client(sim) as client:
        pm = _payment_method(sim, client)
        form = _intent_form("off_ttl", payment_method=pm, confirm="true")
        first = _create(client, sim, form, key="charge-off_ttl")
        sim.advance_clock(23 * HOUR)
        replay = _create(client, sim, form, key="charge-off_ttl")
        sim.advance_clock(2 * HOUR)  # 25 h after the key's first use
        again = _create(client, sim, form, key="charge-off_ttl")
        listed = client.get("/v1/payment_intents", headers=_secret(sim)).json()
        sim.advance_clock(1 * HOUR)  # the new use started a new window
        replay_of_new = _create(client, sim, form, key="charge-off_ttl")

    assert first.status_code == replay.status_code == again.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true" and replay.json() == first.json()
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]
    assert first.json()["status"] == again.json()["status"] == "succeeded"
    assert len(listed["data"]) == 2
    assert replay_of_new.headers["idempotent-replayed"] == "true"
    assert replay_of_new.json()["id"] == again.json()["id"]
    # The processor forgot the key, so the ledger shows the real double charge.
    assert sim.successful_charges() == {"off_ttl": 2}
    assert [entry["payment_intent"] for entry in sim.ledger()["off_ttl"]] == [first.json()["id"], again.json()["id"]]


def test_an_expired_key_may_come_back_with_other_parameters(sim: SimHandle) -> None:
    with _client(sim) as client:
        first = _create(client, sim, _intent_form("off_a"), key="reused")
        clash = _create(client, sim, _intent_form("off_b"), key="reused")
        sim.advance_clock(24 * HOUR)  # exactly the window: pruned ("at least 24 hours old")
        other = _create(client, sim, _intent_form("off_b"), key="reused")
    assert first.status_code == 200
    assert clash.status_code == 400 and clash.json()["error"]["type"] == "idempotency_error"
    assert other.status_code == 200 and "idempotent-replayed" not in other.headers
    assert other.json()["metadata"]["offterm_offline_id"] == "off_b"


def test_the_window_is_configurable_and_the_capacity_bound_stays() -> None:
    with running_simulator(idempotency_ttl=60.0) as sim, _client(sim) as client:
        _create(client, sim, _intent_form("off_c"), key="short")
        sim.advance_clock(59)
        replay = _create(client, sim, _intent_form("off_c"), key="short")
        sim.advance_clock(2)
        fresh = _create(client, sim, _intent_form("off_c"), key="short")
        assert sim._state is not None
        store = sim._state.idempotency
        store._capacity = 2
        for i in range(4):
            assert _create(client, sim, _intent_form("off_cap"), key=f"cap-{i}").status_code == 200
        assert len(store) == 2
        evicted = _create(client, sim, _intent_form("off_cap"), key="cap-0")
    assert replay.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in fresh.headers and fresh.json()["id"] != replay.json()["id"]
    assert "idempotent-replayed" not in evicted.headers


def test_a_key_whose_request_still_runs_does_not_expire() -> None:
    with running_simulator(faults={"latency": 1.0}) as sim:
        assert sim._state is not None
        store = sim._state.idempotency

        def call() -> httpx.Response:
            with _client(sim) as client:
                return _create(client, sim, _intent_form("off_inflight"), key="slow")

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(call)
            while len(store) == 0 and not first.done():  # wait until the key is claimed
                threading.Event().wait(0.005)
            sim.advance_clock(25 * HOUR)
            sim.set_faults()
            with _client(sim) as client:
                second = _create(client, sim, _intent_form("off_inflight"), key="slow")
            assert first.result().status_code == 200
    assert second.status_code == 409 and second.json()["error"]["code"] == "idempotency_key_in_use"


def test_one_clock_ages_tokens_and_sessions_too(sim: SimHandle) -> None:
    before = sim.now()
    token = sim.connection_token()
    after = sim.advance_clock(sim.config.connection_token_ttl + 1)
    with _client(sim) as client:
        resp = client.post("/device/v1/sessions", headers={"Authorization": f"Bearer {token}"})
    assert after >= before + sim.config.connection_token_ttl + 1
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "connection_token_expired"
    with pytest.raises(ValueError, match="forward"):
        sim.advance_clock(-1)


# -- search ---------------------------------------------------------------------------------


def test_the_official_library_finds_intents_by_metadata(spec_sim: SimHandle) -> None:
    sim = spec_sim
    with _client(sim) as client:
        wanted = _create(client, sim, _intent_form("off_s1", **{"metadata[order]": "A-17"})).json()
        _create(client, sim, _intent_form("off_s2", **{"metadata[order]": "A-18"}))
        both = _create(client, sim, _intent_form("off_s3", **{"metadata[order]": "A-17", "metadata[lane]": "2"}))
    library = stripe.StripeClient(sim.secret_key, base_addresses={"api": sim.url}, max_network_retries=0)

    by_order = library.v1.payment_intents.search(params={"query": "metadata['order']:'A-17'"})
    by_two = library.v1.payment_intents.search(params={"query": 'metadata["order"]:"A-17" AND metadata["lane"]:"2"'})
    by_offline_id = library.v1.payment_intents.search(params={"query": "metadata['offterm_offline_id']:'off_s1'"})
    nothing = library.v1.payment_intents.search(params={"query": "metadata['order']:'Z-1'"})
    with pytest.raises(stripe.InvalidRequestError) as refused:
        library.v1.payment_intents.search(params={"query": "metadata[order]=A-17"})

    assert by_order.object == "search_result" and by_order.url == "/v1/payment_intents/search"
    assert [pi.id for pi in by_order.data] == [both.json()["id"], wanted["id"]]  # newest first
    assert [pi.id for pi in by_two.data] == [both.json()["id"]]
    assert [pi.id for pi in by_offline_id.data] == [wanted["id"]]
    assert by_offline_id.data[0].metadata["order"] == "A-17"
    assert nothing.data == [] and nothing.has_more is False
    assert refused.value.http_status == 400 and refused.value.code == "parameter_invalid"
    searches = [r for r in sim.requests() if r["path"] == "/v1/payment_intents/search"]
    assert len(searches) == 5 and all(r["auth"] == "secret_key" for r in searches)


def test_search_answers_match_the_spec_and_page(sim: SimHandle, stripe_spec: StripeSpec) -> None:
    with _client(sim) as client:
        ids = [
            _create(client, sim, _intent_form(f"off_p{i}", **{"metadata[shift]": "early"})).json()["id"]
            for i in range(3)
        ]
        first = _search(client, sim, "metadata['shift']:'early'", limit="2")
        second = _search(client, sim, "metadata['shift']:'early'", limit="2", page=first.json()["next_page"])
        either = _search(
            client, sim, "metadata['offterm_offline_id']:'off_p0' OR metadata['offterm_offline_id']:'off_p2'"
        )
        by_status = _search(client, sim, "status:'requires_payment_method' AND currency:'usd'")
        bad_page = _search(client, sim, "metadata['shift']:'early'", page="page_nonsense!")

    schema = stripe_spec.schema["paths"]["/v1/payment_intents/search"]["get"]["responses"]["200"]["content"]
    validator_pointer = "/paths/~1v1~1payment_intents~1search/get/responses/200/content/application~1json/schema"
    assert schema  # the route is in Stripe's spec
    for resp in (first, second, either, by_status):
        assert resp.status_code == 200, resp.text
        assert stripe_spec._errors(validator_pointer, resp.json()) == []
    assert [pi["id"] for pi in first.json()["data"]] == [ids[2], ids[1]]
    assert first.json()["has_more"] is True and isinstance(first.json()["next_page"], str)
    assert [pi["id"] for pi in second.json()["data"]] == [ids[0]]
    assert second.json()["has_more"] is False and second.json()["next_page"] is None
    assert [pi["id"] for pi in either.json()["data"]] == [ids[2], ids[0]]
    assert len(by_status.json()["data"]) == 3
    assert bad_page.status_code == 400 and bad_page.json()["error"]["param"] == "page"


@pytest.mark.parametrize(
    "query",
    [
        "metadata[order]:'A-17'",  # key not quoted
        "metadata['order']:A-17",  # value not quoted
        "metadata['order']='A-17'",  # not the ':' operator
        "metadata['order']:'A-17' AND",  # dangling AND
        "metadata['a']:'1' AND metadata['b']:'2' OR metadata['c']:'3'",  # AND and OR mixed
        "metadata['order']:'A-17",  # unterminated value
        "amount_details:'x'",  # not a searchable field
        "   ",
    ],
)
def test_a_query_the_simulator_cannot_parse_is_a_stripe_400(
    sim: SimHandle, stripe_spec: StripeSpec, query: str
) -> None:
    with _client(sim) as client:
        resp = _search(client, sim, query)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert stripe_spec.check_object("error", resp.json()) == []
    assert error["type"] == "invalid_request_error" and error["code"] == "parameter_invalid"
    assert error["param"] == "query"
    assert resp.headers["request-id"].startswith("req_")


def test_search_is_not_taken_for_an_intent_id(sim: SimHandle) -> None:
    with _client(sim) as client:
        no_query = client.get("/v1/payment_intents/search", headers=_secret(sim))
        no_auth = client.get("/v1/payment_intents/search", params={"query": "status:'succeeded'"})
    assert no_query.status_code == 400 and no_query.json()["error"]["code"] == "parameter_missing"
    assert no_auth.status_code == 401


def test_query_parsing_keeps_quoted_text_whole() -> None:
    joiner, clauses = parse_search_query("metadata['note']:'it\\'s A AND B'  metadata[\"k\"]:\"v\"")
    assert joiner == "AND"
    assert clauses == [("metadata", "note", "it's A AND B"), ("metadata", "k", "v")]
    assert parse_search_query("status:'succeeded' OR status:'processing'")[0] == "OR"
    with pytest.raises(SimError) as too_many:
        parse_search_query(" AND ".join(f"metadata['k{i}']:'v'" for i in range(11)))
    assert too_many.value.status == 400


def test_search_sees_an_intent_only_after_the_indexing_delay() -> None:
    with running_simulator(search_delay=60.0) as sim, _client(sim) as client:
        early = _create(client, sim, _intent_form("off_d1", **{"metadata[batch]": "7"})).json()
        hidden = _search(client, sim, "metadata['batch']:'7'").json()
        listed = client.get("/v1/payment_intents", headers=_secret(sim)).json()  # list has no delay
        sim.advance_clock(30)
        late = _create(client, sim, _intent_form("off_d2", **{"metadata[batch]": "7"})).json()
        sim.advance_clock(31)
        half = _search(client, sim, "metadata['batch']:'7'").json()
        sim.advance_clock(30)
        full = _search(client, sim, "metadata['batch']:'7'").json()
    assert hidden["data"] == []
    assert [pi["id"] for pi in listed["data"]] == [early["id"]]
    assert [pi["id"] for pi in half["data"]] == [early["id"]]
    assert [pi["id"] for pi in full["data"]] == [late["id"], early["id"]]


# -- confirms answered "processing" ---------------------------------------------------------


def test_processing_settles_to_the_real_outcome_on_the_clock(stripe_spec: StripeSpec) -> None:
    faults = {"confirm_status": {"processing": 1.0}, "processing_for": 30.0}
    with running_simulator(faults=faults) as sim, _client(sim) as client:
        pm = _payment_method(sim, client)
        intent = _create(client, sim, _intent_form("off_proc")).json()
        answered = _confirm(client, sim, intent["id"], pm)
        still = _get(client, sim, intent["id"])
        pending_ledger = sim.ledger()
        pending_counts = sim.successful_charges()
        assert sim._state is not None
        pending_charge = dict(sim._state.books.charges[answered.json()["latest_charge"]])
        again = _confirm(client, sim, intent["id"], pm)
        cancel = client.post(f"/v1/payment_intents/{intent['id']}/cancel", headers=_secret(sim))
        sim.advance_clock(29)
        not_yet = _get(client, sim, intent["id"])
        sim.advance_clock(2)
        final = _get(client, sim, intent["id"])
        final_charge = dict(sim._state.books.charges[final["latest_charge"]])

    assert answered.status_code == 200 and answered.json()["status"] == "processing"
    assert answered.json()["amount_received"] == 0
    assert stripe_spec.check_object("payment_intent", answered.json()) == []
    assert stripe_spec.check_object("charge", pending_charge) == []
    assert pending_charge["status"] == "pending" and pending_charge["paid"] is False
    assert still["status"] == "processing" and not_yet["status"] == "processing"
    assert [e["status"] for e in pending_ledger["off_proc"]] == ["pending"]
    assert pending_counts == {"off_proc": 0}
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "payment_intent_unexpected_state"
    assert again.json()["error"]["payment_intent"]["status"] == "processing"
    assert stripe_spec.check_object("error", again.json()) == []
    assert cancel.status_code == 400 and cancel.json()["error"]["code"] == "payment_intent_unexpected_state"
    assert final["status"] == "succeeded" and final["amount_received"] == 1250
    assert stripe_spec.check_object("payment_intent", final) == []
    assert final_charge["status"] == "succeeded" and final_charge["paid"] is True and final_charge["captured"]
    assert stripe_spec.check_object("charge", final_charge) == []
    assert sim.successful_charges() == {"off_proc": 1}
    assert sim.injected() == {"processing": 1}


def test_processing_of_a_declining_card_ends_in_requires_payment_method(sim: SimHandle) -> None:
    sim.set_faults(confirm_status={"processing": 1.0}, processing_for=5.0)
    with _client(sim) as client:
        pm = _payment_method(sim, client, DECLINED)
        intent = _create(client, sim, _intent_form("off_proc_decl")).json()
        answered = _confirm(client, sim, intent["id"], pm)
        sim.advance_clock(5)
        final = _get(client, sim, intent["id"])
        cancel = client.post(f"/v1/payment_intents/{intent['id']}/cancel", headers=_secret(sim))
    assert answered.status_code == 200 and answered.json()["status"] == "processing"
    assert final["status"] == "requires_payment_method" and final["payment_method"] is None
    assert final["last_payment_error"]["code"] == "card_declined"
    assert final["last_payment_error"]["decline_code"] == "generic_decline"
    assert [e["status"] for e in sim.ledger()["off_proc_decl"]] == ["failed"]
    assert sim.ledger()["off_proc_decl"][0]["decline_code"] == "generic_decline"
    assert sim.successful_charges() == {"off_proc_decl": 0}
    assert cancel.status_code == 200 and cancel.json()["status"] == "canceled"


def test_processing_on_create_with_confirm_and_manual_capture(sim: SimHandle) -> None:
    sim.set_faults(confirm_status={"processing": 1.0}, processing_for=1.0)
    with _client(sim) as client:
        pm = _payment_method(sim, client)
        form = _intent_form("off_proc_manual", payment_method=pm, confirm="true", capture_method="manual")
        created = _create(client, sim, form, key="proc-manual")
        replay = _create(client, sim, form, key="proc-manual")
        sim.advance_clock(1)
        final = _get(client, sim, created.json()["id"])
        captured = client.post(f"/v1/payment_intents/{final['id']}/capture", headers=_secret(sim))
    assert created.json()["status"] == "processing"
    assert replay.headers["idempotent-replayed"] == "true" and replay.json()["status"] == "processing"
    assert final["status"] == "requires_capture" and final["amount_capturable"] == 1250
    assert captured.status_code == 200 and captured.json()["status"] == "succeeded"
    assert sim.successful_charges() == {"off_proc_manual": 1}


# -- confirms answered "requires_action" ----------------------------------------------------


def test_requires_action_charges_nothing_stays_and_can_be_canceled(sim: SimHandle, stripe_spec: StripeSpec) -> None:
    sim.set_faults(confirm_status={"requires_action": 1.0})
    with _client(sim) as client:
        pm = _payment_method(sim, client)
        intent = _create(client, sim, _intent_form("off_action")).json()
        answered = _confirm(client, sim, intent["id"], pm)
        sim.advance_clock(48 * HOUR)
        later = _get(client, sim, intent["id"])
        again = _confirm(client, sim, intent["id"], pm)
        canceled = client.post(
            f"/v1/payment_intents/{intent['id']}/cancel",
            headers=_secret(sim),
            data={"cancellation_reason": "abandoned"},
        )
    body = answered.json()
    assert answered.status_code == 200 and body["status"] == "requires_action"
    assert body["next_action"]["type"] == "use_stripe_sdk"
    assert body["latest_charge"] is None and body["amount_received"] == 0
    assert stripe_spec.check_object("payment_intent", body) == []
    assert later["status"] == "requires_action"
    assert again.status_code == 400 and again.json()["error"]["code"] == "payment_intent_unexpected_state"
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled" and canceled.json()["next_action"] is None
    assert stripe_spec.check_object("payment_intent", canceled.json()) == []
    assert sim.ledger() == {} and sim.successful_charges() == {}
    assert sim.injected() == {"requires_action": 1}


def test_a_declined_intent_can_be_canceled(sim: SimHandle) -> None:
    with _client(sim) as client:
        pm = _payment_method(sim, client, DECLINED)
        intent = _create(client, sim, _intent_form("off_decl")).json()
        declined = _confirm(client, sim, intent["id"], pm)
        canceled = client.post(f"/v1/payment_intents/{intent['id']}/cancel", headers=_secret(sim))
    assert declined.status_code == 402
    assert declined.json()["error"]["payment_intent"]["status"] == "requires_payment_method"
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"


def test_confirm_status_faults_follow_paths_and_leave_other_requests_alone(sim: SimHandle) -> None:
    sim.set_faults(confirm_status={"requires_action": 1.0}, paths=("/v1/refunds",))
    with _client(sim) as client:
        pm = _payment_method(sim, client)
        created = _create(client, sim, _intent_form("off_paths", payment_method=pm, confirm="true"))
    assert created.json()["status"] == "succeeded"
    assert sim.injected() == {}


# -- configuration, admin and the child process ----------------------------------------------


def test_fault_config_round_trips_the_new_fields() -> None:
    config = FaultConfig(
        error_rates={503: 0.1}, confirm_status={"processing": 0.25, "requires_action": 0.5}, processing_for=3.5, seed=4
    )
    data = config.to_json()
    assert data["confirm_status"] == {"processing": 0.25, "requires_action": 0.5}
    assert data["processing_for"] == 3.5
    assert FaultConfig.from_json(data) == config
    assert not FaultConfig(confirm_status={"processing": 1.0}).active  # no transport faults
    with pytest.raises(ValueError, match="confirm status"):
        FaultConfig(confirm_status={"succeeded": 0.5})
    with pytest.raises(ValueError, match="more than 1"):
        FaultConfig(confirm_status={"processing": 0.6, "requires_action": 0.6})
    with pytest.raises(ValueError, match="processing_for"):
        FaultConfig(processing_for=-1)


def test_clock_and_confirm_faults_through_a_child_process() -> None:
    faults = {"confirm_status": {"processing": 1.0}, "processing_for": 600.0}
    with running_simulator(subprocess=True, faults=faults, search_delay=120.0) as sim, _client(sim) as client:
        proc = sim.process  # type: ignore[attr-defined]
        shown = client.get("/_sim/faults").json()["faults"]
        pm = _payment_method(sim, client)
        intent = _create(client, sim, _intent_form("off_child", **{"metadata[till]": "9"})).json()
        answered = _confirm(client, sim, intent["id"], pm).json()
        unseen = _search(client, sim, "metadata['till']:'9'").json()
        before = client.get("/_sim/clock").json()
        moved = client.post("/_sim/clock", json={"advance": 300}).json()
        by_handle = sim.advance_clock(301)
        final = _get(client, sim, intent["id"])
        seen = _search(client, sim, "metadata['till']:'9'").json()
        refused = [
            client.post("/_sim/clock", json={"advance": -5}),
            client.post("/_sim/clock", json={"advance": "soon"}),
            client.post("/_sim/clock", json={"back": 5}),
            client.post("/_sim/clock", content=b"not json"),
        ]
        sim.set_faults(error_rates={503: 1.0})  # admin paths are never faulted
        still_admin = client.post("/_sim/clock", json={"advance": 0})
        counts = sim.successful_charges()
    assert shown["confirm_status"] == {"processing": 1.0} and shown["processing_for"] == 600.0
    assert answered["status"] == "processing"
    assert unseen["data"] == []
    assert moved["now"] >= before["now"] + 300 and moved["offset"] == 300
    assert by_handle >= moved["now"] + 301
    assert final["status"] == "succeeded"
    assert [pi["id"] for pi in seen["data"]] == [intent["id"]]
    assert [r.status_code for r in refused] == [400, 400, 400, 400]
    assert still_admin.status_code == 200 and still_admin.json()["offset"] == 601
    assert counts == {"off_child": 1}
    assert proc.poll() is not None


def test_command_line_flags_for_the_new_rules() -> None:
    config = SimConfig(secret_key="sk_test_sim_cli_rules")
    args = [sys.executable, "-m", "offterm.sim.processor", "--port", "0", "--secret-key", config.secret_key]
    args += ["--confirm-status", "requires_action=0.5", "--confirm-status", "processing=0.5"]
    args += ["--processing-for", "7", "--idempotency-ttl", "100", "--search-delay", "50"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)  # noqa: S603
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(READY_PREFIX)
        sim = SimHandle(line[len(READY_PREFIX) :].strip(), config)
        with _client(sim) as client:
            faults = client.get("/_sim/faults").json()["faults"]
            first = _create(client, sim, _intent_form("off_cli", **{"metadata[x]": "y"}), key="cli")
            unseen = _search(client, sim, "metadata['x']:'y'").json()["data"]
            sim.advance_clock(60)  # past the search delay, within the key's window
            seen = _search(client, sim, "metadata['x']:'y'").json()["data"]
            replay = _create(client, sim, _intent_form("off_cli", **{"metadata[x]": "y"}), key="cli")
            sim.advance_clock(41)  # past the key's window
            again = _create(client, sim, _intent_form("off_cli", **{"metadata[x]": "y"}), key="cli")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert faults["confirm_status"] == {"requires_action": 0.5, "processing": 0.5}
    assert faults["processing_for"] == 7.0
    assert unseen == [] and [pi["id"] for pi in seen] == [first.json()["id"]]
    assert replay.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in again.headers and again.json()["id"] != first.json()["id"]
