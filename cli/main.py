"""The ``offterm`` command.

Exit codes (also in ``offterm --help``):

* 0 — done;
* 1 — done, but something needs a person: payments remain after ``forward``,
  ``doctor`` found a problem, the demo saw a duplicate charge;
* 2 — usage or configuration error;
* 3 — the payment store could not be opened (wrong key, damaged, unavailable);
* 4 — a plugin failed to load or a component is unknown.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import enum
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from offterm.core import Terminal, load_config
from offterm.core.config import Config
from offterm.core.contracts import PaymentState, StoredPayment
from offterm.core.currency import format_amount
from offterm.core.errors import ConfigError, OfftermError, PluginError, StorageError

EXIT_OK, EXIT_ATTENTION, EXIT_CONFIG, EXIT_STORAGE, EXIT_PLUGIN = 0, 1, 2, 3, 4

T = TypeVar("T")

EXIT_CODES_HELP = """\b
Exit codes:
  0  done
  1  done, but something needs a person (payments remain, doctor found a problem)
  2  usage or configuration error
  3  the payment store could not be opened (wrong key, damaged, unavailable)
  4  a plugin failed to load or a component is unknown"""


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return None
    return value


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(_jsonable(data), indent=2, sort_keys=True))


class Context:
    def __init__(self, config_path: str | None, log_json: bool, log_level: str) -> None:
        self.config_path = config_path
        self.console = Console()
        self.err = Console(stderr=True)
        self.log_json = log_json
        self.log_level = log_level

    def config(self) -> Config:
        return load_config(self.config_path)

    def run(self, fn: Callable[[Terminal], Awaitable[T]], *, background: bool = False) -> T:
        """Open a Terminal from the configuration, run ``fn``, close it; map errors to exit codes."""

        async def main() -> T:
            async with Terminal.from_config(self.config(), background=background) as terminal:
                return await fn(terminal)

        return self.guard(lambda: asyncio.run(main()))

    def guard(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ConfigError as exc:
            self.fail(EXIT_CONFIG, exc)
        except StorageError as exc:
            self.fail(EXIT_STORAGE, exc)
        except PluginError as exc:
            self.fail(EXIT_PLUGIN, exc)
        except OfftermError as exc:
            self.fail(EXIT_ATTENTION, exc)
        raise AssertionError("unreachable")

    def fail(self, code: int, exc: OfftermError) -> None:
        self.err.print(f"[red]error[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(code)


pass_ctx = click.make_pass_decorator(Context)


@click.group(epilog=EXIT_CODES_HELP)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="OFFTERM_CONFIG",
    help="Configuration file (default: $OFFTERM_CONFIG, then the user config dir).",
)
@click.option("--log-json", is_flag=True, help="Log as JSON lines (for machines).")
@click.option(
    "--log-level", default="warning", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
@click.version_option(package_name="offterm")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, log_json: bool, log_level: str) -> None:
    """offterm — offline card payments for Python point-of-sale apps."""
    _configure_logging(log_json, log_level)
    ctx.obj = Context(config_path, log_json, log_level)


def _configure_logging(log_json: bool, level: str) -> None:
    try:
        from offterm.core.logs import configure_logging
    except ImportError:  # logging setup arrives with offterm.core.logs
        return
    configure_logging(json=log_json, level=level, stream=sys.stderr)


# -- the demo and the simulators -------------------------------------------------------


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print only a JSON summary.")
@pass_ctx
def demo(ctx: Context, as_json: bool) -> None:
    """Run the whole offline story on embedded defaults (no configuration needed)."""
    from .demo import demo_main

    if ctx.log_level == "warning" and not ctx.log_json:
        _configure_logging(False, "error")  # the story says it all; keep routine warnings out of it

    summary = ctx.guard(lambda: demo_main(ctx.console, quiet=as_json))
    if as_json:
        _emit_json(summary)
    ok = summary["duplicates_on_processor"] == 0 and summary["remaining"] == 0
    sys.exit(EXIT_OK if ok else EXIT_ATTENTION)


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False, "help_option_names": []}
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sim(args: tuple[str, ...]) -> None:
    """Serve the processor simulator (Stripe-shaped API, token backend, ledger); --help for its options.

    Same options as `python -m offterm.sim.processor`: --port, --secret-key, --error-rate, --reset-rate,
    --drop-rate, --commit-drop-rate, ... Exit 2 on a bad option or a busy port (sim_port_in_use).
    """
    from offterm.sim.processor.__main__ import main as sim_main

    sys.exit(sim_main(list(args), prog="offterm sim"))


@cli.command("reader-emulator", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def reader_emulator(args: tuple[str, ...]) -> None:
    """Run the card reader emulator (--serial | --tcp PORT | --ble); --help for its options."""
    from offterm.sim.reader_emulator.cli import main as emulator_main

    sys.exit(emulator_main(list(args)))


# -- plugins ------------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def plugins(ctx: Context, as_json: bool) -> None:
    """List loaded plugins, where each comes from, and the components they provide."""
    from offterm.core.manager import COMPONENT_KINDS, create_plugin_manager

    def build() -> dict[str, Any]:
        cfg = ctx.config()
        p = cfg.sections["plugins"]
        pm = create_plugin_manager(disabled=p["disable"], autoload=p["autoload"], strict=p["strict"])
        return {
            "plugins": [dataclasses.asdict(i) for i in pm.info.values()],
            "failed": pm.load_failures,
            "components": {kind: pm.available(kind) for kind in COMPONENT_KINDS},
        }

    data = ctx.guard(build)
    if as_json:
        _emit_json(data)
        return
    table = Table(title="plugins")
    for col in ("name", "source", "module"):
        table.add_column(col)
    for info in data["plugins"]:
        table.add_row(info["name"], info["source"], info["module"])
    ctx.console.print(table)
    comp = Table(title="components (chosen by name in the configuration)")
    comp.add_column("kind")
    comp.add_column("name")
    comp.add_column("provided by")
    for kind, names in data["components"].items():
        for name, plugin in sorted(names.items()):
            comp.add_row(kind, name, plugin)
    ctx.console.print(comp)
    for name, why in data["failed"].items():
        ctx.err.print(f"[yellow]failed[/] {name}: {why}")


# -- the store --------------------------------------------------------------------------------


def _payment_row(p: StoredPayment) -> dict[str, Any]:
    card = p.card_details
    return {
        "offline_id": p.offline_id,
        "intent_id": p.intent_id,
        "amount": p.amount,
        "currency": p.currency,
        "state": p.state.value,
        "stored_at": p.stored_at.isoformat(),
        "attempts": p.attempts,
        "brand": card.brand if card else None,
        "last4": card.last4 if card else None,
        "account_id": p.account_id,
        "livemode": p.livemode,
        "last_error_code": p.last_error_code,
        "decline_code": p.decline_code,
        "metadata": p.metadata,
    }


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """What is waiting to be forwarded, and whether the processor is reachable."""

    async def get(terminal: Terminal) -> dict[str, Any]:
        await terminal.network.check()
        s = (await terminal.refresh_offline_status()).sdk
        return {
            "network_status": s.network_status.value,
            "offline_payments_count": s.offline_payments_count,
            "offline_payment_amounts_by_currency": s.offline_payment_amounts_by_currency,
            "needs_attention": s.needs_attention_count,
            "oldest_stored_at": s.oldest_stored_at.isoformat() if s.oldest_stored_at else None,
        }

    data = ctx.run(get)
    if as_json:
        _emit_json(data)
        return
    amounts = ", ".join(format_amount(a, c) for c, a in data["offline_payment_amounts_by_currency"].items()) or "—"
    ctx.console.print(f"network            {data['network_status']}")
    ctx.console.print(f"waiting            {data['offline_payments_count']} ({amounts})")
    ctx.console.print(f"needs attention    {data['needs_attention']}")
    ctx.console.print(f"oldest stored at   {data['oldest_stored_at'] or '—'}")


@cli.group()
def payments() -> None:
    """Inspect stored payments."""


@payments.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice([s.value for s in PaymentState]))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def payments_list(ctx: Context, states: tuple[str, ...], as_json: bool) -> None:
    """List stored payments, oldest first."""
    wanted = [PaymentState(s) for s in states] or None
    rows = [_payment_row(p) for p in ctx.run(lambda t: t.list_stored_payments(wanted))]
    if as_json:
        _emit_json(rows)
        return
    table = Table()
    for col in ("offline id", "stored at", "amount", "card", "state", "attempts", "processor id", "last error"):
        table.add_column(col)
    for r in rows:
        card = f"{r['brand']} •••• {r['last4']}" if r["brand"] else "—"
        table.add_row(
            r["offline_id"],
            r["stored_at"],
            format_amount(r["amount"], r["currency"]),
            card,
            r["state"],
            str(r["attempts"]),
            r["intent_id"] or "—",
            r["decline_code"] or r["last_error_code"] or "",
        )
    ctx.console.print(table)


@payments.command("show")
@click.argument("offline_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def payments_show(ctx: Context, offline_id: str, as_json: bool) -> None:
    """One payment with its full state history."""

    async def get(terminal: Terminal) -> dict[str, Any]:
        payment = await terminal.store.get(offline_id)
        history = await terminal.payment_history(offline_id)
        row = _payment_row(payment)
        row["last_error_message"] = payment.last_error_message
        row["history"] = [
            {
                "at": h.at.isoformat(),
                "from": h.from_state.value if h.from_state else None,
                "to": h.to_state.value,
                "attempt": h.attempt,
                "error_code": h.error_code,
            }
            for h in history
        ]
        return row

    data = ctx.run(get)
    if as_json:
        _emit_json(data)
        return
    for key, value in data.items():
        if key != "history":
            ctx.console.print(f"{key:<20} {value}")
    table = Table(title="history")
    for col in ("at", "from", "to", "attempt", "error"):
        table.add_column(col)
    for h in data["history"]:
        table.add_row(h["at"], h["from"] or "—", h["to"], str(h["attempt"]), h["error_code"] or "")
    ctx.console.print(table)


REQUEUE_EXIT_CODES_HELP = """\b
Exit codes:
  0  requeued: the payment is stored again and is forwarded at the next attempt
  1  nothing changed: no such payment, or it is not in needs_attention
  2  usage or configuration error
  3  the payment store could not be opened (wrong key, damaged, unavailable)
  4  a plugin failed to load or a component is unknown"""


@payments.command("requeue", epilog=REQUEUE_EXIT_CODES_HELP)
@click.argument("offline_id")
@click.option("--reason", default=None, help="Why, in your words (kept as the payment's last error message).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def payments_requeue(ctx: Context, offline_id: str, reason: str | None, as_json: bool) -> None:
    """Put a needs_attention payment back in the forwarding queue.

    It keeps its idempotency key, so forwarding it again cannot charge twice.
    """
    from datetime import UTC

    from offterm.core.errors import InvalidTransition, PaymentNotFound

    async def go(terminal: Terminal) -> StoredPayment | OfftermError:
        try:
            return await terminal.store.requeue(offline_id, datetime.now(UTC), reason=reason)
        except (PaymentNotFound, InvalidTransition) as exc:  # the store opened: not an exit-3 failure
            return exc

    result = ctx.run(go)
    if isinstance(result, OfftermError):
        ctx.fail(EXIT_ATTENTION, result)
        return
    if as_json:
        _emit_json({**_payment_row(result), "requeued": True})
        return
    ctx.console.print(
        f"requeued {escape(result.offline_id)} ({format_amount(result.amount, result.currency)}): "
        "needs_attention -> stored; it is forwarded at the next attempt with its original idempotency key",
        soft_wrap=True,
    )


@cli.command()
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to keep trying.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def forward(ctx: Context, timeout: float, as_json: bool) -> None:
    """Forward stored payments now; exit 1 if any remain."""
    from rich.progress import Progress

    async def go(terminal: Terminal) -> dict[str, Any]:
        before = (await terminal.refresh_offline_status()).sdk.offline_payments_count
        with Progress(console=ctx.console, disable=as_json) as progress:
            task = progress.add_task("forwarding", total=before or 1)
            remaining = await terminal.forward_now(timeout=timeout)
            progress.update(task, completed=(before - remaining) if before else 1)
        s = terminal.offline_status.sdk
        return {
            "before": before,
            "remaining": remaining,
            "needs_attention": s.needs_attention_count,
            "network_status": s.network_status.value,
        }

    data = ctx.run(go)
    if as_json:
        _emit_json(data)
    else:
        ctx.console.print(
            f"forwarded {data['before'] - data['remaining']}, remaining {data['remaining']}, "
            f"needs attention {data['needs_attention']}"
        )
    sys.exit(EXIT_ATTENTION if data["remaining"] else EXIT_OK)


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="File (default: stdout).")
@pass_ctx
def export(ctx: Context, fmt: str, output: Path | None) -> None:
    """Export every stored payment's reconciliation record (no card data)."""
    rows = [_payment_row(p) for p in ctx.run(lambda t: t.list_stored_payments())]
    out = output.open("w", newline="") if output else sys.stdout
    try:
        if fmt == "jsonl":
            for r in rows:
                out.write(json.dumps(r, sort_keys=True) + "\n")
        else:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["offline_id"])
            writer.writeheader()
            for r in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()})
    finally:
        if output:
            out.close()


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def doctor(ctx: Context, as_json: bool) -> None:
    """Check configuration, key access, store integrity, plugins and connectivity."""
    from .doctor import run_checks

    checks = run_checks(ctx.config_path)
    if as_json:
        _emit_json(checks)
    else:
        for c in checks:
            mark = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}[c["status"]]
            ctx.console.print(f"{mark:<18} {c['check']:<14} {c['detail']}")
    sys.exit(EXIT_ATTENTION if any(c["status"] == "fail" for c in checks) else EXIT_OK)


def main() -> None:
    cli(prog_name="offterm")


if __name__ == "__main__":
    main()
