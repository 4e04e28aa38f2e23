"""The bundled storage backend: offline payments in one SQLCipher 4 file.

Configured under ``[storage.sqlcipher]``; see docs/storage.md for the design
and docs/operations.md for keys and backups.

This hook module stays light: SQLAlchemy and sqlcipher3 are imported by the
factory (and by ``.store``), so listing plugins never pays for them.  The
store's names are still importable from here, loaded on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offterm.core.hookspecs import hookimpl
from offterm.core.registrations import ComponentContext, OptionSpec, StorageBackendRegistration

if TYPE_CHECKING:
    from ._store import SqlCipherStore, StoreConfig, new_idempotency_key

#: Names re-exported from ``.store`` on first access (it imports SQLAlchemy).
_LAZY = frozenset({"SqlCipherStore", "StoreConfig", "new_idempotency_key"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module("._store", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["OPTIONS", "SqlCipherStore", "StoreConfig", "build_store", "new_idempotency_key", "offterm_storage_backends"]

OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("path", str, "", "Database file; empty means <data_dir>/payments.db; relative to data_dir."),
    OptionSpec(
        "busy_timeout_ms",
        int,
        5000,
        "How long to wait for another process's write lock, in milliseconds.",
        maximum=600_000,
    ),
    OptionSpec(
        "allow_weak_durability",
        bool,
        False,
        "Accept a journal mode other than WAL or synchronous below FULL (logged; payments may be lost on power loss).",
    ),
    OptionSpec(
        "retention_days",
        int,
        30,
        "Days the reconciliation summary of a forwarded or declined payment is kept.",
        maximum=3650,
    ),
    OptionSpec(
        "journal_mode",
        str,
        "wal",
        "SQLite journal mode; anything but wal needs allow_weak_durability.",
        choices=("wal", "delete", "truncate", "persist"),
        ignore_case=True,
    ),
    OptionSpec(
        "synchronous",
        str,
        "full",
        "SQLite synchronous level: full or extra (normal/off need the override).",
        choices=("extra", "full", "normal", "off"),
        ignore_case=True,
    ),
    OptionSpec(
        "reserve_bytes",
        int,
        4 * 1024 * 1024,
        "Disk space held in <path>.reserve and released when the disk fills, so stored payments can still be "
        "forwarded; 0 disables.",
        maximum=1 << 30,
    ),
    OptionSpec("store_id", str, "", "Name under which the key provider keeps this store's key; empty means the path."),
)


def build_store(ctx: ComponentContext) -> SqlCipherStore:
    """Factory: options the core validated against ``OPTIONS`` -> an unopened store."""
    from ._connection import Durability
    from ._store import SqlCipherStore, StoreConfig

    opts = ctx.options
    raw_path = opts["path"]
    path = Path(raw_path).expanduser() if raw_path else Path("payments.db")
    if not path.is_absolute():
        path = Path(ctx.data_dir) / path
    resolved = path.resolve()
    return SqlCipherStore(
        StoreConfig(
            path=resolved,
            store_id=opts["store_id"] or str(resolved),
            durability=Durability(
                journal_mode=opts["journal_mode"],
                synchronous=opts["synchronous"],
                busy_timeout_ms=opts["busy_timeout_ms"],
                allow_weak=opts["allow_weak_durability"],
            ),
            retention_days=opts["retention_days"],
            reserve_bytes=opts["reserve_bytes"],
        )
    )


@hookimpl
def offterm_storage_backends() -> Iterator[StorageBackendRegistration]:
    yield StorageBackendRegistration(
        name="sqlcipher",
        factory=build_store,
        description="Encrypted SQLCipher 4 database (WAL, synchronous=FULL, raw 256-bit key).",
        options=OPTIONS,
    )
