"""The ``offterm`` command.

Exit codes (also in ``offterm --help``, and each command's own in its ``--help``):

* 0 — done;
* 1 — done, but something needs a person: payments remain after ``forward``,
  ``doctor`` found a problem, no payment has the id given, the demo saw a duplicate charge;
* 2 — usage or configuration error (also: a payment id that matches several payments);
* 3 — the payment store could not be opened (wrong key, damaged, read-only or unavailable);
* 4 — a plugin failed to load, a component is unknown, or a plugin built the wrong type;
* 5 — no payment store where the configuration points (``storage_not_found``; nothing was created).

The commands that work on the store never create one (``offterm.cli._inspection``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.table import Table

from offterm.core import Terminal, hookimpl
from offterm.core.contracts import PaymentState, StoredPayment
from offterm.core.contracts.storage import PENDING_STATES
from offterm.core.currency import format_amount
from offterm.core.errors import (
    ConfigError,
    OfftermError,
    PaymentNotFound,
    StoreNotFound,
)

from ._ids import match_payment, short_ids

if TYPE_CHECKING:
    pass

from ._context import (
    _PLUGIN,
    _STORE,
    _USAGE,
    EXIT_ATTENTION,
    EXIT_CODES_HELP,
    EXIT_CONFIG,
    EXIT_NO_STORE,
    EXIT_OK,
    EXIT_PLUGIN,
    Context,
    _emit_json,
    exit_codes_help,
    pass_ctx,
    store_exit_codes,
)


@click.group(epilog=EXIT_CODES_HELP)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="OFFTERM_CONFIG",
    help="Configuration file (default: $OFFTERM_CONFIG, then the user config dir; none: the defaults).",
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
    from ._demo import demo_main

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


# -- the local Stripe-compatible service ---------------------------------------------------


@cli.group(invoke_without_command=True, epilog=exit_codes_help((EXIT_OK, "stopped cleanly"), _USAGE, _STORE, _PLUGIN))
@click.option("--host", default=None, help="Bind address (default: [serve] host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="TCP port (default: [serve] port, 4243; 0: any free port).")
@click.option(
    "--allow-non-loopback",
    is_flag=True,
    default=None,
    help="Allow a non-loopback bind address (it also needs [serve] tls_cert and tls_key).",
)
@click.pass_context
def serve(click_ctx: click.Context, host: str | None, port: int | None, allow_non_loopback: bool | None) -> None:
    """Serve Stripe's server-driven Terminal API on localhost, with offline mode (docs/serve.md).

    Prints one JSON line with the URL and the API key file once it is ready; stops on SIGTERM / Ctrl-C.
    """
    if click_ctx.invoked_subcommand is not None:
        return
    from offterm.serve.runner import run

    ctx: Context = click_ctx.obj
    overrides = {"host": host, "port": port, "allow_non_loopback": allow_non_loopback}
    ctx.guard(lambda: run(ctx.config(), overrides))


@serve.command("rotate-key", epilog=exit_codes_help((EXIT_OK, "rotated"), _USAGE))
@pass_ctx
def serve_rotate_key(ctx: Context) -> None:
    """Replace the service's API key (a running service uses the new one from its next request)."""
    from offterm.core.paths import make_private_dir
    from offterm.serve.keys import key_path, rotate_key

    config = ctx.guard(ctx.config)
    ctx.guard(lambda: make_private_dir(config.data_dir, lambda m: ConfigError("terminal.data_dir", m), "directory"))
    rotate_key(config.data_dir)
    ctx.console.print(f"new key written to {escape(str(key_path(config.data_dir)))}", soft_wrap=True)


# -- plugins ------------------------------------------------------------------------------


@cli.command(
    epilog=exit_codes_help(
        (EXIT_OK, "listed"), _USAGE, (EXIT_PLUGIN, "a plugin failed to load while [plugins] strict is set")
    )
)
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

#: The columns of ``payments list --json``, ``show`` and ``export`` (CSV header included when empty).
PAYMENT_COLUMNS = (
    "offline_id",
    "intent_id",
    "amount",
    "currency",
    "state",
    "stored_at",
    "attempts",
    "brand",
    "last4",
    "account_id",
    "livemode",
    "last_error_code",
    "decline_code",
    "metadata",
)


def _payment_row(p: StoredPayment) -> dict[str, Any]:
    card = p.card_details
    row = {
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
    assert tuple(row) == PAYMENT_COLUMNS
    return row


async def _find_payment(terminal: Terminal, given: str) -> StoredPayment:
    """The payment ``given`` names: its whole id, a unique prefix or suffix, or the short form ``list`` shows."""
    try:
        return await terminal.store.get(given)
    except PaymentNotFound:
        return match_payment(given, await terminal.list_stored_payments())


STATUS_EXIT_CODES = store_exit_codes("shown (payments may be waiting: see the figures)")


@cli.command(epilog=STATUS_EXIT_CODES)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """What is waiting to be forwarded, and whether the processor is reachable.

    Reads the existing store only: it never creates one, and needs no token backend.
    """

    async def get(terminal: Terminal) -> dict[str, Any]:
        await terminal.network.check()
        s = (await terminal.refresh_offline_status()).sdk
        return {
            "network_status": s.network_status.value,
            "offline_payments_count": s.offline_payments_count,
            "offline_payment_amounts_by_currency": s.offline_payment_amounts_by_currency,
            "needs_attention": s.needs_attention_count,
            "oldest_stored_at": s.oldest_stored_at.isoformat() if s.oldest_stored_at else None,
            "store": str(terminal.data_dir),
        }

    data = ctx.run(get)
    if as_json:
        _emit_json(data)
        return
    amounts = ", ".join(format_amount(a, c) for c, a in data["offline_payment_amounts_by_currency"].items()) or "—"
    ctx.console.print(f"data dir           {escape(data['store'])}", soft_wrap=True)
    ctx.console.print(f"network            {data['network_status']}")
    ctx.console.print(f"waiting            {data['offline_payments_count']} ({amounts})")
    ctx.console.print(f"needs attention    {data['needs_attention']}")
    ctx.console.print(f"oldest stored at   {data['oldest_stored_at'] or '—'}")


@cli.group(epilog=store_exit_codes("done (each subcommand's --help has its own list)"))
def payments() -> None:
    """Inspect stored payments."""


#: Below this many columns ``payments list`` shows each id by its distinguishing tail (``offpi_…3f9a0c1d``).
WHOLE_IDS_WIDTH = 160


@payments.command("list", epilog=store_exit_codes("listed (also when there are none)"))
@click.option("--state", "states", multiple=True, type=click.Choice([s.value for s in PaymentState]))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def payments_list(ctx: Context, states: tuple[str, ...], as_json: bool) -> None:
    """List stored payments, oldest first.

    On a narrow terminal an id is shown by its distinguishing tail (offline ids are time-ordered, so
    their heads are alike); `payments show` takes it as it is shown, or any unique prefix or suffix.
    """
    wanted = [PaymentState(s) for s in states] or None
    rows = [_payment_row(p) for p in ctx.run(lambda t: t.list_stored_payments(wanted))]
    if as_json:
        _emit_json(rows)
        return
    whole = ctx.console.width >= WHOLE_IDS_WIDTH
    shown = {r["offline_id"]: r["offline_id"] for r in rows} if whole else short_ids(r["offline_id"] for r in rows)
    table = Table()
    id_width = max((len(s) for s in shown.values()), default=10)
    table.add_column("offline id", no_wrap=True, min_width=id_width)
    table.add_column("stored at (UTC)", no_wrap=whole)
    for col in ("amount", "card", "state", "tries", "processor id", "last error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        card = f"{r['brand']} •••• {r['last4']}" if r["brand"] else "—"
        stored_at = datetime.fromisoformat(r["stored_at"]).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            shown[r["offline_id"]],
            stored_at,
            format_amount(r["amount"], r["currency"]),
            card,
            r["state"],
            str(r["attempts"]),
            r["intent_id"] or "—",
            r["decline_code"] or r["last_error_code"] or "",
        )
    ctx.console.print(table)


SHOW_EXIT_CODES = store_exit_codes(
    "shown",
    (EXIT_ATTENTION, "no payment has that id, or an id that starts or ends with it"),
    (EXIT_CONFIG, "the id given matches several payments (ambiguous_payment_id; they are listed)"),
)


@payments.command("show", epilog=SHOW_EXIT_CODES)
@click.argument("offline_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def payments_show(ctx: Context, offline_id: str, as_json: bool) -> None:
    """One payment with its full state history.

    OFFLINE_ID is the whole id, any unique prefix or suffix of it, or the short form `payments list` shows.
    """

    async def get(terminal: Terminal) -> dict[str, Any]:
        payment = await _find_payment(terminal, offline_id)
        history = await terminal.payment_history(payment.offline_id)
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
            ctx.console.print(f"{key:<20} {escape(str(value))}", soft_wrap=True)
    table = Table(title="history")
    for col in ("at", "from", "to", "attempt", "error"):
        table.add_column(col)
    for h in data["history"]:
        table.add_row(h["at"], h["from"] or "—", h["to"], str(h["attempt"]), h["error_code"] or "")
    ctx.console.print(table)


REQUEUE_EXIT_CODES_HELP = store_exit_codes(
    "requeued: the payment is stored again and is forwarded at the next attempt",
    (EXIT_ATTENTION, "nothing changed: no such payment, or it is not in needs_attention"),
    (EXIT_CONFIG, "the id given matches several payments (ambiguous_payment_id; they are listed)"),
)


@payments.command("requeue", epilog=REQUEUE_EXIT_CODES_HELP)
@click.argument("offline_id")
@click.option("--reason", default=None, help="Why, in your words (kept as the payment's last error message).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def payments_requeue(ctx: Context, offline_id: str, reason: str | None, as_json: bool) -> None:
    """Put a needs_attention payment back in the forwarding queue.

    It keeps its idempotency key, so forwarding it again cannot charge twice.  OFFLINE_ID is the
    whole id, any unique prefix or suffix of it, or the short form `payments list` shows.
    """
    from datetime import UTC

    async def go(terminal: Terminal) -> StoredPayment:
        payment = await _find_payment(terminal, offline_id)
        return await terminal.store.requeue(payment.offline_id, datetime.now(UTC), reason=reason)

    result = ctx.run(go)
    if as_json:
        _emit_json({**_payment_row(result), "requeued": True})
        return
    ctx.console.print(
        f"requeued {escape(result.offline_id)} ({format_amount(result.amount, result.currency)}): "
        "needs_attention -> stored; it is forwarded at the next attempt with its original idempotency key",
        soft_wrap=True,
    )


class ForwardProgress:
    """A plugin object: advances the progress bar as each payment's forwarding ends (any outcome)."""

    def __init__(self) -> None:
        self.advance: Callable[[], None] = lambda: None
        self.ended: list[str] = []

    @hookimpl
    def offterm_on_payment_intent_forwarded(self, intent: Any, error: OfftermError | None) -> None:
        self.ended.append(intent.offline_id)
        self.advance()


FORWARD_EXIT_CODES = store_exit_codes(
    "nothing is waiting any more",
    (EXIT_ATTENTION, "payments remain (each is listed with why); run again later or see `payments show`"),
)


@cli.command(epilog=FORWARD_EXIT_CODES)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to keep trying while the processor answers.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def forward(ctx: Context, timeout: float, as_json: bool) -> None:
    """Forward stored payments now, whatever their retry backoff; exit 1 if any remain.

    Keeps trying for up to --timeout seconds while the processor answers, then says why each
    remaining payment remains.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    listener = ForwardProgress()

    async def go(terminal: Terminal) -> dict[str, Any]:
        before = (await terminal.refresh_offline_status()).sdk.offline_payments_count
        columns = (TextColumn("forwarding"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=ctx.console, disable=as_json or not before) as progress:
            task = progress.add_task("forwarding", total=before)
            listener.advance = lambda: progress.advance(task)
            remaining = await terminal.forward_now(timeout=timeout)
        waiting = await terminal.list_stored_payments(PENDING_STATES)
        s = terminal.offline_status.sdk
        return {
            "before": before,
            "remaining": remaining,
            "needs_attention": s.needs_attention_count,
            "network_status": s.network_status.value,
            "messages": {p.offline_id: p.last_error_message for p in waiting},
        }

    data, report = ctx.run_with_report(go, tokens=True, listeners={"offterm-cli-forward": listener})
    messages = data.pop("messages")
    data["remaining"] = report.remaining
    data["waiting"] = [
        {"offline_id": w.offline_id, "state": w.state.value, "reason": w.reason, "message": messages.get(w.offline_id)}
        for w in report.waiting
    ]
    if as_json:
        _emit_json(data)
    else:
        ctx.console.print(
            f"forwarded {data['before'] - data['remaining']}, remaining {data['remaining']}, "
            f"needs attention {data['needs_attention']}"
        )
        if data["waiting"] and data["network_status"] != "online":
            ctx.console.print(f"the processor is not reachable (network {data['network_status']})")
        shown = short_ids(w["offline_id"] for w in data["waiting"])
        for w in data["waiting"]:
            why = w["reason"] + (f": {w['message']}" if w["message"] else "")
            ctx.console.print(f"  {shown[w['offline_id']]}  {w['state']:<15} {escape(why)}", soft_wrap=True)
    sys.exit(EXIT_ATTENTION if data["remaining"] else EXIT_OK)


EXPORT_EXIT_CODES = store_exit_codes(
    "exported (an empty store gives an empty JSONL file, or a CSV file with its header row only)",
    (EXIT_CONFIG, "usage or configuration error, or the --output file cannot be written"),
)


@cli.command(epilog=EXPORT_EXIT_CODES)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="File (default: stdout).")
@pass_ctx
def export(ctx: Context, fmt: str, output: Path | None) -> None:
    """Export every stored payment's reconciliation record (no card data)."""
    rows = [_payment_row(p) for p in ctx.run(lambda t: t.list_stored_payments())]
    try:
        out = output.open("w", newline="") if output else sys.stdout
    except OSError as exc:
        ctx.fail(EXIT_CONFIG, f"[invalid_output] cannot write {output}: {exc.strerror}")
        return
    try:
        if fmt == "jsonl":
            for r in rows:
                out.write(json.dumps(r, sort_keys=True) + "\n")
        else:
            writer = csv.DictWriter(out, fieldnames=list(PAYMENT_COLUMNS))
            writer.writeheader()
            for r in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()})
    finally:
        if output:
            out.close()


DOCTOR_EXIT_CODES = exit_codes_help(
    (EXIT_OK, "every check is ok (or only warns)"),
    (EXIT_ATTENTION, "a check failed (each is listed with why)"),
    _USAGE,
    (EXIT_NO_STORE, "no payment store where the configuration points (nothing was created; other checks still ran)"),
)


@cli.command(epilog=DOCTOR_EXIT_CODES)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def doctor(ctx: Context, as_json: bool) -> None:
    """Check configuration, key access, store integrity, plugins and connectivity.

    Changes nothing: it never creates a store or a key.
    """
    from ._doctor import run_checks

    checks = run_checks(ctx.config_path)
    if as_json:
        _emit_json(checks)
    else:
        for c in checks:
            mark = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}[c["status"]]
            ctx.console.print(f"{mark:<18} {c['check']:<14} {escape(c['detail'])}", soft_wrap=True)
    if any(c.get("code") == StoreNotFound.code for c in checks):
        sys.exit(EXIT_NO_STORE)
    sys.exit(EXIT_ATTENTION if any(c["status"] == "fail" for c in checks) else EXIT_OK)


from ._hub import hub as _hub  # noqa: E402

cli.add_command(_hub)


def main() -> None:
    cli(prog_name="offterm")


if __name__ == "__main__":
    main()
