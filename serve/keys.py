"""The service's secret API key: made at first start, kept in a 0600 file in the data directory.

A POS sends it as Stripe's libraries do (``Authorization: Bearer sk_...``; HTTP Basic with the key as
user name works too).  ``offterm serve rotate-key`` replaces it atomically; a running service notices
the new file on the next request (the file's identity is checked, not re-read, each time).
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
from pathlib import Path

from offterm.core.paths import sync_dir

KEY_FILE = "serve-secret-key"
PREFIX = "sk_offterm_"  # "sk_" so offterm's log redaction already masks it


def key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE


def _write(path: Path, key: str, *, replace: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    target = tmp if replace else path
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(target, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (key + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if replace:
        os.replace(tmp, path)
    sync_dir(path.parent)


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def ensure_key(data_dir: Path) -> str:
    """The key, made (0600, never overwritten) if there is none yet."""
    path = key_path(data_dir)
    try:
        _write(path, new_key(), replace=False)
    except FileExistsError:
        pass
    return read_key(path)


def read_key(path: Path) -> str:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by others (mode {mode:o}); chmod 600 it or rotate the key")
    return path.read_text().strip()


def rotate_key(data_dir: Path) -> str:
    key = new_key()
    _write(key_path(data_dir), key, replace=True)
    return key


class KeyChecker:
    """Compares a request's credentials with the key file's, in constant time; follows rotations."""

    def __init__(self, data_dir: Path) -> None:
        self._path = key_path(data_dir)
        self._identity: tuple[int, int, int] | None = None
        self._key = b""

    def _current(self) -> bytes:
        st = self._path.stat()
        identity = (st.st_ino, st.st_mtime_ns, st.st_size)
        if identity != self._identity:
            self._key = read_key(self._path).encode()
            self._identity = identity
        return self._key

    def check(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            try:
                value = base64.b64decode(value, validate=True).decode().partition(":")[0]
            except (ValueError, UnicodeDecodeError):
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.encode(), self._current())
