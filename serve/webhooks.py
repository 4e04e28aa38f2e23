"""Deliver the outbox to each webhook URL, signed as Stripe signs, retried with backoff until acknowledged.

``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``: exactly Stripe's
scheme, so ``stripe.Webhook.construct_event`` of any official library verifies it.  Each attempt is
signed afresh (a receiver rejects signatures older than its tolerance, 5 minutes by default).  A 2xx
acknowledges; anything else (or no answer) is retried after ``min(max_delay, 0.5 * 2**n)`` seconds, the
same event again, so the order per URL (and per payment) holds.  Never given up on: the outbox keeps
the event, and a restart resumes from the URL's cursor.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time

import httpx
import structlog

from .outbox import Outbox, StoredEvent

log = structlog.get_logger("offterm.serve.webhooks")


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class WebhookSender:
    def __init__(self, outbox: Outbox, urls: tuple[str, ...], secret: str, *, timeout: float, max_delay: float) -> None:
        self._outbox = outbox
        self._urls = urls
        self._secret = secret
        self._timeout = timeout
        self._max_delay = max_delay
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False, trust_env=False)
        self._tasks = [asyncio.get_running_loop().create_task(self._run(url)) for url in self._urls]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._client is not None:
            await self._client.aclose()

    async def _run(self, url: str) -> None:
        seq = self._outbox.cursor(url)
        failures = 0
        while True:
            changed = self._outbox.waiter()
            batch = self._outbox.after(seq, 50)
            if not batch:
                await self._outbox.wait(changed, 30.0)
                continue
            for event in batch:
                while not await self._send(url, event):
                    failures += 1
                    await asyncio.sleep(min(self._max_delay, 0.5 * 2 ** min(failures - 1, 30)))
                failures = 0
                seq = event.seq
                self._outbox.acknowledge(url, seq)

    async def _send(self, url: str, event: StoredEvent) -> bool:
        assert self._client is not None
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": signature_header(self._secret, event.body),
            "User-Agent": "offterm-serve webhooks",
        }
        try:
            response = await self._client.post(url, content=event.body, headers=headers)
        except httpx.HTTPError as exc:
            log.info("webhook_failed", event_id=event.id, error_type=type(exc).__name__)
            return False
        if 200 <= response.status_code < 300:
            return True
        log.info("webhook_refused", event_id=event.id, status=response.status_code)
        return False
