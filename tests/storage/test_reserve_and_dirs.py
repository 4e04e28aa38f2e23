"""The crash-safe disk-space reserve, and new data directories made durable in their parents."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from storage_testkit import make_store

from offterm.core.contracts.storage import StorageKeyProvider
from offterm.core.errors import StorageError
from offterm.core.paths import make_private_dir
from offterm.plugins.storage.keys import StaticKeyProvider
from offterm.plugins.storage.sqlcipher import SqlCipherStore

RESERVE = 4 * 1024 * 1024
REAL_FALLOCATE = os.posix_fallocate


class RecordingKeys(StorageKeyProvider):
    """A key provider that remembers how it was asked."""

    def __init__(self, key: bytes) -> None:
        self.key, self.asked = key, list[bool]()

    def get_key(self, store_id: str, *, create: bool) -> bytes | None:
        self.asked.append(create)
        return self.key


def _opened(directory: Path, key: bytes, **options: object) -> SqlCipherStore:
    store = make_store(directory, **options)
    store.open(StaticKeyProvider(key))
    return store


# -- the space reserve -----------------------------------------------------------------------------------


def _no_fallocate(fd: int, offset: int, length: int) -> None:
    """A file system without fallocate, as Python sees it when glibc does not emulate it."""
    raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))


def _glibc_fallback(fd: int, offset: int, length: int) -> None:
    """glibc's posix_fallocate on a file system without fallocate: it reads each block, then writes it.

    A stand-in for such a file system (tmpfs and ext4 have fallocate): on a write-only descriptor the
    read fails, and Python raises ``OSError(EBADF)``, as seen on a real crash-restart.
    """
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    os.pread(fd, 1, offset)
    os.pwrite(fd, bytes(length), offset)


@pytest.mark.parametrize("fallocate", [_no_fallocate, _glibc_fallback], ids=["eopnotsupp", "glibc-fallback"])
def test_the_reserve_is_made_without_fallocate(
    tmp_path: Path, key: bytes, monkeypatch: pytest.MonkeyPatch, fallocate: Callable[[int, int, int], None]
) -> None:
    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    store = _opened(tmp_path, key)
    store.close()
    assert (tmp_path / "payments.db.reserve").stat().st_size == RESERVE
    assert not list(tmp_path.glob("*.tmp"))


def test_a_partial_reserve_and_a_dead_processs_temp_are_replaced_quietly(
    tmp_path: Path, key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    _opened(tmp_path, key).close()
    reserve = tmp_path / "payments.db.reserve"
    reserve.write_bytes(bytes(1000))  # what an older version left when it was killed while writing
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f"payments.db.reserve.{int(dead.stdout)}.tmp"
    leftover.write_bytes(bytes(5000))
    monkeypatch.setattr(os, "posix_fallocate", _glibc_fallback)
    store = _opened(tmp_path, key)  # the first start after the crash works
    store.close()
    assert reserve.stat().st_size == RESERVE
    assert not leftover.exists()


_KILLED_WHILE_WRITING = """
import os, signal, sys
sys.path.insert(0, {testdir!r})
from storage_testkit import make_store
from offterm.plugins.storage.keys import StaticKeyProvider

def fallocate(fd, offset, length):  # no fallocate: the zeros are written by hand, and the power goes half way
    os.write(fd, bytes(length // 2))
    os.kill(os.getpid(), signal.SIGKILL)

os.posix_fallocate = fallocate
make_store(__import__("pathlib").Path({directory!r})).open(StaticKeyProvider(bytes.fromhex({key!r})))
"""


def test_a_process_killed_while_making_the_reserve_does_not_break_the_next_start(
    tmp_path: Path, key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    _opened(tmp_path, key).close()
    (tmp_path / "payments.db.reserve").unlink()  # e.g. released on a full disk; the next start makes it again
    script = _KILLED_WHILE_WRITING.format(testdir=str(Path(__file__).parent), directory=str(tmp_path), key=key.hex())
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (tmp_path / "payments.db.reserve").exists(), "a half-written reserve never has the real name"
    assert list(tmp_path.glob("payments.db.reserve.*.tmp")), "the killed process left its temporary file"
    monkeypatch.setattr(os, "posix_fallocate", _glibc_fallback)
    store = _opened(tmp_path, key)
    store.close()
    assert (tmp_path / "payments.db.reserve").stat().st_size == RESERVE
    assert not list(tmp_path.glob("payments.db.reserve.*.tmp"))


def test_an_io_error_making_the_reserve_is_a_typed_error_and_leaves_nothing(
    tmp_path: Path, key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "posix_fallocate", broken)
    store = make_store(tmp_path)
    with pytest.raises(StorageError, match="disk-space reserve .*payments.db.reserve: Input/output error"):
        store.open(StaticKeyProvider(key))
    assert not list(tmp_path.glob("payments.db.reserve*"))
    monkeypatch.setattr(os, "posix_fallocate", REAL_FALLOCATE)
    _opened(tmp_path, key).close()  # the store itself was never harmed


# -- durable new directories -----------------------------------------------------------------------------


def test_a_new_data_directory_is_made_durable_in_its_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    target = tmp_path / "a" / "b" / "data"
    make_private_dir(target, StorageError, "directory")
    assert target.is_dir() and target.stat().st_mode & 0o777 == 0o700
    assert synced == [str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    synced.clear()
    make_private_dir(target, StorageError, "directory")
    assert synced == [], "an existing directory is left alone"
