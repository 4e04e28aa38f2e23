"""Open a real encrypted store the way a Terminal does: components picked by name."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from offterm.core.config import validate_options
from offterm.core.contracts import PaymentStore
from offterm.core.manager import PluginManager
from offterm.core.registrations import ComponentContext


def open_store(
    plugin_manager: PluginManager,
    data_dir: Path,
    *,
    backend: str = "sqlcipher",
    key_provider: str = "file",
    backend_options: Mapping[str, Any] | None = None,
    key_options: Mapping[str, Any] | None = None,
) -> PaymentStore:
    """Build ``backend`` and ``key_provider`` from the manager, open the store in ``data_dir``.

    Options are validated against the components' OptionSpecs exactly as the
    configuration would be.  The caller closes the store.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store_reg = plugin_manager.storage_backend(backend)
    key_reg = plugin_manager.storage_key_provider(key_provider)
    store_opts = validate_options(f"storage.{backend}", store_reg.options, dict(backend_options or {}), env={})
    key_opts = validate_options(f"storage_key.{key_provider}", key_reg.options, dict(key_options or {}), env={})
    store = store_reg.factory(ComponentContext(backend, store_opts, data_dir))
    keys = key_reg.factory(ComponentContext(key_provider, key_opts, data_dir))
    store.open(keys)
    return store
