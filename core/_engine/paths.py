"""Private directories for payments and keys, with a typed error when one cannot be made."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import OfftermError

#: fsync of a directory is not supported everywhere (Windows cannot open one; some file systems refuse it).
_DIR_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.EBADF, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EACCES})


def make_private_dir(path: Path, error: Callable[[str], OfftermError], what: str) -> None:
    """Create ``path`` (0700, parents too) or raise ``error(message)`` naming it and the reason.

    A configured path under /proc, a read-only mount or a file in the way is a problem the operator must
    fix; it must reach them as offterm's error, not a bare ``OSError`` from deep inside start-up.

    Each directory made here is durable before this returns: its parent is fsynced after the mkdir, so a
    power cut cannot take back the directory entry of a data directory whose files were already fsynced.
    """
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        for directory in reversed(missing):
            try:
                directory.mkdir(mode=0o700 if directory == path else 0o777)  # parents as mkdir -p makes them
            except FileExistsError:
                continue  # made by another process meanwhile (or a file in the way: checked below)
            sync_dir(directory.parent)
    except OSError as exc:
        raise error(f"{what} {path} cannot be created: {exc.strerror or type(exc).__name__}") from None
    if not path.is_dir():
        raise error(f"{what} {path} is not a directory")


def sync_dir(directory: Path) -> None:
    """fsync ``directory`` so the entries made in it (files, renames, subdirectories) survive a power cut."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError as exc:
        if os.name == "nt" or exc.errno in _DIR_FSYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)
