"""The bundled store-wide offline limits (``hub_limits``): every lane of a store, one budget.

The per-lane ``limits`` policy bounds what one device holds.  A store with many lanes carries the
sum: this policy bounds the store's total offline exposure (amount per currency and number of
payments waiting for the processor, across every lane) with the store hub's answer
(``AcceptanceRequest.fleet``: the other lanes' waiting payments, refreshed each replication round)
plus this lane's own store, as it is inside the write transaction, plus the payment asked about.

When the hub does not answer (unreachable, or its last answer older than ``max_exposure_age``)
the lane cannot know what the others hold, so it falls back to its share of the store-wide
limits (``lane_share``) applied to its own store alone.

Every registered acceptance policy applies to every Terminal: with no store-wide limit
configured, or on a lane with no hub, this policy approves everything.  Like ``limits`` it
returns its refusal, never raises it, and names the limit and its value, never card data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from offterm.core.config import validate_options
from offterm.core.contracts import AcceptanceRequest, OfflineAcceptancePolicy
from offterm.core.contracts.replication import StateTotals
from offterm.core.currency import format_amount, normalize_currency
from offterm.core.errors import ConfigError, OfflineRefused, UnknownCurrency
from offterm.core.hookspecs import hookimpl
from offterm.core.registrations import AcceptancePolicyRegistration, ComponentContext, OptionSpec

POLICY_NAME = "hub_limits"

#: what a refusal's ``scope`` says: the hub answered (the whole store), or this lane's share alone
SCOPE_STORE = "store"
SCOPE_LANE_SHARE = "lane_share"


# -- refusals: returned by evaluate(), raised by the Terminal -------------------------------------


class StoreOfflineLimitReached(OfflineRefused):
    """A store-wide offline limit (or this lane's share of it, without the hub) would be exceeded."""

    code = "store_offline_limit_reached"


class StoreOfflineTotalLimitReached(StoreOfflineLimitReached):
    code = "store_offline_total_amount_limit_reached"


class StoreOfflinePaymentCountLimitReached(StoreOfflineLimitReached):
    code = "store_offline_payment_count_limit_reached"


@dataclass(frozen=True)
class HubLimitsSettings:
    """Validated options; docs/fleet.md describes each one."""

    max_total: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    max_count: int = 0
    lane_share: float = 0.25
    max_exposure_age: float = 30.0

    @property
    def configured(self) -> bool:
        return bool(self.max_total) or self.max_count > 0


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "max_total",
        dict,
        {},
        "Largest offline total per currency across every lane of the store, this payment included "
        "(lower-case ISO code -> minor units). A currency not listed: no store-wide limit.",
    ),
    OptionSpec(
        "max_count",
        int,
        0,
        "Most payments waiting for the processor across every lane of the store, this one included (0: no limit).",
        minimum=0,
        maximum=10_000_000,
    ),
    OptionSpec(
        "lane_share",
        (int, float),
        0.25,
        "Fraction of max_total and max_count this lane may hold alone while the hub does not answer "
        "(e.g. 1 / the number of lanes; 0: nothing offline without the hub).",
        minimum=0,
        maximum=1,
    ),
    OptionSpec(
        "max_exposure_age",
        (int, float),
        30,
        "Seconds the hub's last answer about the other lanes is trusted; past it the lane falls back to lane_share.",
        minimum=0,
        maximum=86_400,
        exclusive_minimum=True,
    ),
)


def _amounts(value: Mapping[str, Any], key: str) -> dict[str, int]:
    """Currency codes normalised; the core checked the table is one, not what is in it."""
    out: dict[str, int] = {}
    for code, amount in value.items():
        try:
            currency = normalize_currency(code)
        except UnknownCurrency:
            raise ConfigError(f"{key}.{code}", "is not an ISO 4217 currency code") from None
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ConfigError(f"{key}.{code}", "must be a positive integer amount in minor units", amount)
        out[currency] = amount
    return out


def settings_from(options: Mapping[str, Any], prefix: str = f"acceptance.{POLICY_NAME}") -> HubLimitsSettings:
    """Settings from options the core validated against ``OPTIONS`` (every key present)."""
    return HubLimitsSettings(
        max_total=MappingProxyType(_amounts(options["max_total"], f"{prefix}.max_total")),
        max_count=int(options["max_count"]),
        lane_share=float(options["lane_share"]),
        max_exposure_age=float(options["max_exposure_age"]),
    )


def parse_options(options: Mapping[str, Any] | None, prefix: str = f"acceptance.{POLICY_NAME}") -> HubLimitsSettings:
    """Settings from a raw ``[acceptance.hub_limits]`` table, validated by the core as the configuration is."""
    return settings_from(validate_options(prefix, OPTIONS, dict(options or {}), env={}), prefix)


class HubLimitsPolicy(OfflineAcceptancePolicy):
    """Store-wide totals with the hub's answer; this lane's share of them without it."""

    def __init__(self, settings: HubLimitsSettings | None = None, name: str = POLICY_NAME) -> None:
        self.settings = settings or HubLimitsSettings()
        self.name = name

    def _others(self, r: AcceptanceRequest) -> StateTotals | None:
        """The other lanes' waiting payments if the hub's answer is recent enough; None: fall back."""
        fleet = r.fleet
        assert fleet is not None
        if fleet.totals is None or fleet.age_seconds is None or fleet.age_seconds > self.settings.max_exposure_age:
            return None
        return fleet.totals

    def evaluate(self, request: AcceptanceRequest) -> OfflineRefused | None:
        if not self.settings.configured or request.fleet is None:
            return None  # no store-wide limit, or a lane alone (no hub): nothing to bound here
        others = self._others(request)
        return self._total(request, others) or self._count(request, others)

    def _limit(self, maximum: int, others: StateTotals | None) -> int:
        """The store-wide limit, or this lane's share of it when the hub did not answer."""
        return maximum if others is not None else math.floor(maximum * self.settings.lane_share)

    def _total(self, r: AcceptanceRequest, others: StateTotals | None) -> OfflineRefused | None:
        currency = r.currency.lower()
        maximum = self.settings.max_total.get(currency)
        if maximum is None:
            return None
        limit = self._limit(maximum, others)
        lane = r.summary.amounts_by_currency.get(currency, 0)
        elsewhere = others.amounts_by_currency.get(currency, 0) if others is not None else 0
        after = lane + elsewhere + r.amount
        if after <= limit:
            return None
        if others is not None:
            message = (
                f"storing {format_amount(r.amount, currency)} would bring the store's offline total to "
                f"{format_amount(after, currency)} (this lane {format_amount(lane, currency)}, other lanes "
                f"{format_amount(elsewhere, currency)}), over max_total.{currency} = {format_amount(maximum, currency)}"
            )
        else:
            message = (
                f"the store hub does not answer, so this lane may hold lane_share = {self.settings.lane_share:g} "
                f"of max_total.{currency} = {format_amount(maximum, currency)}, i.e. {format_amount(limit, currency)}; "
                f"storing {format_amount(r.amount, currency)} would bring it to {format_amount(after, currency)}"
            )
        return StoreOfflineTotalLimitReached(
            message,
            policy=self.name,
            limit="max_total",
            scope=SCOPE_STORE if others is not None else SCOPE_LANE_SHARE,
            currency=currency,
            maximum=limit,
            stored=lane + elsewhere,
        )

    def _count(self, r: AcceptanceRequest, others: StateTotals | None) -> OfflineRefused | None:
        maximum = self.settings.max_count
        if not maximum:
            return None
        limit = self._limit(maximum, others)
        lane = r.summary.pending_count
        elsewhere = others.count if others is not None else 0
        if lane + elsewhere + 1 <= limit:
            return None
        if others is not None:
            message = (
                f"{lane + elsewhere} payments are already waiting offline in the store (this lane {lane}, "
                f"other lanes {elsewhere}); max_count = {maximum}"
            )
        else:
            message = (
                f"the store hub does not answer, so this lane may hold lane_share = {self.settings.lane_share:g} "
                f"of max_count = {maximum}, i.e. {limit}; {lane} payments are already waiting on this lane"
            )
        return StoreOfflinePaymentCountLimitReached(
            message,
            policy=self.name,
            limit="max_count",
            scope=SCOPE_STORE if others is not None else SCOPE_LANE_SHARE,
            maximum=limit,
            stored=lane + elsewhere,
        )


def _factory(context: ComponentContext) -> HubLimitsPolicy:
    return HubLimitsPolicy(settings_from(context.options, prefix=f"acceptance.{context.name}"), name=context.name)


@hookimpl
def offterm_offline_acceptance_policies() -> Iterator[AcceptancePolicyRegistration]:
    yield AcceptancePolicyRegistration(
        name=POLICY_NAME,
        factory=_factory,
        description="Store-wide offline limits across every lane, from the store hub; a per-lane share without it.",
        options=OPTIONS,
    )
