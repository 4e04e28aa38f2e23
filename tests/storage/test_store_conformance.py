"""Both bundled stores pass the conformance kit that third-party backends use (offterm.testing)."""

from __future__ import annotations

from pathlib import Path

import pytest
from storage_testkit import make_store

from offterm.core.config import validate_options
from offterm.core.contracts.storage import PaymentStore
from offterm.core.errors import ConfigError
from offterm.core.registrations import ComponentContext
from offterm.plugins.storage import memory
from offterm.plugins.storage.keys import StaticKeyProvider
from offterm.plugins.storage.memory import MemoryStore
from offterm.testing import StoreConformance

KEY = bytes(range(32))


class TestSqlCipherStore(StoreConformance):
    shared_between_instances = True  # two instances on one file: as two processes

    def open_store(self, directory: Path, *, create: bool = True) -> PaymentStore:
        store = make_store(directory)
        store.open(StaticKeyProvider(KEY), create=create)
        return store


class TestMemoryStore(StoreConformance):
    def open_store(self, directory: Path, *, create: bool = True) -> PaymentStore:
        store = MemoryStore(i_understand_payments_are_lost_on_exit=True)
        store.open(StaticKeyProvider(KEY), create=create)
        return store

    def reopen(self, store: PaymentStore, directory: Path) -> PaymentStore:
        store.close()  # the data lives in the object: opening it again is its restart
        store.open(StaticKeyProvider(KEY))
        return store


def test_the_memory_store_refuses_to_open_without_the_explicit_opt_in(tmp_path: Path) -> None:
    [reg] = list(memory.offterm_storage_backends())
    assert reg.name == "memory"
    store = reg.factory(ComponentContext("memory", validate_options("storage.memory", reg.options, {}), tmp_path))
    with pytest.raises(ConfigError, match="storage.memory.i_understand_payments_are_lost_on_exit") as caught:
        store.open(StaticKeyProvider(KEY))
    assert caught.value.key == "storage.memory.i_understand_payments_are_lost_on_exit"
    with pytest.raises(ConfigError):
        MemoryStore().open(StaticKeyProvider(KEY))
    opted_in = reg.factory(
        ComponentContext("memory", validate_options("storage.memory", reg.options, {memory.OPT_IN: True}), tmp_path)
    )
    opted_in.open(StaticKeyProvider(KEY))
    assert opted_in.summary().pending_count == 0


def test_the_memory_store_is_chosen_by_name_like_any_backend(tmp_path: Path) -> None:
    from offterm.core.manager import create_plugin_manager
    from offterm.testing import open_store

    pm = create_plugin_manager(autoload=False)
    with pytest.raises(ConfigError, match=memory.OPT_IN):
        open_store(pm, tmp_path, backend="memory")
    store = open_store(pm, tmp_path, backend="memory", backend_options={memory.OPT_IN: True})
    try:
        assert isinstance(store, MemoryStore)
    finally:
        store.close()
