"""Decode Stripe's form bodies: ``metadata[k]=v``, ``types[0]=a``, ``types[]=a``.

Values stay strings (as on the wire); handlers coerce the fields they use.
Lists come back as Python lists, nested keys as dicts.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


class FormError(ValueError):
    """A key is malformed or used both as a value and as a container."""


def _parts(key: str) -> list[str]:
    match = _KEY.match(key)
    if not match:
        raise FormError(f"malformed parameter name {key!r}")
    return [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]


def _listify(node: Any) -> Any:
    """Turn dicts whose keys are all list indexes into lists, recursively."""
    if isinstance(node, dict):
        node = {k: _listify(v) for k, v in node.items()}
        if node and all(isinstance(k, int) for k in node):
            return [node[k] for k in sorted(node)]
        if any(isinstance(k, int) for k in node):
            raise FormError("parameter mixes list indexes and names")
        return node
    if isinstance(node, list):
        return [_listify(v) for v in node]
    return node


def decode(body: str) -> dict[str, Any]:
    """Parse a urlencoded body with bracket notation into nested data."""
    root: dict[Any, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True, strict_parsing=False):
        parts = _parts(key)
        node: dict[Any, Any] = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            name: Any = part
            if part == "":
                name = len(node)  # "a[]" appends
            elif part.isdigit() and i > 0:
                name = int(part)
            if last:
                if isinstance(node.get(name), dict):
                    raise FormError(f"parameter {parts[0]!r} is both a value and an object")
                node[name] = value
            else:
                child = node.setdefault(name, {})
                if not isinstance(child, dict):
                    raise FormError(f"parameter {parts[0]!r} is both a value and an object")
                node = child
    result = _listify(root)
    assert isinstance(result, dict)
    return result
