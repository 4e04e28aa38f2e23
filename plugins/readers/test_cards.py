"""Catalogue of test cards for simulated readers (plain data, no I/O).

Most numbers are Stripe's public test cards, so a scenario written against
offterm reads like one written against Stripe.  A few cards Stripe does not
publish (eftpos-only, girocard) are simulated numbers, marked
``stripe=False``.  The simulated reader and the reader emulator both draw
from here; the processor simulator may use ``decline_code`` to decide the
outcome of a forwarded payment.

These numbers are public test data, yet code still treats them as card
data: ``pan`` is hidden from ``repr`` and never goes into a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType


@dataclass(frozen=True)
class CardProfile:
    """One test card: the number, what the card says about itself, and its processor outcome."""

    name: str
    pan: str = field(repr=False)
    brand: str
    #: Every scheme on the card; for co-badged cards the domestic one first.
    networks: tuple[str, ...]
    funding: str
    issuer_country: str
    description: str
    #: None: the processor approves; otherwise Stripe's decline code.
    decline_code: str | None = None
    #: The card's printed expiry lies in the past.
    expired: bool = False
    #: True for Stripe's published numbers, False for simulated ones.
    stripe: bool = True

    @property
    def last4(self) -> str:
        return self.pan[-4:]


def _card(
    name: str,
    pan: str,
    brand: str,
    description: str,
    *,
    networks: tuple[str, ...] | None = None,
    funding: str = "credit",
    country: str = "US",
    decline_code: str | None = None,
    expired: bool = False,
    stripe: bool = True,
) -> CardProfile:
    return CardProfile(
        name=name,
        pan=pan,
        brand=brand,
        networks=networks if networks is not None else (brand,),
        funding=funding,
        issuer_country=country,
        description=description,
        decline_code=decline_code,
        expired=expired,
        stripe=stripe,
    )


_ALL: tuple[CardProfile, ...] = (
    # -- approved, by brand ---------------------------------------------------------------
    _card("visa", "4242424242424242", "visa", "Visa"),
    _card("visa_debit", "4000056655665556", "visa", "Visa debit", funding="debit"),
    _card("mastercard", "5555555555554444", "mastercard", "Mastercard"),
    _card("mastercard_2series", "2223003122003222", "mastercard", "Mastercard (2-series BIN)"),
    _card("mastercard_debit", "5200828282828210", "mastercard", "Mastercard debit", funding="debit"),
    _card("mastercard_prepaid", "5105105105105100", "mastercard", "Mastercard prepaid", funding="prepaid"),
    _card("amex", "378282246310005", "amex", "American Express"),
    _card("amex_2", "371449635398431", "amex", "American Express"),
    _card("discover", "6011111111111117", "discover", "Discover"),
    _card("discover_debit", "6011981111111113", "discover", "Discover debit", funding="debit"),
    _card("diners", "3056930009020004", "diners", "Diners Club"),
    _card("jcb", "3566002020360505", "jcb", "JCB", country="JP"),
    _card("unionpay", "6200000000000005", "unionpay", "UnionPay", country="CN"),
    # -- country-specific (for EEA scenarios) ---------------------------------------------------
    _card("visa_de", "4000002760000016", "visa", "Visa issued in Germany", country="DE"),
    _card("visa_fr", "4000002500000003", "visa", "Visa issued in France", country="FR"),
    # -- domestic and co-badged networks -------------------------------------------------------
    _card("interac", "4506445006931933", "interac", "Interac debit", funding="debit", country="CA"),
    _card(
        "eftpos_visa",
        "4000050360000001",
        "visa",
        "eftpos Australia co-badged with Visa debit, routed internationally",
        networks=("eftpos_au", "visa"),
        funding="debit",
        country="AU",
    ),
    _card(
        "eftpos_mastercard",
        "5555050360000080",
        "mastercard",
        "eftpos Australia co-badged with Mastercard debit, routed internationally",
        networks=("eftpos_au", "mastercard"),
        funding="debit",
        country="AU",
    ),
    _card(
        "eftpos",
        "6280000360000002",
        "eftpos_au",
        "eftpos Australia only (proprietary card; simulated number)",
        funding="debit",
        country="AU",
        stripe=False,
    ),
    _card(
        "cartes_bancaires_visa",
        "4000002500001001",
        "visa",
        "Cartes Bancaires co-badged with Visa, routed internationally",
        networks=("cartes_bancaires", "visa"),
        country="FR",
    ),
    _card(
        "girocard",
        "6720000000000000007",
        "girocard",
        "girocard (German debit; simulated number)",
        funding="debit",
        country="DE",
        stripe=False,
    ),
    # -- cards the processor declines -----------------------------------------------------------
    _card("declined", "4000000000000002", "visa", "Always declined", decline_code="generic_decline"),
    _card(
        "insufficient_funds",
        "4000000000009995",
        "visa",
        "Declined for insufficient funds",
        decline_code="insufficient_funds",
    ),
    _card("lost_card", "4000000000009987", "visa", "Declined: reported lost", decline_code="lost_card"),
    _card("stolen_card", "4000000000009979", "visa", "Declined: reported stolen", decline_code="stolen_card"),
    _card(
        "expired_card",
        "4000000000000069",
        "visa",
        "Declined by the processor as expired (printed date is valid)",
        decline_code="expired_card",
    ),
    _card(
        "processing_error",
        "4000000000000119",
        "visa",
        "Declined with a processing error",
        decline_code="processing_error",
    ),
    # -- a card whose printed expiry has passed --------------------------------------------------
    _card("visa_expired", "4242424242424242", "visa", "Visa whose expiry date has passed", expired=True),
)

#: Every catalogue card by name.
CARDS: MappingProxyType[str, CardProfile] = MappingProxyType({c.name: c for c in _ALL})

#: First catalogue card for each number (``visa_expired`` shares 4242... with ``visa``).
_BY_PAN: dict[str, CardProfile] = {}
for _c in _ALL:
    _BY_PAN.setdefault(_c.pan, _c)

#: Brands Stripe's Terminal sees; ``brand_for_pan`` picks one of these.
_PREFIXES: tuple[tuple[str, tuple[range, ...]], ...] = (
    ("amex", (range(34, 35), range(37, 38))),
    ("diners", (range(300, 306), range(36, 37), range(38, 40))),
    ("jcb", (range(3528, 3590),)),
    ("unionpay", (range(62, 63),)),
    ("discover", (range(6011, 6012), range(644, 650), range(65, 66))),
    ("mastercard", (range(51, 56), range(2221, 2721))),
    ("visa", (range(4, 5),)),
)


def by_name(name: str) -> CardProfile | None:
    return CARDS.get(name)


def by_pan(pan: str) -> CardProfile | None:
    return _BY_PAN.get(pan)


def luhn_valid(pan: str) -> bool:
    """The check digit every real and test card number satisfies."""
    if not pan.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(pan)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def brand_for_pan(pan: str) -> str:
    """Brand from the number's prefix (IIN ranges), or "unknown"."""
    for brand, ranges in _PREFIXES:
        for r in ranges:
            width = len(str(r.start))
            if pan[:width].isdigit() and int(pan[:width]) in r:
                return brand
    return "unknown"


def custom_card(pan: str) -> CardProfile:
    """A profile for a number outside the catalogue; raises ValueError (without the number)."""
    if not (pan.isdigit() and 12 <= len(pan) <= 19 and luhn_valid(pan)):
        raise ValueError("not a card number: need 12 to 19 digits with a valid check digit")
    brand = brand_for_pan(pan)
    return CardProfile(
        name="custom",
        pan=pan,
        brand=brand,
        networks=(brand,),
        funding="unknown",
        issuer_country="US",
        description="card number outside the catalogue",
        stripe=False,
    )


def resolve(card: str) -> CardProfile:
    """A catalogue name, or a card number (catalogue entry if known); raises ValueError.

    Anything containing a digit is treated as a number and never echoed back.
    """
    found = CARDS.get(card)
    if found is not None:
        return found
    if any(ch.isdigit() for ch in card):
        digits = card.replace(" ", "").replace("-", "")
        return by_pan(digits) or custom_card(digits)
    raise ValueError(f"unknown test card {card!r}; choose one of: {', '.join(sorted(CARDS))}")


def expiry(today: date, *, expired: bool) -> tuple[int, int]:
    """(month, year) for a simulated card: December three years ahead, or last December."""
    return (12, today.year - 1) if expired else (12, today.year + 3)


def track2(pan: str, exp_month: int, exp_year: int, service_code: str = "201") -> str:
    """ISO 7813 track 2 equivalent: ``;PAN=YYMM<service code><discretionary>?``."""
    return f";{pan}={exp_year % 100:02d}{exp_month:02d}{service_code}0000000000?"
