"""The bundled offline acceptance policy: Stripe's offline rules, made configurable.

A payment taken offline is a risk the merchant carries until it is forwarded,
so this policy bounds that risk (amount per payment, total and number stored,
age of the backlog, card types) and refuses what a processor would not accept
later (swipes, Interac, domestic-only networks, expired cards, EEA tap).

``evaluate`` returns the first refusal, never raises it, and looks only at
non-sensitive facts: messages name the limit and its value, never card data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from offterm.core.config import validate_options
from offterm.core.contracts import AcceptanceRequest, CardDetails, OfflineAcceptancePolicy
from offterm.core.currency import format_amount, normalize_currency
from offterm.core.errors import ConfigError, OfflineRefused, UnknownCurrency
from offterm.core.hookspecs import hookimpl
from offterm.core.models import ReadMethod
from offterm.core.registrations import AcceptancePolicyRegistration, ComponentContext, OptionSpec

POLICY_NAME = "limits"

#: Stripe's fixed per-payment maximum: 10,000 USD.
DEFAULT_MAX_AMOUNT: Mapping[str, int] = MappingProxyType({"usd": 1_000_000})
DEFAULT_ALLOWED_BRANDS: tuple[str, ...] = ("visa", "mastercard", "discover", "amex")
#: The 27 EU member states plus Iceland, Liechtenstein and Norway (ISO 3166-1 alpha-2).
EEA_COUNTRIES: tuple[str, ...] = (
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE",
    "IS", "IT", "LI", "LT", "LU", "LV", "MT", "NL", "NO", "PL", "PT", "RO", "SE", "SI", "SK",
)  # fmt: skip

#: Domestic networks whose co-badged cards are routed over the international brand offline.
CO_BADGED_DOMESTIC: frozenset[str] = frozenset({"eftpos_au", "cartes_bancaires"})
#: Networks never accepted offline, even co-badged.
INTERAC = "interac"
GIROCARD = "girocard"


# -- refusals (Stripe's offline error codes); returned by evaluate(), raised by the Terminal --------


class AmountExceedsOfflineMaximum(OfflineRefused):
    code = "amount_exceeds_max_offline_amount"


class OfflineTotalLimitReached(OfflineRefused):
    code = "offline_total_amount_limit_reached"


class OfflinePaymentCountLimitReached(OfflineRefused):
    code = "offline_payments_database_too_large"


class OfflineBacklogTooOld(OfflineRefused):
    code = "offline_payments_too_old"


class InvalidOfflineCurrency(OfflineRefused):
    code = "invalid_offline_currency"


class CardBrandNotAllowedOffline(OfflineRefused):
    code = "card_brand_not_supported_offline"


class CardSwipeNotAvailableOffline(OfflineRefused):
    code = "card_swipe_not_available"


class InteracNotSupportedOffline(OfflineRefused):
    code = "interac_not_supported_offline"


class OfflineAndCardExpired(OfflineRefused):
    code = "offline_and_card_expired"


class OfflinePinRequired(OfflineRefused):
    """In the EEA an offline payment needs contact chip and a verified PIN."""

    code = "offline_requires_chip_and_pin"


class ReaderNotAvailableOffline(OfflineRefused):
    """The reader has not connected online recently enough to work offline."""

    code = "reader_connection_not_available_offline"


class ReaderOfflineLocationMismatch(OfflineRefused):
    code = "reader_connection_offline_location_mismatch"


@dataclass(frozen=True)
class LimitsSettings:
    """Validated options; see docs/policies.md for each one."""

    max_amount: Mapping[str, int] = field(default_factory=lambda: MappingProxyType(dict(DEFAULT_MAX_AMOUNT)))
    max_total: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    max_count: int = 10_000
    max_age_hours: float = 72.0
    allowed_brands: frozenset[str] = frozenset(DEFAULT_ALLOWED_BRANDS)
    eea_countries: frozenset[str] = frozenset(EEA_COUNTRIES)
    reader_online_within_days: float = 30.0


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "max_amount",
        dict,
        dict(DEFAULT_MAX_AMOUNT),
        "Largest single offline payment per currency (lower-case ISO code -> minor units). "
        "A currency not listed cannot be taken offline.",
    ),
    OptionSpec(
        "max_total",
        dict,
        {},
        "Largest total stored per currency, this payment included (minor units). A currency not listed: no limit.",
    ),
    OptionSpec(
        "max_count",
        int,
        10_000,
        "Most payments stored and waiting for the processor, this one included.",
        minimum=1,
        maximum=10_000_000,
    ),
    OptionSpec(
        "max_age_hours",
        (int, float),
        72,
        "Refuse new offline payments while the oldest stored one is older than this (0: no limit).",
        maximum=24 * 3650,
    ),
    OptionSpec(
        "allowed_brands",
        list,
        list(DEFAULT_ALLOWED_BRANDS),
        "Card brands accepted offline.",
        pattern=r"(?s).+",
        pattern_help="a non-empty string",
    ),
    OptionSpec(
        "eea_countries",
        list,
        list(EEA_COUNTRIES),
        "Merchant countries where offline needs an inserted card with a verified PIN.",
        pattern=r"(?s).+",
        pattern_help="a non-empty string",
    ),
    OptionSpec(
        "reader_online_within_days",
        (int, float),
        30,
        "The reader must have connected online within this many days, at this location (0: no check).",
        maximum=3650,
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


def settings_from(options: Mapping[str, Any], prefix: str = f"acceptance.{POLICY_NAME}") -> LimitsSettings:
    """Settings from options the core validated against ``OPTIONS`` (every key present)."""
    return LimitsSettings(
        max_amount=MappingProxyType(_amounts(options["max_amount"], f"{prefix}.max_amount")),
        max_total=MappingProxyType(_amounts(options["max_total"], f"{prefix}.max_total")),
        max_count=options["max_count"],
        max_age_hours=float(options["max_age_hours"]),
        allowed_brands=frozenset(v.lower() for v in options["allowed_brands"]),
        eea_countries=frozenset(v.upper() for v in options["eea_countries"]),
        reader_online_within_days=float(options["reader_online_within_days"]),
    )


def parse_options(options: Mapping[str, Any] | None, prefix: str = f"acceptance.{POLICY_NAME}") -> LimitsSettings:
    """Settings from a raw ``[acceptance.limits]`` table, validated by the core as the configuration is."""
    return settings_from(validate_options(prefix, OPTIONS, dict(options or {}), env={}), prefix)


def _utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC, so aware and naive values compare."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def routing_brand(card: CardDetails) -> str | None:
    """The brand an offline payment goes over: a co-badged eftpos or Cartes Bancaires card
    routes over its international scheme; None when there is none (a domestic-only card)."""
    brand = card.brand.lower()
    if brand not in CO_BADGED_DOMESTIC:
        return brand
    for network in (n.lower() for n in card.networks):
        if network not in CO_BADGED_DOMESTIC and network not in {INTERAC, GIROCARD}:
            return network
    return None


Check = Callable[[AcceptanceRequest], OfflineRefused | None]


class LimitsPolicy(OfflineAcceptancePolicy):
    """Every rule in order; the first that fails is the refusal."""

    def __init__(self, settings: LimitsSettings | None = None, name: str = POLICY_NAME) -> None:
        self.settings = settings or LimitsSettings()
        self.name = name
        self._request_checks: tuple[Check, ...] = (
            self._amount,
            self._total,
            self._count,
            self._backlog_age,
            self._reader,
        )
        self._card_checks: tuple[Callable[[CardDetails, AcceptanceRequest], OfflineRefused | None], ...] = (
            self._swipe,
            self._interac,
            self._brand,
            self._expired,
            self._eea_chip_and_pin,
        )

    def evaluate(self, request: AcceptanceRequest) -> OfflineRefused | None:
        for check in self._request_checks:
            refusal = check(request)
            if refusal is not None:
                return refusal
        if request.card is not None:
            for card_check in self._card_checks:
                refusal = card_check(request.card, request)
                if refusal is not None:
                    return refusal
        return None

    # -- amounts, totals, backlog ------------------------------------------------------------

    def _amount(self, r: AcceptanceRequest) -> OfflineRefused | None:
        currency = r.currency.lower()
        maximum = self.settings.max_amount.get(currency)
        if maximum is None:
            allowed = ", ".join(sorted(self.settings.max_amount)) or "none"
            return InvalidOfflineCurrency(
                f"currency {r.currency.upper()} cannot be taken offline: no max_amount set for it "
                f"(offline currencies: {allowed})",
                policy=self.name,
                limit="max_amount",
                currency=currency,
            )
        if r.amount > maximum:
            return AmountExceedsOfflineMaximum(
                f"amount {format_amount(r.amount, currency)} exceeds the offline maximum per payment "
                f"(max_amount.{currency} = {format_amount(maximum, currency)})",
                policy=self.name,
                limit="max_amount",
                currency=currency,
                maximum=maximum,
            )
        return None

    def _total(self, r: AcceptanceRequest) -> OfflineRefused | None:
        currency = r.currency.lower()
        maximum = self.settings.max_total.get(currency)
        if maximum is None:
            return None
        stored = r.summary.amounts_by_currency.get(currency, 0)
        if stored + r.amount > maximum:
            return OfflineTotalLimitReached(
                f"storing {format_amount(r.amount, currency)} would bring the offline total to "
                f"{format_amount(stored + r.amount, currency)}, over max_total.{currency} = "
                f"{format_amount(maximum, currency)}",
                policy=self.name,
                limit="max_total",
                currency=currency,
                maximum=maximum,
                stored=stored,
            )
        return None

    def _count(self, r: AcceptanceRequest) -> OfflineRefused | None:
        maximum = self.settings.max_count
        if r.summary.pending_count + 1 > maximum:
            return OfflinePaymentCountLimitReached(
                f"{r.summary.pending_count} payments are already stored offline; max_count = {maximum}",
                policy=self.name,
                limit="max_count",
                maximum=maximum,
                stored=r.summary.pending_count,
            )
        return None

    def _backlog_age(self, r: AcceptanceRequest) -> OfflineRefused | None:
        hours = self.settings.max_age_hours
        oldest = r.summary.oldest_stored_at
        if not hours or oldest is None:
            return None
        age = _utc(r.now) - _utc(oldest)
        if age > timedelta(hours=hours):
            return OfflineBacklogTooOld(
                f"the oldest stored payment is {age.total_seconds() / 3600:.1f} h old, over "
                f"max_age_hours = {hours:g}; forward the backlog before taking more payments offline",
                policy=self.name,
                limit="max_age_hours",
                maximum=hours,
            )
        return None

    # -- the reader ------------------------------------------------------------------------------

    def _reader(self, r: AcceptanceRequest) -> OfflineRefused | None:
        days = self.settings.reader_online_within_days
        # Before collection with no reader yet there is nothing to judge; after collection
        # (a card was read) the rule always applies.
        if not days or (r.card is None and r.reader is None and r.reader_last_online_at is None):
            return None
        last = r.reader_last_online_at
        if last is None:
            return ReaderNotAvailableOffline(
                "the reader has never connected online; connect it online once before taking payments offline",
                policy=self.name,
                limit="reader_online_within_days",
            )
        if _utc(r.now) - _utc(last) > timedelta(days=days):
            return ReaderNotAvailableOffline(
                f"the reader last connected online {(_utc(r.now) - _utc(last)).days} days ago, "
                f"over reader_online_within_days = {days:g}; connect it online",
                policy=self.name,
                limit="reader_online_within_days",
                maximum=days,
            )
        if r.location_id is not None and r.reader_last_online_location != r.location_id:
            return ReaderOfflineLocationMismatch(
                f"the reader last connected online at location {r.reader_last_online_location!r}, "
                f"not at this location {r.location_id!r}",
                policy=self.name,
                limit="location_id",
            )
        return None

    # -- the card --------------------------------------------------------------------------------

    def _swipe(self, card: CardDetails, r: AcceptanceRequest) -> OfflineRefused | None:
        if card.read_method is ReadMethod.MAGNETIC_STRIPE:
            return CardSwipeNotAvailableOffline(
                "a swiped card cannot be taken offline; insert or tap it", policy=self.name, limit="read_method"
            )
        return None

    def _interac(self, card: CardDetails, r: AcceptanceRequest) -> OfflineRefused | None:
        if INTERAC in {card.brand.lower(), *(n.lower() for n in card.networks)}:
            return InteracNotSupportedOffline(
                "Interac cards cannot be taken offline", policy=self.name, limit="allowed_brands", brand=INTERAC
            )
        return None

    def _brand(self, card: CardDetails, r: AcceptanceRequest) -> OfflineRefused | None:
        allowed = self.settings.allowed_brands
        if GIROCARD in {card.brand.lower(), *(n.lower() for n in card.networks)}:
            return CardBrandNotAllowedOffline(
                "girocard cannot be taken offline", policy=self.name, limit="allowed_brands", brand=GIROCARD
            )
        brand = routing_brand(card)
        if brand is None:
            return CardBrandNotAllowedOffline(
                f"{card.brand.lower()} cards without an international brand cannot be taken offline",
                policy=self.name,
                limit="allowed_brands",
                brand=card.brand.lower(),
            )
        if brand not in allowed:
            return CardBrandNotAllowedOffline(
                f"brand {brand} is not accepted offline (allowed_brands = {', '.join(sorted(allowed)) or 'none'})",
                policy=self.name,
                limit="allowed_brands",
                brand=brand,
            )
        return None

    def _expired(self, card: CardDetails, r: AcceptanceRequest) -> OfflineRefused | None:
        if card.is_expired(r.now):
            return OfflineAndCardExpired(
                "the card has expired and cannot be taken offline", policy=self.name, limit="card_expiry"
            )
        return None

    def _eea_chip_and_pin(self, card: CardDetails, r: AcceptanceRequest) -> OfflineRefused | None:
        country = (r.merchant_country or "").upper()
        if country not in self.settings.eea_countries:
            return None
        if card.read_method is not ReadMethod.CONTACT_EMV or not card.pin_verified:
            how = "tapped" if card.read_method is ReadMethod.CONTACTLESS_EMV else "inserted without a verified PIN"
            return OfflinePinRequired(
                f"in the EEA ({country}) an offline payment needs an inserted card and a verified PIN; "
                f"this card was {how}",
                policy=self.name,
                limit="eea_countries",
                country=country,
            )
        return None


def _factory(context: ComponentContext) -> LimitsPolicy:
    return LimitsPolicy(settings_from(context.options, prefix=f"acceptance.{context.name}"), name=context.name)


@hookimpl
def offterm_offline_acceptance_policies() -> Iterator[AcceptancePolicyRegistration]:
    yield AcceptancePolicyRegistration(
        name=POLICY_NAME,
        factory=_factory,
        description="Stripe's offline rules with configurable limits: amounts, totals, count, age, brands, reader.",
        options=OPTIONS,
    )
