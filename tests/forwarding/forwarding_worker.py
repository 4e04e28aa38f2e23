"""A Terminal in its own OS process, for the crash and two-process tests.

    python forwarding_worker.py CONFIG_JSON [--store N]

Prints one JSON object per line: {"ready": true} once loaded, then waits for
a line on stdin (so a test can start several workers at the same moment);
then {"stored": offline_id} per new payment taken (``--store N``: N payments
stored offline through the public API while forwarding runs),
{"forwarded": offline_id, "error": code-or-null} per payment_intent_forwarded
event, and {"done": true, "remaining": n} when nothing is left to forward.
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
from offterm.testing import make_plugin_manager  # noqa: E402


def say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Reporter:
    @hookimpl
    def offterm_on_payment_intent_forwarded(self, intent: Any, error: Any) -> None:
        say(forwarded=intent.offline_id, error=None if error is None else error.code)


async def main(config: dict[str, Any], store: int) -> None:
    terminal = Terminal.from_config(config, plugin_manager=make_plugin_manager(plugins={"reporter": Reporter()}))
    say(ready=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    async with terminal:
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
    args = parser.parse_args()
    asyncio.run(main(json.loads(Path(args.config).read_text()), args.store))
