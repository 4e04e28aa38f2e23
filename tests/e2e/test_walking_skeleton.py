"""The whole story through the public API: online, outage, offline, reboot, recovery, exactly once."""

from __future__ import annotations

from offterm.core import IntentStatus, NetworkStatus, Terminal, create_plugin_manager


def _terminal(config, recorder):
    pm = create_plugin_manager(autoload=False, env={}, plugins={"recorder": recorder})
    return Terminal.from_config(config, plugin_manager=pm)


async def _pay(terminal, amount, card="visa", currency="usd"):
    intent = await terminal.create_payment_intent({"amount": amount, "currency": currency})
    terminal.connected_reader.present_card(card)
    intent = await terminal.collect_payment_method(intent)
    return await terminal.confirm_payment_intent(intent)


async def test_online_outage_offline_reboot_recovery_exactly_once(terminal_config, network, simulator, recorder):
    offline_ids: list[str] = []

    async with _terminal(terminal_config, recorder) as terminal:
        [reader] = (await terminal.discover_readers())[:1]
        await terminal.connect_reader(reader)
        assert terminal.offline_status.sdk.network_status is NetworkStatus.ONLINE

        online = await _pay(terminal, 1500)
        assert online.status is IntentStatus.SUCCEEDED
        assert online.id and online.id.startswith("pi_")
        assert not online.requires_upload

        network.set_mode("down")
        for amount, card in ((1000, "visa"), (2500, "mastercard"), (4000, "amex")):
            stored = await _pay(terminal, amount, card)
            assert stored.requires_upload, "an offline payment must say it is stored, not authorised"
            assert stored.offline_details is not None
            assert stored.offline_details.card_present_details.brand == card
            assert stored.id is None
            offline_ids.append(stored.offline_id)
        status = terminal.offline_status.sdk
        assert status.network_status is NetworkStatus.OFFLINE
        assert status.offline_payments_count == 3
        assert status.offline_payment_amounts_by_currency == {"usd": 7500}
        report = await terminal.close()
        assert report.remaining == 3 and not report.safe_to_shut_down

    assert simulator.successful_charges() == {online.offline_id: 1}, "nothing stored may reach the processor yet"

    # Reboot: a new Terminal on the same files, still offline.
    async with _terminal(terminal_config, recorder) as terminal:
        assert terminal.offline_status.sdk.offline_payments_count == 3
        network.set_mode("pass")
        remaining = await terminal.forward_now(timeout=30)
        assert remaining == 0
        assert terminal.offline_status.sdk.offline_payments_count == 0
        assert terminal.offline_status.sdk.network_status is NetworkStatus.ONLINE
        forwarded = await terminal.list_stored_payments()
        assert {p.offline_id for p in forwarded} == set(offline_ids)
        assert all(p.state.value == "forwarded" for p in forwarded)

    charges = simulator.successful_charges()
    assert charges == {online.offline_id: 1, **{oid: 1 for oid in offline_ids}}, "each payment exactly once"

    names = recorder.names()
    stored_events = recorder.of("payment_stored")
    assert [e["intent"].offline_id for e in stored_events] == offline_ids
    forwarded_events = recorder.of("payment_intent_forwarded")
    assert sorted(e["intent"].offline_id for e in forwarded_events) == sorted(offline_ids)
    assert all(e["error"] is None and e["intent"].id.startswith("pi_") for e in forwarded_events)
    # Order: reader connected, network went offline before the first store, stores before forwards,
    # network back online before the first forward, and the last status says nothing is waiting.
    assert names.index("reader_connected") < names.index("payment_stored")
    went_offline = next(
        i
        for i, (n, kw) in enumerate(recorder.events)
        if n == "network_status_changed" and kw["status"] is NetworkStatus.OFFLINE
    )
    assert went_offline < names.index("payment_stored")
    back_online = max(
        i
        for i, (n, kw) in enumerate(recorder.events)
        if n == "network_status_changed" and kw["status"] is NetworkStatus.ONLINE
    )
    assert back_online < names.index("payment_intent_forwarded")
    assert max(i for i, n in enumerate(names) if n == "payment_stored") < names.index("payment_intent_forwarded")
    last_status = recorder.of("offline_status_changed")[-1]["status"]
    assert last_status.sdk.offline_payments_count == 0
