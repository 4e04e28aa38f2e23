"""Idempotency semantics and fault injection of the simulator."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys

import httpx
import pytest

from offterm.sim.processor import FaultConfig, SimHandle, running_simulator
from offterm.sim.processor.faults import FaultInjector
from offterm.sim.processor.forms import FormError, decode
from offterm.sim.processor.server import READY_PREFIX


def _auth(sim: SimHandle) -> dict[str, str]:
    return {"Authorization": f"Bearer {sim.secret_key}"}


def _create(client: httpx.Client, sim: SimHandle, key: str, amount: str = "700") -> httpx.Response:
    return client.post(
        "/v1/payment_intents",
        headers={**_auth(sim), "Idempotency-Key": key},
        data={
            "amount": amount,
            "currency": "eur",
            "payment_method_types[0]": "card_present",
            "metadata[offterm_offline_id]": "off_idem",
        },
    )


def test_same_key_same_params_replays(sim: SimHandle) -> None:
    with httpx.Client(base_url=sim.url) as client:
        first = _create(client, sim, "key-1")
        second = _create(client, sim, "key-1")
        listed = client.get("/v1/payment_intents", headers=_auth(sim)).json()
    assert first.status_code == second.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert len(listed["data"]) == 1


def test_same_key_other_params_is_an_idempotency_error(sim: SimHandle) -> None:
    with httpx.Client(base_url=sim.url) as client:
        _create(client, sim, "key-2")
        other = _create(client, sim, "key-2", amount="701")
        other_path = client.post("/v1/payment_intents/pi_x/cancel", headers={**_auth(sim), "Idempotency-Key": "key-2"})
    assert other.status_code == 400 and other.json()["error"]["type"] == "idempotency_error"
    assert other_path.status_code == 400 and other_path.json()["error"]["type"] == "idempotency_error"


def test_validation_errors_are_not_saved(sim: SimHandle) -> None:
    with httpx.Client(base_url=sim.url) as client:
        bad = _create(client, sim, "key-3", amount="-5")
        good = _create(client, sim, "key-3")
    assert bad.status_code == 400
    assert good.status_code == 200 and "idempotent-replayed" not in good.headers


def test_declines_are_saved_and_replayed(sim: SimHandle) -> None:
    import base64

    from offterm.sim.processor.testing import card_result

    with httpx.Client(base_url=sim.url) as client:
        token = sim.connection_token()
        session = client.post("/device/v1/sessions", headers={"Authorization": f"Bearer {token}"}).json()
        auth = {"Authorization": f"Bearer {session['secret']}"}
        card = card_result("4000000000000002")
        pm = client.post(
            "/device/v1/payment_methods",
            headers=auth,
            data={
                "type": "card_present",
                "card_present[encrypted_data]": base64.b64encode(card.encrypted_card_data).decode(),
                "card_present[key_serial]": card.key_serial,
            },
        ).json()
        intent = _create(client, sim, "key-4").json()
        url = f"/v1/payment_intents/{intent['id']}/confirm"
        headers = {**auth, "Idempotency-Key": "key-4-confirm"}
        first = client.post(url, headers=headers, data={"payment_method": pm["id"]})
        second = client.post(url, headers=headers, data={"payment_method": pm["id"]})
    assert first.status_code == second.status_code == 402
    assert second.headers["idempotent-replayed"] == "true"
    assert len(sim.ledger()["off_idem"]) == 1


def test_concurrent_use_of_one_key_is_a_conflict() -> None:
    with running_simulator(faults={"latency": 0.6}) as sim:

        def call() -> httpx.Response:
            with httpx.Client(base_url=sim.url, timeout=10) as client:
                return _create(client, sim, "key-5")

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(call)
            # Let the first request reach the simulator before the second.
            import time

            time.sleep(0.2)
            second = pool.submit(call)
            results = sorted([first.result().status_code, second.result().status_code])
        assert results == [200, 409]
        conflict = first.result() if first.result().status_code == 409 else second.result()
        assert conflict.json()["error"]["code"] == "idempotency_key_in_use"
        assert conflict.headers["stripe-should-retry"] == "true"


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_error_faults(sim: SimHandle, status: int) -> None:
    sim.set_faults(error_rates={status: 1.0})
    with httpx.Client(base_url=sim.url) as client:
        resp = _create(client, sim, f"key-err-{status}")
        admin = client.get("/_sim/ledger")
    assert resp.status_code == status
    assert admin.status_code == 200  # admin paths are never faulted
    if status == 502:
        assert resp.headers["content-type"].startswith("text/html")
    else:
        assert resp.json()["error"]["type"] in ("api_error", "invalid_request_error")
    assert (resp.headers.get("stripe-should-retry") == "true") == (status in (429, 503))
    if status == 429:
        assert resp.json()["error"]["code"] == "rate_limit"
    assert sim.ledger() == {}
    sim.set_faults()
    with httpx.Client(base_url=sim.url) as client:
        after = _create(client, sim, f"key-err-{status}")
    assert after.status_code == 200 and "idempotent-replayed" not in after.headers
    assert sim.injected() == {str(status): 1}


def test_reset_and_drop_close_without_an_answer(sim: SimHandle) -> None:
    sim.set_faults(reset_rate=1.0)
    # An RST usually surfaces as ReadError; if the kernel delivers it after EOF it reads as a disconnect.
    with httpx.Client(base_url=sim.url) as client, pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        _create(client, sim, "key-r")
    sim.set_faults(drop_rate=1.0)
    with httpx.Client(base_url=sim.url) as client, pytest.raises(httpx.RemoteProtocolError):
        _create(client, sim, "key-d")
    sim.set_faults()
    with httpx.Client(base_url=sim.url) as client:
        listed = client.get("/v1/payment_intents", headers=_auth(sim)).json()
    assert listed["data"] == []  # neither request ran


def test_commit_then_drop_commits(sim: SimHandle) -> None:
    sim.set_faults(commit_drop_rate=1.0)
    with httpx.Client(base_url=sim.url) as client, pytest.raises(httpx.RemoteProtocolError):
        _create(client, sim, "key-cd")
    sim.set_faults()
    with httpx.Client(base_url=sim.url) as client:
        retry = _create(client, sim, "key-cd")
        listed = client.get("/v1/payment_intents", headers=_auth(sim)).json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert [i["id"] for i in listed["data"]] == [retry.json()["id"]]


def test_commit_then_answer_too_late(sim: SimHandle) -> None:
    sim.set_faults(commit_delay_rate=1.0, commit_delay=1.5)
    with httpx.Client(base_url=sim.url, timeout=0.4) as client, pytest.raises(httpx.ReadTimeout):
        _create(client, sim, "key-late")
    sim.set_faults()
    with httpx.Client(base_url=sim.url) as client:
        retry = _create(client, sim, "key-late")
    assert retry.headers["idempotent-replayed"] == "true"


def test_faults_can_target_paths(sim: SimHandle) -> None:
    sim.set_faults(error_rates={503: 1.0}, paths=("/v1/payment_intents/",))
    with httpx.Client(base_url=sim.url) as client:
        created = _create(client, sim, "key-p")
        confirm = client.post(f"/v1/payment_intents/{created.json()['id']}/confirm", headers=_auth(sim))
    assert created.status_code == 200 and confirm.status_code == 503


def test_faults_over_http_admin(sim: SimHandle) -> None:
    with httpx.Client(base_url=sim.url) as client:
        bad = client.post("/_sim/faults", json={"error_rates": {"418": 0.5}})
        too_much = client.post("/_sim/faults", json={"reset_rate": 0.7, "drop_rate": 0.7})
        ok = client.post("/_sim/faults", json={"error_rates": {"500": 0.25}, "seed": 3})
    assert bad.status_code == too_much.status_code == 400
    assert ok.json()["faults"]["error_rates"] == {"500": 0.25}
    assert sim._state is not None and sim._state.faults.config.error_rates == {500: 0.25}


def test_seeded_faults_repeat() -> None:
    config = FaultConfig(error_rates={500: 0.2, 429: 0.1}, reset_rate=0.1, commit_drop_rate=0.1, seed=42)
    a, b = FaultInjector(config), FaultInjector(config)
    first = [a.choose("/v1/payment_intents") for _ in range(300)]
    second = [b.choose("/v1/payment_intents") for _ in range(300)]
    assert first == second
    rate = sum(1 for f in first if f is not None) / len(first)
    assert 0.35 < rate < 0.65  # 0.5 configured
    assert all(a.choose("/_sim/ledger") is None for _ in range(50))


def test_form_decoding() -> None:
    assert decode("a=1&m[k]=v&m[j]=w&t[0]=x&t[1]=y&u[]=p&u[]=q&n[a][b]=c") == {
        "a": "1",
        "m": {"k": "v", "j": "w"},
        "t": ["x", "y"],
        "u": ["p", "q"],
        "n": {"a": {"b": "c"}},
    }
    with pytest.raises(FormError):
        decode("a=1&a[b]=2")
    with pytest.raises(FormError):
        decode("a]=1")


def test_simulator_in_a_subprocess() -> None:
    with running_simulator(subprocess=True, faults={"error_rates": {503: 0.0}}) as sim:
        proc = sim.process  # type: ignore[attr-defined]
        token = sim.connection_token()
        with httpx.Client(base_url=sim.url) as client:
            assert client.post("/device/v1/sessions", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        sim.set_faults(error_rates={503: 1.0})
        with httpx.Client(base_url=sim.url) as client:
            assert client.get("/healthcheck").status_code == 503
        assert sim.injected() == {"503": 1}
        assert sim.ledger() == {} and sim.successful_charges() == {}
    assert proc.poll() is not None


def test_command_line_flags() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "offterm.sim.processor", "--port", "0", "--error-rate", "429=1.0", "--seed", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(READY_PREFIX)
        url = line[len(READY_PREFIX) :].strip()
        with httpx.Client(base_url=url) as client:
            assert client.get("/healthcheck").status_code == 429
            faults = client.get("/_sim/faults").json()
        assert faults["faults"]["error_rates"] == {"429": 1.0}
        assert json.dumps(faults)  # the admin view is plain JSON
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
