"""Storage benchmarks: ratios measured against a baseline in the same run.

    python bench/bench_storage.py                 # full run (100,000-payment backlog)
    python bench/bench_storage.py --quick         # smaller, for a smoke check
    python bench/bench_storage.py --markdown out.md

Every figure is a ratio of two measurements taken in this run on this
machine, never an absolute target.  The functions are importable so a
Terminal-level benchmark can reuse the payload and the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from offterm.core.contracts.readers import CardDetails, CardResult
from offterm.core.contracts.storage import NewPayment
from offterm.core.models import CaptureMethod, ReadMethod, new_offline_id
from offterm.core.registrations import ComponentContext
from offterm.plugins.readers.card_encryption import TEST_BASE_KEY_HEX, SensitiveCard, encrypt
from offterm.plugins.storage.keys import StaticKeyProvider
from offterm.plugins.storage.sqlcipher import SqlCipherStore, build_store, new_idempotency_key
from offterm.plugins.storage.sqlcipher import codec as _codec
from offterm.plugins.storage.sqlcipher import store as _store
from offterm.plugins.storage.sqlcipher.connection import Durability, connect, load_driver

BENCH_KEY = bytes(range(32))
_T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_payment(i: int, *, stored_at: datetime | None = None) -> NewPayment:
    """A realistic payment: a test card sealed by the reader codec, metadata, details."""
    card = SensitiveCard(
        pan="4242424242424242",
        exp_month=12,
        exp_year=2030,
        cardholder_name="TEST CARDHOLDER",
        track2=None,
        read_method="contact_emv",
    )
    blob, ksn = encrypt(card, bytes.fromhex(TEST_BASE_KEY_HEX))
    details = CardDetails("visa", "4242", 12, 2030, ReadMethod.CONTACT_EMV, "TEST CARDHOLDER", False, "US", ("visa",))
    return NewPayment(
        offline_id=new_offline_id(),
        idempotency_key=new_idempotency_key(),
        amount=100 + i % 10_000,
        currency="usd",
        capture_method=CaptureMethod.AUTOMATIC,
        metadata={"order": f"order-{i}", "lane": "3"},
        account_id="acct_bench",
        livemode=False,
        stored_at=stored_at or _T0 + timedelta(milliseconds=i),
        card=CardResult(details, blob, ksn),
    )


@contextmanager
def opened_store(directory: Path) -> Iterator[SqlCipherStore]:
    store = build_store(ComponentContext("sqlcipher", {}, directory))
    store.open(StaticKeyProvider(BENCH_KEY))
    try:
        yield store
    finally:
        store.close()


def prefill(store: SqlCipherStore, count: int, batch: int = 5_000) -> None:
    """Add ``count`` stored payments fast: the store's own INSERT, many rows per commit."""
    done = 0
    while done < count:
        n = min(batch, count - done)
        rows = [_codec.payment_row(make_payment(done + i), 1) for i in range(n)]
        with store._tx(write=True) as conn:
            conn.executemany(_store.INSERT_SQL, rows)
        done += n


def store_rate(store: SqlCipherStore, payments: list[NewPayment]) -> float:
    """Payments per second through ``PaymentStore.store`` (one durable commit each)."""
    start = time.perf_counter()
    for p in payments:
        store.store(p)
    return len(payments) / (time.perf_counter() - start)


class BareInsert:
    """The baseline: a bare sqlcipher3 single-row insert of the same payload, same pragmas."""

    def __init__(self, directory: Path) -> None:
        self.conn = connect(load_driver(), directory / "bare.db", BENCH_KEY, Durability())
        self.columns = _store._INSERT_COLUMNS
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS bare ({', '.join(self.columns)})")
        self.sql = f"INSERT INTO bare ({', '.join(self.columns)}) VALUES ({', '.join(':' + c for c in self.columns)})"

    def rate(self, payments: list[NewPayment]) -> float:
        start = time.perf_counter()
        for p in payments:
            row = _codec.payment_row(p, 1)
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(self.sql, row)
            self.conn.execute("COMMIT")
        return len(payments) / (time.perf_counter() - start)

    def close(self) -> None:
        self.conn.close()


def summary_seconds(store: SqlCipherStore, calls: int) -> float:
    """Seconds per ``summary()`` call (median of five batches)."""
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            store.summary()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def on_disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


@dataclass
class Result:
    name: str
    value: float
    unit: str
    target: str
    detail: str

    @property
    def shown(self) -> str:
        return f"{self.value:.2f}" if self.unit == "ratio" else f"{self.value:,.0f}"


def run(backlog: int = 100_000, small: int = 1_000, per_round: int = 400, rounds: int = 5) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="offterm-bench-") as tmp:
        root = Path(tmp)
        # 1. store() vs the bare insert, both on empty files, rounds interleaved.
        (root / "a").mkdir()
        (root / "b").mkdir()
        bare = BareInsert(root / "b")
        ours: list[float] = []
        base: list[float] = []
        with opened_store(root / "a") as store:
            for r in range(rounds):
                batch = [make_payment(r * per_round + i) for i in range(per_round)]
                base.append(bare.rate(batch))
                ours.append(store_rate(store, batch))
        bare.close()
        empty_rate = statistics.median(ours)
        ratio = empty_rate / statistics.median(base)
        results.append(
            Result(
                "store() vs bare sqlcipher3 insert",
                ratio,
                "ratio",
                ">= 0.8",
                f"{empty_rate:,.0f}/s vs {statistics.median(base):,.0f}/s",
            )
        )

        # 2. store() with a backlog vs empty; 3. summary() with a backlog vs small.
        (root / "c").mkdir()
        (root / "d").mkdir()
        with opened_store(root / "c") as big, opened_store(root / "d") as little:
            prefill(big, backlog)
            prefill(little, small)
            full: list[float] = []
            light: list[float] = []
            for r in range(rounds):
                batch = [make_payment(10_000_000 + r * per_round + i) for i in range(per_round)]
                light.append(store_rate(little, batch))
                batch = [make_payment(20_000_000 + r * per_round + i) for i in range(per_round)]
                full.append(store_rate(big, batch))
            full_rate, light_rate = statistics.median(full), statistics.median(light)
            results.append(
                Result(
                    f"store() with {backlog:,} stored vs {small:,}",
                    full_rate / light_rate,
                    "ratio",
                    ">= 0.9",
                    f"{full_rate:,.0f}/s vs {light_rate:,.0f}/s",
                )
            )
            big_s, little_s = summary_seconds(big, 200), summary_seconds(little, 200)
            results.append(
                Result(
                    f"summary() with {backlog:,} stored vs {small:,}",
                    big_s / little_s,
                    "ratio",
                    "<= 1.5",
                    f"{big_s * 1e6:,.0f} us vs {little_s * 1e6:,.0f} us",
                )
            )
            count = backlog + rounds * per_round
            with big._tx(write=False) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            size = on_disk_bytes(big.path)
        results.append(
            Result("bytes on disk per stored payment", size / count, "bytes", "-", f"{size:,} bytes / {count:,}")
        )
    return results


def table(results: list[Result]) -> str:
    lines = ["| measurement | result | target | detail |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.shown} | {r.target} | {r.detail} |" for r in results]
    return "\n".join(lines)


def machine() -> str:
    import platform

    import sqlcipher3

    version = load_driver().connect(":memory:").execute("PRAGMA cipher_version").fetchone()[0]
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"sqlcipher3 {getattr(sqlcipher3, '__version__', '?')}, SQLCipher {version}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000-payment backlog, fewer rounds")
    parser.add_argument("--markdown", type=Path, help="also write the table as a markdown fragment")
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = {"backlog": 10_000, "rounds": 3} if args.quick else {}
    results = run(**kwargs)
    text = table(results)
    print(machine())
    print(text)
    if args.markdown:
        args.markdown.write_text(f"Measured on {machine()}.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
