"""Shared steps of the battery scenarios: take payments, drain, and check them against the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from offterm.core import OfflineBehavior, Terminal
from offterm.core.contracts import StoredPayment
from offterm.core.errors import CardDeclined, OfftermError

#: Codes the forwarder records that do not come from the processor's answer.
BOOKKEEPING_CODES = frozenset({"claim_released", "claim_expired", "requeued"})


@dataclass
class Outcome:
    """What one scenario did and saw."""

    stored: list[str] = field(default_factory=list)
    online: list[str] = field(default_factory=list)
    declined: list[str] = field(default_factory=list)
    typed: Counter[str] = field(default_factory=Counter)
    untyped: list[str] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0
    needs_attention: int = 0
    problems: list[str] = field(default_factory=list)
    #: what a known bug explains (an xfail test in test_found_bugs.py), kept apart from ``problems``
    known: list[str] = field(default_factory=list)

    @property
    def typed_total(self) -> int:
        return sum(self.typed.values())


#: Fixed in abb2738 (Forwarder.stop() used to lose its cancel to a coinciding wake-up); still bounded here, so a
#: regression shows up as a finding instead of a hung run.
CLOSE_HANG_BUG = "test_found_bugs.py::test_stopping_the_forwarder_is_not_lost_when_a_trigger_coincides"


@contextlib.asynccontextmanager
async def running(config: dict[str, Any], outcome: Outcome, close_within: float = 20.0) -> AsyncIterator[Terminal]:
    """``async with Terminal`` whose close is bounded: a close that hangs (a forwarder bug, since fixed) is
    recorded in ``outcome.known`` and the stuck forwarder cancelled again, instead of hanging the run."""
    terminal = Terminal.from_config(config)
    await terminal.open()
    try:
        yield terminal
    finally:
        try:
            await asyncio.wait_for(terminal.close(timeout=0.5), timeout=close_within)
        except TimeoutError:
            outcome.known.append(f"close() hung for {close_within:.0f} s ({CLOSE_HANG_BUG})")
            task = getattr(terminal.forwarder, "_task", None)
            if task is not None:
                task.cancel()  # no trigger coincides this time: the cancellation gets through
                await asyncio.gather(task, return_exceptions=True)
            await terminal.close(timeout=0)


async def connect(terminal: Terminal) -> None:
    [reader] = (await terminal.discover_readers())[:1]
    await terminal.connect_reader(reader)


async def pay(
    terminal: Terminal,
    outcome: Outcome,
    amount: int,
    *,
    card: str = "visa",
    behavior: OfflineBehavior = OfflineBehavior.PREFER_ONLINE,
) -> None:
    """One payment through the public API; its result (or typed error) goes into ``outcome``."""
    try:
        intent = await terminal.create_payment_intent({"amount": amount, "currency": "usd"}, offline_behavior=behavior)
        reader = terminal.connected_reader
        assert reader is not None
        reader.present_card(card)  # type: ignore[attr-defined]
        intent = await terminal.collect_payment_method(intent)
        intent = await terminal.confirm_payment_intent(intent)
    except CardDeclined:
        outcome.typed["card_declined"] += 1
        return
    except OfftermError as exc:
        outcome.typed[exc.code] += 1
        return
    except Exception as exc:  # noqa: BLE001 - an untyped error is exactly what the torture looks for
        outcome.untyped.append(f"confirm raised {type(exc).__name__}: {exc}")
        return
    (outcome.stored if intent.requires_upload else outcome.online).append(intent.offline_id)


async def forward(terminal: Terminal, outcome: Outcome, timeout: float) -> int | None:
    try:
        return await terminal.forward_now(timeout=timeout)
    except OfftermError as exc:
        outcome.typed["forward_now: " + exc.code] += 1
    except Exception as exc:  # noqa: BLE001
        outcome.untyped.append(f"forward_now raised {type(exc).__name__}: {exc}")
    return None


async def drain(terminal: Terminal, outcome: Outcome, seconds: float = 30.0) -> None:
    """Forward until nothing waits (claims left by an abandoned round come back when their lease ends)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await forward(terminal, outcome, timeout=5.0) == 0:
            return
        await asyncio.sleep(0.2)
    outcome.problems.append("payments still waiting after the drain")


async def record_history_codes(terminal: Terminal, outcome: Outcome) -> dict[str, StoredPayment]:
    """Every typed error the forwarder recorded; ``transport_error`` means the transport raised an untyped one."""
    payments = {p.offline_id: p for p in await terminal.list_stored_payments()}
    for oid in payments:
        for entry in await terminal.payment_history(oid):
            code = entry.error_code
            if code and code not in BOOKKEEPING_CODES:
                outcome.typed["forwarding: " + code] += 1
                if code == "transport_error":
                    outcome.untyped.append(f"the transport raised an untyped exception forwarding {oid}")
    return payments


class _State(Protocol):
    @property
    def value(self) -> str: ...


class LedgerEntry(Protocol):
    """What ``check_ledger`` reads of a payment: a ``StoredPayment``, or a stand-in built from a child's report."""

    @property
    def state(self) -> _State: ...


def check_ledger(outcome: Outcome, payments: Mapping[str, LedgerEntry], charged: dict[str, int]) -> None:
    """Reported stored -> forwarded once, declined, or needs_attention; reported online -> charged once."""
    for oid in outcome.stored:
        n = charged.get(oid, 0)
        payment = payments.get(oid)
        if payment is None:
            outcome.lost += 1
            outcome.problems.append(f"{oid} reported stored, missing from the database")
            continue
        state = payment.state.value
        if n > 1:
            outcome.duplicated += 1
            outcome.problems.append(f"{oid} charged {n} times")
        if state == "forwarded" and n != 1:
            outcome.lost += n == 0
            outcome.problems.append(f"{oid} forwarded but charged {n} times")
        elif state == "declined" and n:
            outcome.problems.append(f"{oid} declined but charged")
        elif state == "needs_attention":
            outcome.needs_attention += 1
        elif state not in ("forwarded", "declined"):
            outcome.lost += 1
            outcome.problems.append(f"{oid} still {state}")
    for oid in outcome.online:
        n = charged.get(oid, 0)
        if n != 1:
            outcome.lost += n == 0
            outcome.duplicated += n > 1
            outcome.problems.append(f"{oid} reported authorised online, charged {n} times")
    for oid, n in charged.items():
        if n > 1 and oid not in outcome.stored and oid not in outcome.online:
            outcome.duplicated += 1
            outcome.problems.append(f"{oid} charged {n} times")


def pos_config(data_dir: Path, url: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """A Terminal config with short timeouts, pointed at ``url`` (a proxy, the simulator, or a hostile server)."""
    config: dict[str, Any] = {
        "terminal": {
            "data_dir": str(data_dir),
            "offline_enabled": True,
            "offline_timeout": 1.0,
            "probe_min_interval": 0.05,
            "probe_max_interval": 0.3,
        },
        "plugins": {"autoload": False, "strict": True},
        "reader": {"transport": "simulated"},
        "storage": {"backend": "sqlcipher", "key_provider": "file", "sqlcipher": {"reserve_bytes": 65536}},
        "tokens": {"providers": ["http"], "http": {"url": url + "/backend/connection_token", "timeout": 1.0}},
        "forwarding": {
            "transport": "stripe",
            "interval": 60.0,
            "lease_seconds": 2.0,
            "close_timeout": 0.5,
            "stripe": {"api_base": url, "timeout": 1.0, "connect_timeout": 0.5, "probe_timeout": 0.5},
        },
        "forwarding_policy": {"default": {"base_delay": 0.01, "max_delay": 0.05, "max_attempts": 0, "seed": 7}},
        "acceptance": {"limits": {"max_amount": {"usd": 1_000_000}, "max_age_hours": 0}},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


def successful(ledger: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    return {oid: sum(1 for c in charges if c["status"] == "succeeded") for oid, charges in ledger.items()}


def row(case: str, outcome: Outcome, tried: int, note: str = "") -> dict[str, Any]:
    ok = not outcome.untyped and not outcome.lost and not outcome.duplicated and not outcome.problems
    detail = "; ".join(outcome.untyped + outcome.problems)[:400]
    extra: dict[str, Any] = {"known": list(outcome.known), "known_bug": CLOSE_HANG_BUG} if outcome.known else {}
    return {
        "case": case,
        "tried": tried,
        "typed_errors": outcome.typed_total,
        "lost": outcome.lost,
        "duplicated": outcome.duplicated,
        "needs_attention": outcome.needs_attention,
        "codes": dict(outcome.typed),
        "ok": ok,
        "note": (note + (" — " + detail if detail else "")).strip(" —"),
        **extra,
    }
