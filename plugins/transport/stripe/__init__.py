"""The bundled forwarding transport: Stripe's API (``[forwarding] transport = "stripe"``).

Public names: :class:`StripeTransport`, :data:`OPTIONS`, :func:`build`.
The device-only steps live in :mod:`offterm.plugins.transport.stripe.device`;
idempotency keys come from the core (docs/forwarding.md).

This hook module stays light: httpx comes in with ``.transport``, imported by
the factory or on first use of ``StripeTransport`` from here.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from offterm.core.errors import ConfigError
from offterm.core.hookspecs import hookimpl
from offterm.core.registrations import ComponentContext, ForwardingTransportRegistration, OptionSpec

from .defaults import DEFAULT_API_BASE, DEFAULT_SEARCH_DELAY, DEFAULT_STRIPE_VERSION

if TYPE_CHECKING:
    from .transport import StripeTransport

#: Names re-exported from ``.transport`` on first access (it imports httpx).
_LAZY = frozenset({"StripeTransport"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(".transport", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["OPTIONS", "StripeTransport", "build"]

OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "api_base",
        str,
        DEFAULT_API_BASE,
        "Base URL of the processor's API. https only; http:// is accepted for loopback hosts (a local simulator).",
    ),
    OptionSpec(
        "device_api_base",
        str,
        "",
        "Base URL of the device API (session, card_present payment methods); empty means api_base.",
    ),
    OptionSpec("stripe_version", str, DEFAULT_STRIPE_VERSION, "Stripe-Version header sent with every request."),
    OptionSpec(
        "timeout",
        (int, float),
        30.0,
        "Seconds to wait for an answer before the outcome counts as unknown.",
        minimum=0.01,
        maximum=600,
    ),
    OptionSpec(
        "connect_timeout",
        (int, float),
        5.0,
        "Seconds to wait for a connection to the processor.",
        minimum=0.01,
        maximum=600,
    ),
    OptionSpec(
        "max_connections",
        int,
        20,
        "Largest number of simultaneous connections to the processor.",
        minimum=1,
        maximum=1000,
    ),
    OptionSpec("probe_path", str, "/healthcheck", "Path requested (unauthenticated) to test reachability."),
    OptionSpec("probe_timeout", (int, float), 5.0, "Seconds a reachability probe may take.", minimum=0.01, maximum=600),
    OptionSpec(
        "search_delay",
        (int, float),
        DEFAULT_SEARCH_DELAY,
        "Seconds after a PaymentIntent's creation before Stripe's search is trusted to find it "
        "(Stripe: under a minute normally, up to an hour behind during outages). Until then, finding "
        "nothing does not mean there is nothing: a shorter wait risks a second charge.",
        minimum=0,
        maximum=86_400,
    ),
)

#: a dated version, optionally with a release name and beta flags ("2025-03-31.basil; feature_beta=v1")
_STRIPE_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(\.[A-Za-z0-9_]+)?(; ?[A-Za-z0-9_]+=[A-Za-z0-9_.]+)*")
_PROBE_PATH = re.compile(r"/[!-~]*")


def build(context: ComponentContext) -> StripeTransport:
    """Factory: validated options -> transport (ConfigError names a bad option)."""
    from .http import check_base_url
    from .transport import StripeTransport

    opts = context.options
    for key in ("timeout", "connect_timeout", "probe_timeout"):
        if float(opts.get(key, 1.0)) <= 0:
            raise ConfigError(key, "must be a positive number of seconds", opts.get(key))
    if int(opts.get("max_connections", 20)) < 1:
        raise ConfigError("max_connections", "must be at least 1", opts.get("max_connections"))
    version = opts.get("stripe_version", DEFAULT_STRIPE_VERSION)
    if not _STRIPE_VERSION.fullmatch(version):
        # It goes into a header on every request: a bad one would fail them all, at forwarding time.
        raise ConfigError(
            "forwarding.stripe.stripe_version", "must be a Stripe API version such as 2023-08-16", version
        )
    probe_path = opts.get("probe_path", "/healthcheck")
    if not _PROBE_PATH.fullmatch(probe_path):
        raise ConfigError("forwarding.stripe.probe_path", "must be a URL path starting with /", probe_path)
    device_base = opts.get("device_api_base") or None
    if device_base:
        check_base_url("device_api_base", device_base)
    return StripeTransport(
        opts.get("api_base", DEFAULT_API_BASE),
        stripe_version=version,
        timeout=float(opts.get("timeout", 30.0)),
        connect_timeout=float(opts.get("connect_timeout", 5.0)),
        max_connections=int(opts.get("max_connections", 20)),
        device_api_base=device_base,
        probe_path=probe_path,
        probe_timeout=float(opts.get("probe_timeout", 5.0)),
        search_delay=float(opts.get("search_delay", DEFAULT_SEARCH_DELAY)),
    )


@hookimpl
def offterm_forwarding_transports() -> Iterator[ForwardingTransportRegistration]:
    yield ForwardingTransportRegistration(
        name="stripe",
        factory=build,
        description="Stripe's API over HTTPS (httpx); device steps in stripe.device",
        options=OPTIONS,
    )
