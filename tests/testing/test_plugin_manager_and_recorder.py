"""offterm.testing: the plugin manager fixture and the hook recorder."""

from __future__ import annotations

import threading

import pytest

from offterm.core import hookimpl, hookspecs
from offterm.core.errors import ConnectionTokenError, PluginError
from offterm.core.manager import BUNDLED_PLUGINS
from offterm.core.models import NetworkStatus, OfflineStatus, OfflineStatusDetails, PaymentIntent
from offterm.core.registrations import TokenProviderRegistration
from offterm.testing import EVENT_HOOKS, HookRecorder, ScratchPluginManager, make_plugin_manager


class TokenPlugin:
    @hookimpl
    def offterm_connection_token_providers(self):
        yield TokenProviderRegistration(name="from-test", factory=lambda ctx: object())


def test_manager_fixture_is_fresh_strict_and_has_the_bundled_plugins(offterm_plugin_manager):
    assert isinstance(offterm_plugin_manager, ScratchPluginManager)
    assert offterm_plugin_manager.strict
    bundled = {name for name, _ in BUNDLED_PLUGINS}
    assert bundled <= set(offterm_plugin_manager.info)
    assert offterm_plugin_manager.added == []
    assert "file" in offterm_plugin_manager.available("storage_key")


def test_added_plugin_provides_components_and_can_be_removed(offterm_plugin_manager):
    name = offterm_plugin_manager.add(TokenPlugin())
    assert name.startswith("test-tokenplugin-")
    assert offterm_plugin_manager.available("tokens")["from-test"] == name
    assert offterm_plugin_manager.info[name].source == "test"
    offterm_plugin_manager.remove(name)
    assert "from-test" not in offterm_plugin_manager.available("tokens")
    assert name not in offterm_plugin_manager.info


def test_temporary_plugin_exists_only_inside_the_block(offterm_plugin_manager):
    with offterm_plugin_manager.temporary(TokenPlugin(), "tmp-tokens") as name:
        assert name == "tmp-tokens"
        assert "from-test" in offterm_plugin_manager.available("tokens")
    assert "from-test" not in offterm_plugin_manager.available("tokens")
    assert offterm_plugin_manager.added == []


def test_misspelled_hook_is_refused(offterm_plugin_manager):
    class Typo:
        @hookimpl
        def offterm_on_payment_stord(self, intent):
            pass

    with pytest.raises(PluginError, match="offterm_on_payment_stord"):
        offterm_plugin_manager.add(Typo(), "typo")
    assert "typo" not in offterm_plugin_manager.info


def test_environment_switches_do_not_reach_test_managers(monkeypatch):
    monkeypatch.setenv("OFFTERM_DISABLE_PLUGINS", "stripe")
    monkeypatch.setenv("OFFTERM_STRICT_PLUGINS", "0")
    manager = make_plugin_manager()
    assert "stripe" in manager.available("forwarding")
    assert manager.strict


def test_recorder_implements_every_event_hook():
    expected = sorted(n for n in dir(hookspecs) if n.startswith("offterm_on_"))
    assert list(EVENT_HOOKS) == expected
    recorder = HookRecorder()
    for name in expected:
        assert hasattr(getattr(recorder, name), "offterm_impl")


def _intent(offline_id: str = "offpi_" + "1" * 32) -> PaymentIntent:
    return PaymentIntent(offline_id=offline_id, amount=500, currency="usd")


def test_recorder_sees_every_emitted_event_with_its_arguments(offterm_plugin_manager, offterm_hook_recorder):
    intent = _intent()
    error = ConnectionTokenError("backend down")
    status = OfflineStatus(OfflineStatusDetails(NetworkStatus.OFFLINE, 1, {"usd": 500}))
    offterm_plugin_manager.emit("payment_stored", intent=intent)
    offterm_plugin_manager.emit("forwarding_failure", error=error)
    offterm_plugin_manager.emit("offline_status_changed", status=status)
    offterm_plugin_manager.emit("payment_intent_forwarded", intent=intent, error=None)

    assert offterm_hook_recorder.events() == [
        "payment_stored",
        "forwarding_failure",
        "offline_status_changed",
        "payment_intent_forwarded",
    ]
    call = offterm_hook_recorder.getcall("payment_stored")
    assert call.intent is intent and call.kwargs == {"intent": intent}
    assert call.name == "offterm_on_payment_stored" and call.event == "payment_stored"
    assert offterm_hook_recorder.getcall("offterm_on_forwarding_failure").error is error
    assert [c.event for c in offterm_hook_recorder.getcalls("payment_stored forwarding_failure")] == [
        "payment_stored",
        "forwarding_failure",
    ]
    assert offterm_hook_recorder.popcall("payment_intent_forwarded").error is None
    offterm_hook_recorder.assert_called("offline_status_changed", times=1)
    offterm_hook_recorder.assert_not_called("payment_intent_forwarded")
    offterm_hook_recorder.assert_not_called("reader_connected")
    with pytest.raises(AttributeError, match="no argument 'nope'"):
        _ = call.nope
    offterm_hook_recorder.clear()
    assert offterm_hook_recorder.getcalls() == []


def test_recorder_assertions_fail_with_a_clear_message(offterm_hook_recorder):
    with pytest.raises(AssertionError, match="offterm_on_payment_stored was never called"):
        offterm_hook_recorder.assert_called("payment_stored")
    with pytest.raises(AssertionError, match="no offterm_on_payment_stored call recorded"):
        offterm_hook_recorder.popcall("payment_stored")
    with pytest.raises(AssertionError, match="expected exactly one"):
        offterm_hook_recorder.getcall("payment_stored")
    with pytest.raises(ValueError, match="no event hook named 'payment_stord'"):
        offterm_hook_recorder.getcalls("payment_stord")


def test_wait_for_returns_when_another_thread_emits(offterm_plugin_manager, offterm_hook_recorder):
    def later() -> None:
        for i in range(3):
            offterm_plugin_manager.emit("payment_stored", intent=_intent("offpi_" + str(i) * 32))

    thread = threading.Thread(target=later)
    thread.start()
    calls = offterm_hook_recorder.wait_for("payment_stored", count=3, timeout=10)
    thread.join()
    assert [c.intent.offline_id[-1] for c in calls] == ["0", "1", "2"]
    with pytest.raises(AssertionError, match="timed out waiting for 4"):
        offterm_hook_recorder.wait_for("payment_stored", count=4, timeout=0.05)


async def test_wait_for_async_lets_the_loop_run(offterm_plugin_manager, offterm_hook_recorder):
    import asyncio

    asyncio.get_running_loop().call_later(0.01, lambda: offterm_plugin_manager.emit("forwarding_failure", error=None))
    [call] = await offterm_hook_recorder.wait_for_async("forwarding_failure", timeout=10)
    assert call.error is None


def test_plugins_added_during_a_test_are_called_through_pluggy(offterm_plugin_manager, offterm_hook_recorder):
    seen: list[str] = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def offterm_on_payment_stored(self, intent):
            seen.append("before")
            result = yield
            seen.append("after")
            return result

    class Broken:
        @hookimpl(tryfirst=True)
        def offterm_on_payment_stored(self, intent):
            raise RuntimeError("listener bug")

    with offterm_plugin_manager.temporary(Wrapper()), offterm_plugin_manager.temporary(Broken()):
        offterm_plugin_manager.emit("payment_stored", intent=_intent())
    assert seen == ["before", "after"]
    offterm_hook_recorder.assert_called("payment_stored", times=1)
