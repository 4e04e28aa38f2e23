"""A reserve of disk space held next to the database, given up when the disk fills.

When storing a payment hits a full disk, the store deletes the reserve so
claiming and forwarding (small writes to existing pages) can still drain
the backlog, and it keeps refusing new payments until the reserve can be
re-created, i.e. until the disk has room again.

The reserve is made crash-safe: it is written under a temporary name (one per
process), fsynced, then renamed over ``<db>.reserve``, so a process killed half
way leaves at most a temporary file (removed at the next start) and never a
short reserve that looks whole.  A short reserve left by an older version is
replaced the same way.  It is opened read-write: on a file system without
``fallocate`` glibc's ``posix_fallocate`` writes the blocks itself and reads
them first, which fails with EBADF on a write-only descriptor.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import structlog

from offterm.core.errors import StorageError
from offterm.core.paths import sync_dir

log = structlog.get_logger("offterm.storage.sqlcipher")

_CHUNK = 64 * 1024
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: posix_fallocate's answers on a file system that cannot preallocate: write the zeros ourselves.
_NO_FALLOCATE = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)
_TMP_SUFFIX = ".tmp"


class SpaceReserve:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.held = False

    def ensure(self) -> bool:
        """Hold the reserve (create it if missing or short); False when the disk has no room for it.

        :raises StorageError: the reserve cannot be made for another reason (a read-only or vanished
            directory, an I/O error), naming the file and the reason.
        """
        if self.size <= 0:
            return True
        if self.held:
            return True
        try:
            if self.path.stat().st_size >= self.size:
                self.held = True
                return True
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._error(exc) from None
        self._remove_leftovers()
        try:
            self._write()
        except OSError as exc:
            if exc.errno in _NO_ROOM:
                # A short reserve from before holds space nobody can use: give it back too.
                with contextlib.suppress(OSError):
                    self.path.unlink()
                return False
            raise self._error(exc) from None
        self.held = True
        return True

    def _error(self, exc: OSError) -> StorageError:
        reason = exc.strerror or type(exc).__name__
        return StorageError(f"cannot make the disk-space reserve {self.path}: {reason}", path=str(self.path))

    def _temp(self, pid: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{pid}{_TMP_SUFFIX}")

    def _remove_leftovers(self) -> None:
        """Remove temporary reserves of processes that died making one (a crash, a kill)."""
        prefix = self.path.name + "."
        try:
            entries = list(self.path.parent.iterdir())
        except OSError:
            return  # _write reports what is wrong with the directory
        for entry in entries:
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
                continue
            pid = name[len(prefix) : -len(_TMP_SUFFIX)]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue  # another process on this store is making its reserve right now
            with contextlib.suppress(OSError):
                entry.unlink()
                log.info("storage_reserve_leftover_removed", path=str(entry))

    def _write(self) -> None:
        tmp = self._temp(os.getpid())
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            try:
                try:
                    os.posix_fallocate(fd, 0, self.size)
                except (AttributeError, OSError) as exc:
                    if isinstance(exc, OSError) and exc.errno not in _NO_FALLOCATE:
                        raise
                    _write_zeros(fd, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        sync_dir(self.path.parent)

    def release(self) -> bool:
        """Give the space back to the filesystem; True if there was a reserve to give."""
        self.held = False
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning("storage_reserve_released", bytes=self.size, reason="disk full; stored payments stay forwardable")
        return True


def _write_zeros(fd: int, size: int) -> None:
    zeros = bytes(_CHUNK)
    written = 0
    while written < size:
        written += os.write(fd, zeros[: min(_CHUNK, size - written)])


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill there terminates the process: leave the file (it only costs space)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True
