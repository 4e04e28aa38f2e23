"""Stripe's form encoding: nested data as ``a[b][c]=v``, lists as ``a[0]=v``.

Booleans become ``true``/``false``; ``None`` values are left out (Stripe
reads an empty string as "unset", which is never what we mean).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode


def flatten(params: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Key/value pairs in bracket notation, in the order given."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        pairs.extend(_flatten_value(name, value))
    return pairs


def _flatten_value(name: str, value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return flatten(value, name)
    if isinstance(value, list | tuple):
        out: list[tuple[str, str]] = []
        for i, item in enumerate(value):
            out.extend(_flatten_value(f"{name}[{i}]", item))
        return out
    if isinstance(value, bool):
        return [(name, "true" if value else "false")]
    if isinstance(value, int | str):
        return [(name, str(value))]
    raise TypeError(f"cannot form-encode a {type(value).__name__} for {name!r}")


def encode(params: Mapping[str, Any]) -> str:
    """The request body, ``application/x-www-form-urlencoded``."""
    return urlencode(flatten(params))
