"""The bundled forwarding policy: oldest first, exponential backoff with full jitter.

Full jitter (a uniformly random wait between 0 and the exponential ceiling)
keeps a fleet of terminals that lost the network together from hammering
the processor together when it comes back.  A payment that keeps failing,
or has waited too long, is handed to a person (``needs_attention``) rather
than retried forever; nothing is dropped.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from offterm.core.config import validate_options
from offterm.core.contracts import ForwardingPolicy, StoredPayment
from offterm.core.errors import ConfigError
from offterm.core.hookspecs import hookimpl
from offterm.core.registrations import ComponentContext, ForwardingPolicyRegistration, OptionSpec

POLICY_NAME = "default"
_MAX_EXPONENT = 62  # 2**62 * any sane base_delay is far beyond max_delay; avoids float overflow


@dataclass(frozen=True)
class BackoffSettings:
    """Validated options; see docs/policies.md."""

    base_delay: float = 1.0
    max_delay: float = 300.0
    max_attempts: int = 20
    max_age_hours: float = 168.0
    seed: int | None = None


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "base_delay",
        (int, float),
        1.0,
        "Ceiling of the first retry's wait, in seconds; doubles per failure.",
        maximum=86400,
    ),
    OptionSpec("max_delay", (int, float), 300.0, "Largest wait between two tries, in seconds.", maximum=7 * 86400),
    OptionSpec("max_attempts", int, 20, "Tries before a payment needs attention (0: no limit).", maximum=1_000_000),
    OptionSpec(
        "max_age_hours",
        (int, float),
        168.0,
        "A payment stored longer than this needs attention (0: no limit).",
        maximum=24 * 3650,
    ),
    OptionSpec("seed", (int, type(None)), None, "Seed for the jitter's random generator (tests); None: random."),
)


def settings_from(options: Mapping[str, Any], prefix: str = f"forwarding_policy.{POLICY_NAME}") -> BackoffSettings:
    """Settings from options the core validated against ``OPTIONS`` (every key present).

    Only what one option cannot say is checked here: the cap is not below the base.
    """
    base, cap = float(options["base_delay"]), float(options["max_delay"])
    if cap < base:
        raise ConfigError(f"{prefix}.max_delay", f"must be >= base_delay ({base:g})", cap)
    return BackoffSettings(
        base_delay=base,
        max_delay=cap,
        max_attempts=options["max_attempts"],
        max_age_hours=float(options["max_age_hours"]),
        seed=options["seed"],
    )


def parse_options(
    options: Mapping[str, Any] | None, prefix: str = f"forwarding_policy.{POLICY_NAME}"
) -> BackoffSettings:
    """Settings from a raw options table, validated by the core as the configuration is."""
    return settings_from(validate_options(prefix, OPTIONS, dict(options or {}), env={}), prefix)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


class BackoffPolicy(ForwardingPolicy):
    """Oldest first; after ``n`` failed tries wait uniform(0, min(max_delay, base_delay * 2**(n-1)))."""

    def __init__(self, settings: BackoffSettings | None = None, rng: random.Random | None = None) -> None:
        self.settings = settings or BackoffSettings()
        self._rng = rng or random.Random(self.settings.seed)

    def order(self, payments: list[StoredPayment]) -> list[StoredPayment]:
        """Oldest first; ties broken by offline_id so the order never depends on the input's."""
        return sorted(payments, key=lambda p: (_utc(p.stored_at), p.offline_id))

    def ceiling(self, attempts: int) -> float:
        """Largest wait after ``attempts`` failed tries (the first retry's is base_delay)."""
        exponent = min(max(attempts - 1, 0), _MAX_EXPONENT)
        return min(self.settings.max_delay, self.settings.base_delay * 2.0**exponent)

    def retry_delay(self, attempts: int) -> float:
        return self._rng.uniform(0.0, self.ceiling(attempts))

    def give_up_reason(self, payment: StoredPayment, now: datetime) -> str | None:
        s = self.settings
        if s.max_attempts and payment.attempts >= s.max_attempts:
            return f"gave up after {payment.attempts} attempts (max_attempts = {s.max_attempts})"
        if s.max_age_hours:
            age = _utc(now) - _utc(payment.stored_at)
            if age > timedelta(hours=s.max_age_hours):
                return (
                    f"stored {age.total_seconds() / 3600:.1f} h ago, over max_age_hours = {s.max_age_hours:g}; "
                    "not retried automatically"
                )
        return None


def _factory(context: ComponentContext) -> BackoffPolicy:
    return BackoffPolicy(settings_from(context.options, prefix=f"forwarding_policy.{context.name}"))


@hookimpl
def offterm_forwarding_policies() -> Iterator[ForwardingPolicyRegistration]:
    yield ForwardingPolicyRegistration(
        name=POLICY_NAME,
        factory=_factory,
        description="Oldest first; exponential backoff with full jitter; gives up after max_attempts or max_age_hours.",
        options=OPTIONS,
    )
