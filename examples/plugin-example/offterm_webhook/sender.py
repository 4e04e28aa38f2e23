"""Deliver webhook bodies from a background thread, through a bounded queue.

The event hooks run on the Terminal's event loop, in the middle of payment
work, so they must return at once and never raise: they only enqueue.  A
full queue drops the event (logged) rather than wait.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import queue
import threading
import time
from dataclasses import dataclass

import httpx
import structlog

log = structlog.get_logger("offterm_webhook")

#: Statuses worth another attempt; anything else 4xx is the receiver refusing for good.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Delivery:
    url: str
    body: bytes
    event_id: str
    event_type: str
    secret: str | None = None
    timeout: float = 5.0


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``Offterm-Signature`` value: HMAC-SHA256 over ``"<timestamp>.<body>"``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class WebhookSender:
    """One worker thread, started on first use, posting deliveries in order."""

    def __init__(self, max_queue: int = 1000, attempts: int = 3, backoff: float = 0.5) -> None:
        self.max_queue = max_queue
        self.attempts = attempts
        self.backoff = backoff
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[Delivery] = queue.Queue(maxsize=max_queue)
        self._pending = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, delivery: Delivery) -> bool:
        """Queue a delivery without ever blocking; False when it was dropped."""
        self._ensure_started()
        with self._cond:
            try:
                self._queue.put_nowait(delivery)
            except queue.Full:
                self.dropped += 1
                dropped = True
            else:
                self._pending += 1
                dropped = False
        if dropped:
            log.warning("webhook_event_dropped", reason="queue full", event_type=delivery.event_type)
        return not dropped

    def _ensure_started(self) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="offterm-webhook", daemon=True)
                self._thread.start()
                atexit.register(self.flush, 2.0)

    def _run(self) -> None:
        with httpx.Client(headers={"User-Agent": "offterm-webhook/0.1"}) as client:
            while True:
                delivery = self._queue.get()
                try:
                    ok = self._deliver(client, delivery)
                except Exception as exc:  # never let the worker die
                    log.error("webhook_worker_error", error_type=type(exc).__name__, error=str(exc))
                    ok = False
                with self._cond:
                    if ok:
                        self.sent += 1
                    else:
                        self.failed += 1
                    self._pending -= 1
                    self._cond.notify_all()

    def _deliver(self, client: httpx.Client, delivery: Delivery) -> bool:
        headers = {"Content-Type": "application/json", "Offterm-Event-Id": delivery.event_id}
        problem = ""
        for attempt in range(1, self.attempts + 1):
            if delivery.secret:
                headers["Offterm-Signature"] = signature(delivery.secret, int(time.time()), delivery.body)
            try:
                resp = client.post(delivery.url, content=delivery.body, headers=headers, timeout=delivery.timeout)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            else:
                if resp.status_code < 300:
                    return True
                problem = f"HTTP {resp.status_code}"
                if resp.status_code not in RETRY_STATUSES:
                    break
            if attempt < self.attempts:
                time.sleep(self.backoff * attempt)
        log.warning(
            "webhook_delivery_failed",
            event_type=delivery.event_type,
            event_id=delivery.event_id,
            problem=problem,
            attempts=attempt,
        )
        return False

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued delivery was sent or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True
