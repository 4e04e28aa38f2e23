"""The redaction processor: no card number, track data, key or token survives; ordinary numbers do."""

from __future__ import annotations

import re
import secrets

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from offterm.core.logs import REDACTED, is_sensitive_key, redact_processor, redact_text, redact_value

# Stripe's published test card numbers (all Luhn-valid), 14 to 19 digits.
STRIPE_TEST_CARDS = [
    "4242424242424242",  # Visa
    "4000056655665556",  # Visa debit
    "5555555555554444",  # Mastercard
    "2223003122003222",  # Mastercard 2-series
    "5200828282828210",  # Mastercard debit
    "5105105105105100",  # Mastercard prepaid
    "378282246310005",  # American Express
    "371449635398431",  # American Express
    "6011111111111117",  # Discover
    "6011000990139424",  # Discover
    "6011981111111113",  # Discover debit
    "3056930009020004",  # Diners Club
    "36227206271667",  # Diners Club 14-digit
    "3566002020360505",  # JCB
    "6200000000000005",  # UnionPay
    "6205500000000000004",  # UnionPay 19-digit
]


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def formats(pan: str) -> list[str]:
    """The ways a card number gets written: plain, grouped by 4 with spaces or dashes, Amex 4-6-5."""
    by4 = [pan[i : i + 4] for i in range(0, len(pan), 4)]
    out = [pan, " ".join(by4), "-".join(by4)]
    if len(pan) == 15:
        out += [f"{pan[:4]} {pan[4:10]} {pan[10:]}", f"{pan[:4]}-{pan[4:10]}-{pan[10:]}"]
    return out


@pytest.mark.parametrize("pan", STRIPE_TEST_CARDS)
def test_every_stripe_test_card_in_every_format_is_masked_to_its_last_four(pan):
    for written in formats(pan):
        text = f"card {written} declined; again:{written}."
        out = redact_text(text)
        assert pan not in digits(out), out
        assert pan[:6] not in out  # not even the BIN
        assert out.count("****" + pan[-4:]) == 2, out
        assert out.startswith("card ****") and out.endswith(".")


def test_card_number_next_to_other_numbers_is_still_masked():
    out = redact_text("amount 100 4242 4242 4242 4242 qty 2")
    assert "4242424242424242" not in digits(out)
    assert out.startswith("amount 100 ") and out.endswith(" qty 2")
    assert "****4242" in out


def test_card_number_glued_to_letters_is_masked():
    out = redact_text("pan=x4242424242424242y and card4000056655665556")
    assert "4242424242424242" not in digits(out)
    assert "4000056655665556" not in digits(out)


@pytest.mark.parametrize(
    "track",
    [
        "%B4242424242424242^DOE/JANE^2512101000000000000000000?",
        "%B378282246310005^SMITH/J.MR^27041011234567890?",
        "B5555555555554444^DOE/JANE^2512101",  # sentinels missing
        ";4242424242424242=25121010000000000?",
        ";6011111111111117=2801101123456789?",
        "4242424242424242=2512101000",  # track 2 equivalent without sentinels
        "4242424242424242D25121010000000000F",  # EMV tag 57 form
    ],
)
def test_track_data_is_removed_entirely(track):
    out = redact_text(f"read: {track} done")
    assert out.startswith("read: ") and out.endswith(" done")
    assert "[REDACTED" in out
    for pan in ("4242424242424242", "378282246310005", "5555555555554444", "6011111111111117"):
        assert pan not in digits(out)
    assert "DOE/JANE" not in out and "SMITH" not in out
    assert "2512101" not in out and "2801101" not in out and "27041011" not in out


def test_hex_keys_are_removed():
    key = secrets.token_hex(32)
    upper = secrets.token_hex(48).upper()
    out = redact_text(f"key={key} bdk {upper}")
    assert key not in out and upper not in out
    assert out.count("[REDACTED key]") == 2


@pytest.mark.parametrize(
    ("secret", "kept"),
    [
        ("sk_test_" + "a1B2c3" * 8, "sk_"),
        ("sk_live_51HxyzABCdef", "sk_"),
        ("rk_live_" + "Zz9" * 10, "rk_"),
        ("pst_test_YWNjdF8xTjJ4eV9zZWNyZXQ", "pst_"),
        ("dss_Q2h1bmt5U2Vzc2lvblNlY3JldA", "dss_"),
        ("whsec_abcdefghijklmnop", "whsec_"),
        ("pi_3N4abc_secret_Zx9yW8vU7", "pi_3N4abc_secret_"),
    ],
)
def test_stripe_style_secrets_are_masked(secret, kept):
    out = redact_text(f"using {secret} now")
    assert secret not in out
    assert out == f"using {kept}{REDACTED} now" or out.startswith(f"using {kept}")
    assert REDACTED in out


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abc.def-ghi_jkl",
        "headers={'authorization': 'Basic dXNlcjpwYXNzd29yZA=='}",
        "GET /token?api_key=abc123&x=1",
        "password=hunter2",
        'secret: "s3cr3t-value"',
        "auth_token=opaque-token-value",
        "bearer opaque-token-value",
    ],
)
def test_credentials_in_free_text_are_masked(text):
    out = redact_text(text)
    for leaked in ("abc.def-ghi_jkl", "dXNlcjpwYXNzd29yZA", "abc123", "hunter2", "s3cr3t-value", "opaque-token-value"):
        assert leaked not in out, out
    assert REDACTED in out


@pytest.mark.parametrize(
    "text",
    [
        "amount=1999 currency=usd",
        "order 123456789012 shipped",  # 12 digits: shorter than any card number
        "ref 4242424242424241 fails the Luhn check",
        "5555555555554443",
        "at 1700000000 and 1700000000123",  # epoch seconds, and milliseconds that fail Luhn
        "2025-01-31T12:34:56.789012+00:00",
        "phone 555-123-4567",
        "offline_id=offpi_" + "0123456789abcdef" * 2,
        "request req_" + "9" * 32,
        "idempotency offterm-6f1c0e8a2b9d4c7e8f0a1b2c3d4e5f60",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "sha 0123456789abcdef0123456789abcdef",  # 32 hex: not a key length
        "tokens: 3 providers, token_provider=http",
        "risk_level=normal task_id=7",
        "1000 2000 3000 4001",  # grouped amounts that are not a card number
    ],
)
def test_non_sensitive_text_is_kept_verbatim(text):
    assert redact_text(text) == text


def test_own_correlation_ids_are_kept_even_when_their_hex_looks_like_a_card():
    offline_id = "offpi_" + "4242424242424242" + "abcdef0123456789"
    assert redact_text(f"payment {offline_id}") == f"payment {offline_id}"


@pytest.mark.parametrize(
    "key",
    [
        "secret",
        "client_secret",
        "auth_token",
        "connection_token",
        "api_key",
        "apiKey",
        "password",
        "Authorization",
        "card_data",
        "cardNumber",
        "pan",
        "track2",
        "track_data",
        "storage_key",
        "cvc",
    ],
)
def test_sensitive_keys_are_recognised(key):
    assert is_sensitive_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "event",
        "amount",
        "offline_id",
        "company",
        "span",
        "expand",
        "idempotency_key",
        "key_provider",
        "keyboard",
        "tokenizer",
        "request_id",
        "error",
    ],
)
def test_ordinary_keys_are_not_sensitive(key):
    assert not is_sensitive_key(key)


def test_values_under_sensitive_keys_are_replaced_at_any_depth():
    event = {
        "event": "request",
        "headers": {"Authorization": "opaque", "Accept": "application/json"},
        "payload": [{"card_data": {"blob": "abc"}}, {"pan": 4242424242424242}, {"note": "fine"}],
        "pin_verified": True,
        "token": None,
        "amount": 1999,
    }
    out = redact_value(event)
    assert out["headers"] == {"Authorization": REDACTED, "Accept": "application/json"}
    assert out["payload"] == [{"card_data": REDACTED}, {"pan": REDACTED}, {"note": "fine"}]
    assert out["pin_verified"] is True  # booleans and None say nothing secret
    assert out["token"] is None
    assert out["amount"] == 1999
    assert event["headers"]["Authorization"] == "opaque"  # the input is not modified


def test_integers_that_are_card_numbers_are_masked_and_other_integers_kept():
    assert redact_value(4242424242424242) == "****4242"
    assert redact_value(378282246310005) == "****0005"
    assert redact_value(4242424242424241) == 4242424242424241
    assert redact_value(1700000000) == 1700000000


def test_objects_whose_repr_leaks_are_replaced_by_a_masked_repr():
    class Leaky:
        def __repr__(self) -> str:
            return "Leaky(number='5555555555554444')"

    class Clean:
        def __repr__(self) -> str:
            return "Clean()"

    clean = Clean()
    assert redact_value(clean) is clean
    assert redact_value(Leaky()) == "Leaky(number='****4444')"
    assert redact_value(ValueError("card 4242424242424242")) == "ValueError('card ****4242')"


def test_processor_renders_and_masks_exceptions_itself():
    try:
        raise RuntimeError("decline for 4000056655665556 track ;4000056655665556=2512101?")
    except RuntimeError:
        event = redact_processor(None, "error", {"event": "failed", "exc_info": True})
    assert "exc_info" not in event
    assert "RuntimeError" in event["exception"]
    assert "4000056655665556" not in digits(event["exception"])


def test_processor_leaves_processor_formatter_bookkeeping_alone():
    marker = object()
    event = redact_processor(None, "info", {"event": "x", "_record": marker, "_from_structlog": True})
    assert event["_record"] is marker and event["_from_structlog"] is True


def test_processor_works_in_a_pipeline_built_by_the_user(capsys):
    logger = structlog.wrap_logger(
        structlog.PrintLogger(),
        processors=[redact_processor, structlog.processors.JSONRenderer()],
    )
    logger.info("charging 5555555555554444", key="a" * 64, note="ok")
    out = capsys.readouterr().out
    assert "5555555555554444" not in digits(out)
    assert "a" * 64 not in out
    assert '"note": "ok"' in out


luhn_digits = st.lists(st.integers(0, 9), min_size=12, max_size=18)


def with_check_digit(body: list[int]) -> str:
    for check in range(10):
        candidate = "".join(map(str, body)) + str(check)
        total = 0
        for i, ch in enumerate(reversed(candidate)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return candidate
    raise AssertionError("unreachable")


@given(
    body=luhn_digits,
    group=st.sampled_from([0, 4, 5, 6]),
    sep=st.sampled_from([" ", "-"]),
    prefix=st.text(alphabet="abcXYZ :=,(\"'0123456789", max_size=12).filter(lambda s: not s[-1:].isdigit()),
    suffix=st.text(alphabet="abcXYZ :=,)\"'0123456789", max_size=12).filter(lambda s: not s[:1].isdigit()),
)
def test_any_luhn_valid_card_number_never_survives(body, group, sep, prefix, suffix):
    pan = with_check_digit(body)
    written = sep.join(pan[i : i + group] for i in range(0, len(pan), group)) if group else pan
    out = redact_text(prefix + written + suffix)
    assert pan not in digits(out)
    assert redact_text(out) == out  # masking is stable
