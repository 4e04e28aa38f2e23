"""Authenticated processor sessions, from single-use connection tokens.

A token is fetched fresh for every new session (tokens are single-use) and
is never stored anywhere: it is redeemed at once and dropped.  The session
lives in memory only, until the processor refuses it (expired, 401); then
the next ``get`` makes a new one from a new token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog

from ..contracts import ConnectionToken, ConnectionTokenProvider, ForwardingTransport, ProcessorSession, TokenRequest
from ..errors import ConnectionTokenError

log = structlog.get_logger("offterm.session")


class SessionManager:
    def __init__(
        self,
        providers: Sequence[tuple[str, ConnectionTokenProvider]],
        transport: ForwardingTransport,
        location_id: str | None,
        on_authenticated: Callable[[ProcessorSession], None],
    ) -> None:
        self._providers = providers
        self._transport = transport
        self._location_id = location_id
        self._on_authenticated = on_authenticated
        self._session: ProcessorSession | None = None
        self._lock = asyncio.Lock()
        #: Sessions opened so far (each from its own fresh token).
        self.sessions_opened = 0

    @property
    def current(self) -> ProcessorSession | None:
        return self._session

    async def get(self, reason: str) -> ProcessorSession:
        """The current session, or a new one from a fresh token.

        Concurrent callers share one refresh.  Raises ConnectionTokenError
        (a provider failed, or none answered) or the transport's errors
        (AuthenticationFailed, TransientProcessorError).
        """
        async with self._lock:
            if self._session is None:
                token = await self._fetch_token(reason)
                self._session = await self._transport.authenticate(token)
                del token  # single-use: redeemed, never kept
                self.sessions_opened += 1
                log.info("processor_session_opened", reason=reason, livemode=self._session.livemode)
                self._on_authenticated(self._session)
            return self._session

    async def _fetch_token(self, reason: str) -> ConnectionToken:
        request = TokenRequest(reason=reason, location_id=self._location_id)
        for name, provider in self._providers:
            try:
                token = await provider.fetch(request)
            except ConnectionTokenError:
                raise
            except Exception as exc:  # a provider bug is still "mine, but it failed"
                raise ConnectionTokenError(
                    f"connection-token provider {name!r} raised {type(exc).__name__}", provider=name
                ) from None
            if token is not None:
                log.debug("connection_token_fetched", provider=name)
                return token
        names = ", ".join(n for n, _ in self._providers)
        raise ConnectionTokenError(f"no connection-token provider returned a token (asked: {names})")

    def invalidate(self, stale: ProcessorSession | None = None) -> None:
        """Forget the session (expired or refused); the next get() makes a new one.

        With ``stale``, only if that is still the current session: when several
        requests fail on one expired session, the first refresh is kept.
        """
        if stale is None or self._session is stale:
            self._session = None
