"""Run the service on uvicorn: bind first (port 0 works), say where, serve until SIGTERM / SIGINT.

The socket is bound here, not by uvicorn, so the real port is known before serving and is printed on
standard output as one JSON line (``{"event": "serve_ready", "url": ..., "key_file": ...}``) once the
Terminal is open, which is what scripts and tests wait for.  TLS is uvicorn's (``ssl_certfile``,
``ssl_keyfile``).  uvicorn's access log is off: it would print query strings; the service logs its own
requests without them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import uvicorn

from offterm.core.config import Config

from .app import ServeState, create_app
from .config import serve_settings
from .keys import key_path


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio sets TCP_NODELAY only on sockets whose
    # proto says TCP.  Without it every answer on a kept-alive connection (headers and body are two
    # writes) waited ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready: dict[str, Any], out: TextIO, state: ServeState) -> None:
        super().__init__(config)
        self._ready = ready
        self._out = out
        self._state = state

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._out.write(json.dumps(self._ready) + "\n")
            self._out.flush()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # end the event streams first: uvicorn waits for open responses, and a stream never ends by itself
        self._state.outbox.close_streams()
        await super().shutdown(sockets)


def run(config: Config, overrides: Mapping[str, Any] | None = None, *, out: TextIO = sys.stdout) -> None:
    """Validate ``[serve]``, bind, open the Terminal and serve until stopped (raises ConfigError first)."""
    settings = serve_settings(config, overrides)
    state = ServeState(config, settings)
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    scheme = "https" if settings.tls else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    ready = {
        "event": "serve_ready",
        "url": f"{scheme}://{host}:{port}",
        "port": port,
        "key_file": str(key_path(config.data_dir)),
        "events": "/v1/offterm/events",
    }
    uv_config = uvicorn.Config(
        create_app(state),
        log_config=None,
        access_log=False,
        lifespan="on",
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        timeout_graceful_shutdown=5,
        server_header=False,
        # httptools (C, llhttp) rather than h11 (pure Python): ~0.06 ms less per request, three requests a payment
        http="httptools",
    )
    server = _Server(uv_config, ready, out, state)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    if not server.started:
        raise SystemExit(3)
