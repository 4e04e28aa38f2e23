"""Private directories for payments and keys: a helper for plugins, not part of the contract.

``make_private_dir`` creates a directory 0700, durably, or raises the caller's typed error naming it;
``sync_dir`` fsyncs a directory's entries.  Both live in ``offterm.core._engine.paths``.
"""

from ._engine.paths import make_private_dir, sync_dir

__all__ = ["make_private_dir", "sync_dir"]
