"""The official ``stripe`` Node library (tests/serve/node, pinned in package-lock.json) drives ``offterm serve``.

Online, online decline, offline (stored), forwarded, declined after forwarding; every webhook verified
with ``stripe.webhooks.constructEvent``.  The Node script (node/flow.js) reaches the service with the
library as a Node POS would; a small control server here lets it cut the processor (the fault proxy)
and read the raw webhook deliveries this test records.  Node and the dependencies are required, not
optional: without them the test fails and says how to install them.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from serve_kit import WEBHOOK_SECRET, terminal_config

from offterm.serve.testing import ServiceProcess
from offterm.sim.netproxy import FaultProxy
from offterm.sim.processor import SimHandle

NODE_DIR = Path(__file__).parent / "node"
INSTALL_HINT = (
    "install Node.js 18+ (Debian: apt-get install nodejs npm) and the pinned client: "
    "npm ci --prefix tests/serve/node (bash .ci/run does both)"
)


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed: {INSTALL_HINT}")
    if not (NODE_DIR / "node_modules" / "stripe" / "package.json").is_file():
        pytest.fail(f"the stripe Node library is not installed in tests/serve/node: {INSTALL_HINT}")
    return node


@dataclass
class Control:
    """Webhook recorder (raw body and signature, verified on the Node side) and network switch."""

    url: str = ""
    deliveries: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def control(proxy: FaultProxy) -> Iterator[Control]:
    ctl = Control()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, status: int, body: Any = None) -> None:
            raw = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/hook":
                with ctl.lock:
                    ctl.deliveries.append(
                        {"body": body.decode("utf-8"), "signature": self.headers.get("Stripe-Signature", "")}
                    )
                self._answer(200, {"received": True})
            elif self.path in ("/network/down", "/network/pass"):
                proxy.set_mode(self.path.rsplit("/", 1)[1])
                self._answer(200, {"mode": proxy.mode})
            else:
                self._answer(404)

        def do_GET(self) -> None:
            if self.path == "/deliveries":
                with ctl.lock:
                    self._answer(200, list(ctl.deliveries))
            else:
                self._answer(404)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ctl.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield ctl
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_official_node_library_drives_a_full_flow(
    tmp_path: Path, sim: SimHandle, proxy: FaultProxy, control: Control
) -> None:
    node = node_binary()
    cfg = terminal_config(
        proxy,
        tmp_path / "data",
        webhook_urls=[control.url + "/hook"],
        webhook_secret=WEBHOOK_SECRET,
        webhook_max_delay=0.5,
    )
    with ServiceProcess.start(cfg, tmp_path) as svc:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "OFFTERM_URL": svc.url,
            "OFFTERM_KEY": svc.key,
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "CONTROL_URL": control.url,
        }
        done = subprocess.run(
            [node, str(NODE_DIR / "flow.js")], env=env, capture_output=True, text=True, timeout=180, cwd=NODE_DIR
        )
        assert done.returncode == 0, f"node flow failed:\n{done.stderr}\n--- service log ---\n{svc.log()[-3000:]}"
    out = json.loads(done.stdout)

    assert out["readers"][0]["status"] == "online"
    online = out["online"]
    assert online["action"] == "succeeded"
    assert online["intent"]["id"].startswith("pi_") and online["intent"]["status"] == "succeeded"
    assert online["intent"]["amount_received"] == 1500 and online["intent"]["requires_upload"] is None

    refused = out["online_decline"]
    assert refused["action"] == "failed" and refused["failure_code"] == "card_declined"
    assert refused["intent"]["status"] == "requires_payment_method"

    offline = out["offline"]
    assert offline["action"] == "succeeded" and offline["declined_action"] == "succeeded"
    stored = offline["intent"]
    assert stored["id"].startswith("offpi_") and stored["status"] == "succeeded"
    assert stored["requires_upload"] is True and stored["amount_received"] == 0 and stored["last4"] == "4242"
    assert offline["status"]["offline_payments_count"] == 2
    assert offline["status"]["offline_payment_amounts_by_currency"] == {"usd": 5600}

    assert out["forward"]["remaining"] == 0
    forwarded = out["forwarded"]
    assert forwarded["id"] == stored["id"] and forwarded["requires_upload"] is False
    assert forwarded["amount_received"] == 2500 and forwarded["processor_payment_intent"].startswith("pi_")
    declined = out["declined"]
    assert declined["status"] == "requires_payment_method" and declined["decline_code"] == "generic_decline"

    hooks = out["webhooks"]
    assert hooks["failures"] == [] and hooks["verified"] == hooks["delivered"] == 8
    assert hooks["tampered_rejected"] is True
    per = hooks["per_payment"]
    assert per[online["intent"]["id"]] == ["terminal.reader.action_succeeded", "payment_intent.succeeded"]
    assert per[refused["intent"]["id"]] == ["terminal.reader.action_failed", "payment_intent.payment_failed"]
    assert per[stored["id"]] == ["terminal.reader.action_succeeded", "payment_intent.succeeded"]
    assert per[declined["id"]] == ["terminal.reader.action_succeeded", "payment_intent.payment_failed"]

    # exactly once, on the processor's own books
    ledger = sim.ledger()
    assert sim.successful_charges()[stored["offline_id"]] == 1
    assert sim.successful_charges()[online["intent"]["offline_id"]] == 1
    [charge] = ledger[stored["offline_id"]]
    assert charge["amount"] == 2500 and charge["offline"]["type"] == "deferred"
    assert [c["status"] for c in ledger[declined["offline_id"]]] == ["failed"]
    assert sum(sim.successful_charges().values()) == 2
