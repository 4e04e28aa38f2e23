"""Exactly once through the service, its security rules, and the event stream."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import stripe
from serve_kit import Served, pay, terminal_config, wait_until

from offterm.core import load_config
from offterm.core.errors import ConfigError
from offterm.serve.config import serve_settings
from offterm.serve.testing import ServiceProcess


def _auth(served: Served) -> dict[str, str]:
    return {"Authorization": f"Bearer {served.service.key}"}


def test_a_retry_with_the_same_idempotency_key_gets_the_one_payment(served: Served) -> None:
    url, headers = served.service.url, {**_auth(served), "Idempotency-Key": "order-17"}
    body = {"amount": "1700", "currency": "usd", "payment_method_types[]": "card_present"}
    first = httpx.post(f"{url}/v1/payment_intents", data=body, headers=headers)
    again = httpx.post(f"{url}/v1/payment_intents", data=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true" and again.json()["id"] == first.json()["id"]
    other = httpx.post(f"{url}/v1/payment_intents", data={**body, "amount": "1800"}, headers=headers)
    assert other.status_code == 400 and other.json()["error"]["type"] == "idempotency_error"
    creates = [r for r in served.sim.requests() if r["path"] == "/v1/payment_intents" and r["method"] == "POST"]
    assert len(creates) == 1, "the retry never reached the processor"

    # the same through the official library: its own retry of a timed-out process call
    rid = stripe.terminal.Reader.list().data[0].id
    intent_id = first.json()["id"]
    a = stripe.terminal.Reader.process_payment_intent(rid, payment_intent=intent_id, idempotency_key="proc-17")
    b = stripe.terminal.Reader.process_payment_intent(rid, payment_intent=intent_id, idempotency_key="proc-17")
    assert a.action.status == b.action.status == "in_progress"
    stripe.terminal.Reader.TestHelpers.present_payment_method(rid)
    wait_until(lambda: stripe.PaymentIntent.retrieve(intent_id).status == "succeeded", what="the payment")
    offline_id = stripe.PaymentIntent.retrieve(intent_id).offterm.offline_id
    assert served.sim.successful_charges() == {offline_id: 1}

    # a restart replays saved answers from serve.sqlite3
    served.restart()
    replay = httpx.post(
        f"{served.service.url}/v1/payment_intents", data=body, headers={**_auth(served), "Idempotency-Key": "order-17"}
    )
    assert replay.headers.get("Idempotent-Replayed") == "true" and replay.json()["id"] == intent_id


def test_a_key_whose_request_still_runs_gets_409_then_the_first_answer(served: Served) -> None:
    # the claim lives in memory while the request runs (it never outlived the process); the answer is on disk
    url, headers = served.service.url, {**_auth(served), "Idempotency-Key": "order-slow"}
    body = {"amount": "2500", "currency": "usd", "payment_method_types[]": "card_present"}
    served.sim.set_faults(latency=2.0, paths=("/v1/payment_intents",))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{url}/v1/payment_intents", data=body, headers=headers, timeout=30)
        wait_until(
            lambda: any(r["path"] == "/v1/payment_intents" and r["method"] == "POST" for r in served.sim.requests()),
            what="the create at the processor",
        )
        running = httpx.post(f"{url}/v1/payment_intents", data=body, headers=headers)
        other = httpx.post(f"{url}/v1/payment_intents", data={**body, "amount": "2600"}, headers=headers)
        answer = first.result()
    served.sim.set_faults()
    assert running.status_code == 409 and running.json()["error"]["code"] == "idempotency_key_in_use"
    assert other.status_code == 400 and other.json()["error"]["type"] == "idempotency_error"
    assert answer.status_code == 200 and "Idempotent-Replayed" not in answer.headers
    replay = httpx.post(f"{url}/v1/payment_intents", data=body, headers=headers)
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json()["id"] == answer.json()["id"]
    creates = [r for r in served.sim.requests() if r["path"] == "/v1/payment_intents" and r["method"] == "POST"]
    assert len(creates) == 1, "neither the refused nor the replayed request reached the processor"


def test_killed_mid_payment_and_restarted_the_retry_says_what_happened_never_a_second_charge(served: Served) -> None:
    pay(1000)
    rid = stripe.terminal.Reader.list().data[0].id
    intent = stripe.PaymentIntent.create(
        amount=4200,
        currency="usd",
        payment_method_types=["card_present"],
        metadata={"offterm_offline_behavior": "require_online"},
    )
    served.sim.set_faults(commit_delay_rate=1.0, commit_delay=30.0, paths=("/v1/payment_intents/",))
    stripe.terminal.Reader.process_payment_intent(rid, payment_intent=intent.id, idempotency_key="pos-retry-1")
    stripe.terminal.Reader.TestHelpers.present_payment_method(rid)
    wait_until(
        lambda: any(r["path"].startswith(f"/v1/payment_intents/{intent.id}/confirm") for r in served.sim.requests()),
        what="the confirm at the processor",
    )
    served.service.kill()
    served.sim.set_faults()
    offline_id = intent.offterm.offline_id
    assert served.sim.successful_charges()[offline_id] == 1, "the processor has the money; the service died"

    served.restart()
    retried = stripe.terminal.Reader.process_payment_intent(
        rid, payment_intent=intent.id, idempotency_key="pos-retry-1"
    )
    assert retried.action.process_payment_intent.payment_intent == intent.id
    settled = wait_until(
        lambda: (i := stripe.PaymentIntent.retrieve(intent.id)).status == "succeeded" and i,
        timeout=30,
        what="recovery after the restart",
    )
    assert settled.amount_received == 4200
    assert stripe.terminal.Reader.retrieve(rid).action.status == "succeeded"
    with pytest.raises(stripe.InvalidRequestError):  # a new key cannot charge it again either
        stripe.terminal.Reader.process_payment_intent(rid, payment_intent=intent.id, idempotency_key="pos-retry-2")
    assert served.sim.successful_charges()[offline_id] == 1, "one charge, on the processor's own ledger"


def test_requests_without_the_key_are_refused(served: Served) -> None:
    url = served.service.url
    assert httpx.get(f"{url}/v1/terminal/readers").status_code == 401
    wrong = httpx.get(f"{url}/v1/terminal/readers", headers={"Authorization": "Bearer sk_offterm_nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "invalid_request_error"
    assert served.service.key not in wrong.text
    stripe.api_key = "sk_offterm_wrong"
    with pytest.raises(stripe.AuthenticationError):
        stripe.terminal.Reader.list()
    served.use()
    assert len(stripe.terminal.Reader.list().data) == 1
    key_file = Path(served.service.ready["key_file"])
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_each_request_is_logged_with_its_status_never_its_query_or_key(served: Served) -> None:
    url = f"{served.service.url}/v1/terminal/readers"
    assert httpx.get(f"{url}?limit=7", headers=_auth(served)).status_code == 200
    assert httpx.get(url, headers={"Authorization": "Bearer sk_offterm_nope"}).status_code == 401

    def logged() -> list[str]:
        return [
            line for line in served.service.log().splitlines() if " request " in line and "/v1/terminal/readers" in line
        ]

    lines = wait_until(lambda: len(logged()) >= 2 and logged()[-2:], what="the request log lines")
    assert "status=200" in lines[0] and "status=401" in lines[1]
    for line in lines:
        assert "method=GET" in line and " ms=" in line and "request_id=req_" in line
        assert "limit" not in line and "nope" not in line and served.service.key not in line


def test_inputs_are_checked_with_stripes_error_shapes(served: Served) -> None:
    with pytest.raises(stripe.InvalidRequestError) as bad:
        stripe.PaymentIntent.create(amount=-5, currency="usd")
    assert bad.value.param == "amount"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        stripe.PaymentIntent.create(amount=5, currency="usd", payment_method_data={"type": "card"})
    assert unknown.value.code == "parameter_unknown"
    with pytest.raises(stripe.InvalidRequestError) as gone:
        stripe.PaymentIntent.retrieve("pi_missing")
    assert gone.value.http_status == 404 and gone.value.code == "resource_missing"
    big = httpx.post(
        f"{served.service.url}/v1/payment_intents",
        content=b"a=" + b"x" * 70_000,
        headers={**_auth(served), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert big.status_code == 413


def test_the_event_stream_resumes_after_last_event_id(served: Served) -> None:
    url = f"{served.service.url}/v1/offterm/events"

    def read(headers: dict[str, str], count: int) -> list[tuple[int, str]]:
        got: list[tuple[int, str]] = []
        with httpx.stream("GET", url, headers={**_auth(served), **headers}, timeout=30) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            event_id, kind = 0, ""
            for line in response.iter_lines():
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "offterm.offline_status":
                    kind = ""  # the live offline status, not an outbox event (test_serve_status_stream.py)
                elif line.startswith("data: "):
                    assert json.loads(line[6:])["type"] == kind
                    got.append((event_id, kind))
                    if len(got) == count:
                        return got
        return got

    pay(1500)
    pay(1600)
    everything = read({"Last-Event-ID": "0"}, 4)
    assert [k for _, k in everything] == ["terminal.reader.action_succeeded", "payment_intent.succeeded"] * 2
    resumed = read({"Last-Event-ID": str(everything[1][0])}, 2)
    assert resumed == everything[2:]


def test_a_non_loopback_bind_needs_tls_and_the_flag(tmp_path: Path) -> None:
    base = {"terminal": {"data_dir": str(tmp_path)}}
    with pytest.raises(ConfigError, match="needs TLS"):
        serve_settings(load_config({**base, "serve": {"host": "0.0.0.0"}}, env={}))
    with pytest.raises(ConfigError, match="allow_non_loopback"):
        serve_settings(
            load_config({**base, "serve": {"host": "0.0.0.0", "tls_cert": "c.pem", "tls_key": "k.pem"}}, env={})
        )
    ok = serve_settings(
        load_config(
            {**base, "serve": {"host": "0.0.0.0", "tls_cert": "c.pem", "tls_key": "k.pem", "allow_non_loopback": True}},
            env={},
        )
    )
    assert ok.tls and ok.host == "0.0.0.0"
    assert serve_settings(load_config(base, env={})).host == "127.0.0.1"
    with pytest.raises(ConfigError, match="webhook_secret"):
        serve_settings(load_config({**base, "serve": {"webhook_urls": ["http://127.0.0.1:9/x"]}}, env={}))


def test_the_command_refuses_a_non_loopback_bind_without_tls(tmp_path: Path, proxy) -> None:
    cfg = terminal_config(proxy, tmp_path / "data")
    with pytest.raises(RuntimeError, match="needs TLS"):
        ServiceProcess.start(cfg, tmp_path, extra_args=("--host", "0.0.0.0", "--allow-non-loopback"), timeout=20)
