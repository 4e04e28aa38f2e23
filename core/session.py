"""Authenticated processor sessions, from single-use connection tokens.

A token is fetched fresh for every new session and never stored; the
session is kept in memory until the processor refuses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog

from .contracts import ConnectionTokenProvider, ForwardingTransport, ProcessorSession, TokenRequest
from .errors import ConnectionTokenError

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

    async def get(self, reason: str) -> ProcessorSession:
        """The current session, or a new one from a fresh token.

        Raises ConnectionTokenError (provider failed or none answered) or the
        transport's errors (AuthenticationFailed, TransientProcessorError).
        """
        async with self._lock:
            if self._session is None:
                token = None
                request = TokenRequest(reason=reason, location_id=self._location_id)
                for name, provider in self._providers:
                    token = await provider.fetch(request)
                    if token is not None:
                        log.debug("connection_token_fetched", provider=name)
                        break
                if token is None:
                    names = ", ".join(n for n, _ in self._providers)
                    raise ConnectionTokenError(f"no connection-token provider returned a token (asked: {names})")
                self._session = await self._transport.authenticate(token)
                self._on_authenticated(self._session)
            return self._session

    def invalidate(self) -> None:
        """Forget the session (expired or refused); the next get() makes a new one."""
        self._session = None
