"""Disk faults under a running Terminal: the disk fills, the filesystem turns read-only, the file is deleted.

    python -m offterm.testing.torture.disk <scenario> '<json args>'   (the child; prints one ``report {...}`` line)

Real filesystems, not mocks: the child runs in a private mount namespace
(``unshare --mount``, as root or with user namespaces) and mounts a small
tmpfs for the POS's data, which it can fill and remount read-only.  Where no
namespace is allowed, the disk-full scenario still runs under a file-size
limit (RLIMIT_FSIZE), which needs no privileges.  The processor simulator
runs in the parent; the child reaches it over loopback.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from offterm.core import OfflineBehavior, Terminal
from offterm.core.errors import OfftermError
from offterm.core.logs import configure_logging

from .payments import Outcome, connect, forward, pay, pos_config

#: This module, as the children run it (``python -m``): no file path, no sys.path edit.
CHILD = [sys.executable, "-m", "offterm.testing.torture.disk"]
SCENARIOS = ("full", "full_rlimit", "readonly", "removed")  # run_scenario; the rest are phases of these
BIG_METADATA = {f"k{i}": "m" * 480 for i in range(20)}  # ~10 KB a payment: the disk fills quickly
FSIZE_LIMIT = 320 * 1024


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


def _can_loop_mount() -> bool:
    return (
        os.geteuid() == 0
        and Path("/dev/loop-control").exists()
        and all(shutil.which(tool) for tool in ("mkfs.ext4", "e2fsck", "findmnt"))
        and Path("/sys/fs/ext4").is_dir()
    )


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def run_scenario(scenario: str, workdir: Path, sim_url: str, timeout: float = 240.0) -> dict[str, Any]:
    """Run one scenario in child processes; its report, ``{"skipped": why}`` or ``{"failed": why}``."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = {"dir": str(workdir), "url": sim_url, "watchdog": timeout - 20}
    me = CHILD
    if scenario == "full_rlimit":
        # The limit cannot be lifted from inside a process: fill in one, reopen in another.
        data = {**args, "data": str(workdir / "rlimit"), "watchdog": 100}
        try:
            first = _run_child([*me, "pos_fill", json.dumps(data)], 120, _limit_file_size)
        except subprocess.TimeoutExpired:
            first = {"hung": "the POS did not finish within 120 s and was killed"}
        if "failed" in first:
            return first
        after = _run_child([*me, "reopen", json.dumps(data)], timeout, None)
        return after if "failed" in after else _merge(first, after)
    cmd = [*me, scenario, json.dumps(args)]
    if scenario in ("full", "readonly"):
        prefix = unshare_prefix()
        if prefix is None:
            return {"skipped": "no private mount namespace on this system (not root, no user namespaces)"}
        if scenario == "readonly" and not _can_loop_mount():
            return {"skipped": "no loop devices or ext4 tools here (needs root, losetup, mkfs.ext4, e2fsck)"}
        cmd = [*prefix, *cmd]
    return _run_child(cmd, timeout, None)


def _run_child(cmd: list[str], timeout: float, preexec: Callable[[], None] | None) -> dict[str, Any]:
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


async def _forward_all(terminal: Terminal, outcome: Outcome, rounds: int = 20) -> int | None:
    remaining = None
    for _ in range(rounds):
        remaining = await forward(terminal, outcome, timeout=10)
        if remaining == 0:
            break
        await asyncio.sleep(0.2)
    return remaining


async def _close(terminal: Terminal, outcome: Outcome) -> str:
    """Close, recording how: "ok", "typed <code>" or "untyped ..." (also noted in ``outcome``)."""
    try:
        # Bounded: close() used to hang here (test_stopping_the_forwarder_is_not_lost_when_a_trigger_coincides).
        await asyncio.wait_for(terminal.close(timeout=0.5), timeout=15)
    except TimeoutError:
        return "hung"
    except OfftermError as exc:
        outcome.typed["close: " + exc.code] += 1
        return f"typed {exc.code}"
    except Exception as exc:  # noqa: BLE001
        outcome.untyped.append(f"close raised {type(exc).__name__}: {exc}")
        return f"untyped {type(exc).__name__}"
    return "ok"


async def pos_fill(data: Path, url: str, *, filler: bool) -> dict[str, Any]:
    """A POS on a disk that fills: store until refused, try to forward while full, close."""
    outcome = Outcome()
    terminal = Terminal.from_config(pos_config(data / "pos", url, storage={"sqlcipher": {"reserve_bytes": 131072}}))
    await terminal.open()
    try:
        await connect(terminal)
        if filler:
            _fill_disk_but(data / "filler", 320 * 1024)  # another program's data, freed later
        refused = await _fill(terminal, outcome)
        remaining_when_full = await _forward_all(terminal, outcome, rounds=3)
    finally:
        closed = await _close(terminal, outcome)
    return _report(outcome, refused=refused, remaining_when_full=remaining_when_full, close_when_full=closed)


def _fill_disk_but(path: Path, keep: int) -> None:
    """Write ``path`` until only ``keep`` bytes are left free on its filesystem."""
    st = os.statvfs(path.parent)
    size = max(0, st.f_bavail * st.f_frsize - keep)
    with open(path, "wb") as handle:
        handle.write(b"\0" * size)


async def pos_readonly(mnt: Path, url: str) -> dict[str, Any]:
    """ext4 (errors=remount-ro) hits an error under the running Terminal and turns read-only, as on a failing
    disk; the POS keeps trying to store and forward, then closes."""
    outcome = Outcome()
    terminal = Terminal.from_config(pos_config(mnt / "pos", url))
    await terminal.open()
    try:
        await connect(terminal)
        for i in range(5):
            await pay(terminal, outcome, 100 + i, behavior=OfflineBehavior.FORCE_OFFLINE)
        before = list(outcome.stored)
        _fs_error(mnt)
        for i in range(3):
            await pay(terminal, outcome, 200 + i, behavior=OfflineBehavior.FORCE_OFFLINE)
        stored_while_ro = [oid for oid in outcome.stored if oid not in before]
        await forward(terminal, outcome, timeout=5)
    finally:
        closed = await _close(terminal, outcome)
    return _report(outcome, stored_while_readonly=stored_while_ro, close=closed)


async def scenario_reopen(data: Path, url: str) -> dict[str, Any]:
    """After the fault (and a restart): reopen, store a few more, forward everything, list what is there."""
    outcome = Outcome()
    terminal = Terminal.from_config(pos_config(data / "pos", url))
    await terminal.open()
    try:
        await connect(terminal)
        for i in range(3):
            await pay(terminal, outcome, 300 + i, behavior=OfflineBehavior.FORCE_OFFLINE)
        remaining = await _forward_all(terminal, outcome)
        states = {p.offline_id: p.state.value for p in await terminal.list_stored_payments()}
    finally:
        closed = await _close(terminal, outcome)
    return {
        "stored_after": outcome.stored,
        "typed_after": dict(outcome.typed),
        "untyped_after": outcome.untyped,
        "remaining": remaining,
        "states": states,
        "close_after": closed,
    }


def _phase(phase: str, args: dict[str, Any], timeout: float = 90.0) -> dict[str, Any]:
    """Run one POS phase as its own process; a POS that hangs is killed, like a crashed one."""
    cmd = [*CHILD, phase, json.dumps(args)]
    try:
        return _run_child(cmd, timeout, None)
    except subprocess.TimeoutExpired:
        return {"hung": f"the POS did not finish within {timeout:.0f} s and was killed"}


def _merge(first: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    report = dict(first)
    if "hung" in first:
        report = {"stored": [], "typed": {}, "untyped": [], "close_when_full": "hung", **first}
    report["stored"] = list(report.get("stored", [])) + list(after.get("stored_after", []))
    report["untyped"] = list(report.get("untyped", [])) + list(after.get("untyped_after", []))
    for code, n in after.get("typed_after", {}).items():
        report["typed"][code] = report["typed"].get(code, 0) + n
    report.update({k: after[k] for k in ("remaining", "states", "close_after") if k in after})
    return report


def _fs_error(mnt: Path) -> None:
    """Make ext4 report an error on this filesystem; with errors=remount-ro it goes read-only at once."""
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True, text=True, check=True)
    name = Path(device.stdout.strip()).name
    Path(f"/sys/fs/ext4/{name}/trigger_fs_error").write_text("torture\n")


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
    # A hang is a finding too: dump every thread's stack and exit before the parent gives up.
    faulthandler.dump_traceback_later(float(args.get("watchdog", 150)), exit=True)
    base = Path(args["dir"])
    url = args["url"]
    sub = {"dir": str(base), "url": url, "watchdog": 80}
    if scenario == "full":  # in a private mount namespace
        mnt = base / "mnt"
        _mount(mnt, "4m")
        first = _phase("pos_fill", {**sub, "data": str(mnt), "filler": True})
        (mnt / "filler").unlink(missing_ok=True)
        return _merge(first, asyncio.run(scenario_reopen(mnt, url)))
    if scenario == "readonly":  # in a private mount namespace, as root
        image, mnt = base / "ext4.img", base / "mnt"
        with open(image, "wb") as handle:
            handle.truncate(16 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        mnt.mkdir(exist_ok=True)
        subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mnt)], check=True)
        first = _phase("pos_readonly", {**sub, "data": str(mnt)})
        # The "reboot": unmount, check, mount again.
        subprocess.run(["umount", str(mnt)], check=True)
        fsck = subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True).returncode
        subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mnt)], check=True)
        report = _merge(first, asyncio.run(scenario_reopen(mnt, url)))
        report["fsck"] = fsck
        return report
    if scenario == "removed":
        (base / "removed").mkdir(exist_ok=True)
        return asyncio.run(scenario_removed(base / "removed", url))
    if scenario == "pos_fill":
        data = Path(args["data"])
        data.mkdir(parents=True, exist_ok=True)
        return asyncio.run(pos_fill(data, url, filler=bool(args.get("filler"))))
    if scenario == "pos_readonly":
        return asyncio.run(pos_readonly(Path(args["data"]), url))
    if scenario == "reopen":
        return asyncio.run(scenario_reopen(Path(args["data"]), url))
    raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    print("report", json.dumps(child(sys.argv[1], json.loads(sys.argv[2]))), flush=True)
