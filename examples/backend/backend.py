"""A minimal "your backend": mints Stripe Terminal connection tokens for offterm.

It uses the official ``stripe`` library, exactly as an integrator's server
would; point ``STRIPE_API_BASE`` at offterm's simulator to try it locally.
Configure offterm's ``http`` token provider with this server's URL::

    [tokens]
    providers = ["http"]
    [tokens.http]
    url = "http://127.0.0.1:8000/connection_token"

Environment: ``STRIPE_SECRET_KEY`` (required), ``STRIPE_API_BASE`` (default
Stripe's), ``BACKEND_AUTH_TOKEN`` (optional bearer token the POS must send).
Run: ``python examples/backend/backend.py --port 8000``.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import socket

import stripe
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

READY = "backend listening on "


def make_app(secret_key: str, api_base: str | None = None, auth_token: str | None = None) -> Starlette:
    client = stripe.StripeClient(
        secret_key, base_addresses={"api": api_base} if api_base else None, max_network_retries=2
    )

    def connection_token(request: Request) -> JSONResponse:
        # Authenticate your POS here however you like; a shared bearer token is the minimum.
        if auth_token is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), auth_token.encode()):
                return JSONResponse({"error": "unauthorized"}, status_code=401)
        try:
            token = client.v1.terminal.connection_tokens.create()
        except stripe.StripeError as exc:
            # Never pass Stripe's message through: it may name your key.
            return JSONResponse({"error": type(exc).__name__}, status_code=502)
        return JSONResponse({"secret": token.secret})

    return Starlette(routes=[Route("/connection_token", connection_token, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    app = make_app(
        os.environ["STRIPE_SECRET_KEY"], os.environ.get("STRIPE_API_BASE"), os.environ.get("BACKEND_AUTH_TOKEN")
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY on accept
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn has a flag, not an event
            await asyncio.sleep(0.01)
        print(f"{READY}http://{args.host}:{sock.getsockname()[1]}/connection_token", flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
