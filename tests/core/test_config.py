"""Configuration: TOML or dict, validated at load, errors name key and value."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offterm.core.config import CORE_OPTIONS, load_config, validate_options
from offterm.core.errors import ConfigError
from offterm.core.manager import COMPONENT_KINDS, create_plugin_manager
from offterm.core.registrations import OptionSpec

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_from_an_empty_dict():
    cfg = load_config({}, env={})
    assert cfg.get("terminal", "offline_enabled") is False
    assert cfg.get("terminal", "offline_timeout") == 3.0
    assert cfg.get("storage", "backend") == "sqlcipher"
    assert cfg.get("forwarding", "transport") == "stripe"
    assert cfg.get("tokens", "providers") == ["http"]
    assert cfg.data_dir.name == "offterm"


def test_toml_file_and_component_tables(tmp_path):
    path = tmp_path / "offterm.toml"
    path.write_text(
        '[terminal]\noffline_enabled = true\nmerchant_country = "de"\ndata_dir = "%s"\n'
        '[tokens]\nproviders = ["http"]\n[tokens.http]\nurl = "http://127.0.0.1:1/token"\n' % (tmp_path / "data")
    )
    cfg = load_config(path, env={})
    assert cfg.source == path
    assert cfg.get("terminal", "merchant_country") == "DE"
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.component_options[("tokens", "http")] == {"url": "http://127.0.0.1:1/token"}


def test_offterm_config_env_var_points_at_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[forwarding]\nconcurrency = 7\n")
    assert load_config(None, env={"OFFTERM_CONFIG": str(path)}).get("forwarding", "concurrency") == 7


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[terminal\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("data", "key", "value"),
    [
        ({"terminal": {"offline_enabled": "yes"}}, "terminal.offline_enabled", "'yes'"),
        ({"terminal": {"offline_timeout": -1}}, "terminal.offline_timeout", "-1"),
        ({"terminal": {"merchant_country": "USA"}}, "terminal.merchant_country", "'USA'"),
        ({"forwarding": {"concurrency": 0}}, "forwarding.concurrency", "0"),
        ({"forwarding": {"concurrency": True}}, "forwarding.concurrency", "True"),
        ({"tokens": {"providers": []}}, "tokens.providers", "[]"),
        ({"plugins": {"disable": "stripe"}}, "plugins.disable", "'stripe'"),
        ({"forwarding": {"lease_seconds": float("nan")}}, "forwarding.lease_seconds", "nan"),
        ({"forwarding": {"rate_limit": float("inf")}}, "forwarding.rate_limit", "inf"),
        ({"forwarding": {"concurrency": 10**30}}, "forwarding.concurrency", "1000000000000000000000000000000"),
        ({"terminal": {"offline_timeout": float("-inf")}}, "terminal.offline_timeout", "-inf"),
        ({"forwarding": {"lease_seconds": 0}}, "forwarding.lease_seconds", "0"),
    ],
)
def test_bad_values_name_the_key_and_the_value(data, key, value):
    with pytest.raises(ConfigError) as info:
        load_config(data, env={})
    assert info.value.key == key
    assert value in str(info.value)


@pytest.mark.parametrize("text", ["US\x00", "a\u202eb", "line\nbreak", "\x9b31m"])
def test_control_and_bidi_override_characters_are_refused(text):
    with pytest.raises(ConfigError, match="control or bidirectional") as info:
        load_config({"terminal": {"location_id": text}}, env={})
    assert info.value.key == "terminal.location_id"
    with pytest.raises(ConfigError, match="control or bidirectional"):
        load_config({"plugins": {"disable": ["ok", text]}}, env={})


_NUMERIC = [
    (section, spec)
    for section, specs in CORE_OPTIONS.items()
    for spec in specs
    if isinstance(spec.type, tuple) and float in spec.type or spec.type is int
]


@settings(max_examples=300, deadline=None)
@given(
    choice=st.sampled_from(_NUMERIC),
    value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(10**40), max_value=10**40)),
)
def test_every_numeric_core_option_is_finite_and_in_range_or_refused_by_name(choice, value):
    """Whatever number a config file holds, loading either refuses it naming the key, or yields a finite value
    within the option's documented range: NaN, infinity and absurd sizes never reach timers, SQL or memory."""
    section, spec = choice
    if spec.type is int and isinstance(value, float):
        value = int(value) if math.isfinite(value) else value
    try:
        cfg = load_config({section: {spec.key: value}}, env={})
    except ConfigError as exc:
        assert exc.key == f"{section}.{spec.key}"
        return
    got = cfg.get(section, spec.key)
    assert math.isfinite(got)
    assert got >= (spec.minimum or 0)
    assert spec.maximum is None or got <= spec.maximum


def test_unknown_key_and_section_are_named():
    with pytest.raises(ConfigError, match=r"terminal\.offline_enabeld: unknown option"):
        load_config({"terminal": {"offline_enabeld": True}}, env={})
    with pytest.raises(ConfigError, match="terminall: unknown section"):
        load_config({"terminall": {}}, env={})


def test_component_options_validated_against_their_specs():
    specs = (OptionSpec("url", str, None, "where", required=True), OptionSpec("timeout", float, 5.0, "secs"))
    assert validate_options("tokens.http", specs, {"url": "http://x"}, env={}) == {"url": "http://x", "timeout": 5.0}
    with pytest.raises(ConfigError, match=r"tokens\.http\.url: is required"):
        validate_options("tokens.http", specs, {}, env={})
    with pytest.raises(ConfigError, match=r"tokens\.http\.colour: unknown option \(valid: timeout, url\)"):
        validate_options("tokens.http", specs, {"url": "u", "colour": 1}, env={})


def test_secret_options_come_from_the_environment():
    specs = (OptionSpec("auth_token", str, None, "bearer for the backend", secret=True, required=True),)
    env = {"OFFTERM_TOKENS_HTTP_AUTH_TOKEN": "from-env"}
    assert validate_options("tokens.http", specs, {"auth_token": "from-file"}, env=env)["auth_token"] == "from-env"
    with pytest.raises(ConfigError, match="OFFTERM_TOKENS_HTTP_AUTH_TOKEN"):
        validate_options("tokens.http", specs, {}, env={})


def test_list_defaults_are_not_shared_between_configs():
    a = load_config({}, env={})
    a.sections["plugins"]["disable"].append("x")
    assert load_config({}, env={}).get("plugins", "disable") == []


def _documented_keys() -> set[str]:
    text = DOCS.read_text()
    return set(re.findall(r"^\|\s*`([a-z_]+(?:\.[a-z0-9_-]+)+)`", text, flags=re.M))


def test_every_core_key_is_documented_with_its_default():
    documented = _documented_keys()
    missing = [
        f"{section}.{spec.key}"
        for section, specs in CORE_OPTIONS.items()
        for spec in specs
        if f"{section}.{spec.key}" not in documented
    ]
    assert not missing, f"docs/configuration.md lacks: {missing}"


def test_every_bundled_component_option_is_documented():
    pm = create_plugin_manager(autoload=False, env={})
    documented = _documented_keys()
    missing = []
    for kind, (hook_name, _cls) in COMPONENT_KINDS.items():
        for impl in getattr(pm.pm.hook, hook_name).get_hookimpls():
            for reg in impl.function():
                for spec in reg.options:
                    key = f"{kind}.{reg.name}.{spec.key}"
                    if key not in documented:
                        missing.append(key)
    assert not missing, f"docs/configuration.md lacks: {missing}"


def test_a_misspelled_key_or_section_suggests_the_closest(tmp_path):
    path = tmp_path / "offterm.toml"
    path.write_text("[forwarding]\nconcurency = 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == "forwarding.concurency"
    assert "unknown option, did you mean 'concurrency'? (valid: " in str(info.value)
    with pytest.raises(ConfigError, match=r"terminall: unknown section, did you mean 'terminal'\?"):
        load_config({"terminall": {}}, env={})
    with pytest.raises(ConfigError, match=r"forwarding\.zzzz: unknown option \(valid: "):
        load_config({"forwarding": {"zzzz": 1}}, env={})


def test_plugins_tables_are_kept_raw_and_validated_like_component_options():
    config = load_config(
        {"plugins": {"strict": True, "webhook": {"url": "https://example.test/h", "timeout": 7.5}}}, env={}
    )
    assert config.get("plugins", "strict") is True
    assert config.plugin_options == {"webhook": {"url": "https://example.test/h", "timeout": 7.5}}
    specs = (
        OptionSpec("url", str, None, "where"),
        OptionSpec("timeout", (int, float), 5.0, "secs", maximum=60),
        OptionSpec("secret", str, None, "signing secret", secret=True),
    )
    env = {"OFFTERM_PLUGINS_WEBHOOK_SECRET": "whsec_from_env"}
    config = load_config({"plugins": {"webhook": {"url": "https://example.test/h"}}}, env=env)
    assert config.plugin_settings("webhook", specs) == {
        "url": "https://example.test/h",
        "timeout": 5.0,
        "secret": "whsec_from_env",
    }
    config = load_config({"plugins": {"webhook": {"timeout": 61}}}, env={})
    with pytest.raises(ConfigError, match=r"plugins\.webhook\.timeout: must be at most 60"):
        config.plugin_settings("webhook", specs)


# -- what OptionSpec says beyond type and range, checked once, here ---------------------------------------------


def test_a_value_outside_the_choices_names_the_key_and_the_allowed_values():
    specs = (OptionSpec("mode", str, "wal", "h", choices=("wal", "delete")),)
    with pytest.raises(ConfigError) as info:
        validate_options("storage.x", specs, {"mode": "fast"}, env={})
    assert info.value.key == "storage.x.mode"
    assert "must be one of: wal, delete" in str(info.value) and "'fast'" in str(info.value)
    assert validate_options("storage.x", specs, {"mode": "delete"}, env={}) == {"mode": "delete"}
    with pytest.raises(ConfigError, match="one of: wal, delete"):
        validate_options("storage.x", specs, {"mode": "WAL"}, env={})


def test_ignore_case_choices_become_the_choice_as_listed():
    specs = (OptionSpec("mode", str, "wal", "h", choices=("wal", "delete"), ignore_case=True),)
    assert validate_options("s.x", specs, {"mode": "WAL"}, env={}) == {"mode": "wal"}


def test_choices_of_a_list_apply_to_each_item_and_true_is_not_one():
    specs = (
        OptionSpec("brands", list, [], "h", choices=("visa", "amex")),
        OptionSpec("level", int, 1, "h", choices=(0, 1)),
    )
    assert validate_options("a.x", specs, {"brands": ["amex"]}, env={})["brands"] == ["amex"]
    with pytest.raises(ConfigError, match="must list only: visa, amex") as info:
        validate_options("a.x", specs, {"brands": ["visa", "jcb"]}, env={})
    assert info.value.key == "a.x.brands"
    with pytest.raises(ConfigError, match="must be true or false|must be an integer|one of"):
        validate_options("a.x", specs, {"level": True}, env={})


def test_a_pattern_is_matched_in_full_and_its_meaning_named():
    specs = (
        OptionSpec("var", str, "A", "h", pattern="[A-Z_]+", pattern_help="an environment variable name"),
        OptionSpec("raw", str, "a", "h", pattern="[a-z]+"),
        OptionSpec("items", list, [], "h", pattern="(?s).+", pattern_help="a non-empty string"),
        OptionSpec("maybe", (str, type(None)), None, "h", pattern="[a-z]+"),
    )
    with pytest.raises(ConfigError, match="must be an environment variable name") as info:
        validate_options("storage_key.env", specs, {"var": "A B"}, env={})
    assert info.value.key == "storage_key.env.var"
    with pytest.raises(ConfigError, match=r"must be a string matching \[a-z\]\+"):
        validate_options("k.x", specs, {"raw": "abc1"}, env={})
    with pytest.raises(ConfigError, match="each item must be a non-empty string"):
        validate_options("k.x", specs, {"items": ["ok", ""]}, env={})
    with pytest.raises(ConfigError, match="each item must be a non-empty string"):
        validate_options("k.x", specs, {"items": [1]}, env={})
    assert validate_options("k.x", specs, {"maybe": None}, env={})["maybe"] is None


def test_string_lengths():
    specs = (
        OptionSpec("name", str, "x", "h", min_length=1),
        OptionSpec("prefix", str, "", "h", max_length=3),
    )
    with pytest.raises(ConfigError, match="k.x.name: must not be empty"):
        validate_options("k.x", specs, {"name": ""}, env={})
    with pytest.raises(ConfigError, match="k.x.prefix: must be at most 3 characters"):
        validate_options("k.x", specs, {"prefix": "abcd"}, env={})
    assert validate_options("k.x", specs, {"prefix": ""}, env={})["prefix"] == ""


def test_an_exclusive_minimum_refuses_the_minimum_itself():
    specs = (OptionSpec("timeout", (int, float), 2.0, "h", exclusive_minimum=True, maximum=60),)
    with pytest.raises(ConfigError, match="k.x.timeout: must be more than 0"):
        validate_options("k.x", specs, {"timeout": 0}, env={})
    assert validate_options("k.x", specs, {"timeout": 0.001}, env={})["timeout"] == 0.001


def test_a_secret_that_breaks_a_rule_is_never_shown_and_the_environment_is_checked_too():
    specs = (OptionSpec("key", str, "", "h", secret=True, pattern="[0-9a-f]{4}", pattern_help="4 hex digits"),)
    with pytest.raises(ConfigError, match="must be 4 hex digits") as info:
        validate_options("reader.x", specs, {"key": "zzzz-secret"}, env={})
    assert "zzzz-secret" not in str(info.value)
    with pytest.raises(ConfigError, match="must be 4 hex digits") as info:
        validate_options("reader.x", specs, {}, env={"OFFTERM_READER_X_KEY": "yyyy-secret"})
    assert info.value.key == "reader.x.key" and "yyyy-secret" not in str(info.value)
    assert validate_options("reader.x", specs, {}, env={"OFFTERM_READER_X_KEY": "00ff"}) == {"key": "00ff"}


def test_a_spec_with_a_broken_pattern_or_list_choices_is_a_plugin_error():
    from offterm.core.errors import PluginError

    with pytest.raises(PluginError, match="not a regular expression"):
        OptionSpec("x", str, "", "h", pattern="(")
    with pytest.raises(PluginError, match="choices must be a tuple"):
        OptionSpec("x", str, "", "h", choices=["a"])  # type: ignore[arg-type]


# Each check a bundled plugin's factory used to repeat by hand, now refused by the core from the
# OptionSpec, with the key named, before any factory runs.
@pytest.mark.parametrize(
    ("kind", "name", "options", "key", "says"),
    [
        ("storage", "sqlcipher", {"journal_mode": "fast"}, "storage.sqlcipher.journal_mode", "wal, delete"),
        ("storage", "sqlcipher", {"synchronous": "sometimes"}, "storage.sqlcipher.synchronous", "extra, full"),
        ("storage", "sqlcipher", {"retention_days": 3651}, "storage.sqlcipher.retention_days", "at most 3650"),
        ("storage", "sqlcipher", {"busy_timeout_ms": -1}, "storage.sqlcipher.busy_timeout_ms", "negative"),
        ("storage_key", "env", {"variable": "not a name"}, "storage_key.env.variable", "environment variable"),
        ("storage_key", "keyring", {"service": ""}, "storage_key.keyring.service", "not be empty"),
        ("tokens", "http", {"url": ""}, "tokens.http.url", "not be empty"),
        ("tokens", "callable", {"target": ""}, "tokens.callable.target", "not be empty"),
        ("forwarding", "stripe", {"timeout": 0}, "forwarding.stripe.timeout", "at least 0.01"),
        ("forwarding", "stripe", {"max_connections": 0}, "forwarding.stripe.max_connections", "at least 1"),
        ("forwarding", "stripe", {"stripe_version": "latest"}, "forwarding.stripe.stripe_version", "2023-08-16"),
        ("forwarding", "stripe", {"probe_path": "health"}, "forwarding.stripe.probe_path", "starting with /"),
        ("reader", "simulated", {"count": 0}, "reader.simulated.count", "at least 1"),
        ("reader", "simulated", {"reader_type": ""}, "reader.simulated.reader_type", "not be empty"),
        ("reader", "simulated", {"location_id": ""}, "reader.simulated.location_id", "not be empty"),
        ("reader", "simulated", {"card_key": "ab" * 31 + "zz"}, "reader.simulated.card_key", "64 hexadecimal"),
        ("reader", "simulated", {"read_method": "chip"}, "reader.simulated.read_method", "contact_emv"),
        ("reader", "simulated", {"read_delay": 61}, "reader.simulated.read_delay", "at most 60"),
        ("reader", "serial", {"port": " "}, "reader.serial.port", "device path"),
        ("reader", "serial", {"baudrate": 10}, "reader.serial.baudrate", "at least 50"),
        ("reader", "serial", {"pid": 0x10000}, "reader.serial.pid", "at most 65535"),
        ("reader", "serial", {"timeout": 0}, "reader.serial.timeout", "more than 0"),
        ("reader", "serial", {"timeout": 61}, "reader.serial.timeout", "at most 60"),
        ("reader", "serial", {"reconnect_initial_delay": 0}, "reader.serial.reconnect_initial_delay", "more than 0"),
        ("reader", "serial", {"reconnect_attempts": -1}, "reader.serial.reconnect_attempts", "negative"),
        ("reader", "ble", {"service_uuid": "nope"}, "reader.ble.service_uuid", "128-bit UUID"),
        ("reader", "ble", {"scan_timeout": 0}, "reader.ble.scan_timeout", "more than 0"),
        ("reader", "ble", {"scan_timeout": 121}, "reader.ble.scan_timeout", "at most 120"),
        ("reader", "ble", {"adapter": "hci0; rm"}, "reader.ble.adapter", "adapter name"),
        ("reader", "ble", {"name_prefix": "x" * 30}, "reader.ble.name_prefix", "at most 29"),
        ("acceptance", "limits", {"max_count": 0}, "acceptance.limits.max_count", "at least 1"),
        ("acceptance", "limits", {"allowed_brands": ["visa", ""]}, "acceptance.limits.allowed_brands", "non-empty"),
        ("acceptance", "limits", {"eea_countries": [1]}, "acceptance.limits.eea_countries", "non-empty"),
        ("forwarding_policy", "default", {"base_delay": -1}, "forwarding_policy.default.base_delay", "negative"),
        ("forwarding_policy", "default", {"seed": "x"}, "forwarding_policy.default.seed", "integer"),
        ("forwarding_policy", "default", {"max_attempts": 2.5}, "forwarding_policy.default.max_attempts", "integer"),
    ],
)
def test_bundled_component_options_are_refused_by_the_core(kind, name, options, key, says):
    pm = create_plugin_manager(autoload=False, env={})
    hook_name = COMPONENT_KINDS[kind][0]
    [registration] = [
        r for impl in getattr(pm.pm.hook, hook_name).get_hookimpls() for r in impl.function() if r.name == name
    ]
    config = load_config({kind: {name: options}}, env={})
    with pytest.raises(ConfigError) as info:
        config.component(kind, registration)
    assert info.value.key == key
    assert says in str(info.value)
