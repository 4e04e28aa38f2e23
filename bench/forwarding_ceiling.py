"""How fast could the Terminal drain if its store cost nothing?  An analysis aid, not a product path.

    python bench/forwarding_ceiling.py            # 3,000 stored payments, concurrency 8
    python bench/forwarding_ceiling.py -n 5000 --json

``bench_forwarding.py --terminal`` compares a real drain with bare httpx.  This
script runs the same drain three ways, each in a fresh child process against one
simulator, between two bare-httpx baselines:

* ``shipped``: the Terminal as it is;
* ``no_claim_writes``: the per-payment attempt and outcome records replaced by an
  in-memory STAND-IN that answers at once (claims still come from the real store);
* ``no_store``: claims served from memory too (the STAND-IN loads the backlog once
  before the clock starts).

The stand-ins exist only here, to bound what any store optimisation could gain:
what is left in ``no_store`` is the forwarder's own work on the event loop (workers,
rate limiter, events, logs) plus the Stripe transport.  Payments are not persisted by
the stand-ins, so the store is left as it was and nothing here checks exactly-once;
``bench_forwarding.py`` does that for the shipped drain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import bench_forwarding as bf  # noqa: E402

from offterm.core.logs import configure_logging  # noqa: E402

VARIANTS = ("shipped", "no_claim_writes", "no_store")


def _install_stand_ins(variant: str) -> None:
    """Replace AsyncStore methods in this (child) process with in-memory stand-ins."""
    from offterm.core import store_runner
    from offterm.core.contracts import PaymentState

    held: dict[str, Any] = {}
    real_claim = store_runner.AsyncStore.claim

    async def claim_and_remember(self: Any, *args: Any, **kwargs: Any) -> Any:
        batch = await real_claim(self, *args, **kwargs)
        held.update((p.offline_id, p) for p in batch)
        return batch

    async def attempt_at_once(self: Any, offline_id: str, owner: str, now: Any, steps: Any = ()) -> Any:
        p = held[offline_id]
        sent = {**p.steps_sent, **{s: (p.steps_sent.get(s, (now, now))[0], now) for s in steps}}
        held[offline_id] = p = replace(p, attempts=p.attempts + 1, steps_sent=sent)
        return p

    async def intent_at_once(self: Any, offline_id: str, owner: str, intent_id: str, now: Any) -> Any:
        held[offline_id] = p = replace(held[offline_id], intent_id=intent_id)
        return p

    async def generation_at_once(self: Any, offline_id: str, owner: str, now: Any, intent_id: Any) -> Any:
        p = held[offline_id]
        held[offline_id] = p = replace(p, key_generation=p.key_generation + 1, steps_sent={}, intent_id=intent_id)
        return p

    async def outcome_at_once(self: Any, offline_id: str, owner: str, to_state: Any, now: Any, **kw: Any) -> Any:
        p = held[offline_id]
        return replace(p, state=PaymentState(to_state), intent_id=kw.get("intent_id") or p.intent_id)

    store_runner.AsyncStore.claim = claim_and_remember  # type: ignore[method-assign]
    store_runner.AsyncStore.record_attempt = attempt_at_once  # type: ignore[method-assign]
    store_runner.AsyncStore.record_intent = intent_at_once  # type: ignore[method-assign]
    store_runner.AsyncStore.start_key_generation = generation_at_once  # type: ignore[method-assign]
    store_runner.AsyncStore.complete = outcome_at_once  # type: ignore[method-assign]
    if variant == "no_store":
        backlog: list[Any] = []

        async def claim_from_memory(self: Any, owner: str, limit: int, lease: float, now: Any, **kw: Any) -> Any:
            batch, backlog[:] = backlog[:limit], backlog[limit:]
            held.update((p.offline_id, p) for p in batch)
            return batch

        async def nothing_expired(self: Any, now: Any, owner_gone: Any = None) -> int:
            return 0

        real_open = store_runner.AsyncStore.open

        async def open_and_load(self: Any, keys: Any) -> None:
            await real_open(self, keys)
            backlog.extend(replace(p, state=PaymentState.FORWARDING) for p in await self.list_payments())

        store_runner.AsyncStore.open = open_and_load  # type: ignore[method-assign]
        store_runner.AsyncStore.claim = claim_from_memory  # type: ignore[method-assign]
        store_runner.AsyncStore.recover_expired_claims = nothing_expired  # type: ignore[method-assign]


async def _drain(url: str, data_dir: Path, concurrency: int) -> float:
    config = bf.terminal_config(url, data_dir, concurrency)
    async with bf.Terminal.from_config(config, plugin_manager=bf.make_plugin_manager(), background=False) as t:
        start = time.perf_counter()
        await t.forward_now(timeout=3600)  # the stand-ins persist nothing: what "remains" is meaningless
        return time.perf_counter() - start  # the clock starts after open: startup is not the drain


def _child(variant: str, url: str, data_dir: str, n: int, concurrency: int) -> None:
    if variant != "shipped":
        _install_stand_ins(variant)
    seconds, cpu = asyncio.run(_timed(_drain(url, Path(data_dir), concurrency)))
    report: dict[str, Any] = {"per_second": n / seconds, "client_cpu_ms": 1000 * cpu / n}
    print(json.dumps(report))


def claim_writes_alone(data_dir: Path, n: int) -> dict[str, float]:
    """The same records with nothing else running: claim everything, then one attempt and one outcome each.

    In this process; CPU and wall per payment.
    """
    from datetime import UTC, datetime

    from offterm.core.contracts import PaymentState

    store = bf.open_store(bf.make_plugin_manager(), data_dir)
    try:
        now = datetime.now(UTC)
        ids = [p.offline_id for p in store.claim("alone", n, 3600, now)]
        cpu, wall = time.thread_time(), time.perf_counter()
        for x in ids:
            store.record_attempt(x, "alone", now, ("create_and_confirm",))
        for x in ids:
            store.complete(x, "alone", PaymentState.FORWARDED, now)
        return {"cpu": 1000 * (time.thread_time() - cpu) / n, "wall": 1000 * (time.perf_counter() - wall) / n}
    finally:
        store.close()


async def _timed(drain: Any) -> tuple[float, float]:
    """(wall seconds of the drain, CPU seconds this process spent meanwhile, all threads)."""
    cpu = time.process_time()
    seconds = await drain
    return seconds, time.process_time() - cpu


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux), to see how busy the simulator was."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(n: int, concurrency: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    cpu: dict[str, tuple[float, float]] = {}  # (client, simulator) CPU ms per payment
    with tempfile.TemporaryDirectory() as tmp, bf.running_simulator(subprocess=True) as sim:
        sim_pid = sim.process.pid  # type: ignore[attr-defined]
        pristine = Path(tmp) / "backlog"
        bf.store_backlog(pristine, bf.make_submissions(n, tag="c"))
        asyncio.run(bf.drain_with_httpx(sim, bf.make_submissions(min(500, n), tag="w"), concurrency))
        sim_before = _cpu_seconds(sim_pid)
        before, client = asyncio.run(_timed(bf.drain_with_httpx(sim, bf.make_submissions(n, tag="a"), concurrency)))
        cpu["baseline"] = (1000 * client / n, 1000 * (_cpu_seconds(sim_pid) - sim_before) / n)
        for variant in VARIANTS:
            copy = Path(tmp) / variant
            shutil.copytree(pristine, copy)
            args = [sys.executable, __file__, "--child", variant, sim.url, str(copy), str(n), str(concurrency)]
            sim_before = _cpu_seconds(sim_pid)
            out = subprocess.run(args, check=True, capture_output=True, text=True).stdout  # noqa: S603
            report = json.loads(out.strip().splitlines()[-1])
            results[variant] = report["per_second"]
            cpu[variant] = (report["client_cpu_ms"], 1000 * (_cpu_seconds(sim_pid) - sim_before) / n)
        alone_dir = Path(tmp) / "alone"
        shutil.copytree(pristine, alone_dir)
        alone = claim_writes_alone(alone_dir, n)
        after = asyncio.run(bf.drain_with_httpx(sim, bf.make_submissions(n, tag="b"), concurrency))
    baseline = (before.per_second + after.per_second) / 2
    return {
        "payments": n,
        "concurrency": concurrency,
        "cpus": os.cpu_count(),
        "baseline_per_second": round(baseline, 1),
        **{f"{v}_per_second": round(results[v], 1) for v in VARIANTS},
        **{f"{v}_ratio": round(results[v] / baseline, 3) for v in VARIANTS},
        **{f"{k}_cpu_ms_per_payment": {"client": round(c, 2), "simulator": round(s, 2)} for k, (c, s) in cpu.items()},
        "claim_writes_alone_ms_per_payment": {k: round(v, 3) for k, v in alone.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Terminal drain with and without store work, vs bare httpx")
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging(json=True, level="warning", stream=open(os.devnull, "w"))  # noqa: SIM115
    if args.child:
        variant, url, data_dir, n, c = args.child
        _child(variant, url, data_dir, int(n), int(c))
        return
    r = run(args.n, args.concurrency)
    if args.json:
        print(json.dumps(r))
        return
    base_cpu = r["baseline_cpu_ms_per_payment"]
    print(
        f"{r['payments']} stored payments, concurrency {r['concurrency']}, {r['cpus']} CPUs; bare httpx "
        f"{r['baseline_per_second']}/s (CPU per payment: client {base_cpu['client']} ms, simulator "
        f"{base_cpu['simulator']} ms)"
    )
    for v in VARIANTS:
        c = r[f"{v}_cpu_ms_per_payment"]
        print(
            f"  {v:16} {r[f'{v}_per_second']:8}/s  ratio {r[f'{v}_ratio']}  "
            f"(CPU per payment: client {c['client']} ms, simulator {c['simulator']} ms)"
        )
    w = r["claim_writes_alone_ms_per_payment"]
    print(
        f"the attempt and outcome records alone (nothing else running): {w['cpu']} ms CPU, {w['wall']} ms wall "
        "per payment"
    )


if __name__ == "__main__":
    main()
