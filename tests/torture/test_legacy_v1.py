"""The harness's frozen schema-v1 builder writes what the storage team's frozen builder writes.

The crash run seeds old-schema stations with ``offterm.testing.torture.legacy_v1``,
a copy (the package ships, ``tests/`` does not) of ``tests/storage/legacy_schemas.build_v1``.
Both are frozen; this proves the copy is faithful, byte for byte in every table.
"""

from __future__ import annotations

import importlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from offterm.core.contracts.storage import NewPayment
from offterm.core.models import CaptureMethod, new_offline_id
from offterm.sim.processor.testing import card_result
from offterm.testing.torture.legacy_v1 import build_v1

STORAGE_TESTS = Path(__file__).resolve().parent.parent / "storage"


def _dump(path: Path, key: bytes, raw_connect: Any) -> dict[str, Any]:
    conn = raw_connect(path, key)
    try:
        dump: dict[str, Any] = {
            "schema": conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall(),
            "user_version": conn.execute("PRAGMA user_version").fetchone(),
            "journal_mode": conn.execute("PRAGMA journal_mode").fetchone(),
        }
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall():
            dump[table] = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
        return dump
    finally:
        conn.close()


def test_the_harness_copy_writes_the_same_v1_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The storage team's helpers import each other by bare name, as pytest's rootdir imports allow there;
    # for this one test their folder is put in front, and pytest takes it away again afterwards.
    monkeypatch.syspath_prepend(str(STORAGE_TESTS))
    legacy_schemas = importlib.import_module("legacy_schemas")
    raw_connect = importlib.import_module("storage_testkit").raw_connect

    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    payments = [
        NewPayment(
            offline_id=new_offline_id(),
            idempotency_key="offterm-" + os.urandom(16).hex(),
            amount=500 + i,
            currency="usd",
            capture_method=CaptureMethod.AUTOMATIC,
            metadata={"legacy": str(i)},
            account_id="acct_1SimulatedOfftrm",
            livemode=False,
            stored_at=now - timedelta(minutes=5 - i),
            card=card_result("4000000000000002" if i == 3 else "4242424242424242"),
        )
        for i in range(5)
    ]
    key = os.urandom(32)
    updated_at = int(now.timestamp() * 1_000_000)
    ours, theirs = tmp_path / "ours.db", tmp_path / "theirs.db"
    build_v1(ours, key, payments, updated_at=updated_at)
    legacy_schemas.build_v1(theirs, key, [legacy_schemas.LegacyPayment(p) for p in payments], updated_at=updated_at)

    expected = _dump(theirs, key, raw_connect)
    assert len(expected["payments"]) == 5 and expected["user_version"] == (1,)
    assert _dump(ours, key, raw_connect) == expected
    assert oct(ours.stat().st_mode & 0o777) == oct(theirs.stat().st_mode & 0o777) == "0o600"
