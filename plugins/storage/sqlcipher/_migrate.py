"""Creating the schema and upgrading old databases, never destructively.

Before an upgrade the whole database is copied (still encrypted, same key)
to ``<db>.v<old>-<time>.bak``.  Each upgrade runs in one transaction, so a
failure rolls back to the untouched old version and stops with an error
naming the backup.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from offterm.core.errors import StorageError

from . import _schema as schema
from ._connection import CIPHER_PINS, key_connection

log = structlog.get_logger("offterm.storage.sqlcipher")


class StorageMigrationFailed(StorageError):
    """A schema upgrade failed; the database is still at its old version."""

    code = "storage_migration_failed"


def user_version(conn: Any) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def cipher_record(driver: ModuleType) -> str:
    """The settings written into every database (what opened it, pinned how)."""
    version = driver.connect(":memory:").execute("PRAGMA cipher_version").fetchone()[0]
    return json.dumps({"pins": dict(CIPHER_PINS), "cipher_version": version}, sort_keys=True)


def ensure_schema(driver: ModuleType, conn: Any, path: Path, key: bytes) -> int:
    """Create a new schema, or upgrade an old one; returns the starting version."""
    version = user_version(conn)
    if version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if tables:
            raise StorageError(f"{path} holds tables but no offterm schema version; refusing to touch it")
        _create(driver, conn)
        return 0
    if version > schema.CURRENT_VERSION:
        raise StorageError(
            f"{path} has schema version {version}, newer than this offterm understands "
            f"({schema.CURRENT_VERSION}); upgrade offterm. The file was left untouched"
        )
    if version < schema.CURRENT_VERSION:
        backup = backup_database(driver, conn, path, key, version)
        _upgrade(conn, path, backup)
    _check_cipher_record(conn, path)
    _sync_transitions(conn)
    return version


def _create(driver: ModuleType, conn: Any) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        if user_version(conn) != 0:  # another process created it first
            conn.execute("ROLLBACK")
            return
        for statement in schema.SCHEMA_V1:
            conn.execute(statement)
        for version in range(1, schema.CURRENT_VERSION):
            for statement in schema.MIGRATIONS[version]:
                conn.execute(statement)
        now = datetime.now(UTC).isoformat()
        conn.executemany(
            "INSERT INTO offterm_meta (key, value) VALUES (?, ?)",
            [("cipher_settings", cipher_record(driver)), ("created_at", now)],
        )
        conn.execute(f"PRAGMA user_version = {schema.CURRENT_VERSION}")
        _sync_transitions(conn, in_transaction=True)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _upgrade(conn: Any, path: Path, backup: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    start = user_version(conn)
    try:
        for version in range(start, schema.CURRENT_VERSION):
            for statement in schema.MIGRATIONS[version]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {schema.CURRENT_VERSION}")
        conn.execute(
            "INSERT INTO offterm_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (f"migrated_v{start}_to_v{schema.CURRENT_VERSION}", datetime.now(UTC).isoformat()),
        )
        _sync_transitions(conn, in_transaction=True)
        conn.execute("COMMIT")
    except Exception as exc:
        conn.execute("ROLLBACK")
        raise StorageMigrationFailed(
            f"upgrading {path} from schema v{start} to v{schema.CURRENT_VERSION} failed "
            f"({type(exc).__name__}); the database is unchanged at v{start}, a copy is at {backup}",
            path=str(path),
            backup=str(backup),
        ) from None
    if start < schema.CURRENT_VERSION:
        log.info("storage_schema_upgraded", from_version=start, to_version=schema.CURRENT_VERSION, backup=str(backup))


def backup_database(driver: ModuleType, conn: Any, path: Path, key: bytes, version: int) -> Path:
    """Copy the whole database (encrypted, same key) next to it, 0600, fsynced."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.v{version}-{stamp}.bak")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    dest = driver.connect(str(target), isolation_level=None)
    try:
        key_connection(dest, key)
        conn.backup(dest)
        dest.execute("PRAGMA journal_mode = DELETE")
    finally:
        dest.close()
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


def _check_cipher_record(conn: Any, path: Path) -> None:
    row = conn.execute("SELECT value FROM offterm_meta WHERE key = 'cipher_settings'").fetchone()
    if row is None:
        return
    recorded = json.loads(row[0]).get("pins", {})
    if recorded != dict(CIPHER_PINS):
        raise StorageError(
            f"{path} records cipher settings {recorded} but this version pins {dict(CIPHER_PINS)}; the file "
            "was left untouched"
        )


def _sync_transitions(conn: Any, *, in_transaction: bool = False) -> None:
    """Keep the database's transition table equal to the contract's rules."""
    wanted = schema.transition_rows()
    have = {(a, b) for a, b in conn.execute("SELECT from_state, to_state FROM allowed_transitions")}
    if have == wanted:
        return
    if not in_transaction:
        conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM allowed_transitions")
        conn.executemany("INSERT INTO allowed_transitions (from_state, to_state) VALUES (?, ?)", sorted(wanted))
        if not in_transaction:
            conn.execute("COMMIT")
    except BaseException:
        if not in_transaction:
            conn.execute("ROLLBACK")
        raise
