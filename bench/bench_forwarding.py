"""Forwarding benchmark: the whole Terminal draining a stored backlog, same simulator, same run.

    python bench/bench_forwarding.py                  # rate-limited drain of 10,000 + unlimited reference
    python bench/bench_forwarding.py --quick          # 1,000 payments
    python bench/bench_forwarding.py -n 5000 -c 8 --json
    python bench/bench_forwarding.py --rss            # peak RSS draining 100,000 vs 10,000 stored payments
    python bench/bench_forwarding.py --rss --quick    # 2,000 vs 20,000
    python bench/bench_forwarding.py --transport      # the Stripe transport alone vs bare httpx

**Rate-limited drain** (the figure with a target): ``Terminal.forward_now``
drains a real encrypted store with ``[forwarding] rate_limit = 100`` requests
per second.  The processor allows so many requests per second, so the best a
drain can do is ``rate_limit / requests per payment`` payments per second.
Requests per payment are *measured* from the simulator's request log (each
request's idempotency key names its payment), not assumed; the target is
payments per second >= 0.95 x that ceiling, with every payment charged once on
the simulator's ledger.

**Unlimited reference** (no target): the same drain with ``rate_limit`` at its
highest, beside a bare httpx client sending the same two requests per payment
(card_present payment method, then the intent created and confirmed in one
request) with the same concurrency.  It shows what the store and the
forwarder cost when nothing else bounds the drain.

**The Stripe transport alone** (``--transport``): the transport's two calls per
payment against the same bare httpx client, alternating, best of each.

**Peak RSS** (``--rss``): each drain runs in a child process
(``drain_child.py``, which imports only what a POS app does) on a backlog the
parent built; the child reports the peak RSS (``VmHWM``) of itself and of any
process it started, summed.

The simulator is a child process, so the client's event loop does not share
a GIL with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from offterm.core import Terminal
from offterm.core._engine.keys import Step, step_key
from offterm.core.contracts import ConnectionToken, NewPayment
from offterm.core.contracts.forwarding import IntentRequest
from offterm.core.logs import configure_logging
from offterm.core.models import CaptureMethod, new_offline_id
from offterm.plugins.storage.sqlcipher import new_idempotency_key
from offterm.plugins.transport.stripe import StripeTransport
from offterm.sim.processor import SimHandle, running_simulator
from offterm.sim.processor.testing import card_result
from offterm.testing import make_plugin_manager, open_store

STRIPE_VERSION = "2023-08-16"
SIM_ACCOUNT = "acct_1SimulatedOfftrm"
#: The highest rate_limit the config accepts: effectively none.
UNLIMITED = 100_000.0
#: Paths that are not a payment's requests: sessions, tokens, probes, the simulator's admin API.
_NOT_PAYMENT = ("/device/v1/sessions", "/backend/", "/v1/terminal/connection_tokens", "/healthcheck", "/_sim/")
_STEP_SUFFIX = re.compile(r"(?:-g\d+)?-(?:" + "|".join(s.value for s in Step) + r")$")


@dataclass(frozen=True)
class DrainResult:
    name: str
    payments: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.payments / self.seconds if self.seconds else 0.0


def make_payments(n: int) -> list[NewPayment]:
    """``n`` offline payments with a sealed test card (sealed once; not timed), ids as the Terminal makes them."""
    card = card_result("4242424242424242")
    now = datetime.now(UTC)
    return [
        NewPayment(
            offline_id=new_offline_id(),
            idempotency_key=new_idempotency_key(),
            amount=100 + i % 5000,
            currency="usd",
            capture_method=CaptureMethod.AUTOMATIC,
            metadata={"order": f"order-{i}", "lane": "3"},
            account_id=SIM_ACCOUNT,
            livemode=False,
            stored_at=now,
            card=card,
        )
        for i in range(n)
    ]


def store_backlog(data_dir: Path, payments: Sequence[NewPayment]) -> None:
    """Put ``payments`` in a real SQLCipher store directly (the fast path; not timed).

    Without fsync (``synchronous = off``, this connection only): a 100,000 backlog
    would otherwise take many minutes on a busy disk.  The Terminal that drains it
    opens the file with the store's defaults.
    """
    weak = {"allow_weak_durability": True, "synchronous": "off"}
    store = open_store(make_plugin_manager(), data_dir, backend_options=weak)
    try:
        for payment in payments:
            store.store(payment)
    finally:
        store.close()


def terminal_config(
    url: str, data_dir: Path, *, concurrency: int, rate_limit: float, **terminal: Any
) -> dict[str, Any]:
    """A Terminal against ``url`` with offterm's defaults except concurrency, rate limit and connections."""
    return {
        "terminal": {"data_dir": str(data_dir), "offline_enabled": True, **terminal},
        "plugins": {"autoload": False, "strict": True},
        "reader": {"transport": "simulated"},
        "storage": {"backend": "sqlcipher", "key_provider": "file"},
        "tokens": {"providers": ["http"], "http": {"url": url + "/backend/connection_token"}},
        "forwarding": {
            "transport": "stripe",
            "concurrency": concurrency,
            "rate_limit": rate_limit,
            "stripe": {"api_base": url, "max_connections": concurrency},
        },
    }


async def drain_with_terminal(
    url: str, data_dir: Path, payments: int, concurrency: int, rate_limit: float
) -> DrainResult:
    """``Terminal.forward_now`` over a stored backlog: claims, step records, outcomes, events."""
    config = terminal_config(url, data_dir, concurrency=concurrency, rate_limit=rate_limit)
    async with Terminal.from_config(config, plugin_manager=make_plugin_manager(), background=False) as terminal:
        start = time.perf_counter()
        remaining = await terminal.forward_now(timeout=24 * 3600)
        elapsed = time.perf_counter() - start
        attention = terminal.offline_status.sdk.needs_attention_count
    if remaining or attention:
        raise RuntimeError(f"{remaining} payments were not forwarded, {attention} need attention")
    return DrainResult("terminal", payments, elapsed)


async def _pool(items: Sequence[NewPayment], concurrency: int, work: Callable[[NewPayment], Awaitable[None]]) -> None:
    queue: asyncio.Queue[NewPayment] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            await work(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def drain_with_httpx(sim: SimHandle, payments: Sequence[NewPayment], concurrency: int) -> DrainResult:
    """The baseline: the same two requests per payment, written directly with httpx (no store, no limiter)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=sim.url, limits=limits, timeout=60) as client:
        token = sim.connection_token()
        resp = await client.post("/device/v1/sessions", headers={"Authorization": f"Bearer {token}"})
        resp.raise_for_status()
        bearer = {"Authorization": f"Bearer {resp.json()['secret']}", "Stripe-Version": STRIPE_VERSION}
        form = {"Content-Type": "application/x-www-form-urlencoded"}

        async def one(p: NewPayment) -> None:
            pm = {
                "type": "card_present",
                "card_present[encrypted_data]": base64.b64encode(p.card.encrypted_card_data).decode(),
                "card_present[key_serial]": p.card.key_serial,
                "card_present[encryption_scheme]": p.card.encryption_scheme,
            }
            r = await client.post(
                "/device/v1/payment_methods",
                content=urlencode(pm),
                headers={
                    **bearer,
                    **form,
                    "Idempotency-Key": f"{p.idempotency_key}-{Step.PAYMENT_METHOD.value}",
                    "Offterm-Stored-At": p.stored_at.isoformat(),
                },
            )
            create = {
                "amount": p.amount,
                "currency": p.currency,
                "capture_method": "automatic",
                "payment_method_types[0]": "card_present",
                **{f"metadata[{k}]": v for k, v in sorted({**p.metadata, "offterm_offline_id": p.offline_id}.items())},
                "payment_method": r.json()["id"],
                "confirm": "true",
            }
            r = await client.post(
                "/v1/payment_intents",
                content=urlencode(create),
                headers={**bearer, **form, "Idempotency-Key": f"{p.idempotency_key}-{Step.CREATE_AND_CONFIRM.value}"},
            )
            if r.json().get("status") != "succeeded":
                raise RuntimeError(f"baseline create-and-confirm failed: {r.status_code} {r.text[:200]}")

        start = time.perf_counter()
        await _pool(payments, concurrency, one)
        elapsed = time.perf_counter() - start
    return DrainResult("httpx", len(payments), elapsed)


async def drain_with_transport(sim: SimHandle, payments: Sequence[NewPayment], concurrency: int) -> DrainResult:
    """The Stripe transport alone: the same two requests per payment, keys as the core makes them."""
    transport = StripeTransport(sim.url, max_connections=concurrency, timeout=60)
    try:
        session = await transport.authenticate(ConnectionToken(sim.connection_token()))

        async def one(p: NewPayment) -> None:
            request = IntentRequest(p.offline_id, p.amount, p.currency, p.capture_method, dict(p.metadata))
            pm = await transport.create_payment_method(
                session, p.card, idempotency_key=step_key(p.idempotency_key, Step.PAYMENT_METHOD), stored_at=p.stored_at
            )
            key = step_key(p.idempotency_key, Step.CREATE_AND_CONFIRM)
            intent = await transport.create_intent(session, request, idempotency_key=key, payment_method=pm)
            if intent.status != "succeeded":
                raise RuntimeError(f"transport create-and-confirm: {intent.status}")

        start = time.perf_counter()
        await _pool(payments, concurrency, one)
        elapsed = time.perf_counter() - start
    finally:
        await transport.close()
    return DrainResult("transport", len(payments), elapsed)


def requests_per_payment(sim: SimHandle, payments: Sequence[NewPayment]) -> dict[str, Any]:
    """Count the simulator's logged requests per payment (by idempotency key), and any not keyed to one."""
    keys = {p.idempotency_key for p in payments}
    per_key: Counter[str] = Counter()
    unkeyed = 0
    for record in sim.requests():
        if record["path"].startswith(_NOT_PAYMENT):
            continue
        key = record.get("idempotency_key")
        payment_key = _STEP_SUFFIX.sub("", key) if key else None
        if payment_key in keys:
            per_key[payment_key] += 1
        else:
            unkeyed += 1  # a GET (retrieve, search) or a request of some other payment
    histogram = Counter(per_key[k] for k in keys)
    total = sum(per_key.values()) + unkeyed
    return {
        "mean": round(total / len(keys), 4) if keys else 0.0,
        "histogram": {str(k): v for k, v in sorted(histogram.items())},
        "unkeyed": unkeyed,
    }


def duplicates(sim: SimHandle, offline_ids: Sequence[str]) -> dict[str, int]:
    """Payments not charged exactly once on the simulator's ledger: {"twice or more": n, "never": n}."""
    counts = sim.successful_charges()
    return {
        "twice_or_more": sum(1 for oid in offline_ids if counts.get(oid, 0) > 1),
        "never": sum(1 for oid in offline_ids if counts.get(oid, 0) == 0),
    }


# -- 1. the rate-limited drain ----------------------------------------------------------------


@dataclass(frozen=True)
class RateLimitedDrain:
    payments: int
    concurrency: int
    rate_limit: float
    requests_per_payment: float
    requests_histogram: dict[str, int]
    ceiling_per_second: float
    per_second: float
    ratio: float
    target_met: bool
    duplicates: int
    not_charged: int


def rate_limited_drain(n: int = 10_000, concurrency: int = 8, rate_limit: float = 100.0) -> RateLimitedDrain:
    with tempfile.TemporaryDirectory() as tmp, running_simulator(subprocess=True, request_log_size=4 * n + 100) as sim:
        data_dir = Path(tmp) / "pos"
        payments = make_payments(n)
        store_backlog(data_dir, payments)
        result = asyncio.run(drain_with_terminal(sim.url, data_dir, n, concurrency, rate_limit))
        measured = requests_per_payment(sim, payments)
        dup = duplicates(sim, [p.offline_id for p in payments])
    ceiling = rate_limit / measured["mean"]
    ratio = result.per_second / ceiling
    return RateLimitedDrain(
        payments=n,
        concurrency=concurrency,
        rate_limit=rate_limit,
        requests_per_payment=measured["mean"],
        requests_histogram=measured["histogram"],
        ceiling_per_second=round(ceiling, 2),
        per_second=round(result.per_second, 2),
        ratio=round(ratio, 3),
        target_met=ratio >= 0.95 and dup["twice_or_more"] == 0 and dup["never"] == 0,
        duplicates=dup["twice_or_more"],
        not_charged=dup["never"],
    )


# -- 1b. the unlimited reference ---------------------------------------------------------------


@dataclass(frozen=True)
class UnlimitedReference:
    payments: int
    concurrency: int
    terminal_per_second: float
    baseline_per_second: float
    ratio: float
    duplicates: int


def unlimited_reference(n: int = 10_000, concurrency: int = 8) -> UnlimitedReference:
    """Baseline, Terminal drain, baseline again on one simulator; the Terminal against the baselines' mean."""
    with tempfile.TemporaryDirectory() as tmp, running_simulator(subprocess=True) as sim:
        data_dir = Path(tmp) / "pos"
        stored = make_payments(n)
        store_backlog(data_dir, stored)
        asyncio.run(drain_with_httpx(sim, make_payments(min(500, n)), concurrency))  # warm up
        before = asyncio.run(drain_with_httpx(sim, make_payments(n), concurrency))
        terminal = asyncio.run(drain_with_terminal(sim.url, data_dir, n, concurrency, UNLIMITED))
        after = asyncio.run(drain_with_httpx(sim, make_payments(n), concurrency))
        dup = duplicates(sim, [p.offline_id for p in stored])
    if dup["never"]:
        raise RuntimeError(f"{dup['never']} drained payments have no charge")
    baseline = (before.per_second + after.per_second) / 2
    return UnlimitedReference(
        payments=n,
        concurrency=concurrency,
        terminal_per_second=round(terminal.per_second, 1),
        baseline_per_second=round(baseline, 1),
        ratio=round(terminal.per_second / baseline, 3) if baseline else 0.0,
        duplicates=dup["twice_or_more"],
    )


# -- the Stripe transport alone ------------------------------------------------------------------


@dataclass(frozen=True)
class TransportComparison:
    payments: int
    concurrency: int
    transport_per_second: float
    baseline_per_second: float
    ratio: float
    duplicates: int


def compare_transport(n: int = 10_000, concurrency: int = 8, rounds: int = 2) -> TransportComparison:
    """Alternate bare httpx and the transport ``rounds`` times on one simulator; best of each."""
    per = max(1, n // rounds)
    best = {"transport": 0.0, "httpx": 0.0}
    sent: list[str] = []
    with running_simulator(subprocess=True) as sim:
        asyncio.run(drain_with_transport(sim, make_payments(min(200, per)), concurrency))  # warm up
        for _ in range(rounds):
            for name, drain in (("httpx", drain_with_httpx), ("transport", drain_with_transport)):
                payments = make_payments(per)
                sent += [p.offline_id for p in payments] if name == "transport" else []
                best[name] = max(best[name], asyncio.run(drain(sim, payments, concurrency)).per_second)
        dup = duplicates(sim, sent)
    return TransportComparison(
        payments=per * rounds,
        concurrency=concurrency,
        transport_per_second=round(best["transport"], 1),
        baseline_per_second=round(best["httpx"], 1),
        ratio=round(best["transport"] / best["httpx"], 3) if best["httpx"] else 0.0,
        duplicates=dup["twice_or_more"] + dup["never"],
    )


# -- 4. peak memory while draining a backlog ---------------------------------------------------


def peak_rss_of_drain(sim: SimHandle, payments: int, concurrency: int, rate_limit: float) -> dict[str, Any]:
    """Store ``payments`` here, then drain them in a child process; its tree's peak RSS and time."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "pos"
        built = time.perf_counter()
        backlog = make_payments(payments)
        store_backlog(data_dir, backlog)
        built = time.perf_counter() - built
        del backlog
        config = terminal_config(sim.url, data_dir, concurrency=concurrency, rate_limit=rate_limit)
        args = [sys.executable, str(Path(__file__).with_name("drain_child.py")), json.dumps(config)]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout  # noqa: S603
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if result["remaining"]:
        raise RuntimeError(f"{result['remaining']} of {payments} payments were not forwarded")
    result["payments"] = payments
    result["build_seconds"] = round(built, 1)
    return result


@dataclass(frozen=True)
class RssComparison:
    small: int
    large: int
    small_peak_mib: float
    large_peak_mib: float
    difference_mib: float
    small_drain_seconds: float
    large_drain_seconds: float
    peak_within_80_mib: bool
    difference_within_10_mib: bool


def compare_rss(
    small: int = 10_000, large: int = 100_000, concurrency: int = 8, rate_limit: float = UNLIMITED
) -> RssComparison:
    """Peak RSS of the POS process tree draining ``large`` vs ``small`` stored payments (same simulator)."""
    with running_simulator(subprocess=True) as sim:
        a = peak_rss_of_drain(sim, small, concurrency, rate_limit)
        b = peak_rss_of_drain(sim, large, concurrency, rate_limit)
    small_mib = a["tree_kib"] / 1024
    large_mib = b["tree_kib"] / 1024
    return RssComparison(
        small=small,
        large=large,
        small_peak_mib=round(small_mib, 1),
        large_peak_mib=round(large_mib, 1),
        difference_mib=round(large_mib - small_mib, 1),
        small_drain_seconds=a["seconds"],
        large_drain_seconds=b["seconds"],
        peak_within_80_mib=large_mib <= 80,
        difference_within_10_mib=large_mib - small_mib <= 10,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Terminal drains: rate-limited, unlimited vs bare httpx, peak RSS")
    parser.add_argument("-n", type=int, default=10_000, help="payments to drain")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--rate-limit", type=float, default=100.0, help="[forwarding] rate_limit, requests/s")
    parser.add_argument("--quick", action="store_true", help="1,000 payments; RSS 2,000 vs 20,000")
    parser.add_argument("--rss", action="store_true", help="only: peak RSS draining 100,000 vs 10,000 stored")
    parser.add_argument("--transport", action="store_true", help="only: the Stripe transport alone vs bare httpx")
    parser.add_argument("--no-reference", action="store_true", help="skip the unlimited drain vs bare httpx")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configure_logging(json=True, level="warning", stream=open(os.devnull, "w"))  # noqa: SIM115
    n = 1000 if args.quick else args.n
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    if args.transport:
        results["transport"] = asdict(compare_transport(n, args.concurrency))
    elif args.rss:
        small, large = (2_000, 20_000) if args.quick else (10_000, 100_000)
        results["rss"] = asdict(compare_rss(small, large, args.concurrency))
    else:
        results["rate_limited"] = asdict(rate_limited_drain(n, args.concurrency, args.rate_limit))
        if not args.no_reference:
            results["unlimited"] = asdict(unlimited_reference(n, args.concurrency))
    if args.json:
        print(json.dumps(results))
        return
    if "rate_limited" in results:
        r = results["rate_limited"]
        print(
            f"rate-limited drain of {r['payments']} stored payments, concurrency {r['concurrency']}, "
            f"rate_limit {r['rate_limit']:g} requests/s: {r['requests_per_payment']} requests per payment "
            f"(measured; {r['requests_histogram']}), ceiling {r['ceiling_per_second']}/s, drained "
            f"{r['per_second']}/s, ratio {r['ratio']} (target >= 0.95); charged twice: {r['duplicates']}, "
            f"not charged: {r['not_charged']}; target met: {r['target_met']}"
        )
    if "unlimited" in results:
        r = results["unlimited"]
        print(
            f"unlimited drain of {r['payments']} (reference, no target): Terminal {r['terminal_per_second']}/s vs "
            f"bare httpx {r['baseline_per_second']}/s, ratio {r['ratio']}; charged twice: {r['duplicates']}"
        )
    if "transport" in results:
        r = results["transport"]
        print(
            f"Stripe transport alone, {r['payments']} payments per side, concurrency {r['concurrency']}: "
            f"{r['transport_per_second']}/s vs bare httpx {r['baseline_per_second']}/s, ratio {r['ratio']} "
            f"(target >= 0.8); not charged exactly once: {r['duplicates']}"
        )
    if "rss" in results:
        r = results["rss"]
        print(
            f"peak RSS of the POS process tree draining {r['large']} stored payments: {r['large_peak_mib']} MiB "
            f"(target <= 80: {r['peak_within_80_mib']}); {r['small']}: {r['small_peak_mib']} MiB; difference "
            f"{r['difference_mib']} MiB (target <= 10: {r['difference_within_10_mib']}); drains took "
            f"{r['small_drain_seconds']} s / {r['large_drain_seconds']} s"
        )


if __name__ == "__main__":
    main()
