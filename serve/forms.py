"""Decode Stripe's form bodies: ``metadata[k]=v``, ``payment_method_types[0]=a``, ``expand[]=b``.

A small decoder of its own: the simulator has one, but shipped code never imports ``offterm.sim``.
Values stay strings, as on the wire; handlers coerce the fields they use.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")
#: nesting deeper than Stripe ever uses is refused (a crafted body cannot recurse far)
MAX_DEPTH = 5
MAX_PARAMS = 500


class FormError(ValueError):
    """A parameter name is malformed, too deep, or used both as a value and as an object."""


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _listify(v) for k, v in node.items()}
        if node and all(isinstance(k, int) for k in node):
            return [node[k] for k in sorted(node)]
        if any(isinstance(k, int) for k in node):
            raise FormError("a parameter mixes list indexes and names")
        return node
    return node


def decode(body: str) -> dict[str, Any]:
    """Parse a urlencoded body with bracket notation into nested dicts and lists."""
    pairs = parse_qsl(body, keep_blank_values=True, max_num_fields=MAX_PARAMS)
    root: dict[Any, Any] = {}
    for key, value in pairs:
        match = _KEY.match(key)
        if not match:
            raise FormError(f"malformed parameter name {key[:60]!r}")
        parts = [match.group(1), *_PART.findall(match.group(2))]
        if len(parts) > MAX_DEPTH:
            raise FormError(f"parameter {parts[0][:60]!r} is nested too deep")
        node: dict[Any, Any] = root
        for i, part in enumerate(parts):
            name: Any = part
            if part == "":
                name = len(node)
            elif part.isdigit() and i > 0:
                name = int(part)
            if i == len(parts) - 1:
                if isinstance(node.get(name), dict):
                    raise FormError(f"parameter {parts[0][:60]!r} is both a value and an object")
                node[name] = value
            else:
                child = node.setdefault(name, {})
                if not isinstance(child, dict):
                    raise FormError(f"parameter {parts[0][:60]!r} is both a value and an object")
                node = child
    result = _listify(root)
    assert isinstance(result, dict)
    return result
