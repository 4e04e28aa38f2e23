"""Render docs/configuration.md from the option specs (``python -m offterm.cli.configdocs``).

The specs are the single source of truth: core options in
``offterm.core.config.CORE_OPTIONS``, component options in each bundled
registration.  A test checks the document names every key.
"""

from __future__ import annotations

import sys
from typing import Any

from offterm.core.config import CORE_OPTIONS
from offterm.core.manager import COMPONENT_KINDS, create_plugin_manager
from offterm.core.registrations import OptionSpec

INTRO = """# Configuration reference

offterm reads one TOML file: `--config PATH`, else `$OFFTERM_CONFIG`, else
`config.toml` in the platform's user config directory (platformdirs; on Linux
`~/.config/offterm/config.toml`). No file means all defaults. Apps may pass a
dict with the same shape to `Terminal.from_config`.

Every key is validated when the configuration loads: a wrong type, a number
outside its range (shown next to its type; NaN and infinity are never
accepted), a value not among its choices, a string not of the form or length
shown next to its type, a control character in a string, or an unknown key
fails with an error naming the key and the value (a secret's value is never
shown).  A component's factory receives only values that passed.
Core sections hold plain keys; a component's options live in a sub-table
named after it, `[<section>.<component>]`, e.g. `[storage.sqlcipher]`.
Options marked *secret* may instead come from the environment variable
`OFFTERM_<SECTION>_<COMPONENT>_<KEY>` (e.g. `OFFTERM_TOKENS_HTTP_AUTH_TOKEN`),
which wins over the file; secrets are never logged.

Environment switches: `OFFTERM_CONFIG` (config path),
`OFFTERM_DISABLE_PLUGINS` (comma-separated names),
`OFFTERM_DISABLE_PLUGIN_AUTOLOAD=1`, `OFFTERM_STRICT_PLUGINS=1`,
`OFFTERM_TRACE_HOOKS=1`.

A minimal offline-capable deployment:

```toml
[terminal]
offline_enabled = true
merchant_country = "US"

[reader]
transport = "serial"

[tokens.http]
url = "https://pos-backend.example.com/connection_token"

[acceptance.limits]
max_amount = { usd = 50000 }
max_total = { usd = 500000 }
```
"""


def _default(spec: OptionSpec) -> str:
    if spec.default is None:
        return "—"
    value: Any = spec.default
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value!r}`".replace("'", '"')


def _types(spec: OptionSpec) -> str:
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    text = " or ".join(t.__name__ for t in types)
    if any(t in (int, float) for t in types):
        low = 0 if spec.minimum is None else spec.minimum
        if spec.exclusive_minimum:
            text += f" (> {low:g}, ≤ {spec.maximum:g})" if spec.maximum is not None else f" (> {low:g})"
        else:
            text += f" ({low:g}–{spec.maximum:g})" if spec.maximum is not None else f" (≥ {low:g})"
    return (text + "".join(f"; {rule}" for rule in _rules(spec))).replace("|", "\\|")


def _rules(spec: OptionSpec) -> list[str]:
    """What the core checks beyond type and range, in words: choices, pattern, lengths."""
    rules: list[str] = []
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    each = "each item " if list in types else ""
    if spec.choices is not None:
        listed = ", ".join(f"`{c}`" for c in spec.choices)
        rules.append(f"{each}one of {listed}" + (" (any case)" if spec.ignore_case else ""))
    if spec.pattern is not None:
        rules.append(each + (spec.pattern_help or f"matching `{spec.pattern}`"))
    if spec.min_length == 1 and spec.max_length is None:
        rules.append("not empty")
    elif spec.min_length is not None or spec.max_length is not None:
        low, high = spec.min_length or 0, spec.max_length
        rules.append(f"{low}–{high} characters" if high is not None else f"at least {low} characters")
    return rules


def _table(prefix: str, specs: tuple[OptionSpec, ...]) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for spec in specs:
        extra = " *Secret.*" if spec.secret else ""
        extra += " *Required.*" if spec.required else ""
        rows.append(f"| `{prefix}.{spec.key}` | {_types(spec)} | {_default(spec)} | {spec.help}{extra} |")
    return rows


def render() -> str:
    lines = [INTRO]
    for section, specs in CORE_OPTIONS.items():
        if specs:
            lines += [f"## `[{section}]`", "", *_table(section, specs), ""]
    pm = create_plugin_manager(autoload=False, env={})
    lines += ["# Bundled components", ""]
    for kind, (hook_name, _cls) in COMPONENT_KINDS.items():
        for impl in getattr(pm.pm.hook, hook_name).get_hookimpls():
            for reg in impl.function():
                lines += [f"## `[{kind}.{reg.name}]`", ""]
                if reg.description:
                    lines += [reg.description, ""]
                lines += (_table(f"{kind}.{reg.name}", reg.options) if reg.options else ["No options."]) + [""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
