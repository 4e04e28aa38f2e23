"""How soon stored payments move again: after the network returns, and after a crash.

    python bench/bench_forwarding_recovery.py              # both, 10 network returns, 3 crashes
    python bench/bench_forwarding_recovery.py --quick      # 3 network returns, 1 crash of a 500 backlog
    python bench/bench_forwarding_recovery.py --network    # only the network return
    python bench/bench_forwarding_recovery.py --restart    # only the restart after a crash
    python bench/bench_forwarding_recovery.py --json

**Network return -> first forwarded payment.**  A Terminal with offterm's
default settings (``probe_min_interval`` 0.5 s, ``probe_max_interval`` 1 s,
the default forwarding policy) reaches the simulator through the network
fault proxy (``offterm.sim.netproxy``): API, device API, connection tokens and
probes alike.  The network goes down; four payments (the forwarder's
concurrency, so every failing round tries each) are taken, stored offline
after their online attempt fails; forwarding rounds fail until every stored
payment has failed nine times or more and its next retry lies at least 10 s
ahead (minutes, typically: full jitter up to 256-300 s); the probe backs off
to its cap.  Then the network returns, and the clock runs from that moment to
the first ``payment_intent_forwarded`` event.  Baselines, same run: a bare
probe round trip (one GET through the proxy on a fresh connection) and one
payment forwarded while online (stored with FORCE_OFFLINE, from its storing
to its event).

**Restart after a crash -> first forwarded payment.**  A child process runs a
Terminal draining a backlog (``rate_limit`` 100, concurrency 8, the default
120 s lease); it is SIGKILLed mid-drain, with claims held and requests in
flight.  A new process starts on the same data directory; the clock runs
from its spawn to its first forwarded payment (the interpreter's start and
imports included; from ``Terminal.open`` too).  Baseline: the same start on
a backlog of the same size that no process touched yet (nothing to recover).
After the second process has drained everything, every payment must have
exactly one successful charge on the simulator's ledger.

Times across processes use ``time.monotonic()`` (CLOCK_MONOTONIC: one clock
for every process on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))

import bench_forwarding as bf  # noqa: E402

from offterm.core import NetworkStatus, OfflineBehavior, Terminal, hookimpl  # noqa: E402
from offterm.core.logs import configure_logging  # noqa: E402
from offterm.sim.netproxy import FaultProxy  # noqa: E402
from offterm.sim.processor import running_simulator  # noqa: E402
from offterm.testing import make_plugin_manager, open_store  # noqa: E402

TARGET_SECONDS = 2.0


class Forwarded:
    """A hook listener: when each payment_intent_forwarded arrived (monotonic), and for which payment."""

    def __init__(self, say: bool = False) -> None:
        self.events: list[tuple[float, str, str | None]] = []
        self._say = say

    @hookimpl
    def offterm_on_payment_intent_forwarded(self, intent: Any, error: Any) -> None:
        event = (time.monotonic(), intent.offline_id, None if error is None else error.code)
        self.events.append(event)
        if self._say:
            _say(forwarded=event[1], at=event[0], error=event[2])


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _default_config(url: str, data_dir: Path, **forwarding: Any) -> dict[str, Any]:
    """offterm's defaults against ``url``: only where things are, plus ``forwarding`` overrides."""
    return {
        "terminal": {"data_dir": str(data_dir), "offline_enabled": True},
        "plugins": {"autoload": False, "strict": True},
        "reader": {"transport": "simulated"},
        "storage": {"backend": "sqlcipher", "key_provider": "file"},
        "tokens": {"providers": ["http"], "http": {"url": url + "/backend/connection_token"}},
        "forwarding": {"transport": "stripe", **forwarding, "stripe": {"api_base": url}},
    }


async def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _pay(terminal: Terminal, amount: int, behavior: OfflineBehavior = OfflineBehavior.PREFER_ONLINE) -> Any:
    intent = await terminal.create_payment_intent({"amount": amount, "currency": "usd"}, offline_behavior=behavior)
    reader = terminal.connected_reader
    assert reader is not None
    reader.present_card("visa")  # type: ignore[attr-defined]  # the simulated reader
    intent = await terminal.collect_payment_method(intent)
    return await terminal.confirm_payment_intent(intent)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- 2. network return -> first forwarded payment ---------------------------------------------------


async def _one_return(proxy: FaultProxy, data_dir: Path, payments: int) -> dict[str, Any]:
    listener = Forwarded()
    pm = make_plugin_manager(plugins={"bench-listener": listener})
    async with Terminal.from_config(_default_config(proxy.url, data_dir), plugin_manager=pm) as terminal:
        [reader] = (await terminal.discover_readers())[:1]
        await terminal.connect_reader(reader)  # online: authenticates, so the account and session are known
        await _until(lambda: terminal.network_status is NetworkStatus.ONLINE, 10, "ONLINE at start")

        proxy.set_mode("down")
        stored = [await _pay(terminal, 700 + k) for k in range(payments)]
        if not all(s.requires_upload for s in stored):
            raise RuntimeError("a payment went online while the network was down")
        await _until(lambda: terminal.network_status is NetworkStatus.OFFLINE, 10, "OFFLINE")

        # Forwarding rounds fail while down until every payment has failed often enough that its next retry
        # (full jitter: uniform up to base_delay * 2^(attempts-1), at most max_delay) lies well ahead.
        ahead: list[float] = []
        attempts: list[int] = []
        while not attempts or min(attempts) < 9 or min(ahead) < 10:
            if attempts and max(attempts) >= 17:
                raise RuntimeError(f"retries never all lay 10 s ahead: {sorted(ahead)}")
            await terminal.forwarder.run_round(ignore_backoff=True)
            now = datetime.now(UTC)
            waiting = await terminal.list_stored_payments()
            if len(waiting) != payments:
                raise RuntimeError(f"a payment left the queue while down: {[p.state.value for p in waiting]}")
            ahead = [(p.next_attempt_at - now).total_seconds() if p.next_attempt_at else 0.0 for p in waiting]
            attempts = [p.attempts for p in waiting]
        network = terminal.network
        await _until(lambda: network.probe_delay >= 1.0, 30, "the probe backing off to its cap")
        probes_before = network.probes
        await asyncio.sleep(3.0)  # a few capped probe intervals with the network down
        if network.probes <= probes_before or terminal.network_status is not NetworkStatus.OFFLINE:
            raise RuntimeError("the probe did not keep running while down")

        restored = time.monotonic()
        proxy.set_mode("pass")
        await _until(lambda: len(listener.events) >= payments, 60, "every stored payment forwarded")
        first = min(at for at, _, _ in listener.events) - restored
        if any(code is not None for _, _, code in listener.events):
            raise RuntimeError(f"forwarding failed after the network returned: {listener.events}")

        # Baseline: one payment forwarded while online, from its storing to its event.
        before = len(listener.events)
        taken = time.monotonic()
        online = await _pay(terminal, 900, OfflineBehavior.FORCE_OFFLINE)
        await _until(lambda: len(listener.events) > before, 30, "the online forward")
        online_forward = listener.events[-1][0] - taken
        ids = [s.offline_id for s in stored] + [online.offline_id]
    return {
        "first_forwarded_s": first,
        "online_forward_s": online_forward,
        "min_retry_ahead_s": min(ahead),
        "median_retry_ahead_s": statistics.median(ahead),
        "attempts": attempts,
        "offline_ids": ids,
    }


async def _bare_probe_rtt(url: str, times: int) -> list[float]:
    """One GET /healthcheck on a fresh connection, as the transport's probe does."""
    out: list[float] = []
    for _ in range(times):
        async with httpx.AsyncClient(timeout=5.0) as client:
            start = time.monotonic()
            resp = await client.get(url + "/healthcheck")
            out.append(time.monotonic() - start)
            resp.raise_for_status()
    return out


@dataclass(frozen=True)
class NetworkReturn:
    repeats: int
    payments_per_repeat: int
    p50_s: float
    max_s: float
    target_met: bool
    online_forward_p50_s: float
    bare_probe_p50_s: float
    ratio_to_online_forward: float
    min_retry_ahead_s: float
    median_retry_ahead_s: float
    attempts_before_return: list[int]
    duplicates: int


def network_return(repeats: int = 10, payments: int = 4) -> NetworkReturn:
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, running_simulator(subprocess=True) as sim:
        with FaultProxy(sim.port) as proxy:
            for i in range(repeats):
                runs.append(asyncio.run(_one_return(proxy, Path(tmp) / f"pos{i}", payments)))
            probe = asyncio.run(_bare_probe_rtt(proxy.url, 20))
        dup = bf.duplicates(sim, [oid for r in runs for oid in r["offline_ids"]])
    if dup["never"]:
        raise RuntimeError(f"{dup['never']} forwarded payments have no charge")
    firsts = [r["first_forwarded_s"] for r in runs]
    online = statistics.median(r["online_forward_s"] for r in runs)
    return NetworkReturn(
        repeats=repeats,
        payments_per_repeat=payments,
        p50_s=round(statistics.median(firsts), 3),
        max_s=round(max(firsts), 3),
        target_met=max(firsts) <= TARGET_SECONDS and dup["twice_or_more"] == 0,
        online_forward_p50_s=round(online, 4),
        bare_probe_p50_s=round(statistics.median(probe), 4),
        ratio_to_online_forward=round(statistics.median(firsts) / online, 1),
        min_retry_ahead_s=round(min(r["min_retry_ahead_s"] for r in runs), 1),
        median_retry_ahead_s=round(statistics.median(r["median_retry_ahead_s"] for r in runs), 1),
        attempts_before_return=sorted({a for r in runs for a in r["attempts"]}),
        duplicates=dup["twice_or_more"],
    )


# -- 3. restart after a crash -> first forwarded payment ----------------------------------------------


async def _child(config: dict[str, Any]) -> None:
    """A POS process: open the Terminal (background forwarding), report events, drain, close."""
    listener = Forwarded(say=True)
    terminal = Terminal.from_config(config, plugin_manager=make_plugin_manager(plugins={"bench-listener": listener}))
    _say(opening=time.monotonic())
    async with terminal:
        stop = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
        while not stop.done() and (await terminal.refresh_offline_status()).sdk.offline_payments_count:  # noqa: ASYNC110 - polls the store
            await asyncio.sleep(0.05)
        report = await terminal.close(timeout=0)
    _say(done=True, remaining=report.remaining, needs_attention=report.needs_attention)
    os._exit(0)  # the stdin reader thread may still block


class _Pos:
    """A child POS process; its JSON lines as they come, with the monotonic time it was spawned at."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.lines: list[dict[str, Any]] = []
        self.spawned = 0.0
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> _Pos:
        self.spawned = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--child",
            json.dumps(self.config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            if raw.startswith(b"{"):
                self.lines.append(json.loads(raw))

    def of(self, key: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if key in line]

    def first_forwarded(self) -> dict[str, float]:
        first = self.of("forwarded")[0]["at"]
        return {"from_spawn_s": first - self.spawned, "from_open_s": first - self.of("opening")[0]["opening"]}

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            rc = await self.proc.wait()
            if self._reader is not None:
                await self._reader
        return rc

    async def stop(self) -> None:
        """Ask it to close (no flush) and wait for it to exit."""
        assert self.proc is not None and self.proc.stdin is not None
        if self.proc.returncode is None:
            self.proc.stdin.write(b"stop\n")
            await self.proc.stdin.drain()
        await self.wait(60)

    async def kill(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.wait(60)


async def _one_restart(url: str, tmp: Path, backlog: int, kill_after: int, i: int) -> dict[str, Any]:
    crashed = tmp / f"crash{i}"
    clean = tmp / f"clean{i}"
    payments = bf.make_payments(backlog)
    bf.store_backlog(crashed, payments)
    others = bf.make_payments(backlog)  # the same backlog, its own payments: the ledger tells them apart
    bf.store_backlog(clean, others)
    settings = {"rate_limit": 100.0, "concurrency": 8}

    baseline = await _Pos(_default_config(url, clean, **settings)).start()
    try:
        await _until(lambda: bool(baseline.of("forwarded")), 60, "the baseline's first forwarded payment")
    finally:
        await baseline.stop()
    clean_start = baseline.first_forwarded()

    first = await _Pos(_default_config(url, crashed, **settings)).start()
    try:
        await _until(lambda: len(first.of("forwarded")) >= kill_after, 120, "the drain to get going")
    finally:
        await first.kill()  # SIGKILL mid-drain: claims held, requests in flight
    forwarded_before = len(first.of("forwarded"))
    left = _states(crashed)  # what the crash left: claims held (forwarding), requests sent (outcome_unknown)

    second = await _Pos(_default_config(url, crashed, **settings)).start()
    try:
        await _until(lambda: bool(second.of("done")), 600, "the second process to drain the backlog")
    finally:
        if not second.of("done"):
            await second.kill()
    await second.wait(60)
    done = second.of("done")[0]
    if done["remaining"] or done["needs_attention"]:
        raise RuntimeError(f"after the restart: {done}")
    return {
        "restart": second.first_forwarded(),
        "clean": clean_start,
        "forwarded_before_kill": forwarded_before,
        "claimed_at_kill": left.get("forwarding", 0),
        "crashed_ids": [p.offline_id for p in payments],
        "clean_ids": [p.offline_id for p in others],
    }


def _states(data_dir: Path) -> Counter[str]:
    store = open_store(make_plugin_manager(), data_dir)
    try:
        return Counter(p.state.value for p in store.list_payments())
    finally:
        store.close()


@dataclass(frozen=True)
class Restart:
    repeats: int
    backlog: int
    forwarded_before_kill: list[int]
    #: payments the killed process held claimed (in state forwarding) when it died
    claimed_at_kill: list[int]
    restart_from_spawn_s: list[float]
    restart_from_open_s: list[float]
    clean_from_spawn_s: list[float]
    clean_from_open_s: list[float]
    ratio_to_clean: float
    target_met: bool
    duplicates: int
    not_charged: int


def restart_after_crash(repeats: int = 3, backlog: int = 2000, kill_after: int = 300) -> Restart:
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, running_simulator(subprocess=True) as sim:
        for i in range(repeats):
            runs.append(asyncio.run(_one_restart(sim.url, Path(tmp), backlog, kill_after, i)))
        counts = sim.successful_charges()
    crashed = [oid for r in runs for oid in r["crashed_ids"]]
    clean_ids = [oid for r in runs for oid in r["clean_ids"]]
    twice = sum(1 for oid in crashed + clean_ids if counts.get(oid, 0) > 1)
    never = sum(1 for oid in crashed if counts.get(oid, 0) == 0)
    worst = max(r["restart"]["from_spawn_s"] for r in runs)
    restart = statistics.median(r["restart"]["from_spawn_s"] for r in runs)
    clean = statistics.median(r["clean"]["from_spawn_s"] for r in runs)
    return Restart(
        repeats=repeats,
        backlog=backlog,
        forwarded_before_kill=[r["forwarded_before_kill"] for r in runs],
        claimed_at_kill=[r["claimed_at_kill"] for r in runs],
        restart_from_spawn_s=[round(r["restart"]["from_spawn_s"], 3) for r in runs],
        restart_from_open_s=[round(r["restart"]["from_open_s"], 3) for r in runs],
        clean_from_spawn_s=[round(r["clean"]["from_spawn_s"], 3) for r in runs],
        clean_from_open_s=[round(r["clean"]["from_open_s"], 3) for r in runs],
        ratio_to_clean=round(restart / clean, 2),
        target_met=worst <= TARGET_SECONDS and twice == 0 and never == 0,
        duplicates=twice,
        not_charged=never,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Time to the first forwarded payment after a network return / crash")
    parser.add_argument("--network", action="store_true", help="only the network return")
    parser.add_argument("--restart", action="store_true", help="only the restart after a crash")
    parser.add_argument("--repeats", type=int, default=10, help="network returns")
    parser.add_argument("--crashes", type=int, default=3, help="crash-and-restart runs")
    parser.add_argument("--backlog", type=int, default=2000, help="stored payments per crash run")
    parser.add_argument("--quick", action="store_true", help="3 network returns, 1 crash of a 500 backlog")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging(json=True, level="warning", stream=open(os.devnull, "w"))  # noqa: SIM115
    if args.child:
        asyncio.run(_child(json.loads(args.child)))
        return
    both = not (args.network or args.restart)
    repeats, crashes, backlog = (3, 1, 500) if args.quick else (args.repeats, args.crashes, args.backlog)
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    if both or args.network:
        results["network_return"] = asdict(network_return(repeats))
    if both or args.restart:
        results["restart"] = asdict(restart_after_crash(crashes, backlog, kill_after=min(300, backlog // 4)))
    if args.json:
        print(json.dumps(results))
        return
    if "network_return" in results:
        r = results["network_return"]
        print(
            f"network return -> first forwarded payment ({r['repeats']} runs, default settings): p50 {r['p50_s']} s, "
            f"max {r['max_s']} s (target <= {TARGET_SECONDS} s: {r['target_met']}); baselines: one payment "
            f"forwarded while online {r['online_forward_p50_s']} s (ratio {r['ratio_to_online_forward']}), bare "
            f"probe round trip {r['bare_probe_p50_s']} s; retries were {r['min_retry_ahead_s']} s ahead or more "
            f"(median {r['median_retry_ahead_s']} s) after "
            f"{r['attempts_before_return']} failed attempts; charged twice: {r['duplicates']}"
        )
    if "restart" in results:
        r = results["restart"]
        print(
            f"restart after SIGKILL mid-drain ({r['repeats']} runs, backlog {r['backlog']}, killed after "
            f"{r['forwarded_before_kill']} forwarded, holding {r['claimed_at_kill']} claims) -> first forwarded "
            "payment, from spawn: "
            f"{r['restart_from_spawn_s']} s (from Terminal.open: {r['restart_from_open_s']} s; target <= "
            f"{TARGET_SECONDS} s: {r['target_met']}); clean start: {r['clean_from_spawn_s']} s (from open: "
            f"{r['clean_from_open_s']} s); ratio {r['ratio_to_clean']}; charged twice: {r['duplicates']}, "
            f"not charged: {r['not_charged']}"
        )


if __name__ == "__main__":
    main()
