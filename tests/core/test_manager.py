"""The plugin manager: loading, isolation, selection by name, events."""

from __future__ import annotations

import importlib.metadata
import io
import logging
import sys
import textwrap
import types

import pytest
import structlog
import structlog.testing

from offterm.core import hookimpl, hookspecs
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


def _load_failed(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "plugin_load_failed"]


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
    with structlog.testing.capture_logs() as logs:
        pm = create_plugin_manager(bundled=(), entry_points=eps, env={})
    assert [e["plugin"] for e in _load_failed(logs)] == ["broken"]
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
    with structlog.testing.capture_logs() as logs:
        assert pm.available("tokens") == {"fine": "fine"}
    [failure] = _load_failed(logs)
    assert failure["error"].startswith('plugin "exploding" failed in offterm_connection_token_providers')
    assert "registration exploded" in pm.load_failures["exploding"]


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
    with structlog.testing.capture_logs() as logs:
        pm = create_plugin_manager(bundled=(), entry_points=lambda: [_ep("typo-ep", "typo_plugin")], env={})
    assert "typo-ep" not in pm.info
    message = (
        'plugin "typo-ep" implements an unknown hook "offterm_storage_backend" (did you mean offterm_storage_backends?)'
    )
    assert pm.load_failures["typo-ep"] == message
    assert [e["error"] for e in _load_failed(logs)] == [message]


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
    with pytest.raises(ComponentNotFound):
        pm.storage_backend("nope")
    assert "expected StorageBackendRegistration" in pm.load_failures["wrong"]


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


def test_listeners_run_in_pluggy_order_tryfirst_last_registered_first_trylast():
    order: list[str] = []

    def listener(tag: str, **opts: bool):
        class L:
            @hookimpl(**opts)
            def offterm_on_forwarding_failure(self, error):
                order.append(tag)

        return L()

    pm = create_plugin_manager(
        bundled=(),
        autoload=False,
        env={},
        plugins={
            "last": listener("last", trylast=True),
            "one": listener("one"),
            "first": listener("first", tryfirst=True),
            "two": listener("two"),
        },
    )
    pm.emit("forwarding_failure", error=PluginError("x"))
    assert order == ["first", "two", "one", "last"]


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


def test_registration_hooks_follow_tryfirst_trylast_and_wrappers_see_the_registrations():
    class Early:
        @hookimpl(tryfirst=True)
        def offterm_connection_token_providers(self):
            yield TokenProviderRegistration(name="early", factory=lambda ctx: object())

    class Late:
        @hookimpl(trylast=True)
        def offterm_connection_token_providers(self):
            yield TokenProviderRegistration(name="late", factory=lambda ctx: object())

    seen: list[list[str]] = []

    class HideMiddle:
        @hookimpl(wrapper=True)
        def offterm_connection_token_providers(self):
            answers = yield
            seen.append([reg.name for answer in answers for reg in answer])
            return [[reg for reg in answer if reg.name != "middle"] for answer in answers]

    pm = create_plugin_manager(
        bundled=(),
        autoload=False,
        env={},
        plugins={"late": Late(), "early": Early(), "middle": _token_plugin("middle")},
    )
    assert list(pm.available("tokens")) == ["early", "middle", "late"]
    pm.register(HideMiddle(), "hide")
    assert pm.available("tokens") == {"early": "(a hook wrapper)", "late": "(a hook wrapper)"}
    assert seen == [["early", "middle", "late"]]
    with pytest.raises(ComponentNotFound, match="Choose one of: early, late"):
        pm.token_provider("middle")


def test_a_raising_registration_wrapper_is_attributed_to_its_plugin():
    seen: list[list[str]] = []

    class Broken:
        @hookimpl(wrapper=True)
        def offterm_connection_token_providers(self):
            result = yield
            seen.append([reg.name for answer in result for reg in answer])
            raise RuntimeError("wrapper bug")

    plugins = {"fine": _token_plugin("fine"), "broken-wrapper": Broken()}
    pm = create_plugin_manager(bundled=(), autoload=False, env={}, plugins=plugins)
    with structlog.testing.capture_logs() as logs:
        assert pm.token_provider("fine").name == "fine"
    [failure] = _load_failed(logs)
    assert failure["error"].startswith('plugin "broken-wrapper" failed in offterm_connection_token_providers')
    assert "wrapper bug" in pm.load_failures["broken-wrapper"]
    assert seen == [["fine"]], "the wrapper ran around the real call"
    strict = create_plugin_manager(bundled=(), autoload=False, strict=True, env={}, plugins=plugins)
    with pytest.raises(PluginError, match='"broken-wrapper".*wrapper bug'):
        strict.token_provider("fine")


def _event_plugins(calls: list[str]) -> dict[str, object]:
    """Listeners and wrappers of ``offterm_on_payment_stored``, including broken ones, registration order."""

    class First:
        @hookimpl(tryfirst=True)
        def offterm_on_payment_stored(self, intent):
            calls.append("first")

    class RaisesEarly:
        @hookimpl(tryfirst=True)
        def offterm_on_payment_stored(self, intent):
            calls.append("raises-early")
            raise RuntimeError("early listener bug")

    class Plain:
        @hookimpl
        def offterm_on_payment_stored(self, intent):
            calls.append("plain")

    class RaisesLate:
        @hookimpl(trylast=True)
        def offterm_on_payment_stored(self, intent):
            calls.append("raises-late")
            raise ValueError("late listener bug")

    class Last:
        @hookimpl(trylast=True)
        def offterm_on_payment_stored(self, intent):
            calls.append("last")

    class NewWrapper:
        @hookimpl(wrapper=True)
        def offterm_on_payment_stored(self, intent):
            calls.append("new-wrapper:before")
            result = yield
            calls.append("new-wrapper:after")
            return result

    class OldWrapper:
        @hookimpl(hookwrapper=True)
        def offterm_on_payment_stored(self, intent):
            calls.append("old-wrapper:before")
            outcome = yield
            outcome.get_result()
            calls.append("old-wrapper:after")

    class BrokenNewWrapper:
        @hookimpl(wrapper=True, tryfirst=True)
        def offterm_on_payment_stored(self, intent):
            raise RuntimeError("new wrapper bug")
            yield  # pragma: no cover

    class BrokenOldWrapper:
        @hookimpl(hookwrapper=True)
        def offterm_on_payment_stored(self, intent):
            yield
            raise RuntimeError("old wrapper bug")

    return {
        "broken-new-wrapper": BrokenNewWrapper(),
        "old-wrapper": OldWrapper(),
        "raises-late": RaisesLate(),
        "last": Last(),
        "plain": Plain(),
        "raises-early": RaisesEarly(),
        "first": First(),
        "new-wrapper": NewWrapper(),
        "broken-old-wrapper": BrokenOldWrapper(),
    }


_EXPECTED_CALLS = [
    "new-wrapper:before",  # wrappers wrap every listener; registered last = outermost
    "old-wrapper:before",
    "first",  # tryfirst, most recently registered first
    "raises-early",
    "plain",
    "raises-late",  # trylast, first registered first
    "last",
    "old-wrapper:after",
    "new-wrapper:after",
]


def _failures(logs: list[dict]) -> dict[str, str]:
    return {e["plugin"]: e["error"] for e in logs if e["event"] == "event_listener_failed"}


_EXPECTED_FAILURES = {
    "raises-early": "early listener bug",
    "raises-late": "late listener bug",
    "broken-new-wrapper": "new wrapper bug",
    "broken-old-wrapper": "old wrapper bug",
}


def test_emit_runs_wrappers_in_order_and_isolates_each_failing_listener_and_wrapper():
    calls: list[str] = []
    pm = create_plugin_manager(bundled=(), autoload=False, env={}, plugins=_event_plugins(calls))
    from offterm.core.models import PaymentIntent

    with structlog.testing.capture_logs() as logs:
        pm.emit("payment_stored", intent=PaymentIntent(offline_id="offpi_" + "1" * 32, amount=500, currency="usd"))
    assert calls == _EXPECTED_CALLS
    assert _failures(logs) == _EXPECTED_FAILURES
    assert {e["hook"] for e in logs if e["event"] == "event_listener_failed"} == {"offterm_on_payment_stored"}


async def test_a_terminal_runs_wrappers_in_order_and_survives_failing_listeners(offterm_config):
    """The real path: a Terminal storing a payment offline emits through the manager."""
    from offterm.core import OfflineBehavior, Terminal

    calls: list[str] = []
    every_event: list[str] = []

    class SeesEverything:
        pass

    for name in dir(hookspecs):
        if name.startswith("offterm_on_"):

            def wrapper(self, *args, _name=name, **kwargs):
                every_event.append(_name)
                return (yield)

            wrapper.__name__ = name
            setattr(SeesEverything, name, hookimpl(wrapper=True)(wrapper))

    class EveryListener:
        @hookimpl
        def offterm_on_reader_connected(self, reader):
            calls.append("reader_connected")

        @hookimpl
        def offterm_on_offline_status_changed(self, status):
            calls.append("offline_status_changed")

    plugins = {"every": SeesEverything(), "listener": EveryListener(), **_event_plugins(calls)}
    pm = create_plugin_manager(autoload=False, strict=True, env={}, plugins=plugins)
    with structlog.testing.capture_logs() as logs:
        async with Terminal.from_config(offterm_config, plugin_manager=pm) as terminal:
            [reader] = await terminal.discover_readers()
            await terminal.connect_reader(reader)
            intent = await terminal.create_payment_intent(
                {"amount": 700, "currency": "usd"}, offline_behavior=OfflineBehavior.FORCE_OFFLINE
            )
            terminal.connected_reader.present_card("visa")
            intent = await terminal.confirm_payment_intent(await terminal.collect_payment_method(intent))
            assert intent.requires_upload, "failing listeners must not change the payment"
            assert terminal.offline_status.sdk.offline_payments_count == 1
    stored = calls.index("new-wrapper:before")
    assert calls[stored : stored + len(_EXPECTED_CALLS)] == _EXPECTED_CALLS
    assert _failures(logs) == _EXPECTED_FAILURES
    # the catch-all wrapper saw every event the Terminal emitted, listeners or not
    assert {"offterm_on_reader_connected", "offterm_on_payment_stored", "offterm_on_offline_status_changed"} <= set(
        every_event
    )
    assert every_event.count("offterm_on_reader_connected") == calls.count("reader_connected")
    assert every_event.count("offterm_on_offline_status_changed") == calls.count("offline_status_changed") > 0


async def test_hook_tracing_env_var_logs_the_terminals_hook_calls_never_to_stdout(offterm_config, monkeypatch, capsys):
    from offterm.core import Terminal
    from offterm.core.logs import configure_logging

    monkeypatch.setenv("OFFTERM_TRACE_HOOKS", "1")
    monkeypatch.setenv("OFFTERM_DISABLE_PLUGIN_AUTOLOAD", "1")
    stream = io.StringIO()
    configure_logging(level="debug", stream=stream)
    async with Terminal.from_config(offterm_config) as terminal:  # the manager reads the environment
        [reader] = await terminal.discover_readers()
        await terminal.connect_reader(reader)
    trace = [line for line in stream.getvalue().splitlines() if "hook_trace" in line]
    assert any("offterm_reader_transports" in line for line in trace), "selection goes through pluggy"
    assert any("offterm_on_reader_connected" in line for line in trace), "events go through pluggy"
    assert capsys.readouterr().out == ""


def test_hook_tracing_is_off_without_the_env_var(caplog):
    pm = create_plugin_manager(bundled=(), autoload=False, env={}, plugins={"t": _token_plugin("quiet")})
    with caplog.at_level(logging.DEBUG, logger="offterm.plugins.trace"):
        assert "quiet" in pm.available("tokens")
    assert [r for r in caplog.records if r.name == "offterm.plugins.trace"] == []


# -- one report per failure (issue #14) ----------------------------------------------


def test_a_failing_registration_is_reported_once_per_manager_and_never_as_a_python_warning():
    import warnings

    class Exploding:
        @hookimpl
        def offterm_connection_token_providers(self):
            raise ValueError("registration exploded")

    plugins = {"exploding": Exploding(), "fine": _token_plugin("fine")}
    pm = create_plugin_manager(bundled=(), autoload=False, env={}, plugins=plugins)
    with warnings.catch_warnings(record=True) as caught, structlog.testing.capture_logs() as logs:
        warnings.simplefilter("always")
        for _ in range(3):  # the Terminal looks a kind up several times
            assert pm.token_provider("fine").name == "fine"
            assert pm.available("tokens") == {"fine": "fine"}
    assert caught == []
    assert [e["plugin"] for e in _load_failed(logs)] == ["exploding"]
    other = create_plugin_manager(bundled=(), autoload=False, env={}, plugins=plugins)
    with structlog.testing.capture_logs() as logs:
        other.available("tokens")
    assert len(_load_failed(logs)) == 1, "once per manager: a new manager reports it again"
    strict = create_plugin_manager(bundled=(), autoload=False, strict=True, env={}, plugins=plugins)
    for _ in range(2):  # strict mode raises at every lookup, not only the first
        with pytest.raises(PluginError, match='"exploding".*registration exploded'):
            strict.available("tokens")


# -- did you mean (issue #14) -------------------------------------------------------


def test_a_misspelled_hook_says_which_plugin_which_hook_and_the_likely_one():
    class Typo:
        @hookimpl
        def offterm_on_payment_stord(self, intent):
            pass

    with pytest.raises(PluginError) as info:
        create_plugin_manager(bundled=(), autoload=False, env={}, plugins={"x": Typo()})
    assert info.value.message == (
        'plugin "x" implements an unknown hook "offterm_on_payment_stord" (did you mean offterm_on_payment_stored?)'
    )


def test_a_hook_name_far_from_any_hook_gets_no_suggestion():
    class Odd:
        @hookimpl
        def completely_unrelated(self):
            pass

    with pytest.raises(PluginError) as info:
        create_plugin_manager(bundled=(), autoload=False, env={}, plugins={"odd": Odd()})
    assert info.value.message == 'plugin "odd" implements an unknown hook "completely_unrelated"'


def test_a_misspelled_component_name_suggests_the_closest():
    pm = create_plugin_manager(autoload=False, env={})
    with pytest.raises(ComponentNotFound) as info:
        pm.storage_backend("sqlciper")
    assert "no storage component named 'sqlciper' (did you mean 'sqlcipher'?). Choose one of: " in str(info.value)
    assert "sqlcipher" in str(info.value).split("Choose one of: ")[1]


def test_component_not_found_names_the_plugin_that_failed_to_load(sandbox_module):
    sandbox_module(
        "acme_store_plugin",
        """
        from offterm.core import hookimpl
        from offterm.core.registrations import StorageBackendRegistration

        @hookimpl
        def offterm_storage_backends():
            yield StorageBackendRegistration(name="acme", factory=lambda ctx: None)

        @hookimpl
        def offterm_on_payment_stord(intent):  # the typo that sinks the whole plugin
            pass
    """,
    )
    with structlog.testing.capture_logs():
        pm = create_plugin_manager(entry_points=lambda: [_ep("acme", "acme_store_plugin")], env={})
    with pytest.raises(ComponentNotFound) as info:
        pm.storage_backend("acme")
    assert (
        'plugin "acme" failed to load: plugin "acme" implements an unknown hook "offterm_on_payment_stord" '
        "(did you mean offterm_on_payment_stored?)"
    ) in str(info.value)


def test_an_argument_the_hookspec_lacks_is_a_named_plugin_error():
    class WrongArgs:
        @hookimpl
        def offterm_on_payment_stored(self, intent, colour):
            pass

    with pytest.raises(PluginError, match='plugin "wrong-args" is not a valid offterm plugin.*colour'):
        create_plugin_manager(bundled=(), autoload=False, env={}, plugins={"wrong-args": WrongArgs()})


# -- disable entries naming nothing (issue #14) -------------------------------------


def _disable_warnings(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "plugin_disable_unknown"]


def test_a_disable_entry_naming_no_installed_plugin_warns_once_with_a_suggestion():
    with structlog.testing.capture_logs() as logs:
        pm = create_plugin_manager(autoload=False, disabled=["stirpe"], env={"OFFTERM_DISABLE_PLUGINS": "stirpe"})
    [warning] = _disable_warnings(logs)
    assert warning["log_level"] == "warning" and warning["plugin"] == "stirpe"
    assert warning["error"].endswith("names no installed plugin (did you mean stripe?)")
    assert "stripe" in pm.info, "a typo disables nothing"
    with structlog.testing.capture_logs() as logs:
        create_plugin_manager(autoload=False, env={"OFFTERM_DISABLE_PLUGINS": "zzzzzz"})
    [warning] = _disable_warnings(logs)
    assert warning["plugin"] == "zzzzzz" and "did you mean" not in warning["error"]


def test_disable_entries_naming_real_plugins_do_not_warn(sandbox_module):
    sandbox_module("never_imported_plugin", "raise RuntimeError('must not be imported')\n")
    eps = lambda: [_ep("installed", "never_imported_plugin")]  # noqa: E731
    with structlog.testing.capture_logs() as logs:
        # a bundled name, a bundled module path, an installed entry point (autoload off or on), an app's plugin
        for autoload in (False, True):
            create_plugin_manager(
                autoload=autoload,
                disabled=["stripe", "offterm.plugins.storage.memory", "installed", "mine"],
                entry_points=eps,
                plugins={"mine": _token_plugin("mine")},
                env={},
            )
    assert _disable_warnings(logs) == []
    assert _load_failed(logs) == []


# -- listener settings: [plugins.<name>] (issue #14) ---------------------------------


def _settings_plugin(received: list[dict], name: str = "hooky", **extra: object):
    from offterm.core.registrations import ListenerSettingsRegistration, OptionSpec

    class Listener:
        @hookimpl
        def offterm_listener_settings(self):
            yield ListenerSettingsRegistration(
                name=name,
                options=(
                    OptionSpec("url", str, None, "where to send"),
                    OptionSpec("retries", int, 2, "how often", maximum=10),
                    OptionSpec("token", str, None, "bearer", secret=True),
                ),
                apply=lambda options: received.append(dict(options)),
                **extra,
            )

    return Listener()


def test_listener_settings_are_validated_and_applied_with_defaults():
    from offterm.core.config import load_config

    received: list[dict] = []
    pm = create_plugin_manager(bundled=(), autoload=False, env={}, plugins={"hooky": _settings_plugin(received)})
    pm.apply_listener_settings(load_config({"plugins": {"hooky": {"url": "https://example.test/h"}}}, env={}))
    assert received == [{"url": "https://example.test/h", "retries": 2, "token": None}]
    env = {"OFFTERM_PLUGINS_HOOKY_TOKEN": "from-env"}
    pm.apply_listener_settings(load_config({}, env=env))
    assert received[-1] == {"url": None, "retries": 2, "token": "from-env"}, "no table: defaults, secrets from env"


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ({"retries": 11}, "plugins.hooky.retries", "must be at most 10"),
        ({"retries": "3"}, "plugins.hooky.retries", "must be an integer"),
        ({"retrys": 3}, "plugins.hooky.retrys", "unknown option, did you mean 'retries'?"),
    ],
)
def test_a_bad_listener_setting_is_a_config_error_naming_plugins_name_key(table, key, message):
    from offterm.core.config import load_config
    from offterm.core.errors import ConfigError

    received: list[dict] = []
    pm = create_plugin_manager(bundled=(), autoload=False, env={}, plugins={"hooky": _settings_plugin(received)})
    with pytest.raises(ConfigError) as info:
        pm.apply_listener_settings(load_config({"plugins": {"hooky": table}}, env={}))
    assert info.value.key == key and message in str(info.value)
    assert received == []


def test_a_plugins_table_no_plugin_reads_is_an_error_unless_that_plugin_is_disabled():
    from offterm.core.config import load_config
    from offterm.core.errors import ConfigError

    received: list[dict] = []
    pm = create_plugin_manager(bundled=(), autoload=False, env={}, plugins={"hooky": _settings_plugin(received)})
    with pytest.raises(ConfigError, match=r"plugins\.hooki: no plugin reads these settings \(did you mean"):
        pm.apply_listener_settings(load_config({"plugins": {"hooki": {"url": "x"}}}, env={}))
    quiet = create_plugin_manager(bundled=(), autoload=False, disabled=["hooki"], env={})
    quiet.apply_listener_settings(load_config({"plugins": {"hooki": {"url": "x"}}}, env={}))


def test_two_plugins_declaring_one_settings_name_fail_naming_both():
    from offterm.core.config import load_config

    plugins = {"first": _settings_plugin([]), "second": _settings_plugin([])}
    pm = create_plugin_manager(bundled=(), autoload=False, env={}, plugins=plugins)
    with pytest.raises(ComponentConflict, match='"first" and "second"|"second" and "first"'):
        pm.apply_listener_settings(load_config({}, env={}))


def test_a_failing_apply_is_a_plugin_failure_and_a_config_error_from_apply_stops():
    from offterm.core.config import load_config
    from offterm.core.errors import ConfigError
    from offterm.core.registrations import ListenerSettingsRegistration

    def broken(options):
        raise RuntimeError("apply bug")

    def refuses(options):
        raise ConfigError("plugins.picky.url", "must be https")

    class Broken:
        @hookimpl
        def offterm_listener_settings(self):
            yield ListenerSettingsRegistration(name="broken", apply=broken)

    class Picky:
        @hookimpl
        def offterm_listener_settings(self):
            yield ListenerSettingsRegistration(name="picky", apply=refuses)

    pm = create_plugin_manager(bundled=(), autoload=False, env={}, plugins={"broken": Broken()})
    with structlog.testing.capture_logs() as logs:
        pm.apply_listener_settings(load_config({}, env={}))
    assert [e["plugin"] for e in _load_failed(logs)] == ["broken"]
    assert "apply bug" in pm.load_failures["broken"]
    pm = create_plugin_manager(bundled=(), autoload=False, env={}, plugins={"picky": Picky()})
    with pytest.raises(ConfigError, match="must be https"):
        pm.apply_listener_settings(load_config({}, env={}))


def test_listener_settings_names_are_validated_and_core_keys_are_reserved():
    from offterm.core.config import load_config

    with pytest.raises(PluginError, match="invalid settings name"):
        _settings_plugin([], name="Bad Name").offterm_listener_settings().__next__()
    pm = create_plugin_manager(
        bundled=(), autoload=False, strict=True, env={}, plugins={"x": _settings_plugin([], name="strict")}
    )
    with pytest.raises(PluginError, match="core \\[plugins\\] key"):
        pm.apply_listener_settings(load_config({}, env={}))


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _toml(data: dict, prefix: str = "") -> str:
    """A TOML file for a config dict (tables of scalars, lists and sub-tables)."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    for key, table in tables.items():
        lines.append(_toml(table, f"{prefix}.{key}" if prefix else key))
    return "\n".join(lines) + "\n"


async def test_a_listener_is_configured_from_its_toml_section_through_the_real_terminal(offterm_config, tmp_path):
    """[plugins.<name>] in a TOML file reaches the listener's apply when the Terminal opens, before any event."""
    from offterm.core import OfflineBehavior, Terminal
    from offterm.core.errors import ConfigError
    from offterm.core.registrations import ListenerSettingsRegistration, OptionSpec

    class Counter:
        """Counts stored payments above a threshold the file sets."""

        def __init__(self) -> None:
            self.threshold: int | None = None
            self.label = ""
            self.seen: list[tuple[str, int]] = []

        def apply(self, options):
            self.threshold, self.label = options["threshold"], options["label"]

        @hookimpl
        def offterm_listener_settings(self):
            yield ListenerSettingsRegistration(
                name="counter",
                options=(
                    OptionSpec("threshold", int, 0, "smallest amount counted", maximum=1_000_000),
                    OptionSpec("label", str, "big", "what to call them"),
                ),
                apply=self.apply,
            )

        @hookimpl
        def offterm_on_offline_status_changed(self, status):
            assert self.threshold is not None, "settings arrive before any event"

        @hookimpl
        def offterm_on_payment_stored(self, intent):
            if intent.amount >= self.threshold:
                self.seen.append((self.label, intent.amount))

    config = dict(offterm_config, plugins={**offterm_config["plugins"], "counter": {"threshold": 500, "label": "ok"}})
    path = tmp_path / "offterm.toml"
    path.write_text(_toml(config))
    counter = Counter()
    pm = create_plugin_manager(autoload=False, strict=True, env={}, plugins={"counter": counter})
    async with Terminal.from_config(path, plugin_manager=pm) as terminal:
        [reader] = await terminal.discover_readers()
        await terminal.connect_reader(reader)
        for amount in (300, 700):
            intent = await terminal.create_payment_intent(
                {"amount": amount, "currency": "usd"}, offline_behavior=OfflineBehavior.FORCE_OFFLINE
            )
            terminal.connected_reader.present_card("visa")
            await terminal.confirm_payment_intent(await terminal.collect_payment_method(intent))
    assert counter.seen == [("ok", 700)]

    config["plugins"]["counter"]["threshold"] = "lots"
    path.write_text(_toml(config))
    pm = create_plugin_manager(autoload=False, strict=True, env={}, plugins={"counter": Counter()})
    with pytest.raises(ConfigError) as info:
        async with Terminal.from_config(path, plugin_manager=pm):
            pass
    assert info.value.key == "plugins.counter.threshold"
    assert "must be an integer" in str(info.value)
