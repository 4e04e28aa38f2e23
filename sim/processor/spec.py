"""Check requests and objects against Stripe's public OpenAPI spec.

The spec is OpenAPI 3.0 (``nullable``, form bodies with string values);
this module turns it into plain JSON Schema, coerces form strings to the
types the spec names, and reports what does not conform.

Two levels: :meth:`StripeSpec.unknown_params` (names Stripe would refuse
with ``parameter_unknown``) is plain Python and runs on every simulator
against the subset shipped in ``openapi/`` (:data:`SUBSET_PATH`);
:meth:`StripeSpec.check_request` validates types, enums and required fields
too and needs ``jsonschema`` (a test dependency), imported on first use.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

ENV_VAR = "OFFTERM_STRIPE_SPEC"
_URI = "urn:offterm:stripe-spec"
#: The operations of Stripe's spec (API 2023-08-16) the simulator serves, shipped with offterm.
SUBSET_PATH = Path(__file__).resolve().parent / "openapi" / "stripe-openapi-subset.json"


def find_spec(start: Path | None = None) -> Path | None:
    """Where spec3.json is: $OFFTERM_STRIPE_SPEC, else ../shared/stripe-openapi beside the repo."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        if path.is_dir():
            path = path / "spec3.json"
        return path if path.is_file() else None
    here = (start or Path(__file__)).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "stripe-openapi" / "spec3.json"
        if candidate.is_file():
            return candidate
        if (parent / "pyproject.toml").is_file():
            candidate = parent.parent / "shared" / "stripe-openapi" / "spec3.json"
            if candidate.is_file():
                return candidate
    return None


def _to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 -> JSON Schema: ``nullable`` becomes an explicit null."""
    if isinstance(node, list):
        return [_to_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_json_schema(v) for k, v in node.items() if not k.startswith("x-")}
    if out.pop("nullable", False):
        if "$ref" in out:
            out = {"anyOf": [{"$ref": out.pop("$ref")}, {"type": "null"}], **out}
        elif "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
        elif "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


class StripeSpec:
    """A loaded spec: path lookup, request checks, object checks."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.raw = document
        self.schema = _to_json_schema(document)
        self._registry: Any = None
        self._validator_cls: Any = None
        self._paths = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p) for p in document["paths"] if "{" in p
        ]

    @classmethod
    def load(cls, path: str | Path) -> StripeSpec:
        return _load(str(Path(path).resolve()))

    # -- lookup -------------------------------------------------------------

    def template_for(self, path: str) -> str | None:
        """The spec's path template matching a concrete path."""
        if path in self.raw["paths"]:
            return path
        matches = [tmpl for rx, tmpl in self._paths if rx.match(path)]
        # Prefer the most literal template (fewest parameters).
        return min(matches, key=lambda t: t.count("{"), default=None)

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        tmpl = self.template_for(path)
        if tmpl is None:
            return None
        op = self.schema["paths"][tmpl].get(method.lower())
        return op if isinstance(op, dict) else None

    # -- checks -------------------------------------------------------------

    def _validator(self) -> Any:
        """jsonschema's validator class, with the spec registered (imported on first use)."""
        if self._validator_cls is None:
            from jsonschema import Draft202012Validator
            from referencing import Registry, Resource
            from referencing.jsonschema import DRAFT202012

            resource = Resource.from_contents(self.schema, default_specification=DRAFT202012)
            self._registry = Registry().with_resource(_URI, resource)
            self._validator_cls = Draft202012Validator
        return self._validator_cls

    def _errors(self, pointer: str, value: Any) -> list[str]:
        """Validate ``value`` against the schema at a JSON pointer into the spec."""
        self._validator()
        validator = self._validator_cls({"$ref": f"{_URI}#{pointer}"}, registry=self._registry)
        out = []
        for err in sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path]):
            where = "/".join(str(p) for p in err.absolute_path) or "(root)"
            out.append(f"{where}: {err.message[:300]}")
        return out

    def _at(self, pointer: str) -> tuple[str, dict[str, Any]]:
        """The schema at ``pointer``, following $refs; returns (final pointer, schema)."""
        while True:
            node: Any = self.schema
            for part in pointer.split("/")[1:]:
                node = node[part.replace("~1", "/").replace("~0", "~")]
            if isinstance(node, dict) and "$ref" in node and len(node) == 1:
                pointer = node["$ref"][1:]
                continue
            return pointer, node

    def coerce(self, value: Any, pointer: str) -> Any:
        """Form values are strings: convert them to what the schema at ``pointer`` expects."""
        pointer, schema = self._at(pointer)
        if "anyOf" in schema:
            for i in range(len(schema["anyOf"])):
                candidate = self.coerce(value, f"{pointer}/anyOf/{i}")
                if not self._errors(f"{pointer}/anyOf/{i}", candidate):
                    return candidate
            return value
        kind = schema.get("type")
        kinds = kind if isinstance(kind, list) else [kind]
        if isinstance(value, str):
            if "integer" in kinds and re.fullmatch(r"-?\d+", value):
                return int(value)
            if "number" in kinds and re.fullmatch(r"-?\d+(\.\d+)?", value):
                return float(value)
            if "boolean" in kinds and value in ("true", "false"):
                return value == "true"
            return value
        if isinstance(value, dict) and ("object" in kinds or "properties" in schema):
            props = schema.get("properties", {})
            extra = schema.get("additionalProperties")
            out = {}
            for k, v in value.items():
                if k in props:
                    out[k] = self.coerce(v, f"{pointer}/properties/{_escape(k)}")
                elif isinstance(extra, dict):
                    out[k] = self.coerce(v, f"{pointer}/additionalProperties")
                else:
                    out[k] = v
            return out
        if isinstance(value, list) and "array" in kinds and isinstance(schema.get("items"), dict):
            return [self.coerce(v, f"{pointer}/items") for v in value]
        return value

    def unknown_params(self, method: str, path: str, params: dict[str, Any]) -> list[str]:
        """Parameters the operation does not take, in Stripe's bracket notation (``a[b][c]``).

        Needs no ``jsonschema``.  An operation the spec does not have yields [] (routing
        answers those).  Nested hashes are walked as far as the spec names their keys;
        a hash with free keys (``metadata``) has no unknown keys.
        """
        tmpl = self.template_for(path)
        op = self.operation(method, path)
        if tmpl is None or op is None:
            return []
        if method.upper() in ("GET", "DELETE"):
            schemas = {p["name"]: p.get("schema", {}) for p in op.get("parameters", []) if p.get("in") == "query"}
            root: dict[str, Any] = {"type": "object", "properties": schemas, "additionalProperties": False}
        else:
            content = op.get("requestBody", {}).get("content", {})
            root = content.get("application/x-www-form-urlencoded", {}).get("schema", {})
            if not root:
                root = {"type": "object", "properties": {}, "additionalProperties": False}
        return self._unknown(root, params, "")

    def _unknown(self, schema: Any, value: Any, prefix: str) -> list[str]:
        if isinstance(schema, dict) and "$ref" in schema:
            schema = self._at(schema["$ref"][1:])[1]
        if not isinstance(schema, dict):
            return []
        variants = [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]
        variants = [self._at(v["$ref"][1:])[1] if isinstance(v, dict) and "$ref" in v else v for v in variants]
        if isinstance(value, list):
            items = [v["items"] for v in variants if isinstance(v, dict) and isinstance(v.get("items"), dict)]
            if not items:
                return []
            return [n for i, item in enumerate(value) for n in self._unknown(items[0], item, f"{prefix}[{i}]")]
        if not isinstance(value, dict):
            return []
        objects = [v for v in variants if isinstance(v, dict) and ("properties" in v or v.get("type") == "object")]
        if not objects or any(v.get("additionalProperties") not in (None, False) for v in objects):
            return []  # not a hash here, or one with free keys
        out: list[str] = []
        for key, sub in value.items():
            name = f"{prefix}[{key}]" if prefix else str(key)
            owner = next((v for v in objects if key in v.get("properties", {})), None)
            if owner is None:
                out.append(name)
            else:
                out.extend(self._unknown(owner["properties"][key], sub, name))
        return out

    def check_request(self, method: str, path: str, params: dict[str, Any]) -> list[str]:
        """Problems with a request (path, method, body or query params); [] if it conforms."""
        tmpl = self.template_for(path)
        op = self.operation(method, path)
        if tmpl is None or op is None:
            return [f"{method.upper()} {path} is not an operation of the spec"]
        if method.upper() in ("GET", "DELETE"):
            known = {p["name"] for p in op.get("parameters", []) if p.get("in") == "query"}
            return [f"unknown query parameter {name!r}" for name in sorted(set(params) - known)]
        content = op.get("requestBody", {}).get("content", {})
        if "application/x-www-form-urlencoded" not in content:
            return [] if not params else ["operation takes no form body"]
        pointer = (
            f"/paths/{_escape(tmpl)}/{method.lower()}/requestBody/content/"
            f"{_escape('application/x-www-form-urlencoded')}/schema"
        )
        return self._errors(pointer, self.coerce(params, pointer))

    def check_object(self, schema_name: str, obj: Any) -> list[str]:
        """Problems with an object against ``components/schemas/<schema_name>``."""
        return self._errors(f"/components/schemas/{_escape(schema_name)}", obj)


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


@cache
def _load(path: str) -> StripeSpec:
    with open(path, encoding="utf-8") as fh:
        return StripeSpec(json.load(fh))
