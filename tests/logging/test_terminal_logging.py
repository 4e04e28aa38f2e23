"""A real Terminal (processor simulator, SQLCipher store) logging through the pipeline."""

from __future__ import annotations

import json
import re

import structlog

from offterm.core import OfflineBehavior, Terminal, hookimpl
from offterm.core.logs import configure_logging

PAN = "4242424242424242"


class LoggingListener:
    """A plugin that logs from inside event hooks without naming the payment itself."""

    @hookimpl
    def offterm_on_payment_stored(self, intent):
        structlog.get_logger("listener").info("listener_saw_stored", expected=intent.offline_id)

    @hookimpl
    def offterm_on_payment_intent_forwarded(self, intent, error):
        structlog.get_logger("listener").info("listener_saw_forwarded", expected=intent.offline_id)


async def test_payment_logs_carry_offline_id_and_no_secrets(
    log_output, offterm_config, offterm_plugin_manager, processor_simulator
):
    configure_logging(json=True, level="debug", stream=log_output)
    offterm_plugin_manager.add(LoggingListener())
    async with Terminal.from_config(offterm_config, plugin_manager=offterm_plugin_manager) as terminal:
        [reader] = await terminal.discover_readers()
        await terminal.connect_reader(reader)
        online = await terminal.create_payment_intent({"amount": 1200, "currency": "usd"})
        online = await terminal.collect_payment_method(online)
        online = await terminal.confirm_payment_intent(online)
        stored = await terminal.create_payment_intent({"amount": 700, "currency": "usd"}, OfflineBehavior.FORCE_OFFLINE)
        stored = await terminal.collect_payment_method(stored)
        stored = await terminal.confirm_payment_intent(stored)
        assert stored.requires_upload
        assert await terminal.forward_now() == 0
    assert processor_simulator.successful_charges() == {online.offline_id: 1, stored.offline_id: 1}

    text = log_output.getvalue()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    events = {r["event"]: r for r in records}
    assert events["listener_saw_stored"]["offline_id"] == stored.offline_id
    assert events["listener_saw_forwarded"]["offline_id"] == stored.offline_id
    # the transport's lines for the online payment were written inside its scope too
    online_lines = [r for r in records if r.get("offline_id") == online.offline_id]
    assert len(online_lines) >= 2
    # and nothing outside a payment is tagged with one
    assert "offline_id" not in events["terminal_closed"]

    assert PAN not in re.sub(r"\D", "", text)
    for prefix in ("pst_test_", "dss_", "sk_test_"):
        assert not re.search(prefix + r"(?!\[REDACTED)[A-Za-z0-9]", text), prefix
