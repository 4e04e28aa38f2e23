"""Private directories for payments and keys, with a typed error when one cannot be made."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .errors import OfftermError


def make_private_dir(path: Path, error: Callable[[str], OfftermError], what: str) -> None:
    """Create ``path`` (0700, parents too) or raise ``error(message)`` naming it and the reason.

    A configured path under /proc, a read-only mount or a file in the way is a problem the operator must
    fix; it must reach them as offterm's error, not a bare ``OSError`` from deep inside start-up.
    """
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise error(f"{what} {path} cannot be created: {exc.strerror or type(exc).__name__}") from None
    if not path.is_dir():
        raise error(f"{what} {path} is not a directory")
