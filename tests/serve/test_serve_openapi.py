"""serve/openapi.json describes exactly what the service serves, and real answers fit its schemas."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import httpx
import jsonschema
import stripe
from serve_kit import Served, pay

from offterm.serve.app import EVENTS_PATH, ROUTES

DOC: dict[str, Any] = json.loads(files("offterm.serve").joinpath("openapi.json").read_text())


def _check(name: str, value: Any) -> None:
    schema = {"components": DOC["components"], "$ref": f"#/components/schemas/{name}"}
    jsonschema.Draft202012Validator(schema).validate(value)


def test_every_route_is_documented_and_every_documented_path_is_served() -> None:
    served = {(method.lower(), path) for method, path, _ in ROUTES} | {("get", EVENTS_PATH)}
    documented = {(method, path) for path, ops in DOC["paths"].items() for method in ops}
    assert served == documented


def test_answers_of_a_real_flow_validate_against_the_document(served: Served) -> None:
    intent_id, reader = pay(1500)
    _check("terminal.reader", reader.to_dict())
    _check("payment_intent", stripe.PaymentIntent.retrieve(intent_id).to_dict())
    _check("terminal.reader_list", stripe.terminal.Reader.list().to_dict())
    served.proxy.set_mode("down")
    offline_id, _ = pay(900)
    _check("payment_intent", stripe.PaymentIntent.retrieve(offline_id).to_dict())
    auth = {"Authorization": f"Bearer {served.service.key}"}
    _check("offterm.offline_status", httpx.get(f"{served.service.url}/v1/offterm/offline_status", headers=auth).json())
    stored = httpx.get(f"{served.service.url}/v1/offterm/stored_payments", headers=auth).json()
    assert stored["data"]
    _check("offterm.stored_payment_list", stored)
    served.proxy.set_mode("pass")
    _check(
        "offterm.forward_result",
        httpx.post(f"{served.service.url}/v1/offterm/forward", headers=auth, timeout=60).json(),
    )
    error = httpx.get(f"{served.service.url}/v1/payment_intents/pi_nope", headers=auth)
    assert error.status_code == 404
    _check("error", error.json())
    seen: set[str] = set()
    with httpx.stream("GET", f"{served.service.url}{EVENTS_PATH}", headers={**auth, "Last-Event-ID": "0"}) as r:
        kind = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                # the live offline status (no id), then the outbox's events
                name = "offterm.offline_status" if kind == "offterm.offline_status" else "event"
                _check(name, json.loads(line[6:]))
                seen.add(name)
                if seen == {"offterm.offline_status", "event"}:
                    break
