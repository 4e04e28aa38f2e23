"""Helpers for tests that drive the simulator without a reader."""

from __future__ import annotations

from offterm.core.contracts import CardDetails, CardResult
from offterm.core.models import ReadMethod
from offterm.plugins.readers.card_encryption import TEST_BASE_KEY_HEX, SensitiveCard, encrypt

from .cards import brand_for


def card_result(
    pan: str = "4242424242424242",
    *,
    exp_month: int = 12,
    exp_year: int = 2034,
    read_method: ReadMethod = ReadMethod.CONTACT_EMV,
    base_key_hex: str = TEST_BASE_KEY_HEX,
) -> CardResult:
    """What a reader would hand the POS for ``pan``: encrypted for the simulator's key."""
    blob, ksn = encrypt(
        SensitiveCard(pan=pan, exp_month=exp_month, exp_year=exp_year, read_method=read_method.value),
        bytes.fromhex(base_key_hex),
    )
    details = CardDetails(
        brand=brand_for(pan), last4=pan[-4:], exp_month=exp_month, exp_year=exp_year, read_method=read_method
    )
    return CardResult(details=details, encrypted_card_data=blob, key_serial=ksn)
