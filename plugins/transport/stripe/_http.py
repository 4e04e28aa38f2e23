"""One HTTP client for Stripe's API: auth, version, idempotency keys, error mapping.

TLS certificates are always verified; plain ``http://`` is accepted only
for loopback hosts (a local simulator), anything else is a ConfigError.
Redirects are never followed, answers are read up to a cap, and every
exchange is bounded by one total deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from offterm.core.errors import ConfigError, OutcomeUnknown
from offterm.core.logs import bind_request

from . import _forms as forms
from ._errors import deadline_error, from_response, from_transport_error, unreadable_error

log = structlog.get_logger("offterm.transport.stripe")

USER_AGENT = "offterm/0.1 (+stripe-transport)"


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(key: str, url: str) -> str:
    """Validate an API base URL: https, or http on loopback only.  Returns it without a trailing slash."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise ConfigError(key, "is not a valid URL", url) from None
    if parsed.scheme not in ("https", "http") or not parsed.host:
        raise ConfigError(key, "must be an https:// URL", url)
    if parsed.scheme == "http" and not is_loopback(parsed.host):
        raise ConfigError(key, "plain http is allowed only for loopback hosts (127.0.0.0/8, ::1, localhost)", url)
    if parsed.query or parsed.fragment:
        raise ConfigError(key, "must not have a query or fragment", url)
    return url.rstrip("/")


#: The largest answer read from the processor.  Its answers are a few KB; anything
#: past this is not a processor answer (a portal page, a flood) and is cut off.
MAX_ANSWER_BYTES = 1 << 20


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    request_id: str | None
    replayed: bool


class _Unreadable(Exception):
    """An answer came back but cannot be read: too large, or compressed against our asking."""

    def __init__(self, reason: str, resp: httpx.Response) -> None:
        super().__init__(reason)
        self.status = resp.status_code
        self.request_id = resp.headers.get("request-id")


class _SendTracker:
    """httpcore's ``trace`` extension: notes when the request's bytes start going out.

    Before that point a failure means nothing was sent (transient); after
    it, a POST may have taken effect (outcome unknown).
    """

    def __init__(self) -> None:
        self.sent = False

    async def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        if event.endswith(".send_request_headers.started"):
            self.sent = True


async def read_capped(resp: httpx.Response, limit: int) -> bytes:
    """The answer's body, or ``_Unreadable`` past ``limit`` bytes (checked as it streams in).

    Only identity-encoded bodies are read: we ask for no compression, so a
    compressed answer (a decompression bomb, say) is refused unopened.
    """
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _Unreadable(f"the answer is {encoding}-encoded although identity was asked for", resp)
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _Unreadable(f"the answer announces {declared} bytes, more than the {limit} accepted", resp)
    body = bytearray()
    async for chunk in resp.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise _Unreadable(f"the answer is longer than the {limit} bytes accepted", resp)
    return bytes(body)


class _NoCookies(httpx.Cookies):
    """A cookie store that keeps nothing (see ``ProcessorClient``)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class ProcessorClient(httpx.AsyncClient):
    """httpx's client, minus cookies: nothing the processor sets is kept or sent back.

    Stripe's API authenticates every request by its bearer key and never
    uses cookies, so a cookie could only carry state from one payment's
    request into another's.  Not keeping them also spares httpx's parsing
    of every answer for cookies (urllib-compatible request and response
    objects per answer: about a tenth of a drain's CPU).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:  # httpx's own setter; nothing is ever kept
        return None


class StripeHttp:
    """Sends one request at a time per call; shares a connection pool.

    ``timeout`` bounds each whole exchange (connect, send, every byte of the
    answer), not each read: an answer dripped byte by byte still ends on
    time.  Answers are read up to ``max_answer_bytes``.  The httpx client is
    made on first use, inside the caller's event loop.
    """

    def __init__(
        self,
        api_base: str,
        *,
        stripe_version: str,
        timeout: float,
        connect_timeout: float,
        max_connections: int = 20,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.api_base = check_base_url("api_base", api_base)
        self.stripe_version = stripe_version
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes
        self._timeout = httpx.Timeout(timeout, connect=min(connect_timeout, timeout), pool=timeout)
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = ProcessorClient(
                timeout=self._timeout,
                limits=self._limits,
                verify=True,
                follow_redirects=False,  # a payment request is never re-sent to another host
                trust_env=False,
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        step: str,
        bearer: str,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send one request; return the 2xx answer or raise the typed error.

        ``headers`` are extra headers; they are not part of what an
        idempotency key compares (Stripe compares parameters only).
        """
        with bind_request():
            return await self._request(method, url, step, bearer, params, idempotency_key, headers)

    async def _exchange(self, request: httpx.Request) -> tuple[httpx.Response, bytes]:
        """Send, then read the answer up to the cap; the connection is released either way."""
        resp = await self.client.send(request, stream=True)
        try:
            return resp, await read_capped(resp, self.max_answer_bytes)
        finally:
            await resp.aclose()

    async def _request(
        self,
        method: str,
        url: str,
        step: str,
        bearer: str,
        params: Mapping[str, Any] | None,
        idempotency_key: str | None,
        extra_headers: Mapping[str, str] | None,
    ) -> Answer:
        headers = {**(extra_headers or {}), "Authorization": f"Bearer {bearer}", "Stripe-Version": self.stripe_version}
        content: str | None = None
        query: httpx.QueryParams | None = None
        is_post = method == "POST"
        if is_post:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            content = forms.encode(params or {})
            if idempotency_key:
                headers["Idempotency-Key"] = idempotency_key
        elif params:
            query = httpx.QueryParams(forms.encode(params))
        tracker = _SendTracker()
        request = self.client.build_request(
            method, url, content=content, params=query, headers=headers, extensions={"trace": tracker}
        )
        try:
            async with asyncio.timeout(self.timeout):
                resp, raw = await self._exchange(request)
        except httpx.HTTPError as exc:
            err = from_transport_error(exc, step=step, sent_may_commit=is_post and tracker.sent)
            log.info("stripe_no_answer", step=step, error=type(exc).__name__, outcome=err.code)
            raise err from None
        except TimeoutError:
            err = deadline_error(step=step, timeout=self.timeout, sent_may_commit=is_post and tracker.sent)
            log.info("stripe_no_answer", step=step, error="deadline", outcome=err.code)
            raise err from None
        except _Unreadable as exc:
            log.info("stripe_unreadable_answer", step=step, status=exc.status, stripe_request_id=exc.request_id)
            raise unreadable_error(
                str(exc), step=step, method=method, status=exc.status, request_id=exc.request_id
            ) from None
        request_id = resp.headers.get("request-id")
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's depth
            body = None
        if not 200 <= resp.status_code < 300:
            error = from_response(resp.status_code, body, resp.headers, step=step, method=method)
            log.info("stripe_error", step=step, status=resp.status_code, code=error.code, stripe_request_id=request_id)
            raise error
        if not isinstance(body, dict):
            # A 2xx we cannot read: it happened, but we do not know the result.
            raise OutcomeUnknown(f"{step}: unreadable answer from the processor", request_id=request_id)
        replayed = resp.headers.get("idempotent-replayed", "").lower() == "true"
        return Answer(resp.status_code, body, request_id, replayed)
