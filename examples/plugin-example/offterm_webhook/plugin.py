"""The event listener: four offterm event hooks, each turned into one queued webhook delivery.

Settings come, first to last: the constructor's arguments, the ``[plugins.webhook]``
table of the offterm configuration file (validated by offterm against
:data:`OPTIONS` when a Terminal opens, see ``offterm_listener_settings``), then
the ``OFFTERM_WEBHOOK_*`` environment variables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from offterm.core import hookimpl
from offterm.core.errors import ConfigError, OfftermError
from offterm.core.models import OfflineStatus, PaymentIntent
from offterm.core.registrations import ListenerSettingsRegistration, OptionSpec

from .payloads import build_event, error_data, intent_data, outcome, status_data
from .sender import Delivery, WebhookSender

log = structlog.get_logger("offterm_webhook")

ENV_URL = "OFFTERM_WEBHOOK_URL"
ENV_SECRET = "OFFTERM_WEBHOOK_SECRET"  # noqa: S105 - a variable name, not a secret
ENV_TIMEOUT = "OFFTERM_WEBHOOK_TIMEOUT"
ENV_QUEUE_SIZE = "OFFTERM_WEBHOOK_QUEUE_SIZE"

#: The name of the settings table, ``[plugins.webhook]``: the entry-point name, so
#: ``[plugins] disable = ["webhook"]`` and ``[plugins.webhook]`` name the same plugin.
SETTINGS_NAME = "webhook"

#: ``[plugins.webhook]`` keys.  Unset (None), a key falls back to its ``OFFTERM_WEBHOOK_*`` variable.
OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("url", str, None, f"Where to POST events (else {ENV_URL}); unset: the plugin does nothing."),
    OptionSpec(
        "secret",
        str,
        None,
        f"HMAC-SHA256 signing secret (else OFFTERM_PLUGINS_WEBHOOK_SECRET, then {ENV_SECRET}).",
        secret=True,
    ),
    OptionSpec(
        "timeout",
        (int, float),
        None,
        f"Seconds per delivery attempt (else {ENV_TIMEOUT}, default 5).",
        minimum=0.001,
        maximum=300,
    ),
    OptionSpec(
        "queue_size",
        int,
        None,
        f"Events waiting at most (else {ENV_QUEUE_SIZE}, default 1000).",
        minimum=1,
        maximum=1_000_000,
    ),
)


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
        #: the validated ``[plugins.webhook]`` table of the last Terminal opened (a None value: unset)
        self._file: Mapping[str, Any] = {}

    def __repr__(self) -> str:
        return f"WebhookPlugin(url={self._url!r})"

    @property
    def sender(self) -> WebhookSender:
        if self._sender is None:
            queue_size = self._file.get("queue_size") or _env_int(ENV_QUEUE_SIZE, 1000)
            self._sender = WebhookSender(max_queue=queue_size)
        return self._sender

    def settings(self) -> WebhookSettings:
        """Explicit settings, else ``[plugins.webhook]``, else the environment now (a changed
        variable applies at the next event)."""
        env = os.environ
        file = self._file
        timeout = next((t for t in (self._timeout, file.get("timeout")) if t is not None), None)
        return WebhookSettings(
            url=self._url or file.get("url") or env.get(ENV_URL) or None,
            secret=self._secret or file.get("secret") or env.get(ENV_SECRET) or None,
            timeout=float(timeout) if timeout is not None else _env_float(ENV_TIMEOUT, 5.0),
        )

    def configure(self, options: Mapping[str, Any]) -> None:
        """Take the validated ``[plugins.webhook]`` table (offterm calls this when a Terminal opens)."""
        url = options.get("url")
        if url is not None and not url.startswith(("https://", "http://")):
            raise ConfigError(f"plugins.{SETTINGS_NAME}.url", "must be an http:// or https:// URL", url)
        self._file = dict(options)

    # -- offterm settings hook ----------------------------------------------------

    @hookimpl
    def offterm_listener_settings(self) -> Iterator[ListenerSettingsRegistration]:
        yield ListenerSettingsRegistration(
            name=SETTINGS_NAME,
            options=OPTIONS,
            apply=self.configure,
            description="POST offterm's events as JSON to a webhook URL.",
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
