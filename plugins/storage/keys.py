"""Where the storage key comes from: a key file, an environment variable, the OS keyring.

Each provider hands the store a raw 256-bit key.  Keys never appear in a log
line or an error message: errors name the file, variable or keyring entry,
never the value.  Losing the key loses the stored payments (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from offterm.core.contracts.storage import StorageKeyProvider
from offterm.core.errors import StorageKeyUnavailable
from offterm.core.hookspecs import hookimpl
from offterm.core.paths import make_private_dir
from offterm.core.registrations import ComponentContext, OptionSpec, StorageKeyProviderRegistration

log = structlog.get_logger("offterm.storage.keys")

KEY_BYTES = 32
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")

__all__ = [
    "EnvKeyProvider",
    "FileKeyProvider",
    "KeyringKeyProvider",
    "StaticKeyProvider",
    "offterm_storage_key_providers",
    "parse_hex_key",
]


def parse_hex_key(text: str, where: str) -> bytes:
    """64 hex characters -> 32 bytes; the error names ``where``, never the text."""
    value = text.strip()
    if not _HEX_KEY.match(value):
        raise StorageKeyUnavailable(f"{where} does not hold a 256-bit key as 64 hexadecimal characters")
    return bytes.fromhex(value)


class StaticKeyProvider(StorageKeyProvider):
    """A key held in memory (tests, benchmarks, embedding apps that manage keys themselves)."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise StorageKeyUnavailable("a storage key is exactly 32 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "StaticKeyProvider(<hidden>)"

    def get_key(self, store_id: str, *, create: bool) -> bytes | None:
        return self._key


class FileKeyProvider(StorageKeyProvider):
    """One key per file, 64 hex characters, mode 0600; created on first run.

    The file must not be readable by group or others: a looser mode is
    refused rather than silently trusted.  ``store_id`` is not used: point
    each store at its own file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"FileKeyProvider({str(self.path)!r})"

    def get_key(self, store_id: str, *, create: bool) -> bytes | None:
        try:
            return self._read()
        except FileNotFoundError:
            if not create:
                return None
        return self._create()

    def _read(self) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageKeyUnavailable(f"key file {self.path} cannot be opened: {exc.strerror}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # checked before fdopen, which refuses a directory with its own error
            os.close(fd)
            raise StorageKeyUnavailable(f"key file {self.path} is not a regular file")
        with os.fdopen(fd, "r", encoding="ascii", errors="replace") as handle:
            if mode & 0o077:
                raise StorageKeyUnavailable(
                    f"key file {self.path} is accessible to other users (mode {stat.S_IMODE(mode):04o}); "
                    "run chmod 600 on it"
                )
            text = handle.read(256)
        return parse_hex_key(text, f"key file {self.path}")

    def _create(self) -> bytes:
        """Write a new key atomically: a 0600 temp file, fsynced, then linked into place."""
        make_private_dir(self.path.parent, StorageKeyUnavailable, "key file directory")
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        key = secrets.token_bytes(KEY_BYTES)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, (key.hex() + "\n").encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path)
            except FileExistsError:  # another process created it first: use theirs
                return self._read()
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise StorageKeyUnavailable(f"key file {self.path} cannot be created: {exc.strerror}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        log.warning("storage_key_created", where=str(self.path), advice="back it up: losing it loses stored payments")
        return key


class EnvKeyProvider(StorageKeyProvider):
    """A hex key from an environment variable; it never creates keys."""

    def __init__(self, variable: str) -> None:
        self.variable = variable

    def __repr__(self) -> str:
        return f"EnvKeyProvider({self.variable!r})"

    def get_key(self, store_id: str, *, create: bool) -> bytes | None:
        value = os.environ.get(self.variable)
        if value is None or value == "":
            return None
        return parse_hex_key(value, f"environment variable {self.variable}")


class KeyringKeyProvider(StorageKeyProvider):
    """The OS keyring (Secret Service, macOS Keychain, Windows Credential Locker).

    Entries are ``service`` / ``store_id``, holding the key as hex.
    """

    def __init__(self, service: str) -> None:
        self.service = service

    def __repr__(self) -> str:
        return f"KeyringKeyProvider({self.service!r})"

    def get_key(self, store_id: str, *, create: bool) -> bytes | None:
        with self._errors("read"):
            backend = self._backend()
            stored = backend.get_password(self.service, store_id)
        where = f"OS keyring entry {self.service}/{store_id}"
        if stored is not None:
            return parse_hex_key(stored, where)
        if not create:
            return None
        with self._errors("write"):
            backend.set_password(self.service, store_id, secrets.token_bytes(KEY_BYTES).hex())
            stored = backend.get_password(self.service, store_id)  # the winner, if two processes raced
        if stored is None:
            raise StorageKeyUnavailable(f"{where} was written but cannot be read back")
        log.warning("storage_key_created", where=where, advice="back it up: losing it loses stored payments")
        return parse_hex_key(stored, where)

    def _backend(self) -> Any:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
        priority = getattr(backend, "priority", 0)
        if isinstance(backend, fail.Keyring) or (isinstance(priority, int | float) and priority <= 0):
            raise StorageKeyUnavailable(
                f"no usable OS keyring is available (keyring backend {type(backend).__module__}."
                f"{type(backend).__name__}); choose the 'file' or 'env' key provider, or install a keyring backend"
            )
        return backend

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except StorageKeyUnavailable:
            raise
        except Exception as exc:  # keyring backends raise many kinds (DBus, Keychain, ...)
            raise StorageKeyUnavailable(
                f"the OS keyring could not {action} the storage key ({type(exc).__name__})"
            ) from None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- registrations -------------------------------------------------------------------


def _file_provider(ctx: ComponentContext) -> FileKeyProvider:
    raw = ctx.options["path"]
    path = Path(raw).expanduser() if raw else Path("storage.key")
    if not path.is_absolute():
        path = Path(ctx.data_dir) / path
    return FileKeyProvider(path)


def _env_provider(ctx: ComponentContext) -> EnvKeyProvider:
    return EnvKeyProvider(ctx.options["variable"])


def _keyring_provider(ctx: ComponentContext) -> KeyringKeyProvider:
    return KeyringKeyProvider(ctx.options["service"])


@hookimpl
def offterm_storage_key_providers() -> Iterator[StorageKeyProviderRegistration]:
    yield StorageKeyProviderRegistration(
        name="file",
        factory=_file_provider,
        description="A 0600 key file, created with a random key on first run.",
        options=(OptionSpec("path", str, "", "Key file; empty means <data_dir>/storage.key."),),
    )
    yield StorageKeyProviderRegistration(
        name="env",
        factory=_env_provider,
        description="A key given as 64 hex characters in an environment variable.",
        options=(
            OptionSpec(
                "variable",
                str,
                "OFFTERM_STORAGE_KEY",
                "Name of the environment variable.",
                pattern="[A-Za-z_][A-Za-z0-9_]*",
                pattern_help="an environment variable name",
            ),
        ),
    )
    yield StorageKeyProviderRegistration(
        name="keyring",
        factory=_keyring_provider,
        description="The OS keyring via the 'keyring' package, when a backend is available.",
        options=(
            OptionSpec(
                "service", str, "offterm-storage", "Keyring service name; the entry is the store id.", min_length=1
            ),
        ),
    )
