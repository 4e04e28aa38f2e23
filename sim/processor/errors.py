"""Stripe-shaped error answers of the simulator."""

from __future__ import annotations

from typing import Any


class SimError(Exception):
    """An error answer: ``{"error": {type, code, message, ...}}`` with an HTTP status.

    ``saved`` says whether an idempotency key records this answer: Stripe
    keeps the result of requests that started executing (declines, state
    errors) but not of those refused before (bad parameters, auth, 409, 429).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        saved: bool = False,
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
        if extra:
            self.body.update(extra)
        self.headers = headers or {}
        self.saved = saved

    def payload(self) -> dict[str, Any]:
        return {"error": self.body}


def missing(kind: str, ident: str, param: str | None = None) -> SimError:
    return SimError(404, f"No such {kind}: '{ident}'", code="resource_missing", param=param)


def bad_param(param: str, message: str) -> SimError:
    return SimError(400, message, code="parameter_invalid", param=param)
