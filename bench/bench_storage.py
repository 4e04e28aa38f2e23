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
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from offterm.core.contracts.readers import CardDetails, CardResult
from offterm.core.contracts.storage import NewPayment
from offterm.core.models import CaptureMethod, ReadMethod, new_offline_id
from offterm.core.registrations import ComponentContext
from offterm.plugins.readers.card_encryption import TEST_BASE_KEY_HEX, SensitiveCard, encrypt
from offterm.plugins.storage.keys import StaticKeyProvider
from offterm.plugins.storage.sqlcipher import SqlCipherStore, _codec, _store, build_store, new_idempotency_key
from offterm.plugins.storage.sqlcipher._connection import Durability, connect, load_driver

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


def timed(fn: Callable[[NewPayment], object], payment: NewPayment) -> float:
    start = time.perf_counter()
    fn(payment)
    return time.perf_counter() - start


class BareInsert:
    """The baseline: a bare sqlcipher3 single-row insert of the same payload, same pragmas."""

    def __init__(self, directory: Path) -> None:
        self.conn = connect(load_driver(), directory / "bare.db", BENCH_KEY, Durability())
        self.columns = _store._INSERT_COLUMNS
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS bare ({', '.join(self.columns)})")
        self.sql = f"INSERT INTO bare ({', '.join(self.columns)}) VALUES ({', '.join(':' + c for c in self.columns)})"

    def insert(self, payment: NewPayment) -> None:
        row = _codec.payment_row(payment, 1)
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(self.sql, row)
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class SchemaInsert:
    """A second baseline: the same single-row insert into offterm's own schema (indexes, triggers).

    ``store()`` against this isolates what the code adds; the bare insert
    against this is what the required indexes and totals cost.
    """

    def __init__(self, store: SqlCipherStore) -> None:
        self.fairy = store._engine.raw_connection()  # type: ignore[union-attr]
        self.conn = self.fairy.driver_connection

    def insert(self, payment: NewPayment) -> None:
        row = _codec.payment_row(payment, 1)
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(_store.INSERT_SQL, row)
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.fairy.close()


def interleaved(
    a: Callable[[NewPayment], object], b: Callable[[NewPayment], object], n: int, base: int
) -> tuple[float, float]:
    """Seconds spent in a and in b, called alternately (order flipped every call) so both see the same disk."""
    spent = [0.0, 0.0]
    for i in range(n):
        pa, pb = make_payment(base + 2 * i), make_payment(base + 2 * i + 1)
        if i % 2:
            spent[1] += timed(b, pb)
            spent[0] += timed(a, pa)
        else:
            spent[0] += timed(a, pa)
            spent[1] += timed(b, pb)
    return spent[0], spent[1]


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


def run(backlog: int = 100_000, small: int = 1_000, calls: int = 3_000) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="offterm-bench-") as tmp:
        root = Path(tmp)
        for sub in "abcde":
            (root / sub).mkdir()
        # 1. store() vs the bare insert, both starting from empty files.
        bare = BareInsert(root / "b")
        with opened_store(root / "a") as store:
            ours, base = interleaved(store.store, bare.insert, calls, 0)
        bare.close()
        results.append(
            Result(
                "store() vs bare sqlcipher3 insert (throughput)",
                base / ours,
                "ratio",
                ">= 0.8",
                f"{calls:,} each, interleaved: {calls / ours:,.0f}/s vs {calls / base:,.0f}/s",
            )
        )
        # 1b. store() vs the same insert into the same schema (what the code itself adds).
        with opened_store(root / "e") as store, opened_store(root / "e" / "schema") as twin:
            schema = SchemaInsert(twin)
            ours, base = interleaved(store.store, schema.insert, calls, 10_000_000)
            schema.close()
        results.append(
            Result(
                "store() vs raw insert into the same schema (code overhead)",
                base / ours,
                "ratio",
                "-",
                f"{calls:,} each, interleaved: {calls / ours:,.0f}/s vs {calls / base:,.0f}/s",
            )
        )
        # 2. store() with a backlog vs a small store; 3. summary() likewise.
        with opened_store(root / "c") as big, opened_store(root / "d") as little:
            prefill(big, backlog)
            prefill(little, small)
            full, light = interleaved(big.store, little.store, calls, 50_000_000)
            results.append(
                Result(
                    f"store() with {backlog:,} stored vs {small:,} (throughput)",
                    light / full,
                    "ratio",
                    ">= 0.9",
                    f"{calls:,} each, interleaved: {calls / full:,.0f}/s vs {calls / light:,.0f}/s",
                )
            )
            big_s, little_s = summary_seconds(big, 500), summary_seconds(little, 500)
            results.append(
                Result(
                    f"summary() time with {backlog:,} stored vs {small:,}",
                    big_s / little_s,
                    "ratio",
                    "<= 1.5",
                    f"{big_s * 1e6:,.0f} us vs {little_s * 1e6:,.0f} us per call",
                )
            )
            count = backlog + calls
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
    import importlib.metadata
    import platform

    version = load_driver().connect(":memory:").execute("PRAGMA cipher_version").fetchone()[0]
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"sqlcipher3 {importlib.metadata.version('sqlcipher3')}, SQLCipher {version}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000-payment backlog, fewer rounds")
    parser.add_argument("--markdown", type=Path, help="also write the table as a markdown fragment")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # a clean table
    kwargs: dict[str, Any] = {"backlog": 10_000, "calls": 1_000} if args.quick else {}
    results = run(**kwargs)
    text = table(results)
    print(machine())
    print(text)
    if args.markdown:
        args.markdown.write_text(f"Measured on {machine()}.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
