"""The Terminal API's offline behaviours, errors and facades, against real plugins and the simulator."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from offterm.core import (
    BlockingTerminal,
    IntentStatus,
    NetworkStatus,
    OfflineBehavior,
    Terminal,
    create_plugin_manager,
    hookimpl,
)
from offterm.core.errors import (
    CardDeclined,
    NoLastSeenAccount,
    OfflineModeDisabled,
    ReaderNotConnected,
    RequireOnlineWhileOffline,
    UnexpectedIntentState,
    UnknownCurrency,
)
from offterm.plugins.policies.limits import (
    CardSwipeNotAvailableOffline,
    ReaderNotAvailableOffline,
)
from offterm.sim.processor.config import SimConfig


def _terminal(config, *plugins):
    pm = create_plugin_manager(autoload=False, env={}, plugins={f"p{i}": p for i, p in enumerate(plugins)})
    return Terminal.from_config(config, plugin_manager=pm)


async def _connected(terminal):
    [reader] = await terminal.discover_readers()
    await terminal.connect_reader(reader)
    return terminal.connected_reader


async def _collect(terminal, amount=1000, card="visa", behavior=OfflineBehavior.PREFER_ONLINE, **kw):
    intent = await terminal.create_payment_intent({"amount": amount, "currency": "usd"}, offline_behavior=behavior)
    terminal.connected_reader.present_card(card, **kw)
    return await terminal.collect_payment_method(intent)


async def test_require_online_while_offline_fails_and_stores_nothing(terminal_config, network):
    async with _terminal(terminal_config) as terminal:
        await _connected(terminal)
        network.set_mode("down")
        with pytest.raises(RequireOnlineWhileOffline):
            await terminal.create_payment_intent(
                {"amount": 500, "currency": "usd"}, offline_behavior=OfflineBehavior.REQUIRE_ONLINE
            )
        intent = await _collect(terminal)  # PREFER_ONLINE at create...
        with pytest.raises(RequireOnlineWhileOffline):  # ...REQUIRE_ONLINE at confirm wins
            await terminal.confirm_payment_intent(intent, offline_behavior=OfflineBehavior.REQUIRE_ONLINE)
        assert terminal.offline_status.sdk.offline_payments_count == 0


async def test_force_offline_stores_even_when_online(terminal_config, simulator):
    async with _terminal(terminal_config) as terminal:
        await _connected(terminal)
        assert terminal.network_status is NetworkStatus.ONLINE
        intent = await _collect(terminal, behavior=OfflineBehavior.FORCE_OFFLINE)
        assert intent.id is None, "FORCE_OFFLINE never talks to the processor at create"
        intent = await terminal.confirm_payment_intent(intent)
        assert intent.requires_upload
        assert await terminal.forward_now() == 0
    assert simulator.successful_charges()[intent.offline_id] == 1


async def test_offline_behavior_can_be_changed_at_confirm(terminal_config, simulator):
    async with _terminal(terminal_config) as terminal:
        await _connected(terminal)
        intent = await _collect(terminal)
        assert intent.id is not None, "created online"
        intent = await terminal.confirm_payment_intent(intent, offline_behavior=OfflineBehavior.FORCE_OFFLINE)
        assert intent.requires_upload and intent.id is not None, "created online, confirmed offline: both"
        await terminal.forward_now()
    assert simulator.successful_charges()[intent.offline_id] == 1


async def test_force_offline_needs_offline_enabled(terminal_config):
    terminal_config["terminal"]["offline_enabled"] = False
    async with _terminal(terminal_config) as terminal:
        await _connected(terminal)
        with pytest.raises(OfflineModeDisabled) as info:
            await terminal.create_payment_intent(
                {"amount": 500, "currency": "usd"}, offline_behavior=OfflineBehavior.FORCE_OFFLINE
            )
        assert info.value.code == "force_offline_with_feature_disabled"


async def test_offline_disabled_means_require_online(terminal_config, network):
    terminal_config["terminal"]["offline_enabled"] = False
    async with _terminal(terminal_config) as terminal:
        await _connected(terminal)
        network.set_mode("down")
        intent = await _collect(terminal)
        with pytest.raises(RequireOnlineWhileOffline):
            await terminal.confirm_payment_intent(intent)
        assert terminal.offline_status.sdk.offline_payments_count == 0


async def test_never_online_terminal_cannot_store(terminal_config, network):
    """A cold start offline fails with an error naming the missing prerequisite, and stores nothing."""
    network.set_mode("down")
    async with _terminal(terminal_config) as terminal:
        await _connected(terminal)
        with pytest.raises(ReaderNotAvailableOffline, match="never connected online"):
            await _collect(terminal)
    terminal_config["acceptance"]["limits"]["reader_online_within_days"] = 0  # reader rule off
    async with _terminal(terminal_config) as terminal:
        await _connected(terminal)
        intent = await _collect(terminal)
        with pytest.raises(NoLastSeenAccount):
            await terminal.confirm_payment_intent(intent)
        assert terminal.offline_status.sdk.offline_payments_count == 0


async def test_the_account_seen_online_is_known_offline_after_a_restart(terminal_config, network):
    """``last_seen_account``: what offline payments are stored for (offterm serve renders its livemode)."""
    async with _terminal(terminal_config) as terminal:
        assert terminal.last_seen_account is None
        await _connected(terminal)
        await _collect(terminal)  # created online: the Terminal authenticated
        assert terminal.last_seen_account == (SimConfig().account_id, False)
    network.set_mode("down")
    async with _terminal(terminal_config) as terminal:
        assert terminal.last_seen_account == (SimConfig().account_id, False)


async def test_swipe_refused_at_collect_when_offline_and_intent_stays_collectable(terminal_config, network):
    async with _terminal(terminal_config) as terminal:
        await _connected(terminal)
        network.set_mode("down")
        intent = await terminal.create_payment_intent({"amount": 700, "currency": "usd"})
        terminal.connected_reader.present_card("visa", read_method="magnetic_stripe")
        with pytest.raises(CardSwipeNotAvailableOffline) as info:
            await terminal.collect_payment_method(intent)
        assert info.value.code == "card_swipe_not_available" and info.value.policy == "limits"
        assert intent.status is IntentStatus.REQUIRES_PAYMENT_METHOD
        terminal.connected_reader.present_card("visa")
        intent = await terminal.collect_payment_method(intent)
        intent = await terminal.confirm_payment_intent(intent)
        assert intent.requires_upload


async def test_online_decline_raises_and_nothing_is_stored(terminal_config, simulator):
    async with _terminal(terminal_config) as terminal:
        await _connected(terminal)
        intent = await _collect(terminal, card="declined")
        with pytest.raises(CardDeclined) as info:
            await terminal.confirm_payment_intent(intent)
        assert info.value.decline_code == "generic_decline"
        assert intent.status is IntentStatus.REQUIRES_PAYMENT_METHOD
        assert terminal.offline_status.sdk.offline_payments_count == 0


async def test_state_machine_guards(terminal_config):
    async with _terminal(terminal_config) as terminal:
        intent = await terminal.create_payment_intent({"amount": 100, "currency": "usd"})
        with pytest.raises(ReaderNotConnected):
            await terminal.collect_payment_method(intent)
        with pytest.raises(UnexpectedIntentState):
            await terminal.confirm_payment_intent(intent)
        with pytest.raises(UnknownCurrency):
            await terminal.create_payment_intent({"amount": 100, "currency": "xyz"})
        canceled = await terminal.cancel_payment_intent(intent)
        assert canceled.status is IntentStatus.CANCELED
        with pytest.raises(UnexpectedIntentState):
            await terminal.cancel_payment_intent(canceled)


async def test_failing_listener_never_breaks_a_payment(terminal_config, network, recorder):
    class Broken:
        @hookimpl
        def offterm_on_payment_stored(self, intent):
            raise RuntimeError("listener bug")

        @hookimpl
        def offterm_on_offline_status_changed(self, status):
            raise RuntimeError("listener bug")

    async with _terminal(terminal_config, Broken(), recorder) as terminal:
        await _connected(terminal)
        network.set_mode("down")
        intent = await terminal.confirm_payment_intent(await _collect(terminal))
        assert intent.requires_upload
        assert [e["intent"].offline_id for e in recorder.of("payment_stored")] == [intent.offline_id]


async def test_reader_link_events(terminal_config, recorder):
    async with _terminal(terminal_config, recorder) as terminal:
        reader = await _connected(terminal)
        reader.simulate_disconnect(reconnect=True)
        for _ in range(100):
            if "reader_reconnecting" in recorder.names() and recorder.names().count("reader_connected") >= 2:
                break
            await asyncio.sleep(0.01)
        await terminal.disconnect_reader()
    names = [n for n in recorder.names() if n.startswith("reader_")]
    assert names[0] == "reader_connected"
    assert "reader_disconnected" in names and "reader_reconnecting" in names
    assert names.index("reader_reconnecting") < len(names) - 1 - names[::-1].index("reader_connected")
    assert recorder.of("reader_reconnecting")[0]["attempt"] == 1
    assert recorder.of("reader_disconnected")[-1]["reason"] == "requested"


def test_blocking_facade_for_synchronous_apps(terminal_config, network, simulator):
    with BlockingTerminal.from_config(terminal_config) as terminal:
        [reader] = terminal.discover_readers()
        terminal.connect_reader(reader)
        network.set_mode("down")
        intent = terminal.create_payment_intent({"amount": 999, "currency": "usd"})
        terminal.connected_reader.present_card("mastercard")
        intent = terminal.collect_payment_method(intent)
        intent = terminal.confirm_payment_intent(intent)
        assert intent.requires_upload
        assert terminal.offline_status.sdk.offline_payments_count == 1
        network.set_mode("pass")
        assert terminal.forward_now() == 0
        [stored] = terminal.list_stored_payments()
        assert stored.state.value == "forwarded"
    assert simulator.successful_charges()[intent.offline_id] == 1


async def test_third_party_plugin_from_an_entry_point_replaces_a_bundled_component(
    terminal_config, tmp_path, monkeypatch, simulator
):
    """A fake installed distribution provides a token provider; the config selects it instead of 'http'."""
    site = tmp_path / "site"
    dist = site / "acme_tokens-0.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-tokens\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[offterm]\nacme-tokens = acme_tokens\n")
    (site / "acme_tokens.py").write_text(
        textwrap.dedent("""
        import httpx
        from offterm.core import hookimpl
        from offterm.core.contracts import ConnectionToken, ConnectionTokenProvider
        from offterm.core.registrations import OptionSpec, TokenProviderRegistration

        CALLS = []

        class AcmeProvider(ConnectionTokenProvider):
            def __init__(self, options):
                self.backend = options["backend"]

            async def fetch(self, request):
                CALLS.append(request.reason)
                async with httpx.AsyncClient() as client:
                    resp = await client.post(self.backend)
                return ConnectionToken(resp.json()["secret"])

        @hookimpl
        def offterm_connection_token_providers():
            yield TokenProviderRegistration(
                name="acme", factory=lambda ctx: AcmeProvider(ctx.options),
                options=(OptionSpec("backend", str, None, "where", required=True),),
            )
    """)
    )
    monkeypatch.syspath_prepend(str(site))
    terminal_config["plugins"]["autoload"] = True
    terminal_config["tokens"] = {"providers": ["acme"], "acme": {"backend": simulator.backend_url}}
    async with Terminal.from_config(terminal_config) as terminal:
        assert terminal.plugins.info["acme-tokens"].source == "entry point acme-tokens 0.3"
        await _connected(terminal)
        intent = await terminal.confirm_payment_intent(await _collect(terminal))
        assert intent.status is IntentStatus.SUCCEEDED
    import acme_tokens

    assert acme_tokens.CALLS, "the third-party provider was the one asked for tokens"


async def test_cold_start_offline_works_from_cached_configuration(terminal_config, network, simulator):
    """Once connected online, a reboot with no network still takes payments (account and reader cached)."""
    async with _terminal(terminal_config) as terminal:
        await _connected(terminal)
    network.set_mode("down")
    async with _terminal(terminal_config) as terminal:
        await _connected(terminal)
        assert terminal.network_status is NetworkStatus.OFFLINE
        intent = await terminal.confirm_payment_intent(await _collect(terminal))
        assert intent.requires_upload
        network.set_mode("pass")
        assert await terminal.forward_now() == 0
    assert simulator.successful_charges()[intent.offline_id] == 1


async def test_a_misspelled_component_table_is_a_config_error(terminal_config):
    from offterm.core.errors import ConfigError

    terminal_config["storage"]["sqlciper"] = {"busy_timeout_ms": 10}
    with pytest.raises(ConfigError, match=r"storage\.sqlciper.*choose one of: memory, sqlcipher"):
        async with _terminal(terminal_config):
            pass


def test_blocking_terminal_closed_inside_its_with_block_leaves_it_cleanly(terminal_config, simulator, recorder):
    """close() inside the block, then leaving it: one close, the same report, no 'Event loop is closed'."""
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a coroutine never awaited would be a RuntimeWarning
        with BlockingTerminal.from_config(terminal_config) as terminal:
            report = terminal.close()
            assert report.safe_to_shut_down
            assert terminal.close() is report, "a second close returns the first one's report"
            with pytest.raises(UnexpectedIntentState, match="closed"):
                terminal.discover_readers()
        gc.collect()
