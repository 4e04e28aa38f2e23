"""Opening, keying and checking SQLCipher connections.

Every connection is keyed with a raw 256-bit key (no per-connection key
derivation), gets the pinned cipher settings, and is checked for WAL and
synchronous=FULL.  Connections are keyed one at a time (concurrent keying
has crashed SQLCipher before).  Key material never appears in a message.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from offterm.core.errors import EncryptionUnavailable, StorageDamaged, StorageError, WrongStorageKey

log = structlog.get_logger("offterm.storage.sqlcipher")

#: SQLCipher 4 settings, pinned explicitly so that a future library default
#: can never make an existing file unreadable.  Recorded in every database.
CIPHER_PINS: tuple[tuple[str, str], ...] = (
    ("cipher_page_size", "4096"),
    ("kdf_iter", "256000"),
    ("cipher_hmac_algorithm", "HMAC_SHA512"),
    ("cipher_kdf_algorithm", "PBKDF2_HMAC_SHA512"),
    ("cipher_use_hmac", "ON"),
    ("cipher_plaintext_header_size", "0"),
)

_SYNCHRONOUS = {"off": 0, "normal": 1, "full": 2, "extra": 3}
#: Page cache per connection (KiB): keeps the unique indexes of a large backlog in memory.
CACHE_KIB = 2 * 1024
_KEYING = threading.Lock()


def load_driver() -> ModuleType:
    """Return ``sqlcipher3.dbapi2``, or refuse: there is no plaintext fallback."""
    try:
        import sqlcipher3.dbapi2 as driver
    except ImportError as exc:
        raise EncryptionUnavailable(
            "storage encryption needs the 'sqlcipher3' package, which cannot be imported; "
            "offline payments are never stored unencrypted"
        ) from exc
    probe = driver.connect(":memory:")
    try:
        version = probe.execute("PRAGMA cipher_version").fetchone()
    finally:
        probe.close()
    if not version or not version[0]:
        raise EncryptionUnavailable("the 'sqlcipher3' module is not linked against SQLCipher (no cipher_version)")
    module: ModuleType = driver
    return module


@dataclass(frozen=True)
class Durability:
    """What the store asks of SQLite, and whether weaker settings are tolerated."""

    journal_mode: str = "wal"
    synchronous: str = "full"
    busy_timeout_ms: int = 5000
    allow_weak: bool = False

    @property
    def is_weak(self) -> bool:
        return self.journal_mode != "wal" or _SYNCHRONOUS[self.synchronous] < _SYNCHRONOUS["full"]


class WeakDurability(StorageError):
    """The database would run with settings that can lose committed payments."""

    code = "storage_weak_durability"


def key_pragma(key: bytes) -> str:
    """The raw-key form of ``PRAGMA key``; never log or raise with this string."""
    return f"PRAGMA key = \"x'{key.hex()}'\""


def key_connection(dbapi_conn: Any, key: bytes) -> None:
    """Key a fresh connection and pin the cipher settings (before any read)."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA cipher_log_level = NONE")
        cur.execute(key_pragma(key))
        for name, value in CIPHER_PINS:
            cur.execute(f"PRAGMA {name} = {value}")
    finally:
        cur.close()


def apply_durability(dbapi_conn: Any, durability: Durability) -> None:
    """Set busy timeout, journal mode and synchronous, then read them back."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {int(durability.busy_timeout_ms)}")
        mode = str(cur.execute(f"PRAGMA journal_mode = {durability.journal_mode}").fetchone()[0]).lower()
        cur.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[durability.synchronous]}")
        sync = int(cur.execute("PRAGMA synchronous").fetchone()[0])
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        cur.execute("PRAGMA temp_store = MEMORY")  # no temporary files (RETURNING, sorts) beside the database
    finally:
        cur.close()
    weak = mode != "wal" or sync < _SYNCHRONOUS["full"]
    if weak and not durability.allow_weak:
        raise WeakDurability(
            f"payment storage requires journal_mode=wal and synchronous=full or extra, got journal_mode={mode} "
            f"synchronous={sync}; set allow_weak_durability = true to override (committed payments may be lost "
            "on power failure)"
        )
    if weak:
        log.warning("storage_durability_weakened", journal_mode=mode, synchronous=sync)


def connect(driver: ModuleType, path: Path, key: bytes, durability: Durability) -> Any:
    """A keyed, checked DBAPI connection in autocommit mode (we issue BEGIN ourselves)."""
    with _KEYING:
        conn = driver.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            key_connection(conn, key)
            apply_durability(conn, durability)
        except BaseException:
            conn.close()
            raise
    return conn


def verify_key(driver: ModuleType, path: Path, key: bytes) -> None:
    """Prove the key by reading; tell a wrong key from a damaged file.

    SQLCipher reports both as "file is not a database".  Its per-page HMACs
    tell them apart: with the wrong key no page verifies, with damage only
    some do.  Nothing is written.
    """
    with open(path, "rb") as handle:
        if handle.read(16) == b"SQLite format 3\x00":
            raise StorageDamaged(
                f"{path} is an unencrypted SQLite database; payments are only ever stored encrypted, so it is "
                "refused and left untouched",
                path=str(path),
            )
    conn = driver.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        with _KEYING:
            key_connection(conn, key)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return
        except driver.DatabaseError as exc:
            name = getattr(exc, "sqlite_errorname", "")
            if name != "SQLITE_NOTADB":
                raise classify(exc, path) from None
        failures = [str(r[0]) for r in conn.execute("PRAGMA cipher_integrity_check").fetchall()]
        pages = _page_count(path)
    finally:
        conn.close()
    if pages and len(failures) < pages:
        raise StorageDamaged(
            f"database {path} is damaged ({len(failures)} of {pages} pages fail verification); the file was "
            "left untouched — restore it from a backup",
            path=str(path),
        )
    if _opens_as_sqlcipher3(driver, path, key):
        raise StorageError(
            f"database {path} was written with SQLCipher 3 settings; this version uses pinned SQLCipher 4 settings. "
            "Convert it with sqlcipher_export (see docs/operations.md); the file was left untouched",
            path=str(path),
        )
    raise WrongStorageKey(
        f"the storage key does not open {path} (no page verifies with it); nothing was changed. "
        "Restore the key that created this database",
        path=str(path),
    )


def _page_count(path: Path) -> int:
    size = path.stat().st_size
    page = int(dict(CIPHER_PINS)["cipher_page_size"])
    return size // page


def _opens_as_sqlcipher3(driver: ModuleType, path: Path, key: bytes) -> bool:
    conn = driver.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA cipher_log_level = NONE")
        conn.execute(key_pragma(key))
        conn.execute("PRAGMA cipher_compatibility = 3")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return True
    except driver.DatabaseError:
        return False
    finally:
        conn.close()


_FULL = {"SQLITE_FULL"}
_DAMAGE = {"SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_CORRUPT_INDEX", "SQLITE_CORRUPT_SEQUENCE"}


def is_disk_full(exc: BaseException, path: Path) -> bool:
    """SQLITE_FULL, or a write I/O error while the filesystem or file-size limit is exhausted."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    if name in _FULL or "database or disk is full" in str(exc):
        return True
    if not name.startswith("SQLITE_IOERR"):
        return False
    with contextlib.suppress(OSError):
        st = os.statvfs(path.parent)
        if st.f_bavail * st.f_frsize < 256 * 1024:
            return True
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                if Path(f"{path}{suffix}").stat().st_size + 64 * 1024 >= soft:
                    return True
    return False


def classify(exc: BaseException, path: Path) -> StorageError:
    """Turn a driver error into a typed storage error (message without data)."""
    from offterm.core.errors import OfflineStorageFull

    name = str(getattr(exc, "sqlite_errorname", "")) or type(exc).__name__
    if is_disk_full(exc, path):
        return OfflineStorageFull(
            f"the disk holding {path.name} is full: the payment was NOT stored; stored payments are intact",
            path=str(path),
        )
    if name in _DAMAGE or name.startswith("SQLITE_CORRUPT"):
        return StorageDamaged(
            f"database {path} is damaged ({name}); the file was left untouched — restore it from a backup",
            path=str(path),
        )
    if name.startswith("SQLITE_BUSY") or name.startswith("SQLITE_LOCKED"):
        return StorageBusy(f"database {path.name} stayed locked by another process beyond the busy timeout")
    if name.startswith("SQLITE_READONLY") or name.startswith("SQLITE_CANTOPEN") or name.startswith("SQLITE_PERM"):
        return StorageError(f"database {path} cannot be opened for writing ({name})", path=str(path))
    # SQLite's own messages name tables and constraints, never bound values.
    return StorageError(f"storage operation failed ({name}: {exc})", path=str(path))


class StorageBusy(StorageError):
    """Another process held the write lock longer than the busy timeout; nothing changed."""

    code = "storage_busy"
