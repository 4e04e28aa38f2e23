"""Fault injection: an ASGI wrapper outside the app, so it can cut connections.

Dropping a connection needs the server's transport, which ASGI does not
expose; uvicorn's ``send`` is a bound method of its request cycle, which
holds it.  Under another server the drop faults degrade to a 500 answer.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .config import FaultConfig

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ADMIN_PREFIX = "/_sim"
LATENCY_SCOPE_KEY = "offterm.sim.latency"

_ERRORS: dict[int, tuple[str, str | None, str, bool]] = {
    500: ("api_error", None, "An unknown error occurred (simulated).", False),
    502: ("api_error", None, "Bad gateway (simulated).", False),
    503: ("api_error", None, "The service is temporarily unavailable (simulated).", True),
    429: (
        "invalid_request_error",
        "rate_limit",
        "Too many requests hit the API too quickly (simulated).",
        True,
    ),
}


class FaultInjector:
    """Holds the current FaultConfig and its seeded random source; thread-safe."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.set(config or FaultConfig())

    def set(self, config: FaultConfig) -> None:
        with self._lock:
            self.config = config
            self._rng = random.Random(config.seed)

    def choose(self, path: str) -> str | None:
        """Pick a fault for a request to ``path``: "500", "429", "reset", "commit_drop"... or None."""
        with self._lock:
            cfg = self.config
            if path.startswith(ADMIN_PREFIX) or not cfg.active:
                return None
            if cfg.paths and not any(path.startswith(p) for p in cfg.paths):
                return None
            roll = self._rng.random()
            edge = 0.0
            choices: list[tuple[str, float]] = [(str(s), r) for s, r in sorted(cfg.error_rates.items())]
            choices += [
                ("reset", cfg.reset_rate),
                ("drop", cfg.drop_rate),
                ("commit_drop", cfg.commit_drop_rate),
                ("commit_delay", cfg.commit_delay_rate),
            ]
            for name, rate in choices:
                edge += rate
                if roll < edge:
                    self.counts[name] = self.counts.get(name, 0) + 1
                    return name
            return None

    def confirm_status(self, path: str) -> str | None:
        """Pick a non-final status for a confirm to ``path`` ("processing", "requires_action") or None.

        Drawn only for confirms that would charge, after the transport faults.
        """
        with self._lock:
            cfg = self.config
            if not cfg.confirm_status or path.startswith(ADMIN_PREFIX):
                return None
            if cfg.paths and not any(path.startswith(p) for p in cfg.paths):
                return None
            roll = self._rng.random()
            edge = 0.0
            for name, rate in sorted(cfg.confirm_status.items()):
                edge += rate
                if roll < edge:
                    self.counts[name] = self.counts.get(name, 0) + 1
                    return name
            return None


def _transport(send: Send) -> asyncio.Transport | None:
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    return transport if isinstance(transport, asyncio.BaseTransport) else None  # type: ignore[return-value]


async def _cut(send: Send, *, reset: bool) -> bool:
    """Close the client's connection without an answer (RST if ``reset``)."""
    transport = _transport(send)
    if transport is None:
        return False
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()
    else:
        transport.close()
    # Let the server notice the disconnect before the app returns, so it
    # does not try to answer with a 500 of its own.
    for _ in range(3):
        await asyncio.sleep(0)
    return True


async def _error_response(send: Send, status: int) -> None:
    kind, code, message, should_retry = _ERRORS[status]
    headers = [(b"content-type", b"application/json"), (b"request-id", b"req_simfault")]
    if should_retry:
        headers.append((b"stripe-should-retry", b"true"))
    if status == 502:
        body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        headers[0] = (b"content-type", b"text/html")
    else:
        error: dict[str, Any] = {"type": kind, "message": message}
        if code:
            error["code"] = code
        body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FaultMiddleware:
    """Wraps the simulator app; never touches ``/_sim`` admin paths."""

    def __init__(self, app: ASGIApp, injector: FaultInjector) -> None:
        self.app = app
        self.injector = injector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        fault = self.injector.choose(path)
        cfg = self.injector.config
        if cfg.latency and not path.startswith(ADMIN_PREFIX):
            if not cfg.paths or any(path.startswith(p) for p in cfg.paths):
                scope[LATENCY_SCOPE_KEY] = cfg.latency
        if fault is None:
            await self.app(scope, receive, send)
        elif fault.isdigit():
            await _error_response(send, int(fault))
        elif fault in ("reset", "drop"):
            if fault == "drop":
                # Read the request first: closing with unread bytes (or bytes still on the way)
                # makes the kernel answer with an RST, and a drop must read as a clean close.
                await _drain(receive)
            if not await _cut(send, reset=fault == "reset"):
                await _error_response(send, 500)
        elif fault == "commit_drop":
            await self.app(scope, receive, _swallow)
            if not await _cut(send, reset=False):
                await _error_response(send, 500)
        elif fault == "commit_delay":
            held: list[Message] = []

            async def hold(message: Message) -> None:
                held.append(message)

            await self.app(scope, receive, hold)
            await asyncio.sleep(cfg.commit_delay)
            for message in held:
                await send(message)


async def _swallow(message: Message) -> None:
    return None


async def _drain(receive: Receive) -> None:
    """Receive the whole request body (its bytes are discarded)."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
