"""Check each endpoint's parameters as Stripe does: unknown ones refused by name, each value typed."""

from __future__ import annotations

import re
from typing import Any

from .errors import ApiError

_CURRENCY = re.compile(r"^[a-zA-Z]{3}$")


def only(params: dict[str, Any], allowed: set[str]) -> None:
    for name in params:
        if name not in allowed:
            raise ApiError(400, f"Received unknown parameter: {name[:80]}", code="parameter_unknown", param=name[:80])


def required(params: dict[str, Any], name: str) -> Any:
    if name not in params or params[name] == "":
        raise ApiError(400, f"Missing required param: {name}.", code="parameter_missing", param=name)
    return params[name]


def text(params: dict[str, Any], name: str, max_length: int = 5000) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise ApiError(
            400,
            f"Invalid string: {name} (at most {max_length} characters).",
            code="parameter_invalid_string",
            param=name,
        )
    return value


def integer(params: dict[str, Any], name: str, minimum: int, maximum: int) -> int:
    raw = required(params, name)
    if not isinstance(raw, str) or not re.fullmatch(r"\d{1,12}", raw) or not minimum <= int(raw) <= maximum:
        raise ApiError(
            400,
            f"Invalid integer: {name} must be a whole number from {minimum} to {maximum}.",
            code="parameter_invalid_integer",
            param=name,
        )
    return int(raw)


def choice(params: dict[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = params.get(name, default) or default
    if value not in choices:
        raise ApiError(
            400, f"Invalid {name}: must be one of {', '.join(choices)}.", code="parameter_invalid_string", param=name
        )
    return str(value)


def metadata(params: dict[str, Any]) -> dict[str, str]:
    raw = params.get("metadata", {})
    if raw == "":
        return {}
    if not isinstance(raw, dict):
        raise ApiError(
            400, "Invalid object: metadata must be key-value pairs.", code="parameter_invalid_string", param="metadata"
        )
    if len(raw) > 50:
        raise ApiError(400, "metadata may have at most 50 keys.", code="parameter_invalid_string", param="metadata")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str) or len(str(key)) > 40 or len(value) > 500:
            raise ApiError(
                400,
                "metadata keys are at most 40 characters and values strings of at most 500.",
                code="parameter_invalid_string",
                param=f"metadata[{str(key)[:40]}]",
            )
        if value != "":
            out[str(key)] = value
    return out


def payment_intent_create(params: dict[str, Any]) -> dict[str, Any]:
    only(params, {"amount", "currency", "payment_method_types", "capture_method", "metadata", "description", "expand"})
    amount = integer(params, "amount", 1, 99_999_999)
    currency = required(params, "currency")
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise ApiError(
            400, "Invalid currency: must be a three-letter ISO code.", code="parameter_invalid_string", param="currency"
        )
    types = params.get("payment_method_types", ["card_present"])
    if not isinstance(types, list) or not types or any(t != "card_present" for t in types):
        raise ApiError(
            400,
            "payment_method_types must be [card_present]: offterm takes in-person cards only.",
            code="parameter_invalid_string",
            param="payment_method_types",
        )
    capture = choice(params, "capture_method", ("automatic", "automatic_async", "manual"), "automatic")
    return {
        "amount": amount,
        "currency": currency.lower(),
        "capture_method": "manual" if capture == "manual" else "automatic",
        "metadata": metadata(params),
        "description": text(params, "description", 1000),
    }
