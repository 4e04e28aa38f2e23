"""The simulator's HTTP surface: Stripe's public API, the device API, "your backend", admin.

Routes:

* Secret-key API (Bearer ``sk_test_...``; public endpoints also take a device
  session): ``POST /v1/terminal/connection_tokens``, PaymentIntents (create,
  list, search, retrieve, confirm, capture, cancel), ``POST /v1/refunds``,
  Charges (list, retrieve), ``GET /v1/payment_methods/{id}``.  Their parameters
  are checked against Stripe's spec (unknown ones: ``parameter_unknown``).
* Device API (private at Stripe; simulated here): ``POST /device/v1/sessions``
  (Bearer: a connection token, single-use) and ``POST /device/v1/payment_methods``
  (Bearer: the device session; the reader's encrypted card data; for a
  payment collected offline, ``Offterm-Stored-At``).
* "Your backend": ``POST /backend/connection_token`` -> ``{"secret": ...}``.
* ``GET /healthcheck`` (no auth), and admin under ``/_sim`` (never faulted):
  ledger, faults, requests, and the account's clock (``/_sim/clock``).
* Anything else: 404 with Stripe's "Unrecognized request URL" error (also for
  a known path with another method, as Stripe answers).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .books import Books
from .clock import SimClock
from .config import FaultConfig, SimConfig
from .errors import SimError
from .faults import LATENCY_SCOPE_KEY, FaultInjector, FaultMiddleware, Receive, Scope, Send
from .forms import FormError, decode
from .idempotency import IdempotencyStore, Saved, fingerprint

DEFAULT_STRIPE_VERSION = "2023-08-16"
#: Device API header: when a payment collected offline was stored (outside the idempotency-compared params).
STORED_AT_HEADER = "Offterm-Stored-At"

Handler = Callable[[Request, dict[str, Any]], dict[str, Any]]


@dataclass
class SimState:
    """Everything one app instance owns; reachable as ``app.state.sim``."""

    config: SimConfig
    clock: SimClock
    books: Books
    idempotency: IdempotencyStore
    faults: FaultInjector
    requests: deque[dict[str, Any]]
    spec_violations: list[dict[str, Any]] = field(default_factory=list)
    spec: Any = None
    #: Validate requests completely (an explicit ``spec_path``), not only their parameter names.
    spec_full: bool = False

    def request_log(self) -> list[dict[str, Any]]:
        return list(self.requests)


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


def _loggable(params: dict[str, Any]) -> dict[str, Any]:
    """Params as logged: the reader's ciphertext is replaced by its length."""
    card = params.get("card_present")
    if isinstance(card, dict) and "encrypted_data" in card:
        return {**params, "card_present": {**card, "encrypted_data": f"<{len(str(card['encrypted_data']))} chars>"}}
    return params


def _render(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _json(status: int, body: dict[str, Any] | bytes, request_id: str, extra: dict[str, str] | None = None) -> Response:
    headers = {"Request-Id": request_id, **(extra or {})}
    content = body if isinstance(body, bytes) else _render(body)
    return Response(content, status_code=status, headers=headers, media_type="application/json")


def _endpoint(handler: Handler, *, auth: str, public: bool = True) -> Callable[[Request], Any]:
    """Wrap a sync handler in Stripe's request pipeline.

    ``auth``: "any" (secret key or device session), "secret_key", "session",
    "token" (a connection token, checked by the handler) or "none".
    """

    async def endpoint(request: Request) -> Response:
        sim: SimState = request.app.state.sim
        request_id = "req_" + secrets.token_hex(8)
        version = request.headers.get("stripe-version", DEFAULT_STRIPE_VERSION)
        base_headers = {"Stripe-Version": version}
        idem_key = request.headers.get("idempotency-key") if request.method == "POST" else None
        if idem_key:
            base_headers["Idempotency-Key"] = idem_key
        record: dict[str, Any] = {
            "method": request.method,
            "path": request.url.path,
            "content_type": request.headers.get("content-type"),
            "stripe_version": request.headers.get("stripe-version"),
            "idempotency_key": idem_key,
            "auth": "none",
            "params": {},
            "status": None,
            "replayed": False,
            "body_sha256": None,
            "stored_at": request.headers.get(STORED_AT_HEADER),
        }
        sim.requests.append(record)
        try:
            if request.method == "POST":
                body_bytes = await request.body()
                # A digest, not the body: tests compare retries byte for byte without keeping card data.
                record["body_sha256"] = hashlib.sha256(body_bytes).hexdigest()
                raw = body_bytes.decode("utf-8", errors="replace")
                ctype = request.headers.get("content-type", "")
                if raw and not ctype.startswith("application/x-www-form-urlencoded") and auth != "backend":
                    raise SimError(400, "Request bodies must be application/x-www-form-urlencoded.")
                params = decode(raw) if ctype.startswith("application/x-www-form-urlencoded") else {}
            else:
                params = decode(request.url.query)
            record["params"] = _loggable(params)
            bearer = _bearer(request)
            if auth in ("any", "secret_key", "session"):
                principal = sim.books.principal(bearer)
                record["auth"] = principal
                if auth != "any" and principal != auth:
                    raise SimError(
                        403 if principal == "session" else 401,
                        f"This endpoint needs a {'secret key' if auth == 'secret_key' else 'device session'}.",
                        code="permission_denied" if principal == "session" else "api_key_invalid",
                    )
            elif auth in ("token", "backend"):
                record["auth"] = auth
            if public and sim.spec is not None:
                _check_spec(sim, request.method, request.url.path, params)
        except ClientDisconnect:
            record["status"] = CLIENT_GONE
            return Response(status_code=CLIENT_GONE)  # nobody reads it; the server drops it
        except FormError as exc:
            record["status"] = 400
            return _json(400, SimError(400, str(exc)).payload(), request_id, base_headers)
        except SimError as exc:
            record["status"] = exc.status
            return _json(exc.status, exc.payload(), request_id, {**base_headers, **exc.headers})

        latency = request.scope.get(LATENCY_SCOPE_KEY, 0.0)
        if idem_key:
            fp = fingerprint(request.method, request.url.path, params)
            try:
                saved = sim.idempotency.begin(idem_key, fp)
            except SimError as exc:
                record["status"] = exc.status
                return _json(exc.status, exc.payload(), request_id, {**base_headers, **exc.headers})
            if saved is not None:
                record.update(status=saved.status, replayed=True)
                return _json(saved.status, saved.body, request_id, {**base_headers, "Idempotent-Replayed": "true"})
        to_save: Saved | None = None
        try:
            if latency:
                await asyncio.sleep(latency)
            try:
                body = _render(handler(request, params))
                status = 200
                to_save = Saved(200, body)
            except SimError as exc:
                status, body = exc.status, _render(exc.payload())
                base_headers.update(exc.headers)
                if exc.saved:
                    to_save = Saved(status, body)
            record["status"] = status
            return _json(status, body, request_id, base_headers)
        finally:
            if idem_key:
                sim.idempotency.finish(idem_key, to_save)

    return endpoint


#: Logged status of a request whose client hung up before its body arrived (nginx's "client closed request").
CLIENT_GONE = 499


def _check_spec(sim: SimState, method: str, path: str, params: dict[str, Any]) -> None:
    """Refuse what Stripe would: unknown parameters (by name), and with a full spec anything not conforming."""
    unknown = sim.spec.unknown_params(method, path, params) if sim.config.refuse_unknown_params else []
    problems = sim.spec.check_request(method, path, params) if sim.spec_full else []
    if unknown or problems:
        sim.spec_violations.append({"method": method, "path": path, "problems": [*unknown, *problems]})
    if unknown:
        name = unknown[0]
        raise SimError(400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name)
    if problems:
        raise SimError(400, "Request does not conform to the Stripe spec: " + "; ".join(problems))


def _unrecognized(request: Request, exc: Exception) -> Response:
    """Stripe's answer to a path it does not have, or a method a path does not take: 404, JSON."""
    message = (
        f"Unrecognized request URL ({request.method}: {request.url.path}). "
        "Please see https://stripe.com/docs or we can help at https://support.stripe.com/."
    )
    body = SimError(404, message).payload()
    return _json(404, body, "req_" + secrets.token_hex(8))


# -- handlers (sync: they run under the books' lock, never await) -----------------------


def _connection_token(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    books: Books = request.app.state.sim.books
    return books.mint_connection_token(params.get("location") or None)


def _backend_token(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    sim: SimState = request.app.state.sim
    required = sim.config.backend_auth_token
    if required is not None:
        given = _bearer(request) or ""
        if not secrets.compare_digest(given, required):
            raise SimError(401, "This backend needs a valid bearer token.", code="backend_unauthorized")
    token = sim.books.mint_connection_token(None)
    return {"secret": token["secret"]}


def _device_session(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    books: Books = request.app.state.sim.books
    return books.redeem(_bearer(request))


def _device_payment_method(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    books: Books = request.app.state.sim.books
    return books.create_card_present_method(params, stored_at=_stored_at(request))


def _stored_at(request: Request) -> int | None:
    """``Offterm-Stored-At`` (ISO 8601, with a zone): when a payment collected offline was stored."""
    raw = request.headers.get(STORED_AT_HEADER)
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        message = f"The {STORED_AT_HEADER} header must be an ISO 8601 time with a zone."
        raise SimError(400, message, code="header_invalid")
    return int(when.timestamp())


def _intent_id(request: Request) -> str:
    return str(request.path_params["intent"])


def _confirm_faults(request: Request) -> dict[str, Any]:
    """What a confirm passes the books so the injector can answer it "processing" / "requires_action"."""
    sim: SimState = request.app.state.sim
    return {
        "confirm_status": partial(sim.faults.confirm_status, request.url.path),
        "processing_for": sim.faults.config.processing_for,
    }


def _create_intent(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    sim: SimState = request.app.state.sim
    return sim.books.create_intent(params, **_confirm_faults(request))


def _list_intents(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    return request.app.state.sim.books.list_intents(params)  # type: ignore[no-any-return]


def _search_intents(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    return request.app.state.sim.books.search_intents(params)  # type: ignore[no-any-return]


def _get_intent(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    return request.app.state.sim.books.get_intent(_intent_id(request))  # type: ignore[no-any-return]


def _confirm(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    sim: SimState = request.app.state.sim
    return sim.books.confirm(_intent_id(request), params, **_confirm_faults(request))


def _capture(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    return request.app.state.sim.books.capture(_intent_id(request), params)  # type: ignore[no-any-return]


def _cancel(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    return request.app.state.sim.books.cancel(_intent_id(request), params)  # type: ignore[no-any-return]


def _refund(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    return request.app.state.sim.books.refund(params)  # type: ignore[no-any-return]


def _list_charges(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    return request.app.state.sim.books.list_charges(params)  # type: ignore[no-any-return]


def _get_charge(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    return request.app.state.sim.books.get_charge(str(request.path_params["charge"]))  # type: ignore[no-any-return]


def _get_payment_method(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    books: Books = request.app.state.sim.books
    return books.get_payment_method(str(request.path_params["payment_method"]))


# -- unauthenticated and admin ------------------------------------------------------------


async def _healthcheck(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _admin_ledger(request: Request) -> Response:
    books: Books = request.app.state.sim.books
    return JSONResponse({"charges_by_offline_id": books.ledger(), "successful_counts": books.successful_counts()})


async def _admin_faults(request: Request) -> Response:
    sim: SimState = request.app.state.sim
    if request.method == "POST":
        try:
            sim.faults.set(FaultConfig.from_json(await request.json()))
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": {"type": "invalid_request_error", "message": str(exc)}}, status_code=400)
    return JSONResponse({"faults": sim.faults.config.to_json(), "injected": dict(sim.faults.counts)})


async def _admin_clock(request: Request) -> Response:
    """``GET`` -> ``{"now", "offset"}``; ``POST {"advance": seconds}`` moves the account's clock forward."""
    sim: SimState = request.app.state.sim
    if request.method == "POST":
        try:
            body = await request.json()
            advance = body["advance"] if isinstance(body, dict) and set(body) == {"advance"} else None
            if isinstance(advance, bool) or not isinstance(advance, int | float):
                raise ValueError('expected {"advance": seconds}')
            sim.clock.advance(advance)
        except ValueError as exc:
            return JSONResponse({"error": {"type": "invalid_request_error", "message": str(exc)}}, status_code=400)
    return JSONResponse({"now": sim.clock(), "offset": sim.clock.offset})


async def _admin_requests(request: Request) -> Response:
    sim: SimState = request.app.state.sim
    return JSONResponse({"requests": sim.request_log(), "spec_violations": sim.spec_violations})


def create_app(config: SimConfig | None = None) -> Starlette:
    """A fresh simulated account; the returned app is wrapped for fault injection."""
    config = config or SimConfig()
    from .spec import SUBSET_PATH, StripeSpec

    spec = StripeSpec.load(config.spec_path or SUBSET_PATH)
    clock = SimClock()
    state = SimState(
        config=config,
        clock=clock,
        books=Books(config, clock=clock),
        idempotency=IdempotencyStore(ttl=config.idempotency_ttl, clock=clock),
        faults=FaultInjector(config.faults),
        requests=deque(maxlen=config.request_log_size),
        spec=spec,
        spec_full=bool(config.spec_path),
    )
    e = _endpoint
    routes = [
        Route("/healthcheck", _healthcheck, methods=["GET"]),
        Route("/v1/terminal/connection_tokens", e(_connection_token, auth="secret_key"), methods=["POST"]),
        Route("/v1/payment_intents", e(_create_intent, auth="any"), methods=["POST"]),
        Route("/v1/payment_intents", e(_list_intents, auth="any"), methods=["GET"]),
        # Before /{intent}, or "search" would be taken for an intent id.
        Route("/v1/payment_intents/search", e(_search_intents, auth="any"), methods=["GET"]),
        Route("/v1/payment_intents/{intent}", e(_get_intent, auth="any"), methods=["GET"]),
        Route("/v1/payment_intents/{intent}/confirm", e(_confirm, auth="any"), methods=["POST"]),
        Route("/v1/payment_intents/{intent}/capture", e(_capture, auth="any"), methods=["POST"]),
        Route("/v1/payment_intents/{intent}/cancel", e(_cancel, auth="any"), methods=["POST"]),
        Route("/v1/refunds", e(_refund, auth="any"), methods=["POST"]),
        Route("/v1/charges", e(_list_charges, auth="any"), methods=["GET"]),
        Route("/v1/charges/{charge}", e(_get_charge, auth="any"), methods=["GET"]),
        Route("/v1/payment_methods/{payment_method}", e(_get_payment_method, auth="any"), methods=["GET"]),
        Route("/device/v1/sessions", e(_device_session, auth="token", public=False), methods=["POST"]),
        Route("/device/v1/payment_methods", e(_device_payment_method, auth="session", public=False), methods=["POST"]),
        Route("/backend/connection_token", e(_backend_token, auth="backend", public=False), methods=["POST"]),
        Route("/_sim/ledger", _admin_ledger, methods=["GET"]),
        Route("/_sim/faults", _admin_faults, methods=["GET", "POST"]),
        Route("/_sim/requests", _admin_requests, methods=["GET"]),
        Route("/_sim/clock", _admin_clock, methods=["GET", "POST"]),
    ]
    app = SimulatorApp(routes=routes, exception_handlers={404: _unrecognized, 405: _unrecognized})
    app.state.sim = state
    app.fault_middleware = FaultMiddleware(partial(Starlette.__call__, app), state.faults)
    return app


class SimulatorApp(Starlette):
    """Starlette with the fault injector outermost, where it can still reach the connection."""

    fault_middleware: FaultMiddleware

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.fault_middleware(scope, receive, send)
        except (ClientDisconnect, ConnectionResetError, BrokenPipeError):
            return  # the client hung up mid-request: nobody to answer, nothing worth a traceback
