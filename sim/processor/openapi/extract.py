"""Regenerate ``stripe-openapi-subset.json``: the operations of Stripe's spec the simulator serves.

Usage (from the repository root)::

    python sim/processor/openapi/extract.py ../shared/stripe-openapi/spec3.json \
        > sim/processor/openapi/stripe-openapi-subset.json

The input is ``spec3.json`` of github.com/stripe/openapi (MIT licence; the
shipped subset is of API version 2023-08-16, the spec's ``info.version``).
Each served operation keeps its parameters and request body, which is what
the simulator checks requests against; responses are reduced to the name of
the component they return, so the file stays small (the object schemas live
in the full spec, which tests load when it is present).
"""

from __future__ import annotations

import json
import sys
from typing import Any

SOURCE = "https://github.com/stripe/openapi (openapi/spec3.json)"

#: Path template -> methods the simulator serves (keep in step with offterm.sim.processor.app).
SERVED: dict[str, tuple[str, ...]] = {
    "/v1/charges": ("get",),
    "/v1/charges/{charge}": ("get",),
    "/v1/payment_intents": ("get", "post"),
    "/v1/payment_intents/search": ("get",),
    "/v1/payment_intents/{intent}": ("get",),
    "/v1/payment_intents/{intent}/cancel": ("post",),
    "/v1/payment_intents/{intent}/capture": ("post",),
    "/v1/payment_intents/{intent}/confirm": ("post",),
    "/v1/payment_methods/{payment_method}": ("get",),
    "/v1/refunds": ("post",),
    "/v1/terminal/connection_tokens": ("post",),
}


def _returns(operation: dict[str, Any]) -> str | None:
    """The component a 200 answer is (``#/components/schemas/NAME``), if it names one."""
    try:
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    except KeyError:
        return None
    ref = schema.get("$ref")
    return str(ref).rsplit("/", 1)[1] if isinstance(ref, str) else None


def extract(spec: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for template, methods in SERVED.items():
        item = spec["paths"][template]
        kept: dict[str, Any] = {}
        for method in methods:
            op = item[method]
            kept[method] = {
                "operationId": op.get("operationId"),
                "parameters": op.get("parameters", []),
                **({"requestBody": op["requestBody"]} if "requestBody" in op else {}),
                "x-offterm-returns": _returns(op),
            }
        paths[template] = kept
    return {
        "openapi": spec["openapi"],
        "info": {
            "title": spec["info"]["title"] + " (subset served by offterm's simulator)",
            "version": spec["info"]["version"],
            "x-offterm-source": SOURCE,
            "x-offterm-license": "MIT, Copyright (c) Stripe, Inc.",
        },
        "paths": paths,
        "components": {"schemas": {}},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as fh:
        spec = json.load(fh)
    json.dump(extract(spec), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
