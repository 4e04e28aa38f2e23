"""The test-card catalogue shared by the simulated reader and the reader emulator."""

from __future__ import annotations

from datetime import date

import pytest

from offterm.plugins.readers import test_cards

INTERNATIONAL = {"visa", "mastercard", "amex", "discover", "jcb", "unionpay", "diners"}


def test_every_number_is_a_valid_card_number() -> None:
    for card in test_cards.CARDS.values():
        assert card.pan.isdigit() and 12 <= len(card.pan) <= 19, card.name
        assert test_cards.luhn_valid(card.pan), card.name


def test_numbers_are_hidden_from_repr() -> None:
    for card in test_cards.CARDS.values():
        assert card.pan not in repr(card)


def test_brand_matches_the_number_for_international_cards() -> None:
    for card in test_cards.CARDS.values():
        if card.brand in INTERNATIONAL and card.networks == (card.brand,):
            assert test_cards.brand_for_pan(card.pan) == card.brand, card.name


def test_co_badged_cards_list_the_domestic_network_then_the_brand() -> None:
    for name in ("eftpos_visa", "eftpos_mastercard", "cartes_bancaires_visa"):
        card = test_cards.CARDS[name]
        assert len(card.networks) == 2 and card.networks[1] == card.brand
        assert card.networks[0] in {"eftpos_au", "cartes_bancaires"}


def test_stripe_scenarios_present() -> None:
    cards = test_cards.CARDS
    assert cards["visa"].pan == "4242424242424242"
    assert cards["declined"].pan == "4000000000000002" and cards["declined"].decline_code
    assert cards["insufficient_funds"].decline_code == "insufficient_funds"
    assert cards["interac"].brand == "interac"
    assert cards["girocard"].brand == "girocard" and not cards["girocard"].stripe
    assert cards["visa_expired"].expired
    assert all(c.decline_code is None for n, c in cards.items() if n in {"visa", "mastercard", "amex"})


def test_resolve_by_name_and_number() -> None:
    assert test_cards.resolve("amex").name == "amex"
    assert test_cards.resolve("4000 0000 0000 0002").name == "declined"
    assert test_cards.resolve("4000-0566-5566-5556").name == "visa_debit"
    custom = test_cards.resolve("4111111111111111")
    assert (custom.name, custom.brand, custom.last4) == ("custom", "visa", "1111")


@pytest.mark.parametrize("bad", ["4242424242424241", "1234", "42424242424242424242"])
def test_bad_numbers_are_refused_without_echo(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        test_cards.resolve(bad)
    assert bad not in str(info.value)


def test_expiry_and_track2() -> None:
    today = date(2026, 3, 1)
    assert test_cards.expiry(today, expired=False) == (12, 2029)
    assert test_cards.expiry(today, expired=True) == (12, 2025)
    assert test_cards.track2("4242424242424242", 12, 2029).startswith(";4242424242424242=2912201")
