"""``offterm hub``: set up a store hub, look at every lane at once, forward for silent lanes (docs/fleet.md).

* ``hub init`` creates or migrates the hub's schema, as the hub's owner (``admin_url``).
* ``hub add-lane LANE`` creates a lane's login role (row-level security: it writes only its rows);
  ``--forwarder`` makes the hub forwarder's role instead.
* ``hub status`` shows, per lane, what waits (stored / forwarding / needs attention, by currency),
  the oldest stored payment, the last heartbeat and the replication lag: one indexed query.
* ``hub forward`` takes over the payments of lanes silent for ``[hub] lane_silent_after`` and
  forwards each exactly once; a long-lived service, or one pass with ``--once``.

The hub is the one ``[hub] replicator`` names, with its ``[replicator.<name>]`` options; the hub
key comes from ``[hub] key_provider``.  Registered on the ``offterm`` group by ``offterm.cli.main``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from offterm.core.config import Config
from offterm.core.contracts.replication import (
    HubError,
    HubNotInitialised,
    HubSchemaTooNew,
    HubUnavailable,
    LaneStatus,
    Replicator,
    WrongHubKey,
)
from offterm.core.currency import format_amount
from offterm.core.errors import ConfigError, OfftermError, PluginError, StorageError
from offterm.core.manager import PluginManager
from offterm.core.registrations import ComponentContext, ReplicatorRegistration

from ._context import (
    _PLUGIN,
    _USAGE,
    EXIT_ATTENTION,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_PLUGIN,
    Context,
    _emit_json,
    exit_codes_help,
    pass_ctx,
)
from ._inspection import plugin_manager

#: the hub could not be used: unreachable, login refused, not initialised, schema too new, wrong hub key
EXIT_HUB = 6
HUB_KEY_ID = "hub"  # the store id the hub key provider is asked for (as the lanes ask it)

_HUB = (EXIT_HUB, "the hub could not be used: unreachable, login refused, not initialised, too new, wrong hub key")
_COMMON = (_USAGE, _PLUGIN, _HUB)


def hub_components(cfg: Config, pm: PluginManager) -> tuple[Replicator, bytes]:
    """The configured replicator (not connected) and the hub key; ``ConfigError`` when no hub is configured."""
    name = cfg.get("hub", "replicator")
    if not name:
        raise ConfigError("hub.replicator", "no hub is configured (set [hub] replicator, e.g. 'postgres')")
    registration = pm._select("offterm_replicators", ReplicatorRegistration, name)
    replicator = registration.factory(
        ComponentContext(registration.name, cfg.component("replicator", registration), cfg.data_dir)
    )
    if not isinstance(replicator, Replicator):
        raise ConfigError("hub.replicator", f"component {name!r} built a {type(replicator).__name__}, not a Replicator")
    key_registration = pm.storage_key_provider(cfg.get("hub", "key_provider"))
    keys = key_registration.factory(
        ComponentContext(key_registration.name, cfg.component("storage_key", key_registration), cfg.data_dir)
    )
    key = keys.get_key(HUB_KEY_ID, create=False)
    if key is None:
        raise ConfigError(
            "hub.key_provider", "has no hub key (asked for the store id 'hub')", cfg.get("hub", "key_provider")
        )
    return replicator, key


def _guard(ctx: Context, fn: Any) -> Any:
    """Run ``fn``; map failures to this group's exit codes (never a traceback, never a URL or key)."""
    try:
        return fn()
    except ConfigError as exc:
        ctx.fail(EXIT_CONFIG, exc)
    except PluginError as exc:
        ctx.fail(EXIT_PLUGIN, exc)
    except (HubError, StorageError) as exc:
        ctx.fail(EXIT_HUB, exc)
    except OfftermError as exc:
        ctx.fail(EXIT_ATTENTION, exc)
    raise AssertionError("unreachable")


def _setup(ctx: Context) -> tuple[Config, PluginManager, Replicator, bytes]:
    cfg = ctx.config()
    pm = plugin_manager(cfg)
    replicator, key = hub_components(cfg, pm)
    return cfg, pm, replicator, key


@click.group(epilog=exit_codes_help((EXIT_OK, "done (each subcommand's --help has its own list)"), *_COMMON))
def hub() -> None:
    """The store hub: every lane's payments on one PostgreSQL server (docs/fleet.md)."""


@hub.command(epilog=exit_codes_help((EXIT_OK, "the schema is at this offterm's version"), *_COMMON))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def init(ctx: Context, as_json: bool) -> None:
    """Create or migrate the hub's schema, as the hub's owner ([replicator.<name>] admin_url).

    Records a check of the hub key the first time; afterwards a lane with another key is refused.
    Never drops or rewrites replicated rows; a schema newer than this offterm is left untouched.
    """

    def go() -> int:
        _, _, replicator, key = _setup(ctx)
        return replicator.initialise(key)

    version = _guard(ctx, go)
    if as_json:
        _emit_json({"schema_version": version})
    else:
        ctx.console.print(f"hub schema at version {version}")
    sys.exit(EXIT_OK)


@hub.command("add-lane", epilog=exit_codes_help((EXIT_OK, "the role is ready"), *_COMMON))
@click.argument("lane")
@click.option(
    "--password",
    envvar="OFFTERM_HUB_ROLE_PASSWORD",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="The role's password (default: $OFFTERM_HUB_ROLE_PASSWORD, else asked; never echoed nor logged).",
)
@click.option("--forwarder", is_flag=True, help="Make the hub forwarder's role (reads every lane) instead.")
@pass_ctx
def add_lane(ctx: Context, lane: str, password: str, forwarder: bool) -> None:
    """Create LANE's login role on the hub (or set its password again), as the hub's owner.

    A lane's name is its role's name ([hub] lane): row-level security lets it write only its own rows.
    """

    def go() -> None:
        _, _, replicator, _ = _setup(ctx)
        add = getattr(replicator, "add_lane", None)
        if not callable(add):
            raise ConfigError("hub.replicator", "this replicator has no per-lane roles to add")
        add(lane, password, forwarder=forwarder)

    _guard(ctx, go)
    ctx.console.print(f"{'hub forwarder' if forwarder else 'lane'} role {escape(lane)} ready")
    sys.exit(EXIT_OK)


def _silent(lane: LaneStatus, silent_after: float, now: datetime) -> bool:
    return lane.last_heartbeat is None or now - lane.last_heartbeat > timedelta(seconds=silent_after)


def _lane_json(lane: LaneStatus, silent_after: float, now: datetime) -> dict[str, Any]:
    return {
        "lane": lane.lane,
        "states": {
            state: {"count": lane.states[state].count, "amounts": dict(lane.states[state].amounts_by_currency)}
            for state in ("stored", "forwarding", "needs_attention")
            if state in lane.states
        },
        "oldest_stored_at": lane.oldest_stored_at.isoformat() if lane.oldest_stored_at else None,
        "last_heartbeat": lane.last_heartbeat.isoformat() if lane.last_heartbeat else None,
        "replication_lag_seconds": lane.replication_lag_seconds,
        "silent": _silent(lane, silent_after, now),
    }


STATUS_EXIT_CODES = exit_codes_help(
    (EXIT_OK, "shown; every lane heard from and nothing needs attention"),
    (EXIT_ATTENTION, "shown; a lane is silent (past [hub] lane_silent_after) or a payment needs attention"),
    *_COMMON,
)


@hub.command(epilog=STATUS_EXIT_CODES)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Per lane: stored / forwarding / needs attention (count, amounts by currency), oldest stored
    payment, last heartbeat, replication lag.  One indexed query on the hub.

    With [replicator.<name>] admin_url every lane; with a lane's own connection, that lane only.
    """

    def go() -> tuple[list[LaneStatus], float]:
        cfg, _, replicator, key = _setup(ctx)
        try:
            try:
                lanes = replicator.status()
            except HubError as exc:
                if isinstance(exc, HubUnavailable | HubNotInitialised | HubSchemaTooNew | WrongHubKey):
                    raise
                replicator.open(key)  # no admin connection: the lane's own, checked first
                lanes = replicator.status()
        finally:
            replicator.close()
        return lanes, float(cfg.get("hub", "lane_silent_after"))

    lanes, silent_after = _guard(ctx, go)
    now = datetime.now(UTC)
    rows = [_lane_json(lane, silent_after, now) for lane in lanes]
    if as_json:
        _emit_json({"lanes": rows, "at": now.isoformat()})
    else:
        table = Table("lane", "stored", "forwarding", "needs attention", "oldest stored", "heartbeat", "lag")
        for row, lane in zip(rows, lanes, strict=True):
            cells = []
            for state in ("stored", "forwarding", "needs_attention"):
                totals = lane.states.get(state)
                if totals is None or not totals.count:
                    cells.append("0")
                    continue
                amounts = ", ".join(format_amount(v, c) for c, v in sorted(totals.amounts_by_currency.items()))
                cells.append(f"{totals.count} ({amounts})")
            heartbeat = row["last_heartbeat"] or "never"
            lag = "-" if lane.replication_lag_seconds is None else f"{lane.replication_lag_seconds:.0f} s"
            table.add_row(
                escape(lane.lane) + (" [red](silent)[/]" if row["silent"] else ""),
                *cells,
                row["oldest_stored_at"] or "-",
                heartbeat,
                lag,
            )
        ctx.console.print(table)
    attention = any(r["silent"] or "needs_attention" in r["states"] for r in rows)
    sys.exit(EXIT_ATTENTION if attention else EXIT_OK)


FORWARD_EXIT_CODES = exit_codes_help(
    (EXIT_OK, "stopped cleanly (--once: the pass ended, nothing failed)"),
    (EXIT_ATTENTION, "--once: a payment needs attention, or the processor or token backend failed"),
    *_COMMON,
)


@hub.command(epilog=FORWARD_EXIT_CODES)
@click.option("--once", is_flag=True, help="One pass, then exit (default: run as a service until stopped).")
@click.option("--json", "as_json", is_flag=True, help="With --once: print what the pass did as JSON.")
@pass_ctx
def forward(ctx: Context, once: bool, as_json: bool) -> None:
    """Take over the payments of silent lanes and forward each exactly once (the hub forwarder).

    A lane is silent when its last heartbeat is older than [hub] lane_silent_after.  Connects with
    [replicator.<name>] url as the hub forwarder's role (`offterm hub add-lane NAME --forwarder`),
    and to the processor with the configured [forwarding] transport and [tokens] providers.
    Leases are rows of the hub: several hub forwarders may run; each payment has one at a time.
    """
    from offterm.core._engine.hub_forwarder import HubRound, build_hub_forwarder

    async def main() -> HubRound | None:
        cfg = ctx.config()
        forwarder = build_hub_forwarder(cfg, plugin_manager(cfg))
        await forwarder.open()
        try:
            if once:
                return await forwarder.run_once()
            task = asyncio.current_task()
            loop = asyncio.get_running_loop()
            assert task is not None
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, task.cancel)
            with contextlib.suppress(asyncio.CancelledError):
                await forwarder.run_forever()
            return None
        finally:
            await forwarder.close()

    report = _guard(ctx, lambda: asyncio.run(main()))
    if report is None:
        sys.exit(EXIT_OK)
    summary = report.as_dict()
    if as_json:
        _emit_json(summary)
    else:
        ctx.console.print(", ".join(f"{k} {v}" for k, v in summary.items() if v is not None))
    sys.exit(EXIT_ATTENTION if report.needs_attention or report.failure else EXIT_OK)
