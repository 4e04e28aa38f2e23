"""Forwarding benchmark: the Stripe transport vs a bare httpx client, same simulator, same run.

    python bench/bench_forwarding.py                  # 10,000 submissions, concurrency 8
    python bench/bench_forwarding.py --quick          # 1,000
    python bench/bench_forwarding.py -n 5000 -c 16 --json

Both sides send the same request sequence per payment (create intent,
card_present payment method, confirm) with the same concurrency and the same
connection limit to one simulator (a child process, so the client's event
loop does not share a GIL with the server).  The figure that matters is the
ratio transport/baseline, measured here, never an absolute rate.

Importable: :func:`drain_with_transport` and :func:`drain_with_httpx` take a
running simulator and a list of submissions; the forwarder-level benchmark
reuses them (the forwarder drain plugs in as another "drain" function).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

import httpx

from offterm.core.contracts import ConnectionToken, Submission
from offterm.core.models import CaptureMethod
from offterm.plugins.transport.stripe import StripeTransport
from offterm.sim.processor import SimHandle, running_simulator
from offterm.sim.processor.testing import card_result

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


def main() -> None:
    parser = argparse.ArgumentParser(description="Stripe transport vs bare httpx, same simulator, same run")
    parser.add_argument("-n", type=int, default=10_000, help="payments per side")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1,000 payments")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = compare(1000 if args.quick else args.n, args.concurrency, args.rounds)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(
            f"{result.payments} payments per side, concurrency {result.concurrency}: "
            f"transport {result.transport_per_second}/s, bare httpx {result.baseline_per_second}/s, "
            f"ratio {result.ratio} (target >= 0.8); each charged once: {result.charged_once}"
        )


if __name__ == "__main__":
    main()
