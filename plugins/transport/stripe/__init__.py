"""The bundled forwarding transport: Stripe's API (``[forwarding] transport = "stripe"``).

Public names: :class:`StripeTransport`, :data:`OPTIONS`, :func:`build`.
The device-only steps live in :mod:`offterm.plugins.transport.stripe.device`;
idempotency keys come from the core (docs/forwarding.md).

This hook module stays light: httpx comes in with ``.transport``, imported by
the factory or on first use of ``StripeTransport`` from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from offterm.core.hookspecs import hookimpl
from offterm.core.registrations import ComponentContext, ForwardingTransportRegistration, OptionSpec

from ._defaults import DEFAULT_API_BASE, DEFAULT_SEARCH_DELAY, DEFAULT_STRIPE_VERSION

if TYPE_CHECKING:
    from ._transport import StripeTransport

#: Names re-exported from ``.transport`` on first access (it imports httpx).
_LAZY = frozenset({"StripeTransport"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module("._transport", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["OPTIONS", "StripeTransport", "build", "device", "offterm_forwarding_transports"]

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
    OptionSpec(
        "stripe_version",
        str,
        DEFAULT_STRIPE_VERSION,
        "Stripe-Version header sent with every request.",
        # It goes into a header on every request: a bad one would fail them all, at forwarding time.
        pattern=r"\d{4}-\d{2}-\d{2}(\.[A-Za-z0-9_]+)?(; ?[A-Za-z0-9_]+=[A-Za-z0-9_.]+)*",
        pattern_help="a Stripe API version such as 2023-08-16",
    ),
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
    OptionSpec(
        "probe_path",
        str,
        "/healthcheck",
        "Path requested (unauthenticated) to test reachability.",
        pattern=r"/[!-~]*",
        pattern_help="a URL path starting with /",
    ),
    OptionSpec("probe_timeout", (int, float), 5.0, "Seconds a reachability probe may take.", minimum=0.01, maximum=600),
    OptionSpec(
        "search_delay",
        (int, float),
        DEFAULT_SEARCH_DELAY,
        "Seconds after a PaymentIntent's creation before Stripe's search is trusted to find it "
        "(Stripe: under a minute normally, up to an hour behind during outages). Until then, finding "
        "nothing does not mean there is nothing: a shorter wait risks a second charge. It is the quiet "
        "gap before each new key generation, so every actor forwarding the same payments must use the same.",
        minimum=0,
        maximum=86_400,
    ),
)


def build(context: ComponentContext) -> StripeTransport:
    """Factory: options the core validated against ``OPTIONS`` -> transport.

    The base URLs are judged by the transport (ConfigError naming the option): it is also built directly.
    """
    from ._transport import StripeTransport

    opts = context.options
    return StripeTransport(
        opts["api_base"],
        stripe_version=opts["stripe_version"],
        timeout=float(opts["timeout"]),
        connect_timeout=float(opts["connect_timeout"]),
        max_connections=opts["max_connections"],
        device_api_base=opts["device_api_base"] or None,
        probe_path=opts["probe_path"],
        probe_timeout=float(opts["probe_timeout"]),
        search_delay=float(opts["search_delay"]),
    )


@hookimpl
def offterm_forwarding_transports() -> Iterator[ForwardingTransportRegistration]:
    yield ForwardingTransportRegistration(
        name="stripe",
        factory=build,
        description="Stripe's API over HTTPS (httpx); device steps in stripe.device",
        options=OPTIONS,
    )
