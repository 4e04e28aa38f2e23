"""The ``[serve]`` section: where ``offterm serve`` listens, who may call it, where its events go.

Declared here with the core's ``OptionSpec`` and checked by the core's ``validate_options`` (the same
types, bounds and error messages as every other section); the core keeps the raw table for us
(``Config.extensions["serve"]``) and never reads it.  The checks a spec cannot say (a bind address that
is not loopback needs TLS *and* an explicit opt-in; webhook URLs are http(s); offline behaviours are
Stripe's three) are made in :func:`serve_settings`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from offterm.core.config import Config, validate_options
from offterm.core.errors import ConfigError
from offterm.core.models import OfflineBehavior
from offterm.core.registrations import OptionSpec

SECTION = "serve"
#: PaymentIntent metadata key choosing the offline behaviour of one payment
OFFLINE_BEHAVIOR_KEY = "offterm_offline_behavior"

SERVE_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "host",
        str,
        "127.0.0.1",
        "Bind address. Anything but loopback needs tls_cert, tls_key and "
        "allow_non_loopback = true (or --allow-non-loopback).",
    ),
    OptionSpec("port", int, 4243, "TCP port (0: any free port, printed at start).", maximum=65535),
    OptionSpec("allow_non_loopback", bool, False, "Explicit opt-in to bind a non-loopback address (with TLS)."),
    OptionSpec("tls_cert", str, None, "PEM certificate file; with tls_key, the service speaks HTTPS."),
    OptionSpec("tls_key", str, None, "PEM private key file of tls_cert."),
    OptionSpec("webhook_urls", list, [], "URLs that receive every event, signed like Stripe's webhooks."),
    OptionSpec(
        "webhook_secret",
        str,
        None,
        "Signing secret of the webhooks (whsec_...); required when webhook_urls is set "
        "(also OFFTERM_SERVE_WEBHOOK_SECRET).",
        secret=True,
    ),
    OptionSpec(
        "webhook_timeout", (int, float), 10.0, "Seconds a webhook receiver has to answer.", minimum=0.1, maximum=300
    ),
    OptionSpec(
        "webhook_max_delay",
        (int, float),
        300.0,
        "Longest pause between retries of a failing webhook.",
        minimum=0.01,
        maximum=86400,
    ),
    OptionSpec(
        "cors_origins",
        list,
        [],
        "Browser origins allowed to call the service (exact, e.g. 'http://localhost:3000'); none by default.",
    ),
    OptionSpec(
        "max_body_bytes", int, 65536, "Largest request body accepted (413 beyond).", minimum=256, maximum=10_000_000
    ),
    OptionSpec(
        "rate_limit", (int, float), 50.0, "Requests per second per client (429 beyond).", minimum=0.1, maximum=100_000
    ),
    OptionSpec(
        "rate_burst",
        int,
        100,
        "Requests a client may make at once before rate_limit applies.",
        minimum=1,
        maximum=1_000_000,
    ),
    OptionSpec(
        "offline_behavior",
        str,
        "prefer_online",
        "Default offline behaviour of a PaymentIntent: "
        "prefer_online, require_online or force_offline (per payment: metadata offterm_offline_behavior "
        "or the Offterm-Offline-Behavior header).",
    ),
    OptionSpec(
        "collect_timeout", (int, float), 120.0, "Seconds a reader action waits for a card.", minimum=1, maximum=3600
    ),
    OptionSpec("reader", str, None, "Serial number of the reader to connect at start (default: the first found)."),
    OptionSpec(
        "idempotency_ttl",
        (int, float),
        86400.0,
        "Seconds an Idempotency-Key is remembered (Stripe: 24 h).",
        minimum=60,
        maximum=30 * 86400,
    ),
)


@dataclass(frozen=True)
class ServeSettings:
    host: str
    port: int
    allow_non_loopback: bool
    tls_cert: Path | None
    tls_key: Path | None
    webhook_urls: tuple[str, ...]
    webhook_secret: str | None
    webhook_timeout: float
    webhook_max_delay: float
    cors_origins: tuple[str, ...]
    max_body_bytes: int
    rate_limit: float
    rate_burst: int
    offline_behavior: OfflineBehavior
    collect_timeout: float
    reader: str | None
    idempotency_ttl: float

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def __repr__(self) -> str:  # never show the webhook secret
        return f"ServeSettings(host={self.host!r}, port={self.port}, tls={self.tls})"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_settings(config: Config, overrides: Mapping[str, Any] | None = None) -> ServeSettings:
    """Validate ``[serve]`` (and command-line ``overrides``, checked the same way)."""
    raw = {**config.extensions.get(SECTION, {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    opts = validate_options(SECTION, SERVE_OPTIONS, raw, config.env)
    for key in ("webhook_urls", "cors_origins"):
        if not all(isinstance(item, str) for item in opts[key]):
            raise ConfigError(f"{SECTION}.{key}", "must be a list of strings", opts[key])
    for url in opts["webhook_urls"]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{SECTION}.webhook_urls", "each must be an http(s) URL", url)
    for origin in opts["cors_origins"]:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(f"{SECTION}.cors_origins", "each must be an origin like http://localhost:3000", origin)
    if opts["webhook_urls"] and not opts["webhook_secret"]:
        raise ConfigError(f"{SECTION}.webhook_secret", "is required when webhook_urls is set")
    try:
        behavior = OfflineBehavior(opts["offline_behavior"])
    except ValueError:
        choices = ", ".join(b.value for b in OfflineBehavior)
        raise ConfigError(
            f"{SECTION}.offline_behavior", f"must be one of {choices}", opts["offline_behavior"]
        ) from None
    cert, key = opts["tls_cert"], opts["tls_key"]
    if (cert is None) != (key is None):
        raise ConfigError(f"{SECTION}.tls_cert", "tls_cert and tls_key go together")
    host = opts["host"]
    if not is_loopback(host):
        if cert is None:
            raise ConfigError(f"{SECTION}.host", "a non-loopback address needs TLS (tls_cert and tls_key)", host)
        if not opts["allow_non_loopback"]:
            raise ConfigError(
                f"{SECTION}.host",
                "a non-loopback address needs allow_non_loopback = true (or --allow-non-loopback)",
                host,
            )
    return ServeSettings(
        host=host,
        port=opts["port"],
        allow_non_loopback=opts["allow_non_loopback"],
        tls_cert=Path(cert).expanduser() if cert else None,
        tls_key=Path(key).expanduser() if key else None,
        webhook_urls=tuple(opts["webhook_urls"]),
        webhook_secret=opts["webhook_secret"],
        webhook_timeout=float(opts["webhook_timeout"]),
        webhook_max_delay=float(opts["webhook_max_delay"]),
        cors_origins=tuple(o.rstrip("/") for o in opts["cors_origins"]),
        max_body_bytes=opts["max_body_bytes"],
        rate_limit=float(opts["rate_limit"]),
        rate_burst=opts["rate_burst"],
        offline_behavior=behavior,
        collect_timeout=float(opts["collect_timeout"]),
        reader=opts["reader"],
        idempotency_ttl=float(opts["idempotency_ttl"]),
    )
