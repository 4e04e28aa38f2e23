"""The Starlette app: Stripe's paths and wire (form bodies, JSON answers, Stripe's errors, Idempotency-Key).

Every request passes, in order: the rate limit (429), the API key (401), the body size (413), the form
decoder (400), the Idempotency-Key (POST: replay / 400 / 409), the endpoint's own parameter checks
(400), then the endpoint.  A handler does its waiting (the Terminal's calls) and hands back the
synchronous rest (``Finish``), which the endpoint runs in one transaction with the Idempotency-Key's
answer: a request's writes cost one commit, made before the answer leaves.

Nothing here ever receives card data: cards are read and encrypted on the reader, inside the Terminal.
Logs carry method, path, status and time; never a body, a query string or a header (the SSE path may
carry the key as ``access_token``).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from offterm.core.config import Config
from offterm.core.contracts import PaymentState
from offterm.core.errors import ConfigError
from offterm.core.paths import make_private_dir

from . import params as p
from .config import ServeSettings
from .db import open_db, transaction
from .errors import ApiError
from .forms import FormError, decode
from .idempotency import IdempotencyTable, Saved, fingerprint
from .keys import KeyChecker, ensure_key
from .outbox import Outbox
from .ratelimit import RateLimiter
from .service import Finish, PaymentService, behavior_for
from .sse import stream
from .webhooks import WebhookSender

log = structlog.get_logger("offterm.serve.http")

Handler = Callable[[Request, dict[str, Any]], Awaitable[Finish]]

ALLOWED_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Last-Event-ID",
    "Stripe-Version",
    "Offterm-Offline-Behavior",
]


class ServeState:
    """What the routes share: built and opened by the app's lifespan."""

    def __init__(self, config: Config, settings: ServeSettings) -> None:
        self.config = config
        self.settings = settings
        data_dir = config.data_dir
        make_private_dir(data_dir, lambda m: ConfigError("terminal.data_dir", m), "directory")
        ensure_key(data_dir)
        self.keys = KeyChecker(data_dir)
        self.db = open_db(data_dir)
        self.idempotency = IdempotencyTable(self.db, settings.idempotency_ttl)
        self.outbox = Outbox(self.db)
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        self.service = PaymentService(config, settings, self.db, self.outbox)
        self.webhooks: WebhookSender | None = None
        if settings.webhook_urls:
            assert settings.webhook_secret is not None
            self.webhooks = WebhookSender(
                self.outbox,
                settings.webhook_urls,
                settings.webhook_secret,
                timeout=settings.webhook_timeout,
                max_delay=settings.webhook_max_delay,
            )

    async def open(self) -> None:
        await self.service.open()
        if self.webhooks is not None:
            self.webhooks.start()

    async def close(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.service.close()
        self.db.close()


def _json(status: int, body: Any, request_id: str, extra: dict[str, str] | None = None) -> Response:
    headers = {"Request-Id": request_id, "Cache-Control": "no-store", **(extra or {})}
    raw = json.dumps(body, separators=(",", ":")).encode()
    return Response(raw, status_code=status, media_type="application/json", headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, f"Request body is larger than {limit} bytes.", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"Request body is larger than {limit} bytes.", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _state(request: Request) -> ServeState:
    state: ServeState = request.app.state.serve
    return state


def _guard(request: Request, state: ServeState, query_key: bool = False) -> None:
    client = request.client.host if request.client else "unknown"
    if not state.limiter.allow(client):
        raise ApiError(
            429, "Too many requests hit the API too quickly.", code="rate_limit", headers={"Retry-After": "1"}
        )
    auth = request.headers.get("authorization")
    if auth is None and query_key and request.query_params.get("access_token"):
        auth = "Bearer " + request.query_params["access_token"]
    if not state.keys.check(auth):
        raise ApiError(
            401,
            "Invalid API Key provided. Use the key in the data directory's serve-secret-key file "
            "(Authorization: Bearer sk_offterm_...).",
            code="api_key_invalid" if auth else None,
        )


async def _log_request(**fields: Any) -> None:
    # async on purpose: Starlette runs a plain function's background task in a worker thread
    log.info("request", **fields)


def endpoint(handler: Handler, *, post: bool) -> Callable[[Request], Awaitable[Response]]:
    async def answer(request: Request, request_id: str) -> Response:
        state = _state(request)
        key: str | None = None
        try:
            _guard(request, state)
            if post:
                body = await _read_body(request, state.settings.max_body_bytes)
                try:
                    params = decode(body.decode("utf-8"))
                except (FormError, UnicodeDecodeError, ValueError) as exc:
                    raise ApiError(400, f"Invalid request body: {exc}", code="parameter_invalid_string") from None
            else:
                try:
                    params = decode(request.url.query)
                except (FormError, ValueError) as exc:
                    raise ApiError(400, f"Invalid query: {exc}", code="parameter_invalid_string") from None
            if post and request.headers.get("idempotency-key") is not None:
                claimed = request.headers["idempotency-key"]
                saved = state.idempotency.begin(claimed, fingerprint("POST", request.url.path, params))
                if saved is None:
                    key = claimed  # ours now: its answer is kept (or the key forgotten) below
                else:
                    return Response(
                        saved.body,
                        status_code=saved.status,
                        media_type="application/json",
                        headers={"Request-Id": request_id, "Idempotent-Replayed": "true"},
                    )
            try:
                finish = await handler(request, params)
                with transaction(state.db):  # the request's writes and its answer: one commit
                    raw = json.dumps(finish(), separators=(",", ":")).encode()
                    if key is not None:
                        state.idempotency.finish(key, Saved(200, raw))
                        key = None
            except ApiError as exc:
                if key is not None and exc.saved:
                    raw = json.dumps(exc.payload(), separators=(",", ":")).encode()
                    state.idempotency.finish(key, Saved(exc.status, raw))
                    key = None
                raise
            return Response(raw, media_type="application/json", headers={"Request-Id": request_id})
        except ApiError as exc:
            return _json(exc.status, exc.payload(), request_id, exc.headers)
        except Exception:
            log.exception("request_failed", method=request.method, path=request.url.path)
            return _json(500, {"error": {"type": "api_error", "message": "An internal error occurred."}}, request_id)
        finally:
            if key is not None:  # refused, or an unexpected failure: the key is forgotten, a retry runs again
                state.idempotency.forget(key)

    async def run(request: Request) -> Response:
        request_id = "req_" + secrets.token_hex(12)
        started = time.perf_counter()
        fields = {"method": request.method, "path": request.url.path, "request_id": request_id}
        try:
            response = await answer(request, request_id)
        except BaseException:
            log.info("request", status=500, ms=round((time.perf_counter() - started) * 1000, 2), **fields)
            raise
        # Logged once the answer is sent (Starlette runs a response's background task after its last byte):
        # formatting and redacting a line takes ~0.1 ms, which the client has no reason to wait for.
        ms = round((time.perf_counter() - started) * 1000, 2)
        response.background = BackgroundTask(_log_request, status=response.status_code, ms=ms, **fields)
        return response

    return run


# -- handlers ---------------------------------------------------------------------------------------


def _done(result: dict[str, Any]) -> Finish:
    """A handler with nothing to write: its answer as is."""
    return lambda: result


async def create_payment_intent(request: Request, params: dict[str, Any]) -> Finish:
    service = _state(request).service
    fields = p.payment_intent_create(params)
    behavior = behavior_for(
        fields["metadata"], request.headers.get("offterm-offline-behavior"), service.settings.offline_behavior
    )
    return await service.create_intent(fields, behavior)


async def retrieve_payment_intent(request: Request, params: dict[str, Any]) -> Finish:
    p.only(params, {"expand", "client_secret"})
    return _done(_state(request).service.record(request.path_params["id"]).render())


async def cancel_payment_intent(request: Request, params: dict[str, Any]) -> Finish:
    p.only(params, {"cancellation_reason", "expand"})
    reason = p.choice(
        params,
        "cancellation_reason",
        ("duplicate", "fraudulent", "requested_by_customer", "abandoned"),
        "requested_by_customer",
    )
    return await _state(request).service.cancel_intent(request.path_params["id"], reason)


async def list_readers(request: Request, params: dict[str, Any]) -> Finish:
    p.only(
        params,
        {"limit", "status", "device_type", "location", "serial_number", "starting_after", "ending_before", "expand"},
    )
    limit = p.integer(params, "limit", 1, 100) if "limit" in params else 10
    data = _state(request).service.readers()
    for name in ("status", "device_type", "serial_number"):
        if params.get(name):
            data = [r for r in data if r[name] == params[name]]
    return _done({"object": "list", "data": data[:limit], "has_more": len(data) > limit, "url": "/v1/terminal/readers"})


async def retrieve_reader(request: Request, params: dict[str, Any]) -> Finish:
    p.only(params, {"expand"})
    service = _state(request).service
    return _done(service.render_reader(service.reader(request.path_params["id"])))


async def process_payment_intent(request: Request, params: dict[str, Any]) -> Finish:
    p.only(params, {"payment_intent", "process_config", "expand"})
    intent = p.required(params, "payment_intent")
    if not isinstance(intent, str):
        raise ApiError(400, "payment_intent must be an id.", code="parameter_invalid_string", param="payment_intent")
    service, reader = _state(request).service, request.path_params["id"]
    return lambda: service.process(reader, intent)  # all of it synchronous: checks, records, the action's start


async def cancel_action(request: Request, params: dict[str, Any]) -> Finish:
    p.only(params, {"expand"})
    return _done(await _state(request).service.cancel_action(request.path_params["id"]))


async def present_payment_method(request: Request, params: dict[str, Any]) -> Finish:
    p.only(params, {"card_present", "type", "amount_tip", "interac_present", "expand"})
    p.choice(params, "type", ("card_present",), "card_present")
    card = params.get("card_present", {})
    number = card.get("number") if isinstance(card, dict) else None
    if number is not None and (not isinstance(number, str) or not number.isdigit() or len(number) > 19):
        raise ApiError(
            400,
            "card_present[number] must be a test card number.",
            code="parameter_invalid_string",
            param="card_present[number]",
        )
    return _done(_state(request).service.present(request.path_params["id"], number))


async def offline_status(request: Request, params: dict[str, Any]) -> Finish:
    p.only(params, set())
    return _done(_state(request).service.offline_status())


async def stored_payments(request: Request, params: dict[str, Any]) -> Finish:
    p.only(params, {"state", "limit"})
    limit = p.integer(params, "limit", 1, 1000) if "limit" in params else 100
    raw = params.get("state")
    states = None
    if raw:
        names = raw if isinstance(raw, list) else [raw]
        try:
            states = [PaymentState(n) for n in names]
        except ValueError:
            choices = ", ".join(s.value for s in PaymentState)
            raise ApiError(
                400, f"state must be one of {choices}.", code="parameter_invalid_string", param="state"
            ) from None
    data = await _state(request).service.stored_payments(states, limit)
    return _done({"object": "list", "data": data, "has_more": len(data) >= limit, "url": "/v1/offterm/stored_payments"})


async def forward(request: Request, params: dict[str, Any]) -> Finish:
    p.only(params, {"timeout"})
    timeout = p.integer(params, "timeout", 1, 600) if "timeout" in params else 30
    return _done(await _state(request).service.forward(float(timeout)))


async def events(request: Request) -> Response:
    request_id = "req_" + secrets.token_hex(12)
    state = _state(request)
    try:
        _guard(request, state, query_key=True)
        raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        after: int | None = None
        if raw is not None:
            if not raw.isdigit():
                raise ApiError(
                    400,
                    "Last-Event-ID must be an event number.",
                    code="parameter_invalid_integer",
                    param="last_event_id",
                )
            after = int(raw)
    except ApiError as exc:
        return _json(exc.status, exc.payload(), request_id, exc.headers)
    log.info("event_stream_opened", request_id=request_id, after=after)
    return StreamingResponse(
        stream(state.outbox, after, status=state.service.offline_status),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no", "Request-Id": request_id},
    )


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/v1/payment_intents", create_payment_intent),
    ("GET", "/v1/payment_intents/{id}", retrieve_payment_intent),
    ("POST", "/v1/payment_intents/{id}/cancel", cancel_payment_intent),
    ("GET", "/v1/terminal/readers", list_readers),
    ("GET", "/v1/terminal/readers/{id}", retrieve_reader),
    ("POST", "/v1/terminal/readers/{id}/process_payment_intent", process_payment_intent),
    ("POST", "/v1/terminal/readers/{id}/cancel_action", cancel_action),
    ("POST", "/v1/test_helpers/terminal/readers/{id}/present_payment_method", present_payment_method),
    ("GET", "/v1/offterm/offline_status", offline_status),
    ("GET", "/v1/offterm/stored_payments", stored_payments),
    ("POST", "/v1/offterm/forward", forward),
]
EVENTS_PATH = "/v1/offterm/events"


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    message = f"Unrecognized request URL ({request.method}: {request.url.path[:200]})."
    return _json(
        status, {"error": {"type": "invalid_request_error", "message": message}}, "req_" + secrets.token_hex(12)
    )


def create_app(state: ServeState) -> Starlette:
    """The ASGI app; its lifespan opens the Terminal and the webhook senders, and closes them."""
    settings = state.settings
    routes = [Route(path, endpoint(fn, post=method == "POST"), methods=[method]) for method, path, fn in ROUTES]
    routes.append(Route(EVENTS_PATH, events, methods=["GET"]))
    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=ALLOWED_HEADERS,
                expose_headers=["Request-Id", "Idempotent-Replayed"],
                max_age=600,
            )
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.serve = state
        await state.open()
        try:
            yield
        finally:
            await state.close()

    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _not_found},
    )
