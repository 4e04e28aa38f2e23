"""``offterm demo``: the whole offline story on embedded defaults.

Everything is real except the card reader and the processor, whose stand-ins
are the other ends of real wires: a processor simulator served over HTTP on
127.0.0.1, a network proxy we can cut, an SQLCipher store in a temporary
directory, and the simulated reader.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from offterm.core import NetworkStatus, Terminal, create_plugin_manager, hookimpl
from offterm.core.currency import format_amount
from offterm.core.errors import OfflineRefused, OfftermError
from offterm.core.models import PaymentIntent
from offterm.sim.netproxy import FaultProxy
from offterm.sim.processor import SimHandle, start_simulator

from ._ids import short_id as _short


@dataclass
class DemoListener:
    """Prints events as they happen and drives the forwarding progress bar."""

    console: Console
    quiet: bool
    progress: Any = None
    task: Any = None
    forwarded: list[tuple[PaymentIntent, OfftermError | None]] = field(default_factory=list)

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    @hookimpl
    def offterm_on_network_status_changed(self, status: NetworkStatus, previous: NetworkStatus) -> None:
        colour = {"online": "green", "offline": "red"}.get(status.value, "yellow")
        self.say(f"    [dim]event[/] network is [{colour}]{status.value}[/] (was {previous.value})")

    @hookimpl
    def offterm_on_payment_stored(self, intent: PaymentIntent) -> None:
        self.say(f"    [dim]event[/] payment stored: {_short(intent.offline_id)}")

    @hookimpl
    def offterm_on_payment_intent_forwarded(self, intent: PaymentIntent, error: OfftermError | None) -> None:
        self.forwarded.append((intent, error))
        if self.progress is not None:
            self.progress.advance(self.task)
        outcome = "[green]authorised[/]" if error is None else f"[red]{error.code}[/]"
        decline_code = getattr(error, "decline_code", None)  # only CardDeclinedError has one
        if decline_code:
            outcome += f" ({decline_code}; declined after forwarding: the merchant bears this)"
        self.say(f"    [dim]event[/] forwarded {_short(intent.offline_id)} → {outcome}")

    @hookimpl
    def offterm_on_forwarding_failure(self, error: OfftermError) -> None:
        self.say(f"    [dim]event[/] forwarding failure: {error.code}")


@contextmanager
def _world() -> Iterator[tuple[SimHandle, FaultProxy, Path]]:
    sim = start_simulator()
    proxy = FaultProxy(sim.port).start()
    try:
        with tempfile.TemporaryDirectory(prefix="offterm-demo-") as tmp:
            yield sim, proxy, Path(tmp)
    finally:
        proxy.stop()
        sim.stop()


def _config(proxy: FaultProxy, data_dir: Path) -> dict[str, Any]:
    return {
        "terminal": {
            "data_dir": str(data_dir),
            "offline_enabled": True,
            "offline_timeout": 3.0,
            "probe_min_interval": 0.1,
            "probe_max_interval": 1.0,
        },
        "plugins": {"autoload": False},
        "reader": {"transport": "simulated"},
        "storage": {"backend": "sqlcipher", "key_provider": "file"},
        "tokens": {"providers": ["http"], "http": {"url": proxy.url + "/backend/connection_token"}},
        "forwarding": {
            "transport": "stripe",
            "interval": 300.0,
            "stripe": {"api_base": proxy.url, "timeout": 5.0, "connect_timeout": 1.0},
        },
        "acceptance": {"limits": {"max_amount": {"usd": 100_000}, "max_total": {"usd": 500_000}}},
    }


def _card_text(intent: PaymentIntent) -> str:
    details = intent.offline_details.card_present_details if intent.offline_details else None
    return f"{details.brand} •••• {details.last4}" if details else ""


async def _pay(terminal: Terminal, amount: int, card: str, **presentation: Any) -> PaymentIntent:
    intent = await terminal.create_payment_intent(
        {"amount": amount, "currency": "usd", "metadata": {"order": f"demo-{amount}"}}
    )
    reader = terminal.connected_reader
    reader.present_card(card, **presentation)  # type: ignore[union-attr]
    intent = await terminal.collect_payment_method(intent)
    return await terminal.confirm_payment_intent(intent)


async def run_demo(console: Console, quiet: bool = False) -> dict[str, int]:
    listener = DemoListener(console, quiet)
    say = listener.say

    def terminal(config: dict[str, Any]) -> Terminal:
        pm = create_plugin_manager(autoload=False, plugins={"demo": listener})
        return Terminal.from_config(config, plugin_manager=pm)

    with _world() as (sim, proxy, data_dir):
        config = _config(proxy, data_dir)
        say("[bold]offterm demo[/] — card payments that survive outages and reboots, and reach the processor once\n")
        say(f"  processor simulator  {sim.url}  (a real HTTP server, Stripe-shaped API)")
        say(f"  network              {proxy.url}  (a proxy we can cut, between the POS and the processor)")
        say(f"  encrypted store      {data_dir}/payments.db  (SQLCipher, key file 0600)")
        say("  card reader          simulated; card data is encrypted for the processor, never seen by the POS\n")

        stored: list[PaymentIntent] = []
        async with terminal(config) as term:
            [reader] = (await term.discover_readers())[:1]
            await term.connect_reader(reader)
            say(f"[bold]1. Online[/]  reader {reader.serial_number} connected")
            online = await _pay(term, 1500, "visa")
            say(
                f"    {format_amount(1500, 'usd')} visa → [green]{online.status.value}[/] as {online.id} "
                "(authorised by the processor)\n"
            )

            say("[bold]2. Outage[/]  the network goes down")
            proxy.set_mode("down")
            say("\n[bold]3. Offline[/]  payments are stored encrypted; confirm returns only after the commit")
            for amount, card in ((1000, "visa"), (2500, "mastercard"), (4000, "amex"), (1200, "declined")):
                intent = await _pay(term, amount, card)
                stored.append(intent)
                say(
                    f"    {format_amount(amount, 'usd')} {_card_text(intent)} → [yellow]stored, not yet "
                    f"authorised[/] ({_short(intent.offline_id)})"
                )
            for amount, card, kwargs, why in (
                (1800, "visa", {"read_method": "magnetic_stripe"}, "a swiped card"),
                (200_000, "visa", {}, "over the offline limit"),
            ):
                try:
                    await _pay(term, amount, card, **kwargs)
                except OfflineRefused as exc:
                    say(f"    {format_amount(amount, 'usd')} {why} → [red]refused[/]: {exc.code}")
            status = term.offline_status.sdk
            say(
                f"    offline status: {status.offline_payments_count} payments waiting, "
                + ", ".join(format_amount(a, c) for c, a in status.offline_payment_amounts_by_currency.items())
            )
            report = await term.close()
            say(
                f"\n[bold]4. Reboot[/]  the POS shuts down with {report.remaining} payments stored "
                f"(safe to shut down: {report.safe_to_shut_down}) …"
            )

        async with terminal(config) as term:
            found = term.offline_status.sdk.offline_payments_count
            say(f"    … and a new terminal on the same files finds {found} payments waiting\n")
            say("[bold]5. Recovery[/]  the network comes back; stored payments are forwarded")
            proxy.set_mode("pass")
            with Progress(
                TextColumn("    forwarding"),
                BarColumn(),
                MofNCompleteColumn(),
                console=console,
                disable=quiet,
                transient=False,
            ) as progress:
                listener.progress, listener.task = progress, progress.add_task("forward", total=found)
                remaining = await term.forward_now(timeout=60)
                listener.progress = None
            payments = {p.offline_id: p for p in await term.list_stored_payments()}

        charges = sim.successful_charges()
        ledger = sim.ledger()
        table = Table(title="6. Reconciliation: the POS's store against the processor's ledger")
        for column in ("offline id", "amount", "card", "state", "processor id", "charges"):
            ids = column.endswith(" id")
            table.add_column(column, no_wrap=ids, min_width=15 if column == "offline id" else 12 if ids else None)
        for intent in stored:
            p = payments[intent.offline_id]
            state = p.state.value + (f" ({p.decline_code})" if p.decline_code else "")
            table.add_row(
                _short(p.offline_id),  # the full id's head is its creation time, alike for all four
                format_amount(p.amount, p.currency),
                _card_text(intent),
                state,
                _short(p.intent_id),
                str(charges.get(p.offline_id, 0)),
            )
        if not quiet:
            console.print()
            console.print(table)

        states = [p.state.value for p in payments.values()]
        summary = {
            "stored": len(stored),
            "forwarded": states.count("forwarded"),
            "declined": states.count("declined"),
            "needs_attention": states.count("needs_attention"),
            "remaining": remaining,
            "duplicates_on_processor": sum(n - 1 for n in charges.values() if n > 1),
            "attempts_on_processor": sum(len(v) for v in ledger.values()),
        }
        say(
            f"\n  stored {summary['stored']}, forwarded {summary['forwarded']}, declined {summary['declined']}, "
            f"needs attention {summary['needs_attention']}, duplicate charges on the processor: "
            f"[bold]{summary['duplicates_on_processor']}[/]"
        )
        return summary


def demo_main(console: Console, quiet: bool) -> dict[str, int]:
    return asyncio.run(run_demo(console, quiet))
