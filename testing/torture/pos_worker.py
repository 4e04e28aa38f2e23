"""A point-of-sale process for the crash torture: it takes payments and forwards them until it is killed.

    python -m offterm.testing.torture.pos_worker '<plan json>'

The harness (crash.py) starts one of these per "life" and usually
SIGKILLs it.  Everything the harness later checks is written to the plan's
side file, one JSON object per line, appended with a single ``write(2)``:

* ``try``      an intent is about to be confirmed (so a kill mid-confirm is known);
* ``stored``   confirm returned a payment stored offline: the POS told the
  merchant "stored".  fsynced BEFORE the worker can be killed after confirm;
* ``online``   confirm returned an authorised payment (fsynced the same way);
* ``declined`` / ``refused`` / ``error``  confirm raised a typed error (``code``);
* ``unknown``  confirm kept answering "outcome unknown" after the POS confirmed again;
* ``ending`` / ``ended``  the Terminal is deleting / deleted the payment's in-flight journal entry
  (answered, or stored);
* ``recovered`` (final drain only) an online confirm a kill interrupted, as the in-flight
  journal reconciled it: ``resolution`` charged / declined / not_charged;
* ``phase``    where the worker is (open, migrated, forward...), for classifying kills;
* ``crash``    an exception that is not an OfftermError: a failure of the library.

A plan may ask the worker to SIGKILL itself at an exact point (inside the
store's insert, right after a confirm was reported, with a forwarded or an
online confirm in flight at the processor, after its answer came back but
before it was recorded, inside a schema migration); otherwise the harness
kills it from outside at a random moment.
"""

from __future__ import annotations

import asyncio
import contextvars
import faulthandler
import json
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
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
    from offterm.plugins.storage.sqlcipher import _migrate as migrate
    from offterm.plugins.storage.sqlcipher import _store as store_module

    # The store calls ensure_schema through its module globals (imported there, not exported): patched there.
    real_ensure: Callable[[Any, Any, Path, bytes], int] = vars(store_module)["ensure_schema"]
    real_upgrade = migrate._upgrade

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

    vars(store_module)["ensure_schema"] = ensure_schema
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


#: Set by the payment-method step of the running exchange (the same task sends its confirm next):
#: True for a stored payment being forwarded (its request carries ``stored_at``), False online.
_FORWARDING: contextvars.ContextVar[bool] = contextvars.ContextVar("torture_forwarding", default=False)

FORWARD_POINTS = ("forward_inflight", "forward_answered")
ONLINE_POINTS = ("online_inflight", "online_answered")


def install_forward_hooks(terminal: Terminal, kill: KillPlan) -> None:
    """Kill while a confirm is at the processor, or after its answer came back but before it was recorded.

    The transport makes one request per method; the confirming ones are ``create_intent`` with a
    payment method (create and confirm in one) and ``confirm_intent``.  Whether a confirm belongs to
    a stored payment being forwarded or to an online confirm is told by the payment-method step just
    before it in the same task: a stored payment's carries ``stored_at``, an online one's does not.
    """
    if kill.point not in FORWARD_POINTS + ONLINE_POINTS:
        return
    transport = terminal.transport
    real_method = transport.create_payment_method
    real_create = transport.create_intent
    real_confirm = transport.confirm_intent
    forwarding_point = kill.point in FORWARD_POINTS

    async def create_payment_method(session: Any, card: Any, **kwargs: Any) -> Any:
        _FORWARDING.set(kwargs.get("stored_at") is not None)
        return await real_method(session, card, **kwargs)

    async def confirming(send: Callable[[], Awaitable[Any]]) -> Any:
        if _FORWARDING.get() is forwarding_point and kill.hit(kill.point):
            if kill.point.endswith("_inflight"):
                die_after(kill.delay or 0.0)
                return await send()
            try:
                return await send()
            finally:
                die()
        return await send()

    async def create_intent(session: Any, request: Any, **kwargs: Any) -> Any:
        if kwargs.get("payment_method") is None:  # a bare create (online, at create time) moves no money
            return await real_create(session, request, **kwargs)
        return await confirming(lambda: real_create(session, request, **kwargs))

    async def confirm_intent(session: Any, intent_id: str, **kwargs: Any) -> Any:
        return await confirming(lambda: real_confirm(session, intent_id, **kwargs))

    transport.create_payment_method = create_payment_method  # type: ignore[method-assign]
    transport.create_intent = create_intent  # type: ignore[method-assign]
    transport.confirm_intent = confirm_intent  # type: ignore[method-assign]


UNKNOWN_RETRIES = 3


def install_journal_hooks(terminal: Terminal, kill: KillPlan, side: SideFile) -> None:
    """Note each deletion of an online confirm's journal entry (``ended``: its answer came back, or the
    payment was stored), so the harness can tell a kill that landed after it from one before; with the
    ``online_ended`` plan, kill right there."""
    store = terminal.store
    real_end = store.end_online

    async def end_online(offline_id: str) -> None:
        side.write({"e": "ending", "id": offline_id})  # a kill inside the delete's commit may still delete it
        await real_end(offline_id)
        side.write({"e": "ended", "id": offline_id})
        if kill.hit("online_ended"):
            die()

    store.end_online = end_online  # type: ignore[method-assign]


async def take_payment(
    terminal: Terminal, rng: random.Random, side: SideFile, kill: KillPlan, life: int, plan: dict[str, Any]
) -> str:
    behavior = rng.choices(list(BEHAVIORS), weights=plan.get("behavior_weights", (55, 25, 20)))[0]
    card = rng.choice(plan.get("cards", CARDS))
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
    if kill.hit("confirm_returned"):
        die()  # the Terminal answered; the app had no time to record it
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


def dump_tasks() -> None:
    """Every asyncio task with its whole chain of awaits, innermost last (``Task.print_stack`` shows only
    the outermost coroutine's frame), to stderr: what a hung life is waiting for."""
    import linecache

    out = [f"--- asyncio tasks of pid {os.getpid()} ---"]
    for task in asyncio.all_tasks():
        out.append(f"task {task.get_name()}: {task!r}"[:400])
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is None:
                frame = getattr(awaited, "ag_frame", None)
            if frame is not None:
                code = frame.f_code
                line = linecache.getline(code.co_filename, frame.f_lineno).strip()
                out.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}: {line}")
            nxt = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
            if nxt is None and getattr(awaited, "ag_await", None) is not None:
                nxt = awaited.ag_await
            if nxt is None and frame is None:
                out.append(f"  awaiting {awaited!r}"[:400])
            awaited = nxt
    sys.stderr.write("\n".join(out) + "\n")
    sys.stderr.flush()


def install_stack_dumps() -> None:
    """SIGUSR1: every thread's Python stack (works even when the event loop is blocked);
    SIGUSR2: every asyncio task's awaits (needs a running loop). The harness sends both to a hung life."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, dump_tasks)


async def run(plan: dict[str, Any]) -> int:
    install_stack_dumps()
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
    install_journal_hooks(terminal, kill, side)
    try:
        [reader] = (await terminal.discover_readers())[:1]
        await terminal.connect_reader(reader)
        if plan.get("drain"):
            return await drain(terminal, side, plan)
        every = max(1, int(plan.get("forward_every", 5)))
        for i in range(int(plan["payments"])):
            await take_payment(terminal, rng, side, kill, life, plan)
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
    """Forward until nothing is pending and the in-flight journal is reconciled, then say what it found.

    Expired claims of killed lives come back on the way; online confirms a kill interrupted are looked
    up at the processor (every earlier life is dead, so each entry's owner is provably gone).  Each
    reconciled entry is written as a ``recovered`` record: the POS's own account of those payments.
    """
    deadline = time.monotonic() + float(plan.get("drain_seconds", 60.0))
    remaining, unresolved = -1, -1
    while time.monotonic() < deadline:
        try:
            remaining = await terminal.forward_now(timeout=5.0)
        except OfftermError as exc:
            side.write({"e": "forward_error", "code": exc.code, "message": exc.message}, durable=True)
            remaining = -1
        unresolved = len(await terminal.store.online_attempts(resolved=False))
        if remaining == 0 and unresolved == 0:
            break
        await asyncio.sleep(0.2)
    for attempt in await terminal.recovered_payments():
        side.write(
            {
                "e": "recovered",
                "id": attempt.offline_id,
                "resolution": attempt.resolution,
                "intent": attempt.intent_id,
                "code": attempt.error_code,
            }
        )
    await terminal.close(timeout=0)
    side.write({"e": "drained", "remaining": remaining, "unresolved": unresolved}, durable=True)
    return 0 if remaining == 0 and unresolved == 0 else 4


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
