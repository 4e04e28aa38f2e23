from __future__ import annotations

import re

import pytest

from offterm.core.currency import exponent, format_amount, normalize_currency, validate_amount
from offterm.core.errors import InvalidAmount, InvalidRequest, UnknownCurrency
from offterm.core.models import PaymentIntentParams


@pytest.mark.parametrize(("code", "exp"), [("jpy", 0), ("USD", 2), ("kwd", 3), ("eur", 2), ("clp", 0)])
def test_iso_4217_exponents(code, exp):
    assert exponent(code) == exp


@pytest.mark.parametrize("code", ["zzz", "US", "", "xau", 840, "usdd"])
def test_unknown_currencies_are_rejected(code):
    with pytest.raises(UnknownCurrency):
        normalize_currency(code)


def test_currency_is_normalised_to_lower_case():
    assert normalize_currency("EUR") == "eur"


@pytest.mark.parametrize("amount", [0, -5, 1.5, "100", True, None, 10**12])
def test_bad_amounts_are_rejected(amount):
    with pytest.raises(InvalidAmount):
        validate_amount(amount)


def test_format_amount():
    assert format_amount(1234, "usd") == "12.34 USD"
    assert format_amount(1234, "jpy") == "1234 JPY"
    assert format_amount(1234, "kwd") == "1.234 KWD"


def test_params_from_dict_reject_unknown_keys():
    p = PaymentIntentParams.coerce({"amount": 100, "currency": "usd", "metadata": {"order": "1"}})
    assert p.metadata == {"order": "1"}
    with pytest.raises(InvalidRequest, match="amout"):
        PaymentIntentParams.coerce({"amout": 100, "currency": "usd"})


def test_offline_ids_are_unique_and_sort_by_creation_time():
    """Time-ordered (UUIDv7-like): a store's unique indexes grow at one edge instead of at random pages."""
    import time

    from offterm.core.models import new_offline_id

    first = [new_offline_id() for _ in range(2000)]
    time.sleep(0.002)
    later = new_offline_id()
    assert len(set(first)) == len(first)
    assert all(re.fullmatch(r"offpi_[0-9a-f]{32}", oid) for oid in first)
    assert later > max(first)
