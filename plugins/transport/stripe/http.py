"""One HTTP client for Stripe's API: auth, version, idempotency keys, error mapping.

TLS certificates are always verified; plain ``http://`` is accepted only
for loopback hosts (a local simulator), anything else is a ConfigError.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from offterm.core.errors import ConfigError, OutcomeUnknown

from . import forms
from .errors import from_response, from_transport_error

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


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    request_id: str | None
    replayed: bool


class StripeHttp:
    """Sends one request at a time per call; shares a connection pool.

    The httpx client is made on first use, inside the caller's event loop.
    """

    def __init__(
        self,
        api_base: str,
        *,
        stripe_version: str,
        timeout: float,
        connect_timeout: float,
        max_connections: int = 20,
    ) -> None:
        self.api_base = check_base_url("api_base", api_base)
        self.stripe_version = stripe_version
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout, pool=timeout)
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                limits=self._limits,
                verify=True,
                follow_redirects=False,
                trust_env=False,
                headers={"User-Agent": USER_AGENT},
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
    ) -> Answer:
        """Send one request; return the 2xx answer or raise the typed error."""
        headers = {"Authorization": f"Bearer {bearer}", "Stripe-Version": self.stripe_version}
        content: str | None = None
        query: httpx.QueryParams | None = None
        if method == "POST":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            content = forms.encode(params or {})
            if idempotency_key:
                headers["Idempotency-Key"] = idempotency_key
        elif params:
            query = httpx.QueryParams(forms.encode(params))
        try:
            resp = await self.client.request(method, url, content=content, params=query, headers=headers)
        except httpx.HTTPError as exc:
            err = from_transport_error(exc, step=step, sent_may_commit=method == "POST")
            log.info("stripe_no_answer", step=step, error=type(exc).__name__, outcome=err.code)
            raise err from None
        request_id = resp.headers.get("request-id")
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not 200 <= resp.status_code < 300:
            error = from_response(resp.status_code, body, resp.headers, step=step)
            log.info("stripe_error", step=step, status=resp.status_code, code=error.code, request_id=request_id)
            raise error
        if not isinstance(body, dict):
            # A 2xx we cannot read: it happened, but we do not know the result.
            raise OutcomeUnknown(f"{step}: unreadable answer from the processor", request_id=request_id)
        replayed = resp.headers.get("idempotent-replayed", "").lower() == "true"
        return Answer(resp.status_code, body, request_id, replayed)
