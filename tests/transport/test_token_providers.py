"""Connection-token providers: http ("your backend"), callable, static."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from stripe_hostile import HostileFront
from structlog.testing import capture_logs

from offterm.core.config import validate_options
from offterm.core.contracts import ConnectionToken, TokenRequest
from offterm.core.errors import ConfigError, ConnectionTokenError
from offterm.core.registrations import ComponentContext, TokenProviderRegistration
from offterm.plugins.transport import tokens
from offterm.plugins.transport.stripe import StripeTransport
from offterm.plugins.transport.tokens import CallableTokenProvider, HttpTokenProvider, StaticTokenProvider
from offterm.sim.processor import SimHandle, running_simulator

REQUEST = TokenRequest(reason="forwarding", location_id="tml_1")


class _Backend:
    """A misbehaving "your backend", served by uvicorn on loopback."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

        async def route(request: Request) -> Response:
            self.seen.append({"auth": request.headers.get("authorization"), "body": await request.json()})
            kind = request.path_params["kind"]
            if kind == "html":
                return PlainTextResponse("<html>oops</html>")
            if kind == "nosecret":
                return JSONResponse({"token": "pst_test_abc"})
            if kind == "notdict":
                return JSONResponse(["pst_test_abc"])
            if kind == "fail":
                return JSONResponse({"secret": "pst_test_leak"}, status_code=500)
            return JSONResponse({"secret": "pst_test_fine", "location": "tml_9"})

        app = Starlette(routes=[Route("/{kind}", route, methods=["POST"])])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])))

    def __enter__(self) -> _Backend:
        self.thread.start()
        while not self.server.started:
            threading.Event().wait(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def backend() -> Iterator[_Backend]:
    with _Backend() as b:
        yield b


# -- http ------------------------------------------------------------------------------------


async def test_http_provider_fetches_from_the_simulated_backend() -> None:
    with running_simulator(backend_auth_token="let-me-in") as sim:
        provider = HttpTokenProvider(sim.backend_url, auth_token="let-me-in")
        token = await provider.fetch(REQUEST)
        assert token is not None and token.secret.startswith("pst_test_")
        # The token works: the transport redeems it for a session.
        t = StripeTransport(sim.url)
        try:
            session = await t.authenticate(token)
        finally:
            await t.close()
        assert session.account_id == sim.config.account_id
        # A fresh token every time: never cached.
        assert (await provider.fetch(REQUEST)).secret != token.secret  # type: ignore[union-attr]

        wrong = HttpTokenProvider(sim.backend_url, auth_token="wrong")
        with pytest.raises(ConnectionTokenError, match="HTTP 401") as info:
            await wrong.fetch(REQUEST)
        assert "wrong" not in str(info.value)


async def test_http_provider_sends_bearer_and_location(backend: _Backend) -> None:
    token = await HttpTokenProvider(backend.url + "/ok", auth_token="tok").fetch(REQUEST)
    assert token == ConnectionToken(secret="pst_test_fine", location_id="tml_9")
    assert backend.seen[0] == {"auth": "Bearer tok", "body": {"reason": "forwarding", "location": "tml_1"}}
    await HttpTokenProvider(backend.url + "/ok").fetch(TokenRequest(reason="probe"))
    assert backend.seen[1] == {"auth": None, "body": {"reason": "probe"}}


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("html", "did not answer JSON"),
        ("nosecret", 'without a "secret"'),
        ("notdict", 'without a "secret"'),
        ("fail", "HTTP 500"),
    ],
)
async def test_http_provider_names_bad_answers(backend: _Backend, kind: str, problem: str) -> None:
    with pytest.raises(ConnectionTokenError, match=problem) as info:
        await HttpTokenProvider(f"{backend.url}/{kind}").fetch(REQUEST)
    assert "pst_test" not in str(info.value) and "pst_test" not in repr(info.value.details)


async def test_http_provider_unreachable() -> None:
    with running_simulator() as sim:
        url = sim.backend_url
    with pytest.raises(ConnectionTokenError, match="could not be reached"):
        await HttpTokenProvider(url, timeout=1).fetch(REQUEST)


@pytest.mark.parametrize(("act", "problem"), [("endless", "more than"), ("drip", "within 0.5 s"), ("redirect", "302")])
async def test_http_provider_gives_up_on_hostile_answers(hostile: HostileFront, act: str, problem: str) -> None:
    provider = HttpTokenProvider(hostile.url + "/backend/connection_token", timeout=0.5)
    hostile.arm(act, paths=("/backend/",))
    async with asyncio.timeout(20):  # liveness only: a dripped answer would otherwise take half a minute
        with pytest.raises(ConnectionTokenError) as info:
            await provider.fetch(REQUEST)
    assert problem in str(info.value)
    assert hostile.sent[act] < 16 << 20  # socket buffers included; an unlimited read takes the 64 MiB
    assert await provider.fetch(REQUEST) is not None, "the next ask is answered"


@pytest.mark.parametrize("url", ["http://backend.example.com/token", "ftp://127.0.0.1/x", "nonsense"])
def test_http_provider_refuses_plain_http_beyond_loopback(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        HttpTokenProvider(url)
    assert info.value.key == "url"


def test_http_provider_repr_hides_the_auth_token() -> None:
    assert "s3cret" not in repr(HttpTokenProvider("https://b.test/t", auth_token="s3cret"))


# -- callable ----------------------------------------------------------------------------------


def sync_token(request: TokenRequest) -> str:
    return "pst_test_sync_" + request.reason


async def async_token(request: TokenRequest) -> ConnectionToken:
    return ConnectionToken(secret="pst_test_async", location_id="tml_a")


def not_mine(request: TokenRequest) -> None:
    return None


def broken(request: TokenRequest) -> str:
    raise RuntimeError("pst_test_inside_message")


def wrong_type(request: TokenRequest) -> int:
    return 42


async def test_callable_provider_variants() -> None:
    here = __name__
    token = await CallableTokenProvider(f"{here}:sync_token").fetch(REQUEST)
    assert token == ConnectionToken(secret="pst_test_sync_forwarding", location_id="tml_1")
    assert await CallableTokenProvider(f"{here}:async_token").fetch(REQUEST) == ConnectionToken(
        "pst_test_async", "tml_a"
    )
    assert await CallableTokenProvider(f"{here}:not_mine").fetch(REQUEST) is None
    with pytest.raises(ConnectionTokenError, match="raised RuntimeError") as info:
        await CallableTokenProvider(f"{here}:broken").fetch(REQUEST)
    assert "pst_test" not in str(info.value)
    with pytest.raises(ConnectionTokenError, match="returned a int"):
        await CallableTokenProvider(f"{here}:wrong_type").fetch(REQUEST)
    assert await CallableTokenProvider(sync_token).fetch(REQUEST) is not None


@pytest.mark.parametrize("target", ["no_colon", "offterm_no_such_module:f", f"{__name__}:missing", ":f"])
def test_callable_provider_bad_targets(target: str) -> None:
    with pytest.raises(ConfigError) as info:
        CallableTokenProvider(target)
    assert info.value.key == "target"


# -- static and registrations ----------------------------------------------------------------------


async def test_static_provider_warns_loudly() -> None:
    with capture_logs() as logs:
        provider = StaticTokenProvider("pst_test_static")
    assert any(entry["log_level"] == "warning" and "TESTS ONLY" in entry["warning"] for entry in logs)
    assert "pst_test_static" not in repr(provider) and "pst_test_static" not in repr(logs)
    assert await provider.fetch(REQUEST) == ConnectionToken("pst_test_static", "tml_1")
    with pytest.raises(ConfigError):
        StaticTokenProvider("")


async def test_registrations(tmp_path: Any, sim: SimHandle) -> None:
    regs = {r.name: r for r in tokens.offterm_connection_token_providers()}
    assert set(regs) == {"http", "callable", "static"}
    assert all(isinstance(r, TokenProviderRegistration) for r in regs.values())
    assert all(o.help for r in regs.values() for o in r.options)
    assert [o.secret for o in regs["http"].options if o.key == "auth_token"] == [True]
    assert [o.secret for o in regs["static"].options if o.key == "secret"] == [True]

    def build(name: str, options: dict[str, Any]) -> Any:
        validated = validate_options(f"tokens.{name}", regs[name].options, options, env={})
        return regs[name].factory(ComponentContext(name, validated, tmp_path))

    http = build("http", {"url": sim.backend_url, "timeout": 5})
    assert (await http.fetch(REQUEST)) is not None
    with pytest.raises(ConfigError) as info:
        build("http", {"url": ""})
    assert info.value.key == "tokens.http.url"
    call = build("callable", {"target": f"{__name__}:not_mine"})
    assert await call.fetch(REQUEST) is None
    with pytest.raises(ConfigError) as info:
        build("callable", {"target": ""})
    assert info.value.key == "tokens.callable.target"
    static = build("static", {"secret": "pst_test_s"})
    assert (await static.fetch(REQUEST)) == ConnectionToken("pst_test_s", "tml_1")
