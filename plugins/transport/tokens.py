"""Connection-token providers: where a Terminal gets its single-use tokens.

* ``http``: "your backend" — POST to ``url`` (optionally with a bearer
  ``auth_token``), expects JSON ``{"secret": "..."}``;
* ``callable``: a Python function ``"module:function"``, sync or async,
  returning a str, a ConnectionToken or None;
* ``static``: a fixed secret, for tests only (it says so, loudly).

``None`` from ``fetch`` means "not mine" (the next provider is asked);
ConnectionTokenError means "mine, but it failed".  Tokens are never cached
or written anywhere, and never appear in messages or logs.  httpx is imported
by the http provider when it is built, so listing plugins stays cheap.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog

from offterm.core.contracts import ConnectionToken, ConnectionTokenProvider, TokenRequest
from offterm.core.errors import ConfigError, ConnectionTokenError
from offterm.core.hookspecs import hookimpl
from offterm.core.logs import bind_request
from offterm.core.registrations import ComponentContext, OptionSpec, TokenProviderRegistration

if TYPE_CHECKING:
    import httpx

log = structlog.get_logger("offterm.tokens")

#: A token answer is a few hundred bytes; anything past this is not one.
MAX_ANSWER_BYTES = 64 << 10


def _is_loopback_http(url: httpx.URL) -> bool:
    import ipaddress

    host = url.host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpTokenProvider(ConnectionTokenProvider):
    """Asks the integrator's backend for a token, as Stripe's SDKs do."""

    def __init__(
        self, url: str, *, auth_token: str | None = None, timeout: float = 10.0, send_location: bool = True
    ) -> None:
        import httpx

        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            raise ConfigError("url", "is not a valid URL", url) from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError("url", "must be an https:// URL", url)
        if parsed.scheme == "http" and not _is_loopback_http(parsed):
            raise ConfigError("url", "plain http is allowed only for loopback hosts", url)
        if timeout <= 0:
            raise ConfigError("timeout", "must be a positive number of seconds", timeout)
        self.url = url
        self._auth_token = auth_token
        self._timeout = timeout
        self._send_location = send_location

    def __repr__(self) -> str:
        return f"HttpTokenProvider(url={self.url!r}, auth={'yes' if self._auth_token else 'no'})"

    async def fetch(self, request: TokenRequest) -> ConnectionToken | None:
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        if self._auth_token:
            headers["Authorization"] = f"Bearer {self._auth_token}"
        body: dict[str, str] = {"reason": request.reason}
        if self._send_location and request.location_id:
            body["location"] = request.location_id
        with bind_request():
            status, raw = await self._post(body, headers)
        if not 200 <= status < 300:
            raise ConnectionTokenError(f"token backend {self.url} answered HTTP {status}", url=self.url, status=status)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise ConnectionTokenError(f"token backend {self.url} did not answer JSON", url=self.url) from None
        secret = data.get("secret") if isinstance(data, dict) else None
        if not isinstance(secret, str) or not secret:
            raise ConnectionTokenError(f'token backend {self.url} answered without a "secret" string', url=self.url)
        location = data.get("location") if isinstance(data.get("location"), str) else request.location_id
        return ConnectionToken(secret=secret, location_id=location)

    async def _post(self, body: dict[str, str], headers: dict[str, str]) -> tuple[int, bytes]:
        """One exchange within ``timeout`` as a whole, its answer read up to MAX_ANSWER_BYTES."""
        import httpx

        try:
            async with (
                asyncio.timeout(self._timeout),
                httpx.AsyncClient(timeout=self._timeout, verify=True, trust_env=False) as client,
                client.stream("POST", self.url, json=body, headers=headers) as resp,
            ):
                encoding = resp.headers.get("content-encoding", "identity").strip().lower()
                raw = bytearray()
                if encoding in ("", "identity"):
                    async for chunk in resp.aiter_raw():
                        raw += chunk
                        if len(raw) > MAX_ANSWER_BYTES:
                            break
                if len(raw) > MAX_ANSWER_BYTES or encoding not in ("", "identity"):
                    raise ConnectionTokenError(
                        f"token backend {self.url} answered more than {MAX_ANSWER_BYTES} bytes, or compressed",
                        url=self.url,
                    )
                return resp.status_code, bytes(raw)
        except httpx.HTTPError as exc:
            raise ConnectionTokenError(
                f"token backend {self.url} could not be reached ({type(exc).__name__})", url=self.url
            ) from None
        except TimeoutError:
            raise ConnectionTokenError(
                f"token backend {self.url} gave no complete answer within {self._timeout:g} s", url=self.url
            ) from None


def _load_target(target: str) -> Callable[..., Any]:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError("target", 'must look like "package.module:function"', target)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("target", f"module {module_name!r} cannot be imported ({exc.__class__.__name__})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError("target", f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError("target", f"{target!r} is not callable")
    return obj  # type: ignore[no-any-return]


class CallableTokenProvider(ConnectionTokenProvider):
    """Calls a function of yours with the TokenRequest; it may be sync or async."""

    def __init__(self, target: str | Callable[..., Any]) -> None:
        self.target = target if isinstance(target, str) else getattr(target, "__qualname__", "callable")
        self._func = _load_target(target) if isinstance(target, str) else target

    def __repr__(self) -> str:
        return f"CallableTokenProvider(target={self.target!r})"

    async def fetch(self, request: TokenRequest) -> ConnectionToken | None:
        try:
            result = self._func(request)
            if inspect.isawaitable(result):
                result = await result
        except ConnectionTokenError:
            raise
        except Exception as exc:
            raise ConnectionTokenError(
                f"token function {self.target} raised {type(exc).__name__}", target=self.target
            ) from None
        if result is None or isinstance(result, ConnectionToken):
            return result
        if isinstance(result, str) and result:
            return ConnectionToken(secret=result, location_id=request.location_id)
        raise ConnectionTokenError(
            f"token function {self.target} returned a {type(result).__name__}, expected str, ConnectionToken or None",
            target=self.target,
        )


class StaticTokenProvider(ConnectionTokenProvider):
    """Always the same secret.  Connection tokens are single-use: this only suits tests."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ConfigError("secret", "must not be empty")
        self._secret = secret
        log.warning(
            "static_token_provider_in_use",
            warning="the static connection-token provider is for TESTS ONLY: real tokens are single-use",
        )

    def __repr__(self) -> str:
        return "StaticTokenProvider(secret=<hidden>)"

    async def fetch(self, request: TokenRequest) -> ConnectionToken | None:
        return ConnectionToken(secret=self._secret, location_id=request.location_id)


# -- registrations --------------------------------------------------------------------------

HTTP_OPTIONS = (
    OptionSpec("url", str, "", 'Your backend\'s endpoint that returns {"secret": ...}.', required=True, min_length=1),
    OptionSpec("auth_token", str, "", "Bearer token sent to your backend (empty: none).", secret=True),
    OptionSpec("timeout", (int, float), 10.0, "Seconds to wait for your backend.", minimum=0.01, maximum=600),
)
CALLABLE_OPTIONS = (
    OptionSpec(
        "target",
        str,
        "",
        '"package.module:function" called with a TokenRequest; sync or async.',
        required=True,
        min_length=1,
    ),
)
STATIC_OPTIONS = (
    OptionSpec("secret", str, "", "The token secret (tests only).", secret=True, required=True, min_length=1),
)


def _build_http(ctx: ComponentContext) -> HttpTokenProvider:
    """Factory: options the core validated against ``HTTP_OPTIONS``; the URL's scheme and host are
    judged by the provider itself (it is also built directly)."""
    return HttpTokenProvider(
        ctx.options["url"], auth_token=ctx.options["auth_token"] or None, timeout=float(ctx.options["timeout"])
    )


def _build_callable(ctx: ComponentContext) -> CallableTokenProvider:
    return CallableTokenProvider(ctx.options["target"])


def _build_static(ctx: ComponentContext) -> StaticTokenProvider:
    return StaticTokenProvider(ctx.options["secret"])


@hookimpl
def offterm_connection_token_providers() -> Iterator[TokenProviderRegistration]:
    yield TokenProviderRegistration(
        name="http", factory=_build_http, description="POST to your backend, expects {secret}", options=HTTP_OPTIONS
    )
    yield TokenProviderRegistration(
        name="callable",
        factory=_build_callable,
        description="A Python function returning a token",
        options=CALLABLE_OPTIONS,
    )
    yield TokenProviderRegistration(
        name="static", factory=_build_static, description="A fixed token, for tests only", options=STATIC_OPTIONS
    )
