"""Fixtures for the storage tests: real SQLCipher files under tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from storage_testkit import make_store

from offterm.plugins.storage.keys import StaticKeyProvider
from offterm.plugins.storage.sqlcipher import SqlCipherStore


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def keys(key: bytes) -> StaticKeyProvider:
    return StaticKeyProvider(key)


@pytest.fixture
def open_store(tmp_path: Path, keys: StaticKeyProvider) -> Iterator[Callable[..., SqlCipherStore]]:
    """Open stores under tmp_path (same key by default); all closed at teardown."""
    opened: list[SqlCipherStore] = []

    def factory(directory: Path | None = None, provider: Any = None, **options: Any) -> SqlCipherStore:
        store = make_store(directory or tmp_path, **options)
        store.open(provider or keys)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[..., SqlCipherStore]) -> SqlCipherStore:
    return open_store()
