"""A point-of-sale process for the crash torture: it takes payments and forwards them until it is killed.

    python pos_worker.py '<plan json>'

The harness (torture_crash.py) starts one of these per "life" and usually
SIGKILLs it.  Everything the harness later checks is written to the plan's
side file, one JSON object per line, appended with a single ``write(2)``:

* ``try``      an intent is about to be confirmed (so a kill mid-confirm is known);
* ``stored``   confirm returned a payment stored offline: the POS told the
  merchant "stored".  fsynced BEFORE the worker can be killed after confirm;
* ``online``   confirm returned an authorised payment (fsynced the same way);
* ``declined`` / ``refused`` / ``error``  confirm raised a typed error (``code``);
* ``phase``    where the worker is (open, migrated, forward...), for classifying kills;
* ``crash``    an exception that is not an OfftermError: a failure of the library.

A plan may ask the worker to SIGKILL itself at an exact point (inside the
store's insert, right after a confirm was reported, after a forwarded request
was answered but before the answer was recorded, inside a schema migration);
otherwise the harness kills it from outside at a random moment.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from offterm.core import OfflineBehavior, Terminal
from offterm.core.errors import (
    CardDeclined,
    OfflineRefused,
    OfftermError,
    OutcomeUnknown,
    RequireOnlineWhileOffline,
)
from offterm.core.logs import configure_logging

BEHAVIORS = {
    "prefer_online": OfflineBehavior.PREFER_ONLINE,
    "force_offline": OfflineBehavior.FORCE_OFFLINE,
    "require_online": OfflineBehavior.REQUIRE_ONLINE,
}
CARDS = ("visa", "visa", "visa", "mastercard", "visa_debit", "discover", "declined", "insufficient_funds")


class SideFile:
    """Append-only JSON lines; each record is one write(2), fsynced when it reports an outcome."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, record: dict[str, Any], *, durable: bool = False) -> None:
        os.write(self.fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        if durable:
            os.fsync(self.fd)


def die() -> None:
    """A real SIGKILL: no finally blocks, no atexit, no flushing."""
    os.kill(os.getpid(), signal.SIGKILL)


def die_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, die)
    timer.daemon = True
    timer.start()
    return timer


class KillPlan:
    """Where (if anywhere) this life SIGKILLs itself."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.point: str = plan.get("point", "none")
        self.nth: int = int(plan.get("nth", 1))
        self.delay: float | None = plan.get("delay")
        self.seen = 0

    def hit(self, point: str) -> bool:
        """True when ``point`` is reached for the nth time and this plan targets it."""
        if point != self.point:
            return False
        self.seen += 1
        return self.seen == self.nth


def install_migration_hooks(kill: KillPlan, side: SideFile) -> None:
    """Kill inside the schema upgrade: at a random moment in it, after its backup, or after its commit."""
    if not kill.point.startswith("migration"):
        return
    from offterm.plugins.storage.sqlcipher import migrate
    from offterm.plugins.storage.sqlcipher import store as store_module

    real_ensure, real_upgrade = store_module.ensure_schema, migrate._upgrade

    def ensure_schema(driver: Any, conn: Any, path: Path, key: bytes) -> int:
        side.write({"e": "phase", "p": "migration_start"})
        if kill.point == "migration" and kill.delay is not None:
            die_after(kill.delay)
        began = time.monotonic()
        version = real_ensure(driver, conn, path, key)
        side.write({"e": "phase", "p": "migration_done", "from": version, "s": round(time.monotonic() - began, 4)})
        if kill.point == "migration_committed":
            die()
        return version

    def upgrade(conn: Any, path: Path, backup: Path) -> None:
        if kill.point == "migration_backed_up":
            die()
        real_upgrade(conn, path, backup)

    store_module.ensure_schema = ensure_schema  # type: ignore[assignment]
    migrate._upgrade = upgrade


def install_store_hooks(terminal: Terminal, kill: KillPlan) -> None:
    """Kill inside ``store()``: a timer fires mid-transaction, or right after the commit."""
    if kill.point != "store":
        return
    backend = terminal.store.backend
    real_store = backend.store

    def store(payment: Any, check: Any = None) -> Any:
        if kill.hit("store"):
            if kill.delay is None:
                result = real_store(payment, check)
                die()  # committed, not yet returned to the Terminal
                return result
            die_after(kill.delay)
        return real_store(payment, check)

    backend.store = store  # type: ignore[method-assign]


def install_forward_hooks(terminal: Terminal, kill: KillPlan) -> None:
    """Kill while the forwarder's request is in flight, or after its answer came back but before it was recorded."""
    if kill.point not in ("forward_inflight", "forward_answered"):
        return
    transport = terminal.transport
    real_submit = transport.submit

    async def submit(session: Any, submission: Any) -> Any:
        forwarding = submission.stored_at is not None  # online confirms carry no stored_at
        if forwarding and kill.hit(kill.point):
            if kill.point == "forward_inflight":
                die_after(kill.delay or 0.0)
                return await real_submit(session, submission)
            try:
                return await real_submit(session, submission)
            finally:
                die()
        return await real_submit(session, submission)

    transport.submit = submit  # type: ignore[method-assign]


UNKNOWN_RETRIES = 3


async def take_payment(terminal: Terminal, rng: random.Random, side: SideFile, kill: KillPlan, life: int) -> str:
    behavior = rng.choices(list(BEHAVIORS), weights=(80, 17, 3))[0]
    card = rng.choice(CARDS)
    amount = rng.randint(100, 90_000)
    try:
        intent = await terminal.create_payment_intent(
            {"amount": amount, "currency": "usd", "metadata": {"life": str(life)}},
            offline_behavior=BEHAVIORS[behavior],
        )
        reader = terminal.connected_reader
        assert reader is not None
        reader.present_card(card)  # type: ignore[attr-defined]
        intent = await terminal.collect_payment_method(intent)
    except OfftermError as exc:  # refused before anything could be confirmed (REQUIRE_ONLINE while offline...)
        side.write({"e": "not_taken", "code": exc.code, "b": behavior})
        return "not_taken"
    side.write({"e": "try", "id": intent.offline_id, "amount": amount, "card": card, "b": behavior})
    try:
        # What a careful POS does with "outcome unknown": confirm again (the same intent, so the same
        # idempotency key), a few times; then the payment is the merchant's to reconcile.
        for attempt in range(UNKNOWN_RETRIES + 1):
            try:
                intent = await terminal.confirm_payment_intent(intent)
                break
            except OutcomeUnknown as exc:
                if attempt == UNKNOWN_RETRIES:
                    side.write({"e": "unknown", "id": intent.offline_id, "code": exc.code}, durable=True)
                    return "unknown"
                await asyncio.sleep(0.2)
    except CardDeclined as exc:
        side.write({"e": "declined", "id": intent.offline_id, "code": exc.decline_code}, durable=True)
        return "declined"
    except OfftermError as exc:
        kind = "refused" if isinstance(exc, OfflineRefused | RequireOnlineWhileOffline) else "error"
        side.write({"e": kind, "id": intent.offline_id, "code": exc.code}, durable=True)
        return kind
    if intent.requires_upload:
        side.write({"e": "stored", "id": intent.offline_id, "amount": amount}, durable=True)
        outcome = "stored"
    else:
        side.write(
            {"e": "online", "id": intent.offline_id, "amount": amount, "status": intent.status.value}, durable=True
        )
        outcome = "online"
    if kill.hit("after_confirm"):
        die()
    return outcome


async def run(plan: dict[str, Any]) -> int:
    side = SideFile(Path(plan["side_file"]))
    kill = KillPlan(plan.get("kill", {}))
    rng = random.Random(plan["seed"])
    life = int(plan["life"])
    side.write({"e": "phase", "p": "start", "life": life, "pid": os.getpid(), "kill": kill.point})
    install_migration_hooks(kill, side)
    terminal = Terminal.from_config(plan["config"])
    try:
        await terminal.open()
    except OfftermError as exc:
        side.write({"e": "open_failed", "code": exc.code, "message": exc.message}, durable=True)
        return 2
    version = getattr(terminal.store.backend, "opened_from_version", None)
    side.write({"e": "phase", "p": "open", "from_version": version})
    install_store_hooks(terminal, kill)
    install_forward_hooks(terminal, kill)
    try:
        [reader] = (await terminal.discover_readers())[:1]
        await terminal.connect_reader(reader)
        if plan.get("drain"):
            return await drain(terminal, side, plan)
        every = max(1, int(plan.get("forward_every", 5)))
        for i in range(int(plan["payments"])):
            await take_payment(terminal, rng, side, kill, life)
            if (i + 1) % every == 0:
                side.write({"e": "phase", "p": "forward"})
                try:
                    remaining = await terminal.forward_now(timeout=float(plan.get("forward_timeout", 2.0)))
                except OfftermError as exc:
                    side.write({"e": "forward_error", "code": exc.code, "message": exc.message}, durable=True)
                else:
                    side.write({"e": "phase", "p": "forwarded", "remaining": remaining})
        side.write({"e": "phase", "p": "idle"})
        await asyncio.sleep(float(plan.get("linger", 0.0)))
    finally:
        await terminal.close(timeout=float(plan.get("close_timeout", 0.3)))
    side.write({"e": "phase", "p": "end"}, durable=True)
    return 0


async def drain(terminal: Terminal, side: SideFile, plan: dict[str, Any]) -> int:
    """Forward until nothing is pending (expired claims of killed lives are recovered on the way)."""
    deadline = time.monotonic() + float(plan.get("drain_seconds", 60.0))
    remaining = -1
    while time.monotonic() < deadline:
        try:
            remaining = await terminal.forward_now(timeout=5.0)
        except OfftermError as exc:
            side.write({"e": "forward_error", "code": exc.code, "message": exc.message}, durable=True)
            remaining = -1
        if remaining == 0:
            break
        await asyncio.sleep(0.2)
    await terminal.close(timeout=0)
    side.write({"e": "drained", "remaining": remaining}, durable=True)
    return 0 if remaining == 0 else 4


def main(argv: list[str]) -> int:
    plan = json.loads(argv[0])
    configure_logging(level=plan.get("log_level", "error"), json=True)
    try:
        return asyncio.run(run(plan))
    except Exception as exc:  # anything untyped is a library failure the harness reports
        SideFile(Path(plan["side_file"])).write(
            {"e": "crash", "type": type(exc).__name__, "message": str(exc)[:300]}, durable=True
        )
        traceback.print_exc()
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
