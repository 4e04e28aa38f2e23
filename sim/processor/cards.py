"""How the simulated processor decides: Stripe's public test card numbers.

A decision is made from the card number the simulator decrypted from the
reader's blob.  Known test cards behave as Stripe documents them; any other
number is approved as its brand when it passes the Luhn check, and refused
as ``invalid_number`` when it does not.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """The outcome of authorising one card.

    ``code`` is None for an approval; otherwise the Stripe error ``code``
    (``card_declined``, ``expired_card``...) and its ``decline_code``.
    """

    brand: str
    funding: str = "credit"
    country: str = "US"
    code: str | None = None
    decline_code: str | None = None
    message: str = ""

    @property
    def approved(self) -> bool:
        return self.code is None


def _decline(brand: str, code: str, decline_code: str | None, message: str) -> Decision:
    return Decision(brand=brand, code=code, decline_code=decline_code, message=message)


#: Stripe's public test cards (test mode only), by number.
TEST_CARDS: dict[str, Decision] = {
    "4242424242424242": Decision("visa"),
    "4000056655665556": Decision("visa", funding="debit"),
    "5555555555554444": Decision("mastercard"),
    "5200828282828210": Decision("mastercard", funding="debit"),
    "5105105105105100": Decision("mastercard", funding="prepaid"),
    "2223003122003222": Decision("mastercard"),
    "378282246310005": Decision("amex"),
    "371449635398431": Decision("amex"),
    "6011111111111117": Decision("discover"),
    "6011000990139424": Decision("discover"),
    "6011981111111113": Decision("discover", funding="debit"),
    "3566002020360505": Decision("jcb", country="JP"),
    "6200000000000005": Decision("unionpay", country="CN"),
    "3056930009020004": Decision("diners"),
    "4000002760000016": Decision("visa", country="DE"),
    "4000002500000003": Decision("visa", country="FR"),
    "4506445006931933": Decision("interac", funding="debit", country="CA"),
    "4000050360000001": Decision("visa", funding="debit", country="AU"),
    "5555050360000080": Decision("mastercard", funding="debit", country="AU"),
    "4000002500001001": Decision("visa", country="FR"),
    # Not Stripe's: simulated numbers for domestic-only schemes (see the readers' catalogue).
    "6280000360000002": Decision("eftpos_au", funding="debit", country="AU"),
    "6720000000000000007": Decision("girocard", funding="debit", country="DE"),
    # Declines.
    "4000000000000002": _decline("visa", "card_declined", "generic_decline", "Your card was declined."),
    "4000000000009995": _decline("visa", "card_declined", "insufficient_funds", "Your card has insufficient funds."),
    "4000000000009987": _decline("visa", "card_declined", "lost_card", "Your card was declined."),
    "4000000000009979": _decline("visa", "card_declined", "stolen_card", "Your card was declined."),
    "4000000000000069": _decline("visa", "expired_card", "expired_card", "Your card has expired."),
    "4000000000000119": _decline(
        "visa", "processing_error", "processing_error", "An error occurred while processing your card."
    ),
}


def luhn_valid(number: str) -> bool:
    if not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def brand_for(number: str) -> str:
    """The card brand from its leading digits (IIN ranges), or "unknown"."""
    if number in TEST_CARDS:
        return TEST_CARDS[number].brand
    n2, n3, n4, n6 = (int(number[:k] or 0) for k in (2, 3, 4, 6))
    if number.startswith("4"):
        return "visa"
    if 51 <= n2 <= 55 or 222100 <= n6 <= 272099:
        return "mastercard"
    if n2 in (34, 37):
        return "amex"
    if n4 == 6011 or n2 == 65 or 644 <= n3 <= 649:
        return "discover"
    if 3528 <= n4 <= 3589:
        return "jcb"
    if n2 == 62:
        return "unionpay"
    if n2 in (36, 38, 39) or 300 <= n3 <= 305:
        return "diners"
    return "unknown"


def decide(number: str) -> Decision:
    """Approve or decline ``number`` as Stripe's test mode would."""
    known = TEST_CARDS.get(number)
    if known is not None:
        return known
    if not luhn_valid(number):
        return _decline(brand_for(number), "invalid_number", None, "Your card number is invalid.")
    return Decision(brand_for(number))


#: Stripe's test PaymentMethods (test mode only), by the id an online payment names, and the
#: test card each stands for.  Using one (``payment_method=pm_card_visa``) creates a new
#: ``card`` PaymentMethod from that card, as Stripe does.
TEST_PAYMENT_METHODS: dict[str, str] = {
    "pm_card_visa": "4242424242424242",
    "pm_card_visa_debit": "4000056655665556",
    "pm_card_mastercard": "5555555555554444",
    "pm_card_mastercard_debit": "5200828282828210",
    "pm_card_mastercard_prepaid": "5105105105105100",
    "pm_card_amex": "378282246310005",
    "pm_card_discover": "6011111111111117",
    "pm_card_diners": "3056930009020004",
    "pm_card_jcb": "3566002020360505",
    "pm_card_unionpay": "6200000000000005",
    "pm_card_chargeDeclined": "4000000000000002",
    "pm_card_visa_chargeDeclined": "4000000000000002",
    "pm_card_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_visa_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_chargeDeclinedLostCard": "4000000000009987",
    "pm_card_visa_chargeDeclinedLostCard": "4000000000009987",
    "pm_card_chargeDeclinedStolenCard": "4000000000009979",
    "pm_card_visa_chargeDeclinedStolenCard": "4000000000009979",
    "pm_card_chargeDeclinedExpiredCard": "4000000000000069",
    "pm_card_chargeDeclinedProcessingError": "4000000000000119",
}
