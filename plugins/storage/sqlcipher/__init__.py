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

from offterm.core.errors import ConfigError
from offterm.core.hookspecs import hookimpl
from offterm.core.registrations import ComponentContext, OptionSpec, StorageBackendRegistration

if TYPE_CHECKING:
    from .store import SqlCipherStore, StoreConfig, new_idempotency_key

#: Names re-exported from ``.store`` on first access (it imports SQLAlchemy).
_LAZY = frozenset({"SqlCipherStore", "StoreConfig", "new_idempotency_key"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(".store", __name__), name)
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
        maximum=36500,
    ),
    OptionSpec("journal_mode", str, "wal", "SQLite journal mode; anything but wal needs allow_weak_durability."),
    OptionSpec("synchronous", str, "full", "SQLite synchronous level: full or extra (normal/off need the override)."),
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

_JOURNAL_MODES = ("wal", "delete", "truncate", "persist")
_SYNC_LEVELS = ("extra", "full", "normal", "off")


def _option_error(key: str, message: str, value: object) -> ConfigError:
    return ConfigError(f"storage.sqlcipher.{key}", message, value)


def build_store(ctx: ComponentContext) -> SqlCipherStore:
    """Factory: validated options -> an unopened store."""
    from .connection import Durability
    from .store import SqlCipherStore, StoreConfig

    opts = ctx.options
    raw_path = str(opts.get("path") or "")
    path = Path(raw_path).expanduser() if raw_path else Path("payments.db")
    if not path.is_absolute():
        path = Path(ctx.data_dir) / path
    busy = opts.get("busy_timeout_ms", 5000)
    if isinstance(busy, bool) or not isinstance(busy, int) or not 0 <= busy <= 600_000:
        raise _option_error("busy_timeout_ms", "must be an integer between 0 and 600000", busy)
    retention = opts.get("retention_days", 30)
    if isinstance(retention, bool) or not isinstance(retention, int) or not 0 <= retention <= 3650:
        raise _option_error("retention_days", "must be an integer between 0 and 3650", retention)
    reserve = opts.get("reserve_bytes", 4 * 1024 * 1024)
    if isinstance(reserve, bool) or not isinstance(reserve, int) or not 0 <= reserve <= 1024**3:
        raise _option_error("reserve_bytes", "must be an integer between 0 and 1073741824", reserve)
    journal = str(opts.get("journal_mode", "wal")).lower()
    if journal not in _JOURNAL_MODES:
        raise _option_error("journal_mode", f"must be one of {', '.join(_JOURNAL_MODES)}", journal)
    sync = str(opts.get("synchronous", "full")).lower()
    if sync not in _SYNC_LEVELS:
        raise _option_error("synchronous", f"must be one of {', '.join(_SYNC_LEVELS)}", sync)
    resolved = path.resolve()
    return SqlCipherStore(
        StoreConfig(
            path=resolved,
            store_id=str(opts.get("store_id") or "") or str(resolved),
            durability=Durability(
                journal_mode=journal,
                synchronous=sync,
                busy_timeout_ms=busy,
                allow_weak=bool(opts.get("allow_weak_durability", False)),
            ),
            retention_days=retention,
            reserve_bytes=reserve,
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
