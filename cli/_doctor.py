"""``offterm doctor``: every check an operator needs before trusting a POS.

Each check reports ok / warn / fail with a detail line; a failing check never
stops the others, and nothing here changes the store: it never creates one, nor
a key (``offterm.cli._inspection``).  A check that failed with a coded error
carries its ``code`` too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from offterm.core import load_config
from offterm.core.config import Config
from offterm.core.contracts import TokenRequest
from offterm.core.errors import OfftermError
from offterm.core.manager import COMPONENT_KINDS, PluginManager
from offterm.core.registrations import ComponentContext

from ._inspection import CLI_PLUGIN, inspection_terminal, loaded_from, plugin_manager

Check = dict[str, str]


def _check(name: str, fn: Callable[[], tuple[str, str]]) -> Check:
    try:
        status, detail = fn()
    except OfftermError as exc:
        return _failed(name, exc)
    except Exception as exc:  # a doctor must report, not crash
        status, detail = "fail", f"{type(exc).__name__}: {exc}"
    return {"check": name, "status": status, "detail": detail}


def _failed(name: str, exc: OfftermError) -> Check:
    return {"check": name, "status": "fail", "detail": str(exc), "code": exc.code}


def run_checks(config_path: str | None) -> list[Check]:
    results: list[Check] = []
    box: dict[str, Any] = {}

    def config() -> tuple[str, str]:
        box["config"] = cfg = load_config(config_path)
        source = loaded_from(cfg)
        return "ok", f"{f'loaded from {source}' if source else 'none: defaults'}; data dir {cfg.data_dir}"

    results.append(_check("config", config))
    if "config" not in box:
        return results
    cfg: Config = box["config"]

    def plugins() -> tuple[str, str]:
        box["pm"] = pm = plugin_manager(cfg)
        sources = ", ".join(f"{i.name} ({i.source})" for i in pm.info.values() if i.name != CLI_PLUGIN)
        if pm.load_failures:
            return "warn", f"failed: {', '.join(pm.load_failures)}; loaded: {sources}"
        return "ok", sources

    results.append(_check("plugins", plugins))
    if "pm" not in box:
        return results
    pm: PluginManager = box["pm"]

    def components() -> tuple[str, str]:
        chosen = {
            "reader": cfg.get("reader", "transport"),
            "storage": cfg.get("storage", "backend"),
            "storage_key": cfg.get("storage", "key_provider"),
            "forwarding": cfg.get("forwarding", "transport"),
            "forwarding_policy": cfg.get("forwarding", "policy"),
        }
        parts = []
        for kind, name in chosen.items():
            hook, reg_cls = COMPONENT_KINDS[kind]
            reg = pm._select(hook, reg_cls, name)
            cfg.component(kind, reg)  # validates its options
            parts.append(f"{kind}={name} (from {pm.provider_of(hook, reg_cls, name)})")
        for name in cfg.get("tokens", "providers"):
            cfg.component("tokens", pm.token_provider(name))
            parts.append(f"tokens={name}")
        return "ok", "; ".join(parts)

    results.append(_check("components", components))
    results.extend(asyncio.run(_terminal_checks(cfg, pm)))
    if cfg.get("hub", "replicator"):
        results.append(_check("hub", lambda: _hub_check(cfg, pm)))
    return results


def _hub_check(cfg: Config, pm: PluginManager) -> tuple[str, str]:
    """The configured store hub: reachable, initialised at this offterm's schema, the same hub key, and
    what it last heard from this lane.  Reads only (no heartbeat, nothing replicated)."""
    from datetime import UTC, datetime

    from ._hub import hub_components

    replicator, key = hub_components(cfg, pm)
    try:
        replicator.open(key)  # schema version and key check: typed errors (hub_unavailable, wrong_hub_key...)
        lane = cfg.get("hub", "lane")
        mine = [s for s in replicator.status() if s.lane == lane]
    finally:
        replicator.close()
    if not mine or mine[0].last_heartbeat is None:
        return "warn", f"reachable, schema and hub key ok; no heartbeat from lane {lane} yet"
    age = (datetime.now(UTC) - mine[0].last_heartbeat).total_seconds()
    lag = mine[0].replication_lag_seconds
    detail = f"reachable, schema and hub key ok; lane {lane} last heartbeat {age:.0f} s ago, lag {lag or 0:.0f} s"
    silent = age > float(cfg.get("hub", "lane_silent_after"))
    return ("warn", detail + " (silent: the hub forwarder may take its payments over)") if silent else ("ok", detail)


async def _terminal_checks(cfg: Config, pm: PluginManager) -> list[Check]:
    results: list[Check] = []
    terminal = inspection_terminal(cfg, pm=pm)
    try:
        await terminal.open()
    except OfftermError as exc:
        return [_failed("store", exc), await _backend_check(cfg, pm)]
    try:
        summary = await terminal.store.summary()
        results.append(
            {
                "check": "store",
                "status": "ok",
                "detail": f"opened with the configured key; {summary.pending_count} waiting, "
                f"{summary.needs_attention_count} need attention",
            }
        )
        if summary.needs_attention_count:
            results[-1]["status"] = "warn"
        integrity = getattr(terminal.store.backend, "integrity_check", None)
        if callable(integrity):
            problems = await asyncio.to_thread(integrity)
            results.append(
                {
                    "check": "integrity",
                    "status": "fail" if problems else "ok",
                    "detail": "; ".join(problems) if problems else "integrity_check ok",
                }
            )
        reachable = await terminal.transport.probe()
        results.append(
            {
                "check": "processor",
                "status": "ok" if reachable else "fail",
                "detail": "reachable" if reachable else "not reachable (payments will be stored offline)",
            }
        )
        results.append(await _backend_check(cfg, pm))
    finally:
        await terminal.close(timeout=0)
    return results


async def _backend_check(cfg: Config, pm: PluginManager) -> Check:
    """Ask the configured token providers, in order, as a payment would (the store's checks need none)."""
    try:
        for name in cfg.get("tokens", "providers"):
            reg = pm.token_provider(name)
            provider = reg.factory(ComponentContext(reg.name, cfg.component("tokens", reg), cfg.data_dir))
            token = await provider.fetch(TokenRequest(reason="probe"))
            if token is not None:
                return {
                    "check": "backend",
                    "status": "ok",
                    "detail": f"token provider {name} returned a connection token",
                }
        return {"check": "backend", "status": "fail", "detail": "no token provider returned a token"}
    except OfftermError as exc:
        return _failed("backend", exc)
    except Exception as exc:  # a doctor must report, not crash
        return {"check": "backend", "status": "fail", "detail": f"{type(exc).__name__}: {exc}"}
