"""``offterm serve`` benchmarks, each against a baseline measured in the same run.

    python bench/bench_serve.py            # 300 payments each way
    python bench/bench_serve.py --quick    # a smoke run (40)

1. An offline payment (FORCE_OFFLINE, the processor cut) through ``offterm serve`` as a server-driven
   POS makes it (create the PaymentIntent, ``process_payment_intent``, ``present_payment_method``, the
   outcome from the SSE stream's ``terminal.reader.action_succeeded``) against the same payment through
   the in-process Terminal API (create, collect, confirm), alternated, same simulator, same kind of
   store.  Every POST carries an ``Idempotency-Key``, as Stripe's libraries send one on each.  Reported:
   the added latency at p50 and p99, and the service's own time per request (its ``request`` log lines'
   ``ms``: what is left is the HTTP stack, both processes' event loops and the client).  Target: <= 2 ms
   each.
2. Stored -> event on the SSE stream: from the Terminal's ``payment_stored`` log line (its timestamp,
   taken as the commit returns) to the client reading the ``action_succeeded`` frame.  Target: p99 <= 50 ms.
3. Webhook delivery after a receiver outage: the receiver refuses (503) every delivery while the
   payments above are taken and then forwarded; then it comes back.  Reported: events delivered
   against events in the outbox (as the SSE stream saw them), order per payment, every signature
   verified with the official ``stripe`` library, and the time to drain.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import stripe

from offterm.core import OfflineBehavior, Terminal
from offterm.serve.testing import ServiceProcess
from offterm.sim.netproxy import FaultProxy
from offterm.sim.processor import running_simulator

WEBHOOK_SECRET = "whsec_bench_" + "b" * 32
MAX_DELAY = 1.0  # [serve] webhook_max_delay: the longest pause between retries


def _config(proxy: FaultProxy, data_dir: Path, **serve: Any) -> dict[str, Any]:
    cfg = proxy.terminal_config(
        {
            "terminal": {"data_dir": str(data_dir), "offline_enabled": True, "probe_min_interval": 0.1},
            "plugins": {"autoload": False},
            "reader": {"transport": "simulated"},
            "storage": {"backend": "sqlcipher", "key_provider": "file"},
            "forwarding": {"transport": "stripe", "interval": 0.5, "stripe": {"timeout": 5.0, "connect_timeout": 1.0}},
            "acceptance": {"limits": {"max_amount": {"usd": 10_000_000}, "max_count": 10_000_000, "max_age_hours": 0}},
        }
    )
    cfg["serve"] = serve
    return cfg


class Receiver:
    """Webhook receiver: refuses while ``down``; verifies and records every delivery it accepts."""

    def __init__(self) -> None:
        self.down = False
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                try:
                    event = stripe.Webhook.construct_event(body, self.headers["Stripe-Signature"], WEBHOOK_SECRET)
                except (ValueError, stripe.SignatureVerificationError):
                    with receiver.lock:
                        receiver.bad_signatures += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.events.append(event.to_dict())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class Stream:
    """The SSE stream as a browser POS reads it: each event's arrival time, futures per payment."""

    def __init__(self, client: httpx.AsyncClient, url: str, key: str) -> None:
        self.events: list[tuple[int, str, str, float]] = []  # seq, type, subject, wall time of arrival
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self._task = asyncio.get_running_loop().create_task(self._read(client, url, key))
        self.opened = asyncio.Event()

    async def _read(self, client: httpx.AsyncClient, url: str, key: str) -> None:
        async with client.stream("GET", f"{url}/v1/offterm/events", params={"access_token": key}, timeout=None) as r:
            self.opened.set()
            seq, kind = 0, ""
            async for line in r.aiter_lines():
                if line.startswith("id: "):
                    seq = int(line[4:])
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind != "offterm.offline_status":
                    arrived = time.time()
                    obj = json.loads(line[6:])["data"]["object"]
                    subject = obj["id"] if obj["object"] == "payment_intent" else _action_intent(obj)
                    self.events.append((seq, kind, subject, arrived))
                    future = self.waiting.pop(subject, None) if kind.startswith("terminal.reader.") else None
                    if future is not None and not future.done():
                        future.set_result(arrived)

    def expect(self, intent_id: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[intent_id] = future
        return future

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, httpx.HTTPError):
            pass


def _action_intent(reader: dict[str, Any]) -> str:
    action = reader.get("action") or {}
    return str((action.get("process_payment_intent") or {}).get("payment_intent"))


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}  # what stripe-python adds to every POST


async def _serve_payment(client: httpx.AsyncClient, stream: Stream, reader: str, amount: int) -> tuple[str, float]:
    t = time.perf_counter()
    r = await client.post(
        "/v1/payment_intents",
        data={"amount": amount, "currency": "usd", "payment_method_types[0]": "card_present"},
        headers={"Offterm-Offline-Behavior": "force_offline", **_key()},
    )
    intent = r.json()["id"]
    arrived = stream.expect(intent)
    r = await client.post(
        f"/v1/terminal/readers/{reader}/process_payment_intent", data={"payment_intent": intent}, headers=_key()
    )
    assert r.status_code == 200, r.text
    r = await client.post(f"/v1/test_helpers/terminal/readers/{reader}/present_payment_method", headers=_key())
    assert r.status_code == 200, r.text
    async with asyncio.timeout(30):
        await arrived
    return intent, time.perf_counter() - t


async def _terminal_payment(terminal: Terminal, amount: int) -> float:
    t = time.perf_counter()
    intent = await terminal.create_payment_intent(
        {"amount": amount, "currency": "usd"}, offline_behavior=OfflineBehavior.FORCE_OFFLINE
    )
    intent = await terminal.collect_payment_method(intent)
    intent = await terminal.confirm_payment_intent(intent)
    assert intent.requires_upload
    return time.perf_counter() - t


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def _service_ms(log: str) -> dict[str, dict[str, float]]:
    """The service's own time per request (its ``request`` log lines), by endpoint, warm-up included."""
    names = {"payment_intents": "create", "process_payment_intent": "process", "present_payment_method": "present"}
    times: dict[str, list[float]] = {}
    for line in log.splitlines():
        if " request " in line and " ms=" in line and "method=POST" in line:
            name = names.get(line.split(" path=", 1)[1].split()[0].rsplit("/", 1)[-1])
            if name is not None:
                times.setdefault(name, []).append(float(line.split(" ms=", 1)[1].split()[0]))
    return {k: {"p50": _pct(v, 50), "p99": _pct(v, 99)} for k, v in times.items()}


def _stored_at(log: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in log.splitlines():
        if " payment_stored " in line and "offline_id=" in line:
            stamp = datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00")).timestamp()
            out[line.split("offline_id=", 1)[1].split()[0]] = stamp
    return out


async def run(n: int, warmup: int, base: Path) -> dict[str, Any]:
    load_before = os.getloadavg()
    receiver = Receiver()
    try:
        with running_simulator() as sim, FaultProxy(sim.port) as proxy:
            serve_cfg = _config(
                proxy,
                base / "serve-data",
                webhook_urls=[receiver.url],
                webhook_secret=WEBHOOK_SECRET,
                webhook_max_delay=MAX_DELAY,
                rate_limit=100_000,
                rate_burst=1_000_000,
            )
            with ServiceProcess.start(serve_cfg, base) as svc:
                headers = {"Authorization": f"Bearer {svc.key}"}
                async with (
                    httpx.AsyncClient(base_url=svc.url, headers=headers, timeout=30) as client,
                    Terminal.from_config(_config(proxy, base / "terminal-data")) as terminal,
                ):
                    [found] = await terminal.discover_readers()
                    await terminal.connect_reader(found)  # online once
                    stream = Stream(client, svc.url, svc.key)
                    await stream.opened.wait()
                    reader = (await client.get("/v1/terminal/readers")).json()["data"][0]["id"]

                    proxy.set_mode("down")  # the processor is gone; the outage of the receiver starts too
                    receiver.down = True
                    served: list[float] = []
                    direct: list[float] = []
                    intents: list[str] = []
                    for i in range(warmup + n):
                        amount = 1000 + i
                        order = (0, 1) if i % 2 else (1, 0)
                        for which in order:
                            if which == 0:
                                intent, spent = await _serve_payment(client, stream, reader, amount)
                                intents.append(intent)
                                if i >= warmup:
                                    served.append(spent)
                            else:
                                spent = await _terminal_payment(terminal, amount)
                                if i >= warmup:
                                    direct.append(spent)

                    # forwarded while the receiver is still down: their events queue up in the outbox
                    proxy.set_mode("pass")
                    r = await client.post("/v1/offterm/forward", data={"timeout": 120}, timeout=180)
                    assert r.json()["remaining"] == 0, r.text
                    async with asyncio.timeout(60):
                        while sum(1 for e in stream.events if e[1] == "payment_intent.succeeded") < len(intents):  # noqa: ASYNC110
                            await asyncio.sleep(0.05)
                    outbox = [(seq, kind, subject) for seq, kind, subject, _ in stream.events]

                    receiver.down = False
                    up = time.perf_counter()
                    async with asyncio.timeout(120):
                        while len(receiver.events) < len(outbox):  # noqa: ASYNC110 - filled by the receiver's thread
                            await asyncio.sleep(0.005)
                    drain = time.perf_counter() - up
                    await asyncio.sleep(MAX_DELAY)  # nothing more should come
                    await stream.close()
                    await terminal.close(timeout=0)
                log = svc.log()
    finally:
        receiver.close()

    stored = _stored_at(log)
    arrivals = {subject: at for _, kind, subject, at in stream.events if kind == "terminal.reader.action_succeeded"}
    to_stream = [arrivals[i] - stored[i] for i in intents[warmup:] if i in stored]
    delivered = [(e["type"], _subject(e)) for e in receiver.events]
    per_payment: dict[str, list[str]] = {}
    for kind, subject in delivered:
        per_payment.setdefault(subject, []).append(kind)
    expected = ["terminal.reader.action_succeeded", "payment_intent.succeeded"]
    return {
        "payments": n,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "serve_ms": {"p50": _pct(served, 50) * 1e3, "p99": _pct(served, 99) * 1e3},
        "terminal_ms": {"p50": _pct(direct, 50) * 1e3, "p99": _pct(direct, 99) * 1e3},
        "added_ms": {
            "p50": (_pct(served, 50) - _pct(direct, 50)) * 1e3,
            "p99": (_pct(served, 99) - _pct(direct, 99)) * 1e3,
        },
        "service_ms": _service_ms(log),
        "stored_to_sse_ms": {
            "samples": len(to_stream),
            "p50": _pct(to_stream, 50) * 1e3,
            "p99": _pct(to_stream, 99) * 1e3,
            "max": max(to_stream) * 1e3,
        },
        "webhooks": {
            "in_outbox": len(outbox),
            "delivered": len(receiver.events),
            "bad_signatures": receiver.bad_signatures,
            "same_order_as_outbox": delivered == [(kind, subject) for _, kind, subject in outbox],
            "in_order_per_payment": all(per_payment.get(i) == expected for i in intents),
            "drain_s": drain,
            "max_retry_delay_s": MAX_DELAY,
        },
    }


def _subject(event: dict[str, Any]) -> str:
    obj = event["data"]["object"]
    return str(obj["id"]) if obj["object"] == "payment_intent" else _action_intent(obj)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("-n", type=int, default=None, help="payments each way")
    args = parser.parse_args()
    n = args.n or (40 if args.quick else 300)
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(n, warmup=max(5, n // 20), base=Path(tmp)))
    added, sse, hooks = result["added_ms"], result["stored_to_sse_ms"], result["webhooks"]
    print(json.dumps(result, indent=2))
    print(
        f"\nadded latency p50 {added['p50']:.2f} ms, p99 {added['p99']:.2f} ms (target <= 2 ms): "
        f"{'met' if added['p50'] <= 2 and added['p99'] <= 2 else 'NOT met'}",
        "\nthe service's own time per request, p50: "
        + ", ".join(f"{k} {v['p50']:.2f} ms" for k, v in result["service_ms"].items()),
        f"\nstored -> SSE p99 {sse['p99']:.2f} ms (target <= 50 ms): {'met' if sse['p99'] <= 50 else 'NOT met'}",
        f"\nwebhooks after outage: {hooks['delivered']}/{hooks['in_outbox']} delivered, "
        f"order per payment {'ok' if hooks['in_order_per_payment'] else 'BROKEN'}, drained in {hooks['drain_s']:.2f} s",
    )
    ok = hooks["delivered"] == hooks["in_outbox"] and hooks["in_order_per_payment"] and not hooks["bad_signatures"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
