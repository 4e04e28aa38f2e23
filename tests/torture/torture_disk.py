"""Disk faults under a running Terminal: the disk fills, the filesystem turns read-only, the file is deleted.

    python torture_disk.py <scenario> '<json args>'     (the child; prints one ``report {...}`` line)

Real filesystems, not mocks: the child runs in a private mount namespace
(``unshare --mount``, as root or with user namespaces) and mounts a small
tmpfs for the POS's data, which it can fill and remount read-only.  Where no
namespace is allowed, the disk-full scenario still runs under a file-size
limit (RLIMIT_FSIZE), which needs no privileges.  The processor simulator
runs in the parent; the child reaches it over loopback.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from torture_payments import Outcome, connect, forward, pay, pos_config  # noqa: E402

from offterm.core import OfflineBehavior, Terminal  # noqa: E402
from offterm.core.errors import OfftermError  # noqa: E402
from offterm.core.logs import configure_logging  # noqa: E402

SCENARIOS = ("full", "full_rlimit", "readonly", "removed")
BIG_METADATA = {f"k{i}": "m" * 480 for i in range(20)}  # ~10 KB a payment: the disk fills quickly
FSIZE_LIMIT = 1536 * 1024


def unshare_prefix() -> list[str] | None:
    """A command prefix giving a private mount namespace, or None if this system allows none."""
    tool = shutil.which("unshare")
    if tool is None:
        return None
    for prefix in ([tool, "--mount"], [tool, "--user", "--map-root-user", "--mount"]):
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return None


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def run_scenario(scenario: str, workdir: Path, sim_url: str, timeout: float = 180.0) -> dict[str, Any]:
    """Run one scenario in a child process; its report, ``{"skipped": why}`` or ``{"failed": why}``."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), scenario, json.dumps({"dir": str(workdir), "url": sim_url})]
    preexec: Callable[[], None] | None = None
    if scenario in ("full", "readonly"):
        prefix = unshare_prefix()
        if prefix is None:
            return {"skipped": "no private mount namespace on this system (not root, no user namespaces)"}
        cmd = [*prefix, *cmd]
    elif scenario == "full_rlimit":
        preexec = _limit_file_size
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)
    lines = [line for line in result.stdout.splitlines() if line.startswith("report ")]
    if result.returncode != 0 or not lines:
        return {"failed": f"status {result.returncode}: {result.stderr[-1500:]}"}
    report: dict[str, Any] = json.loads(lines[-1].split(" ", 1)[1])
    return report


# -- the child ---------------------------------------------------------------------------------------------


def _mount(mnt: Path, size: str) -> None:
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)], check=True)


def _remount(mnt: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True)


def _report(outcome: Outcome, **extra: Any) -> dict[str, Any]:
    return {"stored": outcome.stored, "typed": dict(outcome.typed), "untyped": outcome.untyped, **extra}


async def _pay_big(terminal: Terminal, outcome: Outcome, amount: int) -> None:
    """FORCE_OFFLINE with ~10 KB of metadata."""
    try:
        intent = await terminal.create_payment_intent(
            {"amount": amount, "currency": "usd", "metadata": BIG_METADATA},
            offline_behavior=OfflineBehavior.FORCE_OFFLINE,
        )
        reader = terminal.connected_reader
        assert reader is not None
        reader.present_card("visa")  # type: ignore[attr-defined]
        intent = await terminal.collect_payment_method(intent)
        intent = await terminal.confirm_payment_intent(intent)
    except OfftermError as exc:
        outcome.typed[exc.code] += 1
        return
    except Exception as exc:  # noqa: BLE001 - an untyped error is what the torture looks for
        outcome.untyped.append(f"confirm raised {type(exc).__name__}: {exc}")
        return
    outcome.stored.append(intent.offline_id)


async def _fill(terminal: Terminal, outcome: Outcome, limit: int = 2000) -> int:
    """Store until the disk refuses; then try a few more (each must be refused with a typed error too)."""
    refused = 0
    for i in range(limit):
        before = len(outcome.stored)
        await _pay_big(terminal, outcome, 100 + i)
        if len(outcome.stored) == before:
            refused += 1
            if refused >= 5:
                break
    return refused


async def _forward_all(terminal: Terminal, outcome: Outcome) -> int | None:
    remaining = None
    for _ in range(20):
        remaining = await forward(terminal, outcome, timeout=10)
        if remaining == 0:
            break
        await asyncio.sleep(0.2)
    return remaining


async def scenario_full(data: Path, url: str) -> dict[str, Any]:
    """Fill the disk, drain the backlog while it is still full, free space, store again; restart and count."""
    outcome = Outcome()
    config = pos_config(data / "pos", url, storage={"sqlcipher": {"reserve_bytes": 131072}})
    filler = data / "filler"
    async with Terminal.from_config(config) as terminal:
        await connect(terminal)
        try:
            filler.write_bytes(b"\0" * 256 * 1024)  # another program's data
        except OSError:
            pass
        refused = await _fill(terminal, outcome)
        remaining_when_full = await _forward_all(terminal, outcome)
        filler.unlink(missing_ok=True)
        await _pay_big(terminal, outcome, 9_999)
        remaining = await _forward_all(terminal, outcome)
    async with Terminal.from_config(config) as terminal:
        listed = {p.offline_id for p in await terminal.list_stored_payments()}
    missing = [oid for oid in outcome.stored if oid not in listed]
    return _report(
        outcome, refused=refused, remaining_when_full=remaining_when_full, remaining=remaining, missing=missing
    )


async def scenario_readonly(data: Path, url: str) -> dict[str, Any]:
    """Store, remount read-only under the running Terminal, try to store and forward, remount rw, finish."""
    outcome = Outcome()
    config = pos_config(data / "pos", url)
    async with Terminal.from_config(config) as terminal:
        await connect(terminal)
        for i in range(5):
            await pay(terminal, outcome, 100 + i, behavior=OfflineBehavior.FORCE_OFFLINE)
        before = list(outcome.stored)
        _remount(data, "ro")
        for i in range(3):
            await pay(terminal, outcome, 200 + i, behavior=OfflineBehavior.FORCE_OFFLINE)
        stored_while_ro = [oid for oid in outcome.stored if oid not in before]
        await forward(terminal, outcome, timeout=5)
        _remount(data, "rw")
        for i in range(3):
            await pay(terminal, outcome, 300 + i, behavior=OfflineBehavior.FORCE_OFFLINE)
        remaining = await _forward_all(terminal, outcome)
    async with Terminal.from_config(config) as terminal:
        listed = {p.offline_id for p in await terminal.list_stored_payments()}
    missing = [oid for oid in outcome.stored if oid not in listed]
    return _report(outcome, stored_while_readonly=stored_while_ro, remaining=remaining, missing=missing)


async def scenario_removed(data: Path, url: str) -> dict[str, Any]:
    """Delete the database files under a running Terminal, keep taking payments, restart, look."""
    outcome = Outcome()
    config = pos_config(data / "pos", url)
    async with Terminal.from_config(config) as terminal:
        await connect(terminal)
        for i in range(5):
            await pay(terminal, outcome, 100 + i, behavior=OfflineBehavior.FORCE_OFFLINE)
        before = list(outcome.stored)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{data / 'pos' / 'payments.db'}{suffix}").unlink(missing_ok=True)
        for i in range(3):
            await pay(terminal, outcome, 200 + i, behavior=OfflineBehavior.FORCE_OFFLINE)
        after_removal = [oid for oid in outcome.stored if oid not in before]
    try:
        async with Terminal.from_config(config) as terminal:
            listed = {p.offline_id for p in await terminal.list_stored_payments()}
        reopen = "ok"
    except OfftermError as exc:
        listed, reopen = set(), f"typed {exc.code}"
    except Exception as exc:  # noqa: BLE001
        listed, reopen = set(), f"untyped {type(exc).__name__}: {exc}"
    vanished = [oid for oid in after_removal if oid not in listed]
    return _report(
        outcome, deleted_with_the_file=before, reported_after_removal=after_removal, vanished=vanished, reopen=reopen
    )


def child(scenario: str, args: dict[str, Any]) -> dict[str, Any]:
    configure_logging(level="critical")
    base = Path(args["dir"])
    url = args["url"]
    if scenario == "full":
        _mount(base / "mnt", "1536k")
        return asyncio.run(scenario_full(base / "mnt", url))
    if scenario == "full_rlimit":
        (base / "rlimit").mkdir(exist_ok=True)
        return asyncio.run(scenario_full(base / "rlimit", url))
    if scenario == "readonly":
        _mount(base / "mnt", "8m")
        return asyncio.run(scenario_readonly(base / "mnt", url))
    if scenario == "removed":
        (base / "removed").mkdir(exist_ok=True)
        return asyncio.run(scenario_removed(base / "removed", url))
    raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    print("report", json.dumps(child(sys.argv[1], json.loads(sys.argv[2]))), flush=True)
