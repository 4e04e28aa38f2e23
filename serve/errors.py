"""Stripe's error answers: ``{"error": {"type", "code", "message", "param", ...}}`` with its HTTP status.

``saved`` follows Stripe's idempotency rule: the answer of a request that started executing is kept
for its Idempotency-Key (a state error, a decline); one refused before it ran is not (bad parameters,
authentication, a key in use, the rate limit), so the same key may be retried with a fixed request.
"""

from __future__ import annotations

from typing import Any

from offterm.core.errors import (
    CardDeclined,
    InvalidRequest,
    OfflineRefused,
    OfftermError,
    OutcomeUnknown,
    ReaderError,
    RequireOnlineWhileOffline,
    TransientProcessorError,
)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        saved: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type, "message": message}
        if code:
            self.body["code"] = code
        if param:
            self.body["param"] = param
        if decline_code:
            self.body["decline_code"] = decline_code
        self.saved = saved
        self.headers = headers or {}

    def payload(self) -> dict[str, Any]:
        return {"error": self.body}


def missing(kind: str, ident: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {kind}: '{ident[:80]}'", code="resource_missing", param=param)


def invalid(param: str, message: str) -> ApiError:
    return ApiError(400, message, code="parameter_invalid_string", param=param)


def unexpected_state(message: str, code: str = "payment_intent_unexpected_state") -> ApiError:
    return ApiError(400, message, code=code, saved=True)


def from_offterm(exc: OfftermError) -> ApiError:
    """A Terminal error as the Stripe error a POS expects; the code is always offterm's stable one."""
    if isinstance(exc, CardDeclined):
        return ApiError(402, exc.message, type="card_error", code=exc.code, decline_code=exc.decline_code, saved=True)
    if isinstance(exc, OutcomeUnknown):
        return ApiError(502, exc.message, type="api_error", code=exc.code)
    if isinstance(exc, RequireOnlineWhileOffline | TransientProcessorError):
        return ApiError(502, exc.message, type="api_connection_error", code=exc.code)
    if isinstance(exc, OfflineRefused | InvalidRequest | ReaderError):
        return ApiError(400, exc.message, code=exc.code, saved=True)
    return ApiError(500, exc.message, type="api_error", code=exc.code)
