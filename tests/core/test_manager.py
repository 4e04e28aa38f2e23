"""The plugin manager: loading, isolation, selection by name, events."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import types

import pytest
import structlog
import structlog.testing

from offterm.core import hookimpl
from offterm.core.errors import ComponentConflict, ComponentNotFound, PluginError
from offterm.core.manager import BUNDLED_PLUGINS, create_plugin_manager
from offterm.core.registrations import StorageBackendRegistration, TokenProviderRegistration


def _token_plugin(name: str):
    class Plugin:
        @hookimpl
        def offterm_connection_token_providers(self):
            yield TokenProviderRegistration(name=name, factory=lambda ctx: object())

    return Plugin()


def _ep(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group="offterm")


@pytest.fixture
def sandbox_module(tmp_path, monkeypatch):
    """Write an importable module into a temporary path."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, body: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
        sys.modules.pop(name, None)
        return name

    yield write


def test_bundled_plugins_are_registered_from_the_explicit_list():
    pm = create_plugin_manager(autoload=False, env={})
    assert {info.name for info in pm.info.values() if info.source == "bundled"} == {n for n, _ in BUNDLED_PLUGINS}
    for name, module in BUNDLED_PLUGINS:
        assert pm.info[name].module == module


def test_each_manager_is_fresh():
    a = create_plugin_manager(autoload=False, env={}, plugins={"extra": _token_plugin("x")})
    b = create_plugin_manager(autoload=False, env={})
    assert "x" in a.available("tokens")
    assert "x" not in b.available("tokens")


def test_disabled_plugin_is_blocked_before_import(sandbox_module):
    sandbox_module("sideeffect_plugin", "import builtins\nbuiltins.SIDE_EFFECT_RAN = True\n")
    eps = lambda: [_ep("sidefx", "sideeffect_plugin")]  # noqa: E731
    create_plugin_manager(bundled=(), disabled=["sidefx"], entry_points=eps, env={})
    import builtins

    assert not hasattr(builtins, "SIDE_EFFECT_RAN")
    create_plugin_manager(bundled=(), entry_points=eps, env={"OFFTERM_DISABLE_PLUGINS": "other, sidefx"})
    assert not hasattr(builtins, "SIDE_EFFECT_RAN")


def test_bundled_plugin_can_be_disabled_by_name():
    pm = create_plugin_manager(autoload=False, disabled=["stripe"], env={})
    assert "stripe" not in pm.info
    with pytest.raises(ComponentNotFound, match="no forwarding component named 'stripe'"):
        pm.forwarding_transport("stripe")


def test_env_var_turns_entry_point_autoload_off(sandbox_module):
    sandbox_module("autoload_plugin", "")
    eps = lambda: [_ep("auto", "autoload_plugin")]  # noqa: E731
    pm = create_plugin_manager(bundled=(), entry_points=eps, env={"OFFTERM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "auto" not in pm.info
    pm = create_plugin_manager(bundled=(), entry_points=eps, env={})
    assert pm.info["auto"].source.startswith("entry point")


def test_broken_plugin_warns_with_its_name_and_others_still_load(sandbox_module):
    sandbox_module("broken_plugin", "raise RuntimeError('boom at import')\n")
    sandbox_module(
        "good_plugin",
        """
        from offterm.core import hookimpl
        from offterm.core.registrations import TokenProviderRegistration

        @hookimpl
        def offterm_connection_token_providers():
            yield TokenProviderRegistration(name="good", factory=lambda ctx: None)
    """,
    )
    eps = lambda: [_ep("broken", "broken_plugin"), _ep("good", "good_plugin")]  # noqa: E731
    with pytest.warns(RuntimeWarning, match='plugin "broken"'):
        pm = create_plugin_manager(bundled=(), entry_points=eps, env={})
    assert "broken" in pm.load_failures
    assert "boom at import" in pm.load_failures["broken"]
    assert "good" in pm.available("tokens")


def test_strict_mode_makes_a_broken_plugin_fatal(sandbox_module):
    sandbox_module("broken_plugin2", "raise ImportError('missing dependency xyz')\n")
    eps = lambda: [_ep("broken2", "broken_plugin2")]  # noqa: E731
    with pytest.raises(PluginError, match="broken2.*missing dependency xyz"):
        create_plugin_manager(bundled=(), entry_points=eps, env={"OFFTERM_STRICT_PLUGINS": "1"})


def test_plugin_whose_hook_raises_is_isolated():
    class Exploding:
        @hookimpl
        def offterm_connection_token_providers(self):
            raise ValueError("registration exploded")

    pm = create_plugin_manager(
        bundled=(), autoload=False, env={}, plugins={"exploding": Exploding(), "fine": _token_plugin("fine")}
    )
    with pytest.warns(RuntimeWarning, match='plugin "exploding" failed in offterm_connection_token_providers'):
        assert pm.available("tokens") == {"fine": "fine"}


def test_misspelled_hook_name_is_rejected():
    class Typo:
        @hookimpl
        def offterm_on_payment_storred(self, intent):  # typo: storred
            pass

    with pytest.raises(PluginError, match='plugin "typo" implements an unknown hook'):
        create_plugin_manager(bundled=(), autoload=False, env={}, plugins={"typo": Typo()})


def test_misspelled_hook_in_entry_point_plugin_is_a_named_warning(sandbox_module):
    sandbox_module(
        "typo_plugin",
        """
        from offterm.core import hookimpl

        @hookimpl
        def offterm_storage_backend():  # missing 's'
            return []
    """,
    )
    with pytest.warns(RuntimeWarning, match='plugin "typo-ep" implements an unknown hook'):
        pm = create_plugin_manager(bundled=(), entry_points=lambda: [_ep("typo-ep", "typo_plugin")], env={})
    assert "typo-ep" not in pm.info


def test_unknown_component_name_lists_the_choices():
    pm = create_plugin_manager(
        bundled=(), autoload=False, env={}, plugins={"a": _token_plugin("alpha"), "b": _token_plugin("beta")}
    )
    with pytest.raises(ComponentNotFound, match="Choose one of: alpha, beta"):
        pm.token_provider("gamma")


def test_two_providers_of_one_name_fail_loudly_naming_both():
    pm = create_plugin_manager(
        bundled=(), autoload=False, env={}, plugins={"first": _token_plugin("dup"), "second": _token_plugin("dup")}
    )
    with pytest.raises(ComponentConflict) as info:
        pm.token_provider("dup")
    assert '"first"' in str(info.value) and '"second"' in str(info.value)


def test_selection_is_by_name_not_registration_order():
    pm1 = create_plugin_manager(
        bundled=(), autoload=False, env={}, plugins={"p1": _token_plugin("one"), "p2": _token_plugin("two")}
    )
    pm2 = create_plugin_manager(
        bundled=(), autoload=False, env={}, plugins={"p2": _token_plugin("two"), "p1": _token_plugin("one")}
    )
    assert pm1.token_provider("one").name == pm2.token_provider("one").name == "one"
    assert pm1.provider_of("offterm_connection_token_providers", TokenProviderRegistration, "one") == "p1"


def test_wrong_registration_type_is_a_named_failure():
    class Wrong:
        @hookimpl
        def offterm_storage_backends(self):
            yield TokenProviderRegistration(name="nope", factory=lambda ctx: None)

    pm = create_plugin_manager(bundled=(), autoload=False, env={}, plugins={"wrong": Wrong()})
    with pytest.warns(RuntimeWarning, match="expected StorageBackendRegistration"):
        with pytest.raises(ComponentNotFound):
            pm.storage_backend("nope")


def test_invalid_component_name_is_rejected():
    with pytest.raises(PluginError, match="invalid component name"):
        StorageBackendRegistration(name="Bad Name!", factory=lambda ctx: None)


def test_failing_listener_is_logged_with_its_plugin_name_and_others_still_run():
    seen: list[str] = []

    class Bad:
        @hookimpl
        def offterm_on_forwarding_failure(self, error):
            raise RuntimeError("listener bug")

    class Good:
        @hookimpl
        def offterm_on_forwarding_failure(self, error):
            seen.append(error.code)

    pm = create_plugin_manager(bundled=(), autoload=False, env={}, plugins={"bad-listener": Bad(), "good": Good()})
    from offterm.core.errors import ConnectionTokenError

    with structlog.testing.capture_logs() as logs:
        pm.emit("forwarding_failure", error=ConnectionTokenError("backend down"))
    assert seen == ["connection_token_provider_error"]
    [failure] = [e for e in logs if e["event"] == "event_listener_failed"]
    assert failure["plugin"] == "bad-listener" and failure["error"] == "listener bug"


def test_listeners_run_in_registration_order():
    order: list[str] = []

    def listener(tag: str):
        class L:
            @hookimpl
            def offterm_on_forwarding_failure(self, error):
                order.append(tag)

        return L()

    pm = create_plugin_manager(
        bundled=(), autoload=False, env={}, plugins={"one": listener("one"), "two": listener("two")}
    )
    pm.emit("forwarding_failure", error=PluginError("x"))
    assert order == ["one", "two"]


def test_fake_dist_info_entry_point_is_discovered(tmp_path, monkeypatch):
    """A third-party plugin installed as a distribution is found through the 'offterm' group."""
    dist = tmp_path / "acme_offterm-1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-offterm\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text("[offterm]\nacme = acme_offterm_plugin\n")
    (tmp_path / "acme_offterm_plugin.py").write_text(
        textwrap.dedent("""
        from offterm.core import hookimpl
        from offterm.core.registrations import TokenProviderRegistration

        @hookimpl
        def offterm_connection_token_providers():
            yield TokenProviderRegistration(name="acme", factory=lambda ctx: None)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = create_plugin_manager(bundled=(), env={})
    assert pm.info["acme"].source == "entry point acme-offterm 1.2"
    assert pm.available("tokens")["acme"] == "acme"


def test_plugin_object_may_be_a_module():
    mod = types.ModuleType("inline_mod")

    @hookimpl
    def offterm_connection_token_providers():
        yield TokenProviderRegistration(name="inline", factory=lambda ctx: None)

    mod.offterm_connection_token_providers = offterm_connection_token_providers  # type: ignore[attr-defined]
    pm = create_plugin_manager(bundled=(), autoload=False, env={}, plugins={"inline": mod})
    assert "inline" in pm.available("tokens")


def test_hook_tracing_env_var(capsys):
    pm = create_plugin_manager(
        bundled=(), autoload=False, env={"OFFTERM_TRACE_HOOKS": "1"}, plugins={"t": _token_plugin("traced")}
    )
    pm.pm.hook.offterm_connection_token_providers()
    assert "hook_trace" in capsys.readouterr().out
