"""Forwarding benchmark: the Stripe transport vs a bare httpx client, same simulator, same run.

    python bench/bench_forwarding.py                  # 10,000 submissions, concurrency 8
    python bench/bench_forwarding.py --quick          # 1,000
    python bench/bench_forwarding.py -n 5000 -c 16 --json
    python bench/bench_forwarding.py --terminal       # the whole Terminal draining 10,000 stored payments
    python bench/bench_forwarding.py --rss            # peak RSS draining 100,000 vs 10,000 stored payments
    python bench/bench_forwarding.py --terminal --rss --quick   # CI-sized: 1,000 / 2,000 vs 20,000

Both sides send the same request sequence per payment (create intent,
card_present payment method, confirm) with the same concurrency and the same
connection limit to one simulator (a child process, so the client's event
loop does not share a GIL with the server).  The figure that matters is the
ratio transport/baseline, measured here, never an absolute rate.

Importable: :func:`drain_with_transport` and :func:`drain_with_httpx` take a
running simulator and a list of submissions; :func:`drain_with_terminal`
drains a real encrypted store through ``Terminal.forward_now`` (store claims,
attempt records, outcomes, events and all) and :func:`compare_terminal` sets
it against the bare-httpx baseline.  :func:`peak_rss_of_drain` measures one
drain in a child process (``--rss-child``), so the parent's own memory never
counts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from offterm.core import Terminal
from offterm.core.contracts import ConnectionToken, NewPayment, Submission
from offterm.core.logs import configure_logging
from offterm.core.models import CaptureMethod
from offterm.plugins.transport.stripe import StripeTransport
from offterm.sim.processor import SimHandle, running_simulator
from offterm.sim.processor.testing import card_result
from offterm.testing import make_plugin_manager, open_store

STRIPE_VERSION = "2023-08-16"


@dataclass(frozen=True)
class DrainResult:
    name: str
    payments: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.payments / self.seconds if self.seconds else 0.0


def make_submissions(n: int, *, tag: str = "") -> list[Submission]:
    """``n`` stored payments with sealed test cards (sealing is not timed)."""
    card = card_result("4242424242424242")
    stored_at = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Submission(
            offline_id=f"offpi_{tag}{i:07d}_{uuid.uuid4().hex[:8]}",
            idempotency_key="offterm-" + uuid.uuid4().hex,
            amount=100 + i % 5000,
            currency="usd",
            capture_method=CaptureMethod.AUTOMATIC,
            metadata={"order": f"order-{i}", "lane": "3"},
            card=card,
            stored_at=stored_at,
        )
        for i in range(n)
    ]


async def _pool(items: Sequence[Submission], concurrency: int, work: Callable[[Submission], Awaitable[None]]) -> None:
    queue: asyncio.Queue[Submission] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            await work(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def drain_with_transport(sim: SimHandle, subs: Sequence[Submission], concurrency: int) -> DrainResult:
    """Submit every payment through StripeTransport.submit."""
    transport = StripeTransport(sim.url, max_connections=concurrency, timeout=60)
    try:
        session = await transport.authenticate(ConnectionToken(sim.connection_token()))

        async def one(sub: Submission) -> None:
            await transport.submit(session, sub)

        start = time.perf_counter()
        await _pool(subs, concurrency, one)
        elapsed = time.perf_counter() - start
    finally:
        await transport.close()
    return DrainResult("transport", len(subs), elapsed)


async def drain_with_httpx(sim: SimHandle, subs: Sequence[Submission], concurrency: int) -> DrainResult:
    """The baseline: the same three requests per payment, written directly with httpx."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=sim.url, limits=limits, timeout=60) as client:
        token = sim.connection_token()
        resp = await client.post("/device/v1/sessions", headers={"Authorization": f"Bearer {token}"})
        resp.raise_for_status()
        bearer = {"Authorization": f"Bearer {resp.json()['secret']}", "Stripe-Version": STRIPE_VERSION}
        form = {"Content-Type": "application/x-www-form-urlencoded"}

        async def one(sub: Submission) -> None:
            create = {
                "amount": sub.amount,
                "currency": sub.currency,
                "capture_method": "automatic",
                "payment_method_types[0]": "card_present",
                **{f"metadata[{k}]": v for k, v in sub.metadata.items()},
                "metadata[offterm_offline_id]": sub.offline_id,
                "metadata[offterm_stored_at]": sub.stored_at.isoformat() if sub.stored_at else "",
            }
            r = await client.post(
                "/v1/payment_intents",
                content=urlencode(create),
                headers={**bearer, **form, "Idempotency-Key": sub.idempotency_key + "-create"},
            )
            intent_id = r.json()["id"]
            pm = {
                "type": "card_present",
                "card_present[encrypted_data]": base64.b64encode(sub.card.encrypted_card_data).decode(),
                "card_present[key_serial]": sub.card.key_serial,
                "card_present[encryption_scheme]": sub.card.encryption_scheme,
            }
            r = await client.post(
                "/device/v1/payment_methods",
                content=urlencode(pm),
                headers={**bearer, **form, "Idempotency-Key": sub.idempotency_key + "-payment_method"},
            )
            r = await client.post(
                f"/v1/payment_intents/{intent_id}/confirm",
                content=urlencode({"payment_method": r.json()["id"]}),
                headers={**bearer, **form, "Idempotency-Key": sub.idempotency_key + "-confirm"},
            )
            if r.json().get("status") != "succeeded":
                raise RuntimeError("baseline confirm failed")

        start = time.perf_counter()
        await _pool(subs, concurrency, one)
        elapsed = time.perf_counter() - start
    return DrainResult("httpx", len(subs), elapsed)


@dataclass(frozen=True)
class Comparison:
    payments: int
    concurrency: int
    transport_per_second: float
    baseline_per_second: float
    ratio: float
    charged_once: bool


def compare(n: int = 10_000, concurrency: int = 8, rounds: int = 2) -> Comparison:
    """Alternate baseline and transport ``rounds`` times on one simulator; best of each."""
    per = max(1, n // rounds)
    best: dict[str, float] = {"transport": 0.0, "httpx": 0.0}
    with running_simulator(subprocess=True) as sim:
        asyncio.run(drain_with_transport(sim, make_submissions(min(200, per), tag="w"), concurrency))  # warm up
        expected: list[str] = []
        for r in range(rounds):
            for name, drain in (("httpx", drain_with_httpx), ("transport", drain_with_transport)):
                subs = make_submissions(per, tag=f"{name[0]}{r}")
                if name == "transport":
                    expected += [s.offline_id for s in subs]
                result = asyncio.run(drain(sim, subs, concurrency))
                best[name] = max(best[name], result.per_second)
        counts = sim.successful_charges()
        charged_once = all(counts.get(oid) == 1 for oid in expected)
    return Comparison(
        payments=per * rounds,
        concurrency=concurrency,
        transport_per_second=round(best["transport"], 1),
        baseline_per_second=round(best["httpx"], 1),
        ratio=round(best["transport"] / best["httpx"], 3) if best["httpx"] else 0.0,
        charged_once=charged_once,
    )


# -- the whole Terminal: encrypted store -> forwarder -> transport ---------------------------

SIM_ACCOUNT = "acct_1SimulatedOfftrm"


def store_backlog(data_dir: Path, subs: Sequence[Submission]) -> None:
    """Put ``subs`` in a real SQLCipher store, as stored offline payments taken just now (not timed)."""
    now = datetime.now(UTC)
    store = open_store(make_plugin_manager(), data_dir)
    try:
        for sub in subs:
            store.store(
                NewPayment(
                    offline_id=sub.offline_id,
                    idempotency_key=sub.idempotency_key,
                    amount=sub.amount,
                    currency=sub.currency,
                    capture_method=sub.capture_method,
                    metadata=sub.metadata,
                    account_id=SIM_ACCOUNT,
                    livemode=False,
                    stored_at=now,
                    card=sub.card,
                )
            )
    finally:
        store.close()


def terminal_config(url: str, data_dir: Path, concurrency: int) -> dict[str, Any]:
    """Same concurrency and connection limit as the baseline; no rate limit (the baseline has none)."""
    return {
        "terminal": {"data_dir": str(data_dir), "offline_enabled": True},
        "plugins": {"autoload": False},
        "reader": {"transport": "simulated"},
        "storage": {"backend": "sqlcipher", "key_provider": "file"},
        "tokens": {"providers": ["http"], "http": {"url": url + "/backend/connection_token"}},
        "forwarding": {
            "transport": "stripe",
            "concurrency": concurrency,
            "rate_limit": 100_000.0,  # the highest accepted: effectively none
            "batch_size": max(50, 4 * concurrency),
            "stripe": {"api_base": url, "timeout": 60.0, "max_connections": concurrency},
        },
    }


async def drain_with_terminal(sim: SimHandle, data_dir: Path, payments: int, concurrency: int) -> DrainResult:
    """``Terminal.forward_now`` over a stored backlog: claims, attempt records, outcomes, events."""
    config = terminal_config(sim.url, data_dir, concurrency)
    async with Terminal.from_config(config, plugin_manager=make_plugin_manager(), background=False) as terminal:
        start = time.perf_counter()
        remaining = await terminal.forward_now(timeout=24 * 3600)
        elapsed = time.perf_counter() - start
        attention = terminal.offline_status.sdk.needs_attention_count
    if remaining or attention:
        raise RuntimeError(f"{remaining} payments were not forwarded, {attention} need attention")
    return DrainResult("terminal", payments, elapsed)


@dataclass(frozen=True)
class TerminalComparison:
    payments: int
    concurrency: int
    terminal_per_second: float
    baseline_per_second: float
    ratio: float
    charged_once: bool


def compare_terminal(n: int = 10_000, concurrency: int = 8) -> TerminalComparison:
    """Baseline, Terminal drain, baseline again on one simulator; the Terminal against the baselines' mean."""
    with tempfile.TemporaryDirectory() as tmp, running_simulator(subprocess=True) as sim:
        data_dir = Path(tmp) / "pos"
        stored = make_submissions(n, tag="t")
        store_backlog(data_dir, stored)
        asyncio.run(drain_with_httpx(sim, make_submissions(min(500, n), tag="w"), concurrency))  # warm up
        before = asyncio.run(drain_with_httpx(sim, make_submissions(n, tag="a"), concurrency))
        terminal = asyncio.run(drain_with_terminal(sim, data_dir, n, concurrency))
        after = asyncio.run(drain_with_httpx(sim, make_submissions(n, tag="b"), concurrency))
        counts = sim.successful_charges()
        charged_once = all(counts.get(s.offline_id) == 1 for s in stored)
    baseline = (before.per_second + after.per_second) / 2
    return TerminalComparison(
        payments=n,
        concurrency=concurrency,
        terminal_per_second=round(terminal.per_second, 1),
        baseline_per_second=round(baseline, 1),
        ratio=round(terminal.per_second / baseline, 3) if baseline else 0.0,
        charged_once=charged_once,
    )


# -- peak memory while draining a backlog ------------------------------------------------------------


def own_peak_rss_kib() -> int:
    """This process's own peak RSS in KiB: ``VmHWM`` where Linux has it, else ``ru_maxrss``.

    Not ``ru_maxrss`` on Linux: it survives ``exec``, so a child spawned by a
    parent that holds a large backlog in memory reports the *parent's* peak
    (the kernel folds the pre-exec address space into it).  ``VmHWM`` belongs
    to the address space the child runs in, nothing else.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _rss_child(url: str, data_dir: str, payments: int, concurrency: int) -> None:
    """In a fresh process: drain the store, print its own peak RSS (KiB) as JSON."""
    result = asyncio.run(drain_with_terminal(_Remote(url), Path(data_dir), payments, concurrency))
    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "peak_rss_kib": own_peak_rss_kib(),
                "ru_maxrss_kib": inherited,
                "seconds": round(result.seconds, 1),
            }
        )
    )


class _Remote:
    """Enough of a SimHandle for drain_with_terminal in the child: the URL."""

    def __init__(self, url: str) -> None:
        self.url = url


def peak_rss_of_drain(sim: SimHandle, payments: int, concurrency: int) -> dict[str, Any]:
    """Store ``payments``, then drain them in a child process; its peak RSS and time."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "pos"
        store_backlog(data_dir, make_submissions(payments, tag=f"r{payments}_"))
        args = [sys.executable, __file__, "--rss-child", sim.url, str(data_dir), str(payments), str(concurrency)]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout  # noqa: S603
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["payments"] = payments
    return result


@dataclass(frozen=True)
class RssComparison:
    small: int
    large: int
    #: the drain process's own peak
    small_peak_mib: float
    large_peak_mib: float
    difference_mib: float
    within_30_mib: bool
    #: ``ru_maxrss`` of each child, for comparison: it includes the parent's peak at spawn (see own_peak_rss_kib)
    small_ru_maxrss_mib: float
    large_ru_maxrss_mib: float


def compare_rss(small: int = 10_000, large: int = 100_000, concurrency: int = 8) -> RssComparison:
    """Peak RSS of draining ``large`` vs ``small`` stored payments (each in its own process, same simulator)."""
    with running_simulator(subprocess=True) as sim:
        a = peak_rss_of_drain(sim, small, concurrency)
        b = peak_rss_of_drain(sim, large, concurrency)
    small_mib = a["peak_rss_kib"] / 1024
    large_mib = b["peak_rss_kib"] / 1024
    return RssComparison(
        small=small,
        large=large,
        small_peak_mib=round(small_mib, 1),
        large_peak_mib=round(large_mib, 1),
        difference_mib=round(large_mib - small_mib, 1),
        within_30_mib=large_mib - small_mib <= 30,
        small_ru_maxrss_mib=round(a["ru_maxrss_kib"] / 1024, 1),
        large_ru_maxrss_mib=round(b["ru_maxrss_kib"] / 1024, 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Stripe transport vs bare httpx, same simulator, same run")
    parser.add_argument("-n", type=int, default=10_000, help="payments per side")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="CI-sized: 1,000 payments; RSS 2,000 vs 20,000")
    parser.add_argument("--terminal", action="store_true", help="the whole Terminal draining a stored backlog")
    parser.add_argument("--rss", action="store_true", help="peak RSS draining 100,000 vs 10,000 stored payments")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rss-child", nargs=4, metavar=("URL", "DATA_DIR", "N", "C"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging(json=True, level="warning", stream=open(os.devnull, "w"))  # noqa: SIM115
    if args.rss_child:
        url, data_dir, n, c = args.rss_child
        _rss_child(url, data_dir, int(n), int(c))
        return
    n = 1000 if args.quick else args.n
    results: dict[str, Any] = {}
    if args.terminal or args.rss:
        if args.terminal:
            results["terminal"] = asdict(compare_terminal(n, args.concurrency))
        if args.rss:
            small, large = (2_000, 20_000) if args.quick else (10_000, 100_000)
            results["rss"] = asdict(compare_rss(small, large, args.concurrency))
    else:
        results["transport"] = asdict(compare(n, args.concurrency, args.rounds))
    if args.json:
        print(json.dumps(results))
        return
    if "transport" in results:
        r = results["transport"]
        print(
            f"{r['payments']} payments per side, concurrency {r['concurrency']}: "
            f"transport {r['transport_per_second']}/s, bare httpx {r['baseline_per_second']}/s, "
            f"ratio {r['ratio']} (target >= 0.8); each charged once: {r['charged_once']}"
        )
    if "terminal" in results:
        r = results["terminal"]
        print(
            f"Terminal draining {r['payments']} stored payments, concurrency {r['concurrency']}: "
            f"{r['terminal_per_second']}/s vs bare httpx {r['baseline_per_second']}/s, ratio {r['ratio']} "
            f"(target >= 0.8); each charged once: {r['charged_once']}"
        )
    if "rss" in results:
        r = results["rss"]
        print(
            f"peak RSS draining {r['large']} stored payments: {r['large_peak_mib']} MiB; {r['small']}: "
            f"{r['small_peak_mib']} MiB; difference {r['difference_mib']} MiB (target <= 30): {r['within_30_mib']}"
        )


if __name__ == "__main__":
    main()
