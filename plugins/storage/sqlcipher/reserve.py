"""A reserve of disk space held next to the database, given up when the disk fills.

When storing a payment hits a full disk, the store deletes the reserve so
claiming and forwarding (small writes to existing pages) can still drain
the backlog, and it keeps refusing new payments until the reserve can be
re-created, i.e. until the disk has room again.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import structlog

log = structlog.get_logger("offterm.storage.sqlcipher")

_CHUNK = 64 * 1024


class SpaceReserve:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.held = False

    def ensure(self) -> bool:
        """Hold the reserve (create it if missing); False when the disk has no room for it."""
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
        try:
            self._write()
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                return False
            raise
        self.held = True
        return True

    def _write(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, self.size)
            except (AttributeError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                zeros = bytes(_CHUNK)
                written = 0
                while written < self.size:
                    written += os.write(fd, zeros[: min(_CHUNK, self.size - written)])
            os.fsync(fd)
        finally:
            os.close(fd)

    def release(self) -> bool:
        """Give the space back to the filesystem; True if there was a reserve to give."""
        self.held = False
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning("storage_reserve_released", bytes=self.size, reason="disk full; stored payments stay forwardable")
        return True
