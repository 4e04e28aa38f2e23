"""Currencies and amounts: integers in minor units, checked against ISO 4217."""

from __future__ import annotations

from iso4217 import Currency

from ..errors import InvalidAmount, UnknownCurrency


def normalize_currency(code: str) -> str:
    """Return the lower-case ISO 4217 code, or raise UnknownCurrency.

    Funds and metals without a minor unit (XAU, XDR, ...) are not payment
    currencies and are rejected too.
    """
    if not isinstance(code, str) or len(code) != 3:
        raise UnknownCurrency(f"currency must be a 3-letter ISO 4217 code, got {code!r}")
    try:
        currency = Currency(code.upper())
    except ValueError:
        raise UnknownCurrency(f"unknown currency code {code!r}") from None
    if currency.exponent is None:
        raise UnknownCurrency(f"{code!r} is not a payment currency")
    return code.lower()


def exponent(code: str) -> int:
    """Number of minor-unit digits: JPY 0, USD 2, KWD 3."""
    exp = Currency(normalize_currency(code).upper()).exponent
    assert exp is not None
    return exp


def validate_amount(amount: object) -> int:
    """Amounts are positive integers in minor units; bools and floats are refused."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmount(f"amount must be an integer in minor units, got {type(amount).__name__}")
    if amount <= 0:
        raise InvalidAmount(f"amount must be positive, got {amount}")
    if amount > 99_999_999_999:
        raise InvalidAmount("amount exceeds the largest amount a processor accepts")
    return amount


def format_amount(amount: int, code: str) -> str:
    """Human form for logs and the CLI: 1234 usd -> '12.34 USD'."""
    exp = exponent(code)
    if exp == 0:
        return f"{amount} {code.upper()}"
    whole, minor = divmod(amount, 10**exp)
    return f"{whole}.{minor:0{exp}d} {code.upper()}"
