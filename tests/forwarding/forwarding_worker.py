"""A Terminal in its own OS process, for the crash and two-process tests.

    python forwarding_worker.py CONFIG_JSON [--store N] [--online N]

Prints one JSON object per line: {"ready": true} once loaded, then waits for
a line on stdin (so a test can start several workers at the same moment);
then {"stored": offline_id} per new payment taken (``--store N``: N payments
stored offline through the public API while forwarding runs),
{"forwarded": offline_id, "error": code-or-null} per payment_intent_forwarded
event, and {"done": true, "remaining": n} when nothing is left to forward.
``--online N``: N REQUIRE_ONLINE payments, each announced as {"confirming":
offline_id, "intent": id} just before its confirm (a test kills the worker
while one is in flight) and {"confirmed": offline_id} or {"unknown": ...} after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from forwarding_kit import connect_online, pay  # noqa: E402

from offterm.core import OfflineBehavior, Terminal, hookimpl  # noqa: E402
from offterm.core.errors import OutcomeUnknown  # noqa: E402
from offterm.testing import make_plugin_manager  # noqa: E402


def say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Reporter:
    @hookimpl
    def offterm_on_payment_intent_forwarded(self, intent: Any, error: Any) -> None:
        say(forwarded=intent.offline_id, error=None if error is None else error.code)


async def take_online(terminal: Terminal, count: int) -> None:
    await connect_online(terminal)
    for i in range(count):
        intent = await terminal.create_payment_intent(
            {"amount": 700 + i, "currency": "usd"}, offline_behavior=OfflineBehavior.REQUIRE_ONLINE
        )
        terminal.connected_reader.present_card("visa")
        intent = await terminal.collect_payment_method(intent)
        say(confirming=intent.offline_id, intent=intent.id)
        try:
            await terminal.confirm_payment_intent(intent)
        except OutcomeUnknown:
            say(unknown=intent.offline_id)
        else:
            say(confirmed=intent.offline_id)


async def main(config: dict[str, Any], store: int, online: int = 0) -> None:
    terminal = Terminal.from_config(config, plugin_manager=make_plugin_manager(plugins={"reporter": Reporter()}))
    say(ready=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    async with terminal:
        if online:
            await take_online(terminal, online)
        if store:
            await connect_online(terminal)
            for i in range(store):
                intent = await pay(terminal, 900 + i, behavior=OfflineBehavior.FORCE_OFFLINE)
                say(stored=intent.offline_id)
                await asyncio.sleep(0.02)
        while (await terminal.refresh_offline_status()).sdk.offline_payments_count:  # noqa: ASYNC110 - polls the store
            await asyncio.sleep(0.05)
        report = await terminal.close()
    say(done=True, remaining=report.remaining)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--store", type=int, default=0)
    parser.add_argument("--online", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(main(json.loads(Path(args.config).read_text()), args.store, args.online))
