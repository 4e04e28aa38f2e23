"""examples/plugin-example: a separately packaged plugin, found through its entry point, end to end.

CI installs it (``pip install ./examples/plugin-example`` in .ci/run); these
tests fail, not skip, when it is missing.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from offterm.core import OfflineBehavior, Terminal
from offterm.core.errors import ConfigError, ConnectionTokenError
from offterm.testing import make_plugin_manager

INSTALL_HINT = (
    "the example plugin is not installed in this environment: run "
    "`pip install ./examples/plugin-example` (.ci/run does this before the tests)"
)
PANS = ("4242424242424242", "4000000000000002")
SECRET = "whsec_example_signing_secret"


def webhook_module() -> Any:
    """The installed example package, or a failure that says how to install it."""
    eps = [ep for ep in importlib.metadata.entry_points(group="offterm") if ep.name == "webhook"]
    if not eps:
        pytest.fail(INSTALL_HINT)
    try:
        import offterm_webhook
    except ImportError as exc:
        pytest.fail(f"{INSTALL_HINT} ({exc})")
    return offterm_webhook


class Receiver:
    """A webhook endpoint on 127.0.0.1: records each POST, answers with scripted statuses."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []  # answered first, one per request; then 200
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.gate.wait(30)
                with receiver.lock:
                    receiver.requests.append({"headers": dict(self.headers), "raw": body, "json": json.loads(body)})
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/offterm"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            bodies = [r["json"] for r in self.requests]
        return [b for b in bodies if event_type is None or b["type"] == event_type]

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


async def pay(terminal: Terminal, card: str = "visa", behavior: OfflineBehavior = OfflineBehavior.PREFER_ONLINE):
    terminal.connected_reader.present_card(card)
    intent = await terminal.create_payment_intent(
        {"amount": 1500, "currency": "usd", "metadata": {"order": "A-1"}}, behavior
    )
    return await terminal.confirm_payment_intent(await terminal.collect_payment_method(intent))


async def open_with_reader(terminal: Terminal) -> None:
    """Connect the simulated reader and take one online payment: a terminal stores offline
    only after it has been online once (Stripe's rule)."""
    [reader] = await terminal.discover_readers()
    await terminal.connect_reader(reader)
    await pay(terminal)


def keys_of(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in keys_of(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in keys_of(v)}
    return set()


def assert_no_card_data(request: dict[str, Any]) -> None:
    raw = request["raw"].decode()
    for pan in PANS:
        assert pan not in raw
    assert not keys_of(request["json"]) & {"card", "card_present_details", "last4", "brand", "encrypted_card_data"}


def test_the_entry_point_is_visible_and_loads_the_plugin():
    module = webhook_module()
    [ep] = [ep for ep in importlib.metadata.entry_points(group="offterm") if ep.name == "webhook"]
    assert ep.value == "offterm_webhook:plugin"
    assert ep.dist is not None and ep.dist.name == "offterm-webhook"
    assert ep.load() is module.plugin
    assert isinstance(module.plugin, module.WebhookPlugin)


async def test_a_terminal_with_autoload_posts_its_events_to_the_webhook(
    receiver, offterm_config, processor_simulator, monkeypatch
):
    module = webhook_module()
    monkeypatch.setenv("OFFTERM_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("OFFTERM_WEBHOOK_SECRET", SECRET)
    monkeypatch.delenv("OFFTERM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    offterm_config["plugins"]["autoload"] = True

    async with Terminal.from_config(offterm_config) as terminal:
        assert terminal.plugins.info["webhook"].source.startswith("entry point offterm-webhook")
        await open_with_reader(terminal)
        stored = [await pay(terminal, card, OfflineBehavior.FORCE_OFFLINE) for card in ("visa", "declined")]
        assert all(s.requires_upload for s in stored)
        assert await terminal.forward_now() == 0
    assert module.plugin.flush(15), "webhook deliveries did not finish"

    ok, declined = (s.offline_id for s in stored)
    charges = processor_simulator.successful_charges()
    assert charges[ok] == 1 and charges.get(declined, 0) == 0
    assert sum(charges.values()) == 2  # and the online payment, once
    assert sorted(e["data"]["offline_id"] for e in receiver.events("payment.stored")) == sorted([ok, declined])
    forwarded = {e["data"]["offline_id"]: e["data"] for e in receiver.events("payment_intent.forwarded")}
    assert forwarded[ok]["outcome"] == "authorized" and forwarded[ok]["error"] is None
    assert forwarded[ok]["id"].startswith("pi_") and forwarded[ok]["amount"] == 1500
    assert forwarded[declined]["outcome"] == "declined"
    assert forwarded[declined]["error"]["code"] == "card_declined"
    assert forwarded[declined]["error"]["decline_code"] == "generic_decline"
    statuses = [e["data"] for e in receiver.events("offline_status.changed")]
    assert statuses and statuses[-1]["offline_payments_count"] == 0
    assert any(s["offline_payments_count"] == 2 for s in statuses)

    ids = set()
    for request in receiver.requests:
        assert request["headers"]["Content-Type"] == "application/json"
        event_id = request["headers"]["Offterm-Event-Id"]
        assert event_id == request["json"]["id"]
        ids.add(event_id)
        t, v1 = (part.split("=", 1)[1] for part in request["headers"]["Offterm-Signature"].split(","))
        expected = hmac.new(SECRET.encode(), f"{t}.".encode() + request["raw"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(v1, expected)
        assert_no_card_data(request)
    assert len(ids) == len(receiver.requests)  # each event delivered once


def test_forwarding_failure_is_posted_with_secrets_masked(receiver, monkeypatch):
    module = webhook_module()
    monkeypatch.setenv("OFFTERM_WEBHOOK_URL", receiver.url)
    monkeypatch.delenv("OFFTERM_WEBHOOK_SECRET", raising=False)
    manager = make_plugin_manager(autoload=True)
    assert "webhook" in manager.info
    manager.emit("forwarding_failure", error=ConnectionTokenError("backend refused Bearer pst_test_abcdef123456"))
    assert module.plugin.flush(10)
    [event] = receiver.events("forwarding.failure")
    assert event["data"]["error"]["code"] == "connection_token_provider_error"
    assert "pst_test_abcdef123456" not in json.dumps(event)
    assert "Offterm-Signature" not in receiver.requests[0]["headers"]


def test_without_a_url_the_plugin_does_nothing(receiver, monkeypatch):
    module = webhook_module()
    monkeypatch.delenv("OFFTERM_WEBHOOK_URL", raising=False)
    plugin = module.WebhookPlugin()
    plugin.offterm_on_forwarding_failure(error=ConnectionTokenError("x"))
    assert plugin.flush(1)
    assert plugin._sender is None and receiver.requests == []


async def test_a_dead_webhook_never_breaks_a_payment(offterm_config, offterm_plugin_manager, processor_simulator):
    module = webhook_module()
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        dead_url = f"http://127.0.0.1:{probe.server_address[1]}/gone"  # closed when the block ends
    sender = module.WebhookSender(backoff=0.01)
    offterm_plugin_manager.add(module.WebhookPlugin(dead_url, timeout=2.0, sender=sender), "webhook-dead")
    async with Terminal.from_config(offterm_config, plugin_manager=offterm_plugin_manager) as terminal:
        await open_with_reader(terminal)
        intent = await pay(terminal, "visa", OfflineBehavior.FORCE_OFFLINE)
        assert intent.requires_upload
        assert await terminal.forward_now() == 0
    assert processor_simulator.successful_charges()[intent.offline_id] == 1
    assert sender.flush(30)
    assert sender.failed >= 3 and sender.sent == 0  # stored, forwarded, status changes: all failed, all logged


def test_a_full_queue_drops_events_instead_of_blocking(receiver):
    module = webhook_module()
    receiver.gate.clear()  # the receiver hangs: the worker is stuck on the first delivery
    sender = module.WebhookSender(max_queue=2)
    accepted = [
        sender.submit(module.Delivery(receiver.url, b"{}", f"evt_{i}", "test.event", timeout=30)) for i in range(10)
    ]
    assert accepted[:2] == [True, True]
    assert sender.dropped == accepted.count(False) >= 7
    receiver.gate.set()
    assert sender.flush(15)
    assert sender.sent == accepted.count(True) == len(receiver.requests)
    assert [r["headers"]["Offterm-Event-Id"] for r in receiver.requests] == [
        f"evt_{i}" for i, ok in enumerate(accepted) if ok
    ]


def test_a_failed_delivery_is_retried_with_the_same_event_id(receiver):
    module = webhook_module()
    receiver.statuses = [503, 500]
    sender = module.WebhookSender(backoff=0.01)
    assert sender.submit(module.Delivery(receiver.url, b'{"id":"evt_1"}', "evt_1", "test.event"))
    assert sender.flush(10)
    assert sender.sent == 1 and sender.failed == 0
    assert [r["headers"]["Offterm-Event-Id"] for r in receiver.requests] == ["evt_1"] * 3


def test_a_refused_delivery_is_not_retried(receiver):
    module = webhook_module()
    receiver.statuses = [400]
    sender = module.WebhookSender(backoff=0.01)
    sender.submit(module.Delivery(receiver.url, b"{}", "evt_2", "test.event"))
    assert sender.flush(10)
    assert sender.failed == 1 and len(receiver.requests) == 1


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string for these values
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    for key, table in data.items():
        if isinstance(table, dict):
            lines.append(_toml(table, f"{prefix}.{key}" if prefix else key))
    return "\n".join(lines) + "\n"


@pytest.fixture
def webhook_plugin() -> Iterator[Any]:
    """The entry point's instance, its file settings reset afterwards (it lives as long as the process)."""
    module = webhook_module()
    yield module.plugin
    module.plugin.configure({})


async def test_the_url_comes_from_the_plugins_webhook_table_of_the_toml_file(
    receiver, offterm_config, webhook_plugin, monkeypatch, tmp_path
):
    monkeypatch.setenv("OFFTERM_WEBHOOK_URL", "http://127.0.0.1:9/not-this-one")  # the file wins
    monkeypatch.delenv("OFFTERM_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("OFFTERM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    offterm_config["plugins"].update(autoload=True, webhook={"url": receiver.url, "secret": SECRET, "timeout": 5})
    path = tmp_path / "offterm.toml"
    path.write_text(_toml(offterm_config))

    async with Terminal.from_config(path) as terminal:
        assert terminal.plugins.info["webhook"].source.startswith("entry point offterm-webhook")
        await open_with_reader(terminal)
        stored = await pay(terminal, "visa", OfflineBehavior.FORCE_OFFLINE)
        assert await terminal.forward_now() == 0
    assert webhook_plugin.flush(15), "webhook deliveries did not finish"
    assert [e["data"]["offline_id"] for e in receiver.events("payment.stored")] == [stored.offline_id]
    [forwarded] = receiver.events("payment_intent.forwarded")
    assert forwarded["data"]["outcome"] == "authorized"
    for request in receiver.requests:  # signed with the secret from the file
        t, v1 = (part.split("=", 1)[1] for part in request["headers"]["Offterm-Signature"].split(","))
        expected = hmac.new(SECRET.encode(), f"{t}.".encode() + request["raw"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(v1, expected)


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ({"timeout": "soon"}, "plugins.webhook.timeout", "must be"),
        ({"timeout": 301}, "plugins.webhook.timeout", "must be at most 300"),
        ({"url": "ftp://example.test/x"}, "plugins.webhook.url", "must be an http:// or https:// URL"),
        ({"ulr": "https://example.test/x"}, "plugins.webhook.ulr", "did you mean 'url'?"),
    ],
)
async def test_a_bad_plugins_webhook_value_stops_the_terminal_naming_the_key(
    offterm_config, webhook_plugin, monkeypatch, tmp_path, table, key, message
):
    monkeypatch.delenv("OFFTERM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    offterm_config["plugins"].update(autoload=True, webhook=table)
    path = tmp_path / "offterm.toml"
    path.write_text(_toml(offterm_config))
    with pytest.raises(ConfigError) as info:
        async with Terminal.from_config(path):
            pass
    assert info.value.key == key and message in str(info.value)


def test_settings_precedence_constructor_then_file_then_environment(webhook_plugin, monkeypatch):
    module = webhook_module()
    monkeypatch.setenv("OFFTERM_WEBHOOK_URL", "https://env.example.test/h")
    monkeypatch.setenv("OFFTERM_WEBHOOK_TIMEOUT", "9")
    plugin = module.WebhookPlugin()
    assert plugin.settings() == module.WebhookSettings(url="https://env.example.test/h", timeout=9.0)
    plugin.configure({"url": "https://file.example.test/h", "secret": None, "timeout": None, "queue_size": None})
    assert plugin.settings() == module.WebhookSettings(url="https://file.example.test/h", timeout=9.0)
    explicit = module.WebhookPlugin("https://code.example.test/h", timeout=1.0)
    explicit.configure({"url": "https://file.example.test/h", "timeout": 3})
    assert explicit.settings() == module.WebhookSettings(url="https://code.example.test/h", timeout=1.0)
