"""No full card number or track data anywhere: not in the file, the WAL, the logs, nor the decrypted rows.

Payments are taken with Stripe's published test card numbers, sealed by the
reader codec exactly as a reader would; then everything the store wrote is
searched for the numbers and track data.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from storage_testkit import card_result, make_store, new_payment, raw_connect
from structlog.testing import capture_logs

from offterm.core.contracts.storage import PaymentState
from offterm.plugins.storage.keys import StaticKeyProvider

#: Stripe test card numbers (docs.stripe.com/testing).
STRIPE_TEST_PANS = (
    "4242424242424242",
    "4000056655665556",
    "5555555555554444",
    "2223003122003222",
    "5200828282828210",
    "5105105105105100",
    "378282246310005",
    "371449635398431",
    "6011111111111117",
    "3056930009020004",
    "36227206271667",
    "3566002020360505",
    "6200000000000005",
)


def track2(pan: str) -> str:
    return f";{pan}=31121010000012300000?"


def needles() -> list[bytes]:
    found: list[bytes] = []
    for pan in STRIPE_TEST_PANS:
        for text in (pan, track2(pan), track2(pan)[1:-1], pan[:6] + pan[6:]):
            found += [text.encode(), text.encode("utf-16-le"), text.encode().hex().encode()]
    return found


def leaks(data: bytes) -> list[str]:
    return sorted({n.decode("latin-1")[:24] for n in needles() if n in data})


def decrypted_dump(path: Path, key: bytes) -> bytes:
    """Every value of every table, decrypted, plus a plaintext export of the whole database."""
    conn = raw_connect(path, key)
    try:
        chunks: list[bytes] = []
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):  # noqa: S608
                for value in row:
                    chunks.append(value if isinstance(value, bytes) else str(value).encode())
        plain = path.with_name("decrypted-export.db")
        conn.execute("ATTACH DATABASE ? AS plaintext KEY ''", (str(plain),))
        conn.execute("SELECT sqlcipher_export('plaintext')").fetchall()
        conn.execute("DETACH DATABASE plaintext")
        chunks.append(plain.read_bytes())
        plain.unlink()
        return b"\n".join(chunks)
    finally:
        conn.close()


def test_no_card_number_or_track_data_is_stored_or_logged(tmp_path: Path, key: bytes, caplog, capfd) -> None:
    caplog.set_level(logging.DEBUG)
    with capture_logs() as events:
        ids, summary, listed, files = exercise(tmp_path, key)
    assert {"storage_opened", "payment_quarantined"} <= {e["event"] for e in events}, "log capture works"
    db_while_open, wal_while_open, db_closed = files

    # positive control: the decrypted dump does hold the payments (and the sealed blobs)
    plain = decrypted_dump(tmp_path / "payments.db", key)
    assert all(pid.encode() in plain for pid in ids)
    assert listed[-2].card is not None and listed[-2].card.encrypted_card_data in plain
    assert b"4242" in plain, "last4 is kept, as it should be"
    assert b"SQLite format 3" in plain, "the plaintext export was really made"

    assert leaks(plain) == [], "decrypted database content"
    for name, data in (("db", db_while_open), ("wal", wal_while_open), ("db closed", db_closed)):
        assert leaks(data) == [], name
        assert ids[0].encode() not in data, f"{name} is not encrypted"
    out, err = capfd.readouterr()
    logged = (repr(events) + caplog.text + out + err + repr(summary) + repr(listed)).encode()
    assert leaks(logged) == [], "logs and reprs"
    for other in tmp_path.iterdir():
        assert leaks(other.read_bytes()) == [], other.name


def exercise(tmp_path: Path, key: bytes) -> tuple:
    """Store, forward, quarantine and list payments; return what was written on the way."""
    store = make_store(tmp_path)
    store.open(StaticKeyProvider(key))
    ids = []
    for i, pan in enumerate(STRIPE_TEST_PANS):
        ids.append(store.store(new_payment(i, card=card_result(pan, track2=track2(pan)))).offline_id)
    now = datetime.now(UTC)
    batch = store.claim("w", 5, 30, now)
    for p in batch[:3]:
        store.record_attempt(p.offline_id, "w", now)
        store.complete(p.offline_id, "w", PaymentState.FORWARDED, now, intent_id="pi_" + p.offline_id[-6:])
    store.complete(batch[3].offline_id, "w", PaymentState.NEEDS_ATTENTION, now, error_code="x", error_message="y")
    store.release("w", now)
    raw = raw_connect(store.path, key)  # one damaged record, to exercise quarantine logging
    raw.execute("UPDATE payments SET metadata = '{broken' WHERE offline_id = ?", (ids[-1],))
    raw.close()
    summary = store.summary()
    listed = store.list_payments()

    wal_while_open = (tmp_path / "payments.db-wal").read_bytes()
    db_while_open = (tmp_path / "payments.db").read_bytes()
    assert len(wal_while_open) > 0
    store.close()
    db_closed = (tmp_path / "payments.db").read_bytes()
    return ids, summary, listed, (db_while_open, wal_while_open, db_closed)
