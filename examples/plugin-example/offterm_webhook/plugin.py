"""The event listener: four offterm event hooks, each turned into one queued webhook delivery."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import structlog

from offterm.core import hookimpl
from offterm.core.errors import OfftermError
from offterm.core.models import OfflineStatus, PaymentIntent

from .payloads import build_event, error_data, intent_data, outcome, status_data
from .sender import Delivery, WebhookSender

log = structlog.get_logger("offterm_webhook")

ENV_URL = "OFFTERM_WEBHOOK_URL"
ENV_SECRET = "OFFTERM_WEBHOOK_SECRET"  # noqa: S105 - a variable name, not a secret
ENV_TIMEOUT = "OFFTERM_WEBHOOK_TIMEOUT"
ENV_QUEUE_SIZE = "OFFTERM_WEBHOOK_QUEUE_SIZE"


@dataclass(frozen=True)
class WebhookSettings:
    url: str | None
    secret: str | None = None
    timeout: float = 5.0


class WebhookPlugin:
    """Register an instance as an offterm plugin; unset settings come from ``OFFTERM_WEBHOOK_*``."""

    def __init__(
        self,
        url: str | None = None,
        *,
        secret: str | None = None,
        timeout: float | None = None,
        sender: WebhookSender | None = None,
    ) -> None:
        self._url = url
        self._secret = secret
        self._timeout = timeout
        self._sender = sender

    def __repr__(self) -> str:
        return f"WebhookPlugin(url={self._url!r})"

    @property
    def sender(self) -> WebhookSender:
        if self._sender is None:
            self._sender = WebhookSender(max_queue=_env_int(ENV_QUEUE_SIZE, 1000))
        return self._sender

    def settings(self) -> WebhookSettings:
        """Explicit settings, else the environment now (so a changed variable applies at the next event)."""
        env = os.environ
        timeout = self._timeout if self._timeout is not None else _env_float(ENV_TIMEOUT, 5.0)
        return WebhookSettings(
            url=self._url or env.get(ENV_URL) or None,
            secret=self._secret or env.get(ENV_SECRET) or None,
            timeout=timeout,
        )

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait for queued deliveries (tests, shutdown); False on timeout."""
        return self._sender.flush(timeout) if self._sender is not None else True

    def _send(self, event_type: str, data: dict[str, Any]) -> None:
        try:
            settings = self.settings()
            if not settings.url:
                return
            event = build_event(event_type, data)
            body = json.dumps(event, separators=(",", ":"), default=str).encode()
            self.sender.submit(
                Delivery(
                    url=settings.url,
                    body=body,
                    event_id=event["id"],
                    event_type=event_type,
                    secret=settings.secret,
                    timeout=settings.timeout,
                )
            )
        except Exception as exc:  # a webhook must never disturb a payment
            log.error("webhook_enqueue_failed", event_type=event_type, error_type=type(exc).__name__)

    # -- offterm event hooks ------------------------------------------------------

    @hookimpl
    def offterm_on_payment_stored(self, intent: PaymentIntent) -> None:
        self._send("payment.stored", intent_data(intent))

    @hookimpl
    def offterm_on_payment_intent_forwarded(self, intent: PaymentIntent, error: OfftermError | None) -> None:
        data = intent_data(intent)
        data["outcome"] = outcome(error)
        data["error"] = error_data(error)
        self._send("payment_intent.forwarded", data)

    @hookimpl
    def offterm_on_forwarding_failure(self, error: OfftermError) -> None:
        self._send("forwarding.failure", {"error": error_data(error)})

    @hookimpl
    def offterm_on_offline_status_changed(self, status: OfflineStatus) -> None:
        self._send("offline_status.changed", status_data(status))


def _env_float(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        log.warning("webhook_bad_setting", variable=name, using=default)
        return default
    return value if value > 0 else default


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        log.warning("webhook_bad_setting", variable=name, using=default)
        return default
    return value if value > 0 else default
