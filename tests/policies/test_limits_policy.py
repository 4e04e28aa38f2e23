"""The bundled offline acceptance policy ("limits"), through the policy contract."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offterm.core.config import validate_options
from offterm.core.contracts import (
    AcceptanceRequest,
    CardDetails,
    CollectRequest,
    OfflineAcceptancePolicy,
    ReaderInfo,
    StoreSummary,
)
from offterm.core.errors import (
    ConfigError,
    OfflineRefused,
)
from offterm.core.manager import create_plugin_manager
from offterm.core.models import ReadMethod
from offterm.core.registrations import ComponentContext
from offterm.plugins.policies import limits
from offterm.plugins.policies.limits import (
    AmountExceedsOfflineMaximum,
    CardBrandNotAllowedOffline,
    CardSwipeNotAvailableOffline,
    InteracNotSupportedOffline,
    InvalidOfflineCurrency,
    OfflineAndCardExpired,
    OfflineBacklogTooOld,
    OfflinePaymentCountLimitReached,
    OfflinePinRequired,
    OfflineTotalLimitReached,
    ReaderNotAvailableOffline,
    ReaderOfflineLocationMismatch,
)

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
READER = ReaderInfo(
    serial_number="SIMULATOR-1",
    reader_type="simulated_wisepad3",
    transport="simulated",
    address="sim://SIMULATOR-1",
    location_id="tml_loc",
)
EMPTY = StoreSummary(pending_count=0, amounts_by_currency={}, oldest_stored_at=None, needs_attention_count=0)


def make_policy(**options: Any) -> OfflineAcceptancePolicy:
    """As the Terminal builds it: every acceptance policy registered, this one built with its options."""
    pm = create_plugin_manager(autoload=False, env={}, bundled=[("offline-limits", limits.__name__)])
    regs = pm.acceptance_policies()
    assert [r.name for r in regs] == ["limits"]
    validated = validate_options("acceptance.limits", regs[0].options, options, env={})
    return regs[0].factory(ComponentContext("limits", validated, Path(".")))


def card(
    brand: str = "visa",
    *,
    read_method: ReadMethod = ReadMethod.CONTACT_EMV,
    pin: bool = True,
    networks: tuple[str, ...] | None = None,
    exp: tuple[int, int] = (12, 2029),
) -> CardDetails:
    return CardDetails(
        brand=brand,
        last4="4242",
        exp_month=exp[0],
        exp_year=exp[1],
        read_method=read_method,
        pin_verified=pin,
        networks=networks if networks is not None else (brand,),
    )


def request(
    amount: int = 1000,
    currency: str = "usd",
    *,
    card: CardDetails | None = None,
    summary: StoreSummary = EMPTY,
    merchant_country: str = "US",
    reader: ReaderInfo | None = READER,
    last_online: datetime | None = NOW - timedelta(days=1),
    last_location: str | None = "tml_loc",
    location_id: str | None = "tml_loc",
    now: datetime = NOW,
) -> AcceptanceRequest:
    return AcceptanceRequest(
        amount=amount,
        currency=currency,
        card=card,
        summary=summary,
        now=now,
        merchant_country=merchant_country,
        reader=reader,
        reader_last_online_at=last_online,
        reader_last_online_location=last_location,
        location_id=location_id,
    )


def summary(count: int = 0, oldest: datetime | None = None, **amounts: int) -> StoreSummary:
    return StoreSummary(
        pending_count=count, amounts_by_currency=dict(amounts), oldest_stored_at=oldest, needs_attention_count=0
    )


def refused(result: OfflineRefused | None, kind: type[OfflineRefused]) -> OfflineRefused:
    assert isinstance(result, kind), f"expected {kind.__name__}, got {result!r}"
    assert result.policy == "limits"
    assert "4242" not in result.message  # never card data
    return result


# -- registration ---------------------------------------------------------------------------------


def test_registration_documents_every_option() -> None:
    (reg,) = list(limits.offterm_offline_acceptance_policies())
    assert reg.name == "limits"
    assert {o.key for o in reg.options} == {
        "max_amount",
        "max_total",
        "max_count",
        "max_age_hours",
        "allowed_brands",
        "eea_countries",
        "reader_online_within_days",
    }
    defaults = {o.key: o.default for o in reg.options}
    assert defaults["max_amount"] == {"usd": 1_000_000}
    assert defaults["max_total"] == {}
    assert defaults["max_count"] == 10_000
    assert defaults["max_age_hours"] == 72
    assert defaults["allowed_brands"] == ["visa", "mastercard", "discover", "amex"]
    assert defaults["reader_online_within_days"] == 30
    assert len(defaults["eea_countries"]) == 30 and "NO" in defaults["eea_countries"]


def test_plain_payment_is_approved_before_and_after_collection() -> None:
    policy = make_policy()
    assert policy.evaluate(request()) is None
    assert policy.evaluate(request(card=card())) is None


# -- per-payment maximum and currency -------------------------------------------------------------


def test_default_max_amount_is_10000_usd() -> None:
    policy = make_policy()
    assert policy.evaluate(request(1_000_000)) is None
    r = refused(policy.evaluate(request(1_000_001)), AmountExceedsOfflineMaximum)
    assert r.code == "amount_exceeds_max_offline_amount"
    assert "max_amount.usd" in r.message and "10000.00 USD" in r.message and "10000.01 USD" in r.message


def test_currency_without_a_maximum_is_invalid_offline() -> None:
    policy = make_policy()
    r = refused(policy.evaluate(request(100, "eur")), InvalidOfflineCurrency)
    assert r.code == "invalid_offline_currency"
    assert "EUR" in r.message
    # upper-case request currency is the same currency
    assert policy.evaluate(request(100, "USD")) is None


@pytest.mark.parametrize(
    ("currency", "limit", "shown_over"),
    [("jpy", 1_000_000, "1000001 JPY"), ("kwd", 3_000_000, "3000.001 KWD"), ("usd", 50_000, "500.01 USD")],
)
def test_max_amount_boundary_in_minor_units(currency: str, limit: int, shown_over: str) -> None:
    policy = make_policy(max_amount={currency: limit})
    assert policy.evaluate(request(limit, currency)) is None
    r = refused(policy.evaluate(request(limit + 1, currency)), AmountExceedsOfflineMaximum)
    assert shown_over in r.message
    assert r.details["currency"] == currency and r.details["maximum"] == limit


@given(limit=st.integers(1, 10**11), amount=st.integers(1, 10**11))
def test_max_amount_accepts_exactly_up_to_the_limit(limit: int, amount: int) -> None:
    policy = limits.LimitsPolicy(limits.LimitsSettings(max_amount={"usd": limit}))
    result = policy.evaluate(request(amount))
    assert (result is None) == (amount <= limit)


# -- totals, count, backlog age ----------------------------------------------------------------------


def test_max_total_includes_this_payment() -> None:
    policy = make_policy(max_total={"usd": 5_000})
    assert policy.evaluate(request(1_000, summary=summary(4, usd=4_000))) is None
    r = refused(policy.evaluate(request(1_001, summary=summary(4, usd=4_000))), OfflineTotalLimitReached)
    assert r.code == "offline_total_amount_limit_reached"
    assert "max_total.usd" in r.message and "50.00 USD" in r.message


def test_totals_are_per_currency() -> None:
    policy = make_policy(max_amount={"usd": 1_000_000, "eur": 1_000_000}, max_total={"usd": 5_000, "eur": 2_000})
    mixed = summary(3, usd=1_000, eur=2_000)
    # a big EUR backlog does not count against USD
    assert policy.evaluate(request(4_000, "usd", summary=mixed)) is None
    refused(policy.evaluate(request(1, "eur", summary=mixed)), OfflineTotalLimitReached)
    # a currency absent from max_total has no total limit
    policy2 = make_policy(max_amount={"usd": 1_000_000, "gbp": 1_000_000}, max_total={"usd": 5_000})
    assert policy2.evaluate(request(1_000_000, "gbp", summary=summary(50, gbp=10**9))) is None


def test_max_total_in_jpy_and_kwd() -> None:
    policy = make_policy(max_amount={"jpy": 10**7, "kwd": 10**7}, max_total={"jpy": 100_000, "kwd": 500_000})
    assert policy.evaluate(request(60_000, "jpy", summary=summary(1, jpy=40_000))) is None
    r = refused(policy.evaluate(request(60_001, "jpy", summary=summary(1, jpy=40_000))), OfflineTotalLimitReached)
    assert "100001 JPY" in r.message
    assert policy.evaluate(request(250_000, "kwd", summary=summary(1, kwd=250_000))) is None
    r = refused(policy.evaluate(request(250_001, "kwd", summary=summary(1, kwd=250_000))), OfflineTotalLimitReached)
    assert "500.001 KWD" in r.message


def test_max_count_counts_this_payment() -> None:
    policy = make_policy(max_count=3)
    assert policy.evaluate(request(summary=summary(2, usd=10))) is None
    r = refused(policy.evaluate(request(summary=summary(3, usd=10))), OfflinePaymentCountLimitReached)
    assert r.code == "offline_payments_database_too_large"
    assert "max_count = 3" in r.message


def test_default_max_count_is_10000() -> None:
    policy = make_policy()
    assert policy.evaluate(request(summary=summary(9_999))) is None
    refused(policy.evaluate(request(summary=summary(10_000))), OfflinePaymentCountLimitReached)


def test_backlog_age_boundary() -> None:
    policy = make_policy()
    at_limit = summary(1, NOW - timedelta(hours=72), usd=10)
    over = summary(1, NOW - timedelta(hours=72, seconds=1), usd=10)
    assert policy.evaluate(request(summary=at_limit)) is None
    r = refused(policy.evaluate(request(summary=over)), OfflineBacklogTooOld)
    assert r.code == "offline_payments_too_old"
    assert "max_age_hours = 72" in r.message
    # naive timestamps are read as UTC
    naive = summary(1, (NOW - timedelta(hours=73)).replace(tzinfo=None), usd=10)
    refused(policy.evaluate(request(summary=naive)), OfflineBacklogTooOld)


def test_backlog_age_configurable_and_off() -> None:
    old = summary(1, NOW - timedelta(hours=30), usd=10)
    refused(make_policy(max_age_hours=24).evaluate(request(summary=old)), OfflineBacklogTooOld)
    assert make_policy(max_age_hours=0).evaluate(request(summary=summary(1, NOW - timedelta(days=400)))) is None


# -- the reader ----------------------------------------------------------------------------------------


def test_reader_online_within_30_days_boundary() -> None:
    policy = make_policy()
    assert policy.evaluate(request(last_online=NOW - timedelta(days=30))) is None
    r = refused(policy.evaluate(request(last_online=NOW - timedelta(days=30, seconds=1))), ReaderNotAvailableOffline)
    assert r.code == "reader_connection_not_available_offline"
    assert "reader_online_within_days = 30" in r.message


def test_reader_never_online_is_refused() -> None:
    policy = make_policy()
    refused(policy.evaluate(request(last_online=None, last_location=None)), ReaderNotAvailableOffline)
    # after collection the rule applies even if the Terminal did not name the reader
    refused(policy.evaluate(request(card=card(), reader=None, last_online=None)), ReaderNotAvailableOffline)


def test_no_reader_yet_skips_the_reader_rule_before_collection() -> None:
    policy = make_policy()
    assert policy.evaluate(request(reader=None, last_online=None, last_location=None)) is None


def test_reader_location_must_match() -> None:
    policy = make_policy()
    r = refused(policy.evaluate(request(last_location="tml_other")), ReaderOfflineLocationMismatch)
    assert r.code == "reader_connection_offline_location_mismatch"
    assert "tml_other" in r.message and "tml_loc" in r.message
    # no location configured: nothing to compare
    assert policy.evaluate(request(last_location="tml_other", location_id=None)) is None


def test_reader_window_configurable_and_off() -> None:
    stale = request(last_online=NOW - timedelta(days=8))
    refused(make_policy(reader_online_within_days=7).evaluate(stale), ReaderNotAvailableOffline)
    off = make_policy(reader_online_within_days=0)
    assert off.evaluate(request(card=card(), last_online=None, last_location="elsewhere")) is None


# -- the card --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("brand", ["visa", "mastercard", "discover", "amex"])
def test_default_brands_accepted(brand: str) -> None:
    assert make_policy().evaluate(request(card=card(brand))) is None


@pytest.mark.parametrize("brand", ["jcb", "unionpay", "diners", "unknown"])
def test_other_brands_refused_by_default(brand: str) -> None:
    r = refused(make_policy().evaluate(request(card=card(brand))), CardBrandNotAllowedOffline)
    assert r.code == "card_brand_not_supported_offline"
    assert brand in r.message and "allowed_brands" in r.message


def test_allowed_brands_configurable() -> None:
    policy = make_policy(allowed_brands=["JCB", "visa"])
    assert policy.evaluate(request(card=card("jcb"))) is None
    refused(policy.evaluate(request(card=card("mastercard"))), CardBrandNotAllowedOffline)


def test_swipe_refused() -> None:
    r = refused(
        make_policy().evaluate(request(card=card(read_method=ReadMethod.MAGNETIC_STRIPE, pin=False))),
        CardSwipeNotAvailableOffline,
    )
    assert r.code == "card_swipe_not_available"


def test_contactless_outside_eea_accepted() -> None:
    assert make_policy().evaluate(request(card=card(read_method=ReadMethod.CONTACTLESS_EMV, pin=False))) is None


def test_interac_refused_even_co_badged() -> None:
    policy = make_policy()
    r = refused(policy.evaluate(request(card=card("interac"))), InteracNotSupportedOffline)
    assert r.code == "interac_not_supported_offline"
    refused(policy.evaluate(request(card=card("visa", networks=("interac", "visa")))), InteracNotSupportedOffline)


def test_domestic_only_networks_refused() -> None:
    policy = make_policy()
    r = refused(policy.evaluate(request(card=card("eftpos_au"))), CardBrandNotAllowedOffline)
    assert "eftpos_au" in r.message
    r = refused(policy.evaluate(request(card=card("girocard"))), CardBrandNotAllowedOffline)
    assert "girocard" in r.message
    refused(
        policy.evaluate(request(card=card("visa", networks=("girocard", "visa")))),
        CardBrandNotAllowedOffline,
    )


@pytest.mark.parametrize(
    ("brand", "networks"),
    [
        ("visa", ("eftpos_au", "visa")),
        ("eftpos_au", ("eftpos_au", "mastercard")),
        ("visa", ("cartes_bancaires", "visa")),
    ],
)
def test_co_badged_domestic_cards_route_over_the_international_brand(brand: str, networks: tuple[str, ...]) -> None:
    assert make_policy().evaluate(request(card=card(brand, networks=networks))) is None


def test_co_badged_with_a_brand_not_allowed_is_refused() -> None:
    policy = make_policy(allowed_brands=["mastercard"])
    refused(policy.evaluate(request(card=card("visa", networks=("eftpos_au", "visa")))), CardBrandNotAllowedOffline)


def test_expired_card_boundary() -> None:
    policy = make_policy()
    assert policy.evaluate(request(card=card(exp=(6, 2026)))) is None  # expires end of this month
    r = refused(policy.evaluate(request(card=card(exp=(5, 2026)))), OfflineAndCardExpired)
    assert r.code == "offline_and_card_expired"


@pytest.mark.parametrize("country", ["DE", "fr", "NO", "IS", "LI"])
def test_eea_requires_chip_and_verified_pin(country: str) -> None:
    policy = make_policy()
    assert policy.evaluate(request(card=card(pin=True), merchant_country=country)) is None
    tap = card(read_method=ReadMethod.CONTACTLESS_EMV, pin=False)
    r = refused(policy.evaluate(request(card=tap, merchant_country=country)), OfflinePinRequired)
    assert r.code == "offline_requires_chip_and_pin" and "tapped" in r.message
    refused(policy.evaluate(request(card=card(pin=False), merchant_country=country)), OfflinePinRequired)
    # a tap even with a PIN is not enough
    tap_pin = card(read_method=ReadMethod.CONTACTLESS_EMV, pin=True)
    refused(policy.evaluate(request(card=tap_pin, merchant_country=country)), OfflinePinRequired)


def test_eea_swipe_reports_the_swipe() -> None:
    swipe = card(read_method=ReadMethod.MAGNETIC_STRIPE, pin=False)
    refused(make_policy().evaluate(request(card=swipe, merchant_country="DE")), CardSwipeNotAvailableOffline)


def test_eea_countries_configurable() -> None:
    tap = card(read_method=ReadMethod.CONTACTLESS_EMV, pin=False)
    assert make_policy(eea_countries=[]).evaluate(request(card=tap, merchant_country="DE")) is None
    refused(make_policy(eea_countries=["gb"]).evaluate(request(card=tap, merchant_country="GB")), OfflinePinRequired)
    assert make_policy().evaluate(request(card=tap, merchant_country="GB")) is None  # the UK is not in the EEA


def test_card_rules_skipped_before_collection() -> None:
    # card is None: only amount, currency, totals, count, age and reader apply
    assert make_policy().evaluate(request(merchant_country="DE")) is None


def test_amount_rules_apply_after_collection_too() -> None:
    refused(make_policy().evaluate(request(1_000_001, card=card())), AmountExceedsOfflineMaximum)


# -- cards read by the simulated reader ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "options", "expected"),
    [
        ("visa", {}, None),
        ("mastercard", {}, None),
        ("amex", {}, None),
        ("discover", {}, None),
        ("declined", {}, None),  # declined later by the processor, not offline
        ("eftpos_visa", {}, None),
        ("eftpos_mastercard", {}, None),
        ("cartes_bancaires_visa", {}, None),
        ("jcb", {}, CardBrandNotAllowedOffline),
        ("unionpay", {}, CardBrandNotAllowedOffline),
        ("interac", {}, InteracNotSupportedOffline),
        ("eftpos", {}, CardBrandNotAllowedOffline),
        ("girocard", {}, CardBrandNotAllowedOffline),
        ("visa_expired", {}, OfflineAndCardExpired),
        ("visa", {"read_method": "magnetic_stripe"}, CardSwipeNotAvailableOffline),
        ("visa", {"read_method": "contactless_emv"}, None),
        ("visa", {"expired": True}, OfflineAndCardExpired),
    ],
)
async def test_simulated_reader_scenarios(
    tmp_path: Path, scenario: str, options: dict[str, Any], expected: type[OfflineRefused] | None
) -> None:
    from offterm.plugins.readers import simulated

    transport = simulated.SimulatedReaderTransport()
    conn = await transport.connect((await transport.discover())[0])
    conn.present_card(scenario, **options)
    details = (await conn.collect(CollectRequest(1000, "usd"))).details
    result = make_policy().evaluate(request(card=details, now=datetime.now(UTC), last_online=datetime.now(UTC)))
    if expected is None:
        assert result is None
    else:
        refused(result, expected)


async def test_simulated_eea_chip_and_pin(tmp_path: Path) -> None:
    from offterm.plugins.readers import simulated

    transport = simulated.SimulatedReaderTransport()
    conn = await transport.connect((await transport.discover())[0])
    conn.present_card("visa_de")  # inserted, PIN verified
    conn.present_card("visa_de", read_method="contactless_emv")
    now = datetime.now(UTC)
    chip, tap = [(await conn.collect(CollectRequest(1000, "eur"))).details for _ in range(2)]
    policy = make_policy(max_amount={"eur": 1_000_000})
    assert policy.evaluate(request(1000, "eur", card=chip, merchant_country="DE", now=now, last_online=now)) is None
    refused(
        policy.evaluate(request(1000, "eur", card=tap, merchant_country="DE", now=now, last_online=now)),
        OfflinePinRequired,
    )


# -- configuration -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"max_amount": {"xyz": 100}}, "acceptance.limits.max_amount.xyz"),
        ({"max_amount": {"usd": 0}}, "acceptance.limits.max_amount.usd"),
        ({"max_amount": {"usd": 10.5}}, "acceptance.limits.max_amount.usd"),
        ({"max_amount": [1]}, "acceptance.limits.max_amount"),
        ({"max_total": {"usd": -5}}, "acceptance.limits.max_total.usd"),
        ({"max_count": 0}, "acceptance.limits.max_count"),
        ({"max_count": True}, "acceptance.limits.max_count"),
        ({"max_age_hours": -1}, "acceptance.limits.max_age_hours"),
        ({"allowed_brands": "visa"}, "acceptance.limits.allowed_brands"),
        ({"eea_countries": [1]}, "acceptance.limits.eea_countries"),
        ({"reader_online_within_days": "30"}, "acceptance.limits.reader_online_within_days"),
        ({"max_amout": {}}, "acceptance.limits.max_amout"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_policy(**options)
    assert info.value.key == key


def test_currency_keys_are_normalised() -> None:
    policy = make_policy(max_amount={"EUR": 500})
    assert policy.evaluate(request(500, "eur")) is None
    refused(policy.evaluate(request(501, "eur")), AmountExceedsOfflineMaximum)


def test_settings_are_not_shared_between_instances() -> None:
    options: dict[str, Any] = {"max_amount": {"usd": 100}}
    policy = make_policy(**options)
    options["max_amount"]["usd"] = 10**9
    refused(policy.evaluate(request(101)), AmountExceedsOfflineMaximum)
    assert replace(limits.LimitsSettings()).max_amount == {"usd": 1_000_000}


def test_a_refusal_lives_with_the_policy_and_crosses_processes_whole() -> None:
    import pickle

    from offterm.core import errors

    refused = pickle.loads(pickle.dumps(OfflineTotalLimitReached("over", policy="limits", limit="max_total")))
    assert isinstance(refused, errors.OfflineRefused) and type(refused).__module__ == limits.__name__
    assert (refused.code, refused.policy, refused.details["limit"]) == (
        "offline_total_amount_limit_reached",
        "limits",
        "max_total",
    )
    assert not hasattr(errors, "OfflineTotalLimitReached")
