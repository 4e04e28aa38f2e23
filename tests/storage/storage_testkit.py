"""Helpers for the storage tests (also imported by worker.py in child processes)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from offterm.core.config import validate_options
from offterm.core.contracts.readers import CardDetails, CardResult
from offterm.core.contracts.storage import NewPayment
from offterm.core.models import CaptureMethod, ReadMethod, new_offline_id
from offterm.core.registrations import ComponentContext
from offterm.plugins.readers.card_encryption import TEST_BASE_KEY_HEX, SensitiveCard, encrypt
from offterm.plugins.storage.sqlcipher import OPTIONS, SqlCipherStore, build_store, new_idempotency_key

HERE = Path(__file__).parent
WORKER = HERE / "worker.py"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def card_result(pan: str = "4242424242424242", *, track2: str | None = None, name: str = "JANE DOE") -> CardResult:
    """A CardResult as a reader produces it: the PAN sealed for the processor, details beside it."""
    sealed, ksn = encrypt(
        SensitiveCard(pan=pan, exp_month=12, exp_year=2031, cardholder_name=name, track2=track2),
        bytes.fromhex(TEST_BASE_KEY_HEX),
    )
    details = CardDetails(
        brand="visa",
        last4=pan[-4:],
        exp_month=12,
        exp_year=2031,
        read_method=ReadMethod.CONTACT_EMV,
        cardholder_name=name,
        pin_verified=True,
        issuer_country="US",
        networks=("visa",),
    )
    return CardResult(details=details, encrypted_card_data=sealed, key_serial=ksn)


def new_payment(
    i: int = 0,
    *,
    amount: int | None = None,
    currency: str = "usd",
    stored_at: datetime | None = None,
    offline_id: str | None = None,
    idempotency_key: str | None = None,
    card: CardResult | None = None,
    livemode: bool = False,
) -> NewPayment:
    return NewPayment(
        offline_id=offline_id or new_offline_id(),
        idempotency_key=idempotency_key or new_idempotency_key(),
        amount=amount if amount is not None else 1000 + i,
        currency=currency,
        capture_method=CaptureMethod.AUTOMATIC,
        metadata={"order": f"A-{i}"},
        account_id="acct_test",
        livemode=livemode,
        stored_at=stored_at or T0 + timedelta(seconds=i),
        card=card or card_result(),
        description=f"payment {i}",
    )


def make_store(directory: Path, **options: Any) -> SqlCipherStore:
    validated = validate_options("storage.sqlcipher", OPTIONS, options, env={})
    return build_store(ComponentContext("sqlcipher", validated, directory))


def worker_cmd(*args: str) -> list[str]:
    return [sys.executable, str(WORKER), *args]


def raw_connect(path: Path, key: bytes) -> Any:
    """A bare sqlcipher3 connection with the raw key (to inspect or tamper with a file)."""
    import sqlcipher3.dbapi2 as driver

    conn = driver.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA cipher_log_level = NONE")
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    return conn
