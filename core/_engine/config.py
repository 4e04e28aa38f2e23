"""Load and validate the configuration: one TOML file, or a dict.

Layout: core sections hold scalar keys (``[terminal]``, ``[plugins]``,
``[forwarding]``...); a component's own options live in a sub-table named
after it, ``[<kind>.<name>]`` (``[storage.sqlcipher]``, ``[tokens.http]``),
validated against the OptionSpecs its registration declares.  An event
listener plugin's own settings live in ``[plugins.<name>]``, validated the
same way (by :func:`validate_options`) against the OptionSpecs its
``ListenerSettingsRegistration`` declares, when a Terminal opens.  Every
error names the key and the bad value.  Secrets (``OptionSpec.secret``) may
come from ``OFFTERM_<KIND>_<NAME>_<KEY>`` instead of the file.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from ..errors import ConfigError
from ..registrations import OptionSpec, Registration

ENV_CONFIG = "OFFTERM_CONFIG"
APP_NAME = "offterm"


def default_config_path() -> Path:
    return platformdirs.user_config_path(APP_NAME) / "config.toml"


def default_data_dir() -> Path:
    return platformdirs.user_data_path(APP_NAME)


# Core options: section -> specs.  docs/configuration.md documents each (a test checks).
CORE_OPTIONS: dict[str, tuple[OptionSpec, ...]] = {
    "terminal": (
        OptionSpec(
            "data_dir",
            str,
            None,
            "Directory for the payment store and keys (0700). Default: platformdirs' user data dir for 'offterm'.",
        ),
        OptionSpec("merchant_country", str, "US", "ISO 3166 alpha-2 country of the merchant; EEA rules apply by it."),
        OptionSpec("location_id", str, None, "The processor Location this POS belongs to (reader offline rules)."),
        OptionSpec("offline_enabled", bool, False, "Allow storing payments offline at all (explicit opt-in)."),
        OptionSpec(
            "offline_timeout",
            (int, float),
            3.0,
            "Seconds a PREFER_ONLINE request waits for the processor before the payment is stored offline instead.",
            maximum=600,
        ),
        OptionSpec(
            "probe_min_interval",
            (int, float),
            0.5,
            "First delay between reachability probes while offline.",
            minimum=0.01,
            maximum=3600,
        ),
        OptionSpec(
            "probe_max_interval",
            (int, float),
            1.0,
            "Longest delay between probes while offline (backoff); it bounds how long forwarding waits "
            "after the network returns.",
            minimum=0.01,
            maximum=86400,
        ),
    ),
    "plugins": (
        OptionSpec("disable", list, [], "Plugin names never to load (also OFFTERM_DISABLE_PLUGINS, comma-separated)."),
        OptionSpec(
            "autoload",
            bool,
            True,
            "Load third-party plugins from the 'offterm' entry-point group "
            "(OFFTERM_DISABLE_PLUGIN_AUTOLOAD=1 turns it off).",
        ),
        OptionSpec(
            "strict",
            bool,
            False,
            "A plugin that fails to load stops start-up instead of warning (also OFFTERM_STRICT_PLUGINS=1).",
        ),
    ),
    "reader": (
        OptionSpec("transport", str, "simulated", "Reader transport component: simulated, serial, ble, or a plugin's."),
    ),
    "storage": (
        OptionSpec("backend", str, "sqlcipher", "Storage backend component."),
        OptionSpec("key_provider", str, "file", "Storage key provider component: file, env, keyring, or a plugin's."),
    ),
    "storage_key": (),
    "tokens": (
        OptionSpec(
            "providers",
            list,
            ["http"],
            "Connection-token providers asked in order; None from one means 'not mine', ask the next.",
        ),
    ),
    "forwarding": (
        OptionSpec("transport", str, "stripe", "Processor transport component."),
        OptionSpec("policy", str, "default", "Forwarding policy component (ordering, retry pacing, giving up)."),
        OptionSpec(
            "interval", (int, float), 30.0, "Seconds between forwarding rounds while payments wait.", maximum=86400
        ),
        OptionSpec("concurrency", int, 4, "Payments forwarded at the same time.", minimum=1, maximum=256),
        OptionSpec(
            "rate_limit",
            (int, float),
            20.0,
            "Most requests per second to the processor (Stripe allows 100).",
            minimum=0.01,
            maximum=100_000,
        ),
        OptionSpec("batch_size", int, 50, "Payments claimed from the store at a time.", minimum=1, maximum=10000),
        OptionSpec(
            "lease_seconds",
            (int, float),
            120.0,
            "How long a claim lasts before another forwarder may recover it (a crashed process).",
            minimum=1,
            maximum=86400,
        ),
        OptionSpec(
            "close_timeout", (int, float), 10.0, "Seconds close() spends trying to forward what remains.", maximum=3600
        ),
        OptionSpec(
            "idempotency_window",
            (int, float),
            23 * 3600.0,
            "Seconds of each key generation in which a payment's requests are sent, then a quiet gap of the "
            "transport's search_delay; a new generation starts with a lookup (Stripe prunes keys once 24 h old). "
            "Every actor forwarding the same payments (lanes, hub forwarders) must use the same value.",
            minimum=0.001,
            maximum=86400,
        ),
        OptionSpec(
            "processing_checks",
            int,
            5,
            "Retrievals of an intent the processor reports as processing before it waits for a later round.",
            minimum=0,
            maximum=100,
        ),
        OptionSpec(
            "processing_interval",
            (int, float),
            0.5,
            "Seconds before the first retrieval of a processing intent (doubling after each).",
            minimum=0.0,
            maximum=600,
        ),
    ),
    "acceptance": (),
    "forwarding_policy": (),
    # the store hub (docs/fleet.md); the replicator's own options live in [replicator.<name>]
    "hub": (
        OptionSpec("replicator", str, "", "Replicator component that copies payments to the store hub; empty: no hub."),
        OptionSpec(
            "mode",
            str,
            "async",
            "sync: an offline confirm waits (at most sync_timeout) for the hub's "
            "commit too; async: replicate in the background.",
        ),
        OptionSpec("lane", str, "", "This lane's name on the hub (with the postgres replicator: its PostgreSQL role)."),
        OptionSpec(
            "key_provider",
            str,
            "env",
            "Storage key provider component holding the hub key "
            "(asked for the store id 'hub'); never the one that holds this lane's storage key.",
        ),
        OptionSpec(
            "sync_timeout",
            (int, float),
            0.3,
            "Seconds a sync-mode confirm waits for the hub before returning local-only (the payment catches up later).",
            minimum=0.01,
            maximum=10,
        ),
        OptionSpec(
            "interval",
            (int, float),
            2.0,
            "Seconds between background rounds (catch-up, heartbeat).",
            minimum=0.05,
            maximum=3600,
        ),
        OptionSpec("batch_size", int, 200, "Payments per hub transaction during catch-up.", minimum=1, maximum=10000),
        OptionSpec(
            "lane_silent_after",
            (int, float),
            120.0,
            "Seconds without a heartbeat after which `offterm hub forward` takes over a lane's waiting payments.",
            minimum=0.1,
            maximum=7 * 86400,
        ),
        OptionSpec(
            "forward_interval",
            (int, float),
            5.0,
            "Seconds between two passes of `offterm hub forward` run as a service.",
            minimum=0.05,
            maximum=3600,
        ),
    ),
    "replicator": (),
}

#: Sections owned by an offterm service outside the core, kept here as raw tables (``Config.extensions``) and
#: validated by that service with the same ``validate_options``: ``[serve]`` by ``offterm.serve.config``
#: (documented in docs/serve.md).  The core never reads them; it only stops calling them unknown.
EXTENSION_SECTIONS = ("serve",)

#: kinds whose section may hold component sub-tables
COMPONENT_SECTIONS = (
    "reader",
    "storage",
    "storage_key",
    "tokens",
    "forwarding",
    "acceptance",
    "forwarding_policy",
    "replicator",
)


#: control characters (C0, DEL, C1) and the bidirectional overrides that make text read differently
#: from what it is: never meaningful in a configuration value, and harmful in headers, paths and logs
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _check_type(where: str, spec: OptionSpec, value: Any) -> Any:
    allowed = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(where, f"must be {_type_names(allowed)}", value)
    if not isinstance(value, allowed):
        raise ConfigError(where, f"must be {_type_names(allowed)}", value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(where, spec, value)
    texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    if any(isinstance(text, str) and _CONTROL.search(text) for text in texts):
        raise ConfigError(where, "must not contain control or bidirectional-override characters")
    return _check_constraints(where, spec, value)


def _check_constraints(where: str, spec: OptionSpec, value: Any) -> Any:
    """The spec's choices, pattern and lengths, for a value of the right type (a secret from the
    environment too); returns the value, a case-insensitive choice as listed.  A secret is never shown."""
    shown = None if spec.secret else value
    if spec.choices is not None and value is not None:
        items = value if isinstance(value, list) else [value]
        chosen = [_choice(spec, item) for item in items]
        if any(item is _NO_CHOICE for item in chosen):
            allowed = ", ".join(str(c) for c in spec.choices)
            raise ConfigError(
                where,
                f"must be one of: {allowed}" if not isinstance(value, list) else f"must list only: {allowed}",
                shown,
            )
        value = chosen if isinstance(value, list) else chosen[0]
    if spec.pattern is not None and value is not None:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) and re.fullmatch(spec.pattern, item) for item in items):
            what = spec.pattern_help or f"a string matching {spec.pattern}"
            raise ConfigError(
                where, f"must be {what}" if not isinstance(value, list) else f"each item must be {what}", shown
            )
    if isinstance(value, str):
        if spec.min_length is not None and len(value) < spec.min_length:
            need = "must not be empty" if spec.min_length == 1 else f"must be at least {spec.min_length} characters"
            raise ConfigError(where, need, shown)
        if spec.max_length is not None and len(value) > spec.max_length:
            raise ConfigError(where, f"must be at most {spec.max_length} characters", shown)
    return value


_NO_CHOICE = object()


def _choice(spec: OptionSpec, item: Any) -> Any:
    for choice in spec.choices or ():
        if isinstance(item, bool) is not isinstance(choice, bool):
            continue  # True is not the choice 1
        if item == choice:
            return choice
        if (
            spec.ignore_case
            and isinstance(item, str)
            and isinstance(choice, str)
            and item.casefold() == choice.casefold()
        ):
            return choice
    return _NO_CHOICE


def _check_number(where: str, spec: OptionSpec, value: float) -> None:
    """Finite and within the spec's bounds: NaN or infinity would reach timers, timedeltas and SQL."""
    if not math.isfinite(value):
        raise ConfigError(where, "must be a finite number", value)
    minimum = 0 if spec.minimum is None else spec.minimum
    if spec.exclusive_minimum and value <= minimum:
        raise ConfigError(where, "must be more than 0" if minimum == 0 else f"must be more than {minimum:g}", value)
    if value < minimum:
        raise ConfigError(where, "must not be negative" if minimum == 0 else f"must be at least {minimum:g}", value)
    if spec.maximum is not None and value > spec.maximum:
        raise ConfigError(where, f"must be at most {spec.maximum:g}", value)


def _type_names(types: tuple[type, ...]) -> str:
    names = {
        "str": "a string",
        "bool": "true or false",
        "int": "an integer",
        "float": "a number",
        "list": "a list",
        "dict": "a table",
    }
    return " or ".join(names.get(t.__name__, t.__name__) for t in types)


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` most probably misspells (``difflib``), or None: for "did you mean" hints."""
    matches = difflib.get_close_matches(word, sorted(choices), n=1)
    return matches[0] if matches else None


def _unknown(what: str, name: str, valid: Iterable[str]) -> str:
    """``unknown option, did you mean 'concurrency'? (valid: ...)``."""
    choices = sorted(valid)
    guess = closest(name, choices)
    hint = f", did you mean {guess!r}?" if guess else ""
    return f"unknown {what}{hint} (valid: {', '.join(choices) or 'none'})"


def validate_options(
    where: str, specs: tuple[OptionSpec, ...], raw: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Apply defaults and check types; unknown keys are errors naming the key."""
    env = os.environ if env is None else env
    known = {s.key: s for s in specs}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}.{key}", _unknown("option", key, known))
    result: dict[str, Any] = {}
    for spec in specs:
        key = f"{where}.{spec.key}"
        env_name = "OFFTERM_" + key.upper().replace(".", "_").replace("-", "_")
        if spec.secret and env.get(env_name):
            result[spec.key] = _check_constraints(key, spec, env[env_name])
        elif spec.key in raw:
            result[spec.key] = _check_type(key, spec, raw[spec.key])
        elif spec.required:
            raise ConfigError(key, f"is required (or set {env_name})" if spec.secret else "is required")
        else:
            result[spec.key] = copy.deepcopy(spec.default)
    return result


@dataclass(frozen=True)
class Config:
    """Validated core settings plus the raw option tables of components."""

    sections: dict[str, dict[str, Any]]
    component_options: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    source: Path | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    #: raw tables of EXTENSION_SECTIONS, validated by the service that owns each
    extensions: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``[plugins.<name>]`` tables: raw settings of listener plugins, validated when a Terminal opens
    plugin_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, section: str, key: str) -> Any:
        return self.sections[section][key]

    @property
    def data_dir(self) -> Path:
        value = self.sections["terminal"]["data_dir"]
        return Path(value).expanduser() if value else default_data_dir()

    def component(self, kind: str, registration: Registration[Any]) -> dict[str, Any]:
        """Validated options of one selected component."""
        raw = self.component_options.get((kind, registration.name), {})
        return validate_options(f"{kind}.{registration.name}", registration.options, raw, self.env)

    def plugin_settings(self, name: str, specs: tuple[OptionSpec, ...]) -> dict[str, Any]:
        """Validated ``[plugins.<name>]`` options of a listener plugin (the same checks as a component's)."""
        return validate_options(f"plugins.{name}", specs, self.plugin_options.get(name, {}), self.env)


def load_config(source: str | Path | Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load from a dict, a path, ``$OFFTERM_CONFIG``, or the default path (if it exists)."""
    env = dict(os.environ) if env is None else dict(env)
    path: Path | None = None
    if isinstance(source, Mapping):
        data: Mapping[str, Any] = source
    else:
        if source is None and env.get(ENV_CONFIG):
            source = env[ENV_CONFIG]
        if source is None:
            path = default_config_path()
            data = _read_toml(path) if path.exists() else {}
        else:
            path = Path(source).expanduser()
            if not path.exists():
                raise ConfigError("config", f"file not found: {path}")
            data = _read_toml(path)
    return _parse(data, path, env)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None


def _parse(data: Mapping[str, Any], path: Path | None, env: Mapping[str, str]) -> Config:
    for section in data:
        if section not in CORE_OPTIONS and section not in EXTENSION_SECTIONS:
            raise ConfigError(section, _unknown("section", section, [*CORE_OPTIONS, *EXTENSION_SECTIONS]))
    extensions: dict[str, dict[str, Any]] = {}
    for section in EXTENSION_SECTIONS:
        table = data.get(section, {})
        if not isinstance(table, Mapping):
            raise ConfigError(section, "must be a table", table)
        extensions[section] = copy.deepcopy(dict(table))
    sections: dict[str, dict[str, Any]] = {}
    components: dict[tuple[str, str], dict[str, Any]] = {}
    for section, specs in CORE_OPTIONS.items():
        raw = data.get(section, {})
        if not isinstance(raw, Mapping):
            raise ConfigError(section, "must be a table", raw)
        scalars = {k: v for k, v in raw.items() if not isinstance(v, Mapping) or k in {s.key for s in specs}}
        if section in COMPONENT_SECTIONS:
            for name, table in raw.items():
                if isinstance(table, Mapping) and name not in {s.key for s in specs}:
                    components[(section, name)] = dict(table)
        sections[section] = validate_options(section, specs, scalars, env)
    _check_core(sections)
    return Config(
        sections=sections,
        component_options=components,
        source=path,
        env=env,
        plugin_options=_plugin_tables(data.get("plugins", {})),
        extensions=extensions,
    )


def _plugin_tables(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``[plugins.<name>]`` tables: a listener plugin's own settings (checked when a Terminal opens)."""
    core = {spec.key for spec in CORE_OPTIONS["plugins"]}
    return {name: dict(table) for name, table in raw.items() if isinstance(table, Mapping) and name not in core}


def _check_core(sections: dict[str, dict[str, Any]]) -> None:
    country = sections["terminal"]["merchant_country"]
    if len(country) != 2 or not country.isalpha():
        raise ConfigError("terminal.merchant_country", "must be an ISO 3166 alpha-2 code", country)
    sections["terminal"]["merchant_country"] = country.upper()
    for key in ("disable",):
        if not all(isinstance(n, str) for n in sections["plugins"][key]):
            raise ConfigError(f"plugins.{key}", "must be a list of plugin names", sections["plugins"][key])
    providers = sections["tokens"]["providers"]
    if not providers or not all(isinstance(n, str) for n in providers):
        raise ConfigError("tokens.providers", "must be a non-empty list of provider names", providers)
