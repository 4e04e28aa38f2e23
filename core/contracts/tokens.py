"""Connection tokens: short-lived, single-use credentials from the integrator's backend."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenRequest:
    """Why a token is wanted; providers may use it to decide if it is theirs."""

    reason: str  # "online_payment" | "forwarding" | "probe"
    location_id: str | None = None


@dataclass(frozen=True)
class ConnectionToken:
    secret: str = field(repr=False)
    location_id: str | None = None


class ConnectionTokenProvider(abc.ABC):
    @abc.abstractmethod
    async def fetch(self, request: TokenRequest) -> ConnectionToken | None:
        """Return a fresh token.

        ``None`` means "not mine": the next configured provider is asked.
        Raise ConnectionTokenError for "mine, but it failed" (backend down,
        bad answer); the Terminal then reports a forwarding failure.
        Tokens are single-use: never cache or persist them.
        """
