"""Terminal-level benchmarks, each a ratio against a baseline measured in the same run.

    python bench/bench_terminal.py            # 1,000 confirms, 100,000 backlog, 20 interpreter starts
    python bench/bench_terminal.py --quick    # a smoke run

1. Offline confirm throughput through the public Terminal API (FORCE_OFFLINE:
   policy check, durable SQLCipher commit, status refresh, event) against a
   bare sqlcipher3 single-row insert of the same payload with the same
   pragmas (WAL, synchronous=FULL, raw key).  Calls alternate between the two
   so both see the same disk.  Target: ratio >= 0.8.
2. The same with a 100,000-payment backlog already stored, against the
   empty-store figure.  Target: no more than 10% slower.
3. ``import offterm.core`` in a fresh interpreter against a bare interpreter
   start; heavy dependencies (SQLCipher, bleak, httpx) must not load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_storage import BENCH_KEY, BareInsert, make_payment, opened_store, prefill  # noqa: E402

from offterm.core import OfflineBehavior, Terminal  # noqa: E402
from offterm.core.logs import configure_logging  # noqa: E402
from offterm.sim.processor import start_simulator  # noqa: E402

KEY_VAR = "OFFTERM_BENCH_STORAGE_KEY"


def _config(data_dir: Path, sim_url: str) -> dict[str, Any]:
    return {
        "terminal": {"data_dir": str(data_dir), "offline_enabled": True},
        "plugins": {"autoload": False},
        "storage": {"key_provider": "env"},
        "storage_key": {"env": {"variable": KEY_VAR}},
        "tokens": {"http": {"url": sim_url + "/backend/connection_token"}},
        "forwarding": {"interval": 3600.0, "stripe": {"api_base": sim_url}},
        "acceptance": {"limits": {"max_amount": {"usd": 10_000_000}, "max_count": 10_000_000, "max_age_hours": 0}},
    }


async def _prepared(terminal: Terminal, i: int) -> Any:
    intent = await terminal.create_payment_intent(
        {"amount": 1000 + i, "currency": "usd", "metadata": {"order": f"order-{i}", "lane": "3"}},
        offline_behavior=OfflineBehavior.FORCE_OFFLINE,
    )
    return await terminal.collect_payment_method(intent)


async def _interleaved(empty_dir: Path, full_dir: Path, sim_url: str, n: int) -> dict[str, float]:
    """Seconds per confirm (empty store, full store) and per bare insert, calls rotated so all see the same disk."""
    bare = BareInsert(empty_dir)
    spent = {"empty": 0.0, "full": 0.0, "bare": 0.0}
    async with (
        Terminal.from_config(_config(empty_dir, sim_url), background=False) as empty,
        Terminal.from_config(_config(full_dir, sim_url), background=False) as full,
    ):
        for terminal in (empty, full):
            [reader] = await terminal.discover_readers()
            await terminal.connect_reader(reader)  # online once: account and reader cached
        for i in range(n):
            intents = {"empty": await _prepared(empty, i), "full": await _prepared(full, i)}
            payment = make_payment(i)
            order = ("empty", "full", "bare")
            for name in order[i % 3 :] + order[: i % 3]:
                t = time.perf_counter()
                if name == "bare":
                    bare.insert(payment)
                else:
                    await (empty if name == "empty" else full).confirm_payment_intent(intents[name])
                spent[name] += time.perf_counter() - t
        await empty.close(timeout=0)
        await full.close(timeout=0)
    bare.close()
    return {k: v / n for k, v in spent.items()}


def confirm_throughput(n: int, backlog: int, sim_url: str, where: str | None = None) -> dict[str, float]:
    """``where``: the directory (so the filesystem and disk) the stores and the baseline live on."""
    os.environ[KEY_VAR] = BENCH_KEY.hex()
    with (
        tempfile.TemporaryDirectory(dir=where) as empty_dir,
        tempfile.TemporaryDirectory(dir=where) as full_dir,
    ):
        with opened_store(Path(full_dir)) as store:
            prefill(store, backlog)
        per = asyncio.run(_interleaved(Path(empty_dir), Path(full_dir), sim_url, n))
    return {
        "confirms_per_s_empty": 1 / per["empty"],
        "confirms_per_s_backlog": 1 / per["full"],
        "bare_inserts_per_s": 1 / per["bare"],
        "ratio_empty": per["bare"] / per["empty"],
        "ratio_backlog": per["bare"] / per["full"],
        "backlog_vs_empty": per["empty"] / per["full"],
    }


def import_cost(runs: int) -> dict[str, float]:
    def once(code: str) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=tempfile.gettempdir())
        return time.perf_counter() - t

    heavy = ("bleak", "sqlcipher3", "httpx", "sqlalchemy", "uvicorn", "starlette")
    check = f"import sys, offterm.core; assert not [m for m in {heavy!r} if m in sys.modules]"
    bare, core = [], []
    for _ in range(runs):
        bare.append(once("pass"))
        core.append(once(check))
    return {
        "bare_ms": statistics.median(bare) * 1000,
        "core_ms": statistics.median(core) * 1000,
        "ratio": statistics.median(core) / statistics.median(bare),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--dir",
        help="put the stores and the baseline here: the disk under test (default: the system temp dir). "
        "docs/benchmarks.md shows runs on the VM disk and on slower, POS-like storage",
    )
    args = parser.parse_args(argv)
    n, backlog, runs = (200, 5_000, 5) if args.quick else (1_000, 100_000, 20)
    configure_logging(level="warning")  # as a deployment would; info lines to a console cost more than a commit
    sim = start_simulator()
    try:
        c = confirm_throughput(n, backlog, sim.url, args.dir)
    finally:
        sim.stop()
    imp = import_cost(runs)
    print(
        f"| offline confirm via Terminal API vs bare sqlcipher3 insert (empty store, n={n}) | "
        f"{c['confirms_per_s_empty']:.0f}/s vs {c['bare_inserts_per_s']:.0f}/s | "
        f"{c['ratio_empty']:.2f} | >= 0.8 |"
    )
    print(
        f"| same, {backlog:,} payments already stored | "
        f"{c['confirms_per_s_backlog']:.0f}/s vs {c['bare_inserts_per_s']:.0f}/s | "
        f"{c['ratio_backlog']:.2f} | >= 0.8 |"
    )
    print(
        f"| confirm with {backlog:,} stored vs empty store | "
        f"{c['confirms_per_s_backlog']:.0f}/s vs {c['confirms_per_s_empty']:.0f}/s | "
        f"{c['backlog_vs_empty']:.2f} | >= 0.9 |"
    )
    print(
        f"| `import offterm.core` vs bare interpreter start (median of {runs}) | "
        f"{imp['core_ms']:.0f} ms vs {imp['bare_ms']:.0f} ms | {imp['ratio']:.2f} | no heavy deps loaded |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
