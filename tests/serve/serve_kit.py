"""Helpers of the serve tests: a real ``offterm serve`` process over the processor simulator, behind a
fault proxy we can cut, a webhook receiver that verifies signatures with the official library, and
the server-driven flow (``pay``).  The fixtures live in conftest.py.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import stripe

from offterm.serve.testing import ServiceProcess
from offterm.sim.netproxy import FaultProxy
from offterm.sim.processor import SimHandle, running_simulator

WEBHOOK_SECRET = "whsec_test_" + "a" * 32


def terminal_config(proxy: FaultProxy, data_dir: Path, **serve: Any) -> dict[str, Any]:
    cfg = proxy.terminal_config(
        {
            "terminal": {"data_dir": str(data_dir), "offline_enabled": True, "probe_min_interval": 0.1},
            "plugins": {"autoload": False},
            "reader": {"transport": "simulated"},
            "storage": {"backend": "sqlcipher", "key_provider": "file"},
            "forwarding": {"transport": "stripe", "interval": 0.5, "stripe": {"timeout": 5.0, "connect_timeout": 1.0}},
        }
    )
    cfg["serve"] = serve
    return cfg


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that verifies every delivery as a Stripe integration would."""

    url: str = ""
    events: list[Any] = field(default_factory=list)
    rejected: int = 0
    fail: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def types(self) -> list[str]:
        with self.lock:
            return [e["type"] for e in self.events]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if rec.fail:
                self.send_response(503)
                self.end_headers()
                return
            try:
                event = stripe.Webhook.construct_event(body, self.headers["Stripe-Signature"], WEBHOOK_SECRET)
            except (ValueError, stripe.SignatureVerificationError):
                with rec.lock:
                    rec.rejected += 1
                self.send_response(400)
                self.end_headers()
                return
            with rec.lock:
                rec.events.append(event)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Served:
    service: ServiceProcess
    sim: SimHandle
    proxy: FaultProxy
    config: dict[str, Any]
    directory: Path

    def use(self) -> None:
        stripe.api_base = self.service.url
        stripe.api_key = self.service.key
        stripe.max_network_retries = 0

    def restart(self) -> None:
        self.service = self.service.restart()
        self.use()


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    with running_simulator() as handle:
        yield handle


@pytest.fixture
def proxy(sim: SimHandle) -> Iterator[FaultProxy]:
    with FaultProxy(sim.port) as p:
        yield p


@pytest.fixture
def served(tmp_path: Path, sim: SimHandle, proxy: FaultProxy, receiver: Receiver) -> Iterator[Served]:
    cfg = terminal_config(
        proxy, tmp_path / "data", webhook_urls=[receiver.url], webhook_secret=WEBHOOK_SECRET, webhook_max_delay=0.5
    )
    svc = ServiceProcess.start(cfg, tmp_path)
    s = Served(svc, sim, proxy, cfg, tmp_path)
    s.use()
    try:
        yield s
    finally:
        s.service.stop()


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def reader_id() -> str:
    [reader] = stripe.terminal.Reader.list().data
    return str(reader.id)


def pay(amount: int, *, card: str | None = None, metadata: dict[str, str] | None = None) -> tuple[str, Any]:
    """The server-driven flow: create, process on the reader, present the card, wait for the action's end."""
    rid = reader_id()
    intent = stripe.PaymentIntent.create(
        amount=amount, currency="usd", payment_method_types=["card_present"], metadata=metadata or {}
    )
    reader = stripe.terminal.Reader.process_payment_intent(rid, payment_intent=intent.id)
    assert reader.action.status == "in_progress"
    params = {"card_present": {"number": card}} if card else {}
    stripe.terminal.Reader.TestHelpers.present_payment_method(rid, **params)
    done = wait_until(
        lambda: (r := stripe.terminal.Reader.retrieve(rid)).action.status != "in_progress" and r,
        what="the reader action",
    )
    return intent.id, done


def loads(body: bytes) -> Any:
    return json.loads(body)
