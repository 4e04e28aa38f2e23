"""Currencies and amounts (integers in minor units, ISO 4217): helpers, not part of the contract.

They live in ``offterm.core._engine.currency``.
"""

from ._engine.currency import exponent, format_amount, normalize_currency, validate_amount

__all__ = ["exponent", "format_amount", "normalize_currency", "validate_amount"]
