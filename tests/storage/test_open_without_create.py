"""open(create=False): what inspection tools use, so a mistyped data_dir never becomes a new, empty store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from storage_testkit import make_store, new_payment

from offterm.core.contracts.storage import StorageKeyProvider
from offterm.core.errors import StoreNotFound
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


# -- open(create=False) ----------------------------------------------------------------------------------


def test_open_without_create_on_a_missing_store_names_it_and_writes_nothing(tmp_path: Path, key: bytes) -> None:
    typo = tmp_path / "typo" / "pos"
    keys = RecordingKeys(key)
    store = make_store(typo)
    with pytest.raises(StoreNotFound, match="no payment store at .*typo/pos/payments.db") as caught:
        store.open(keys, create=False)
    assert caught.value.code == "storage_not_found"
    assert not (tmp_path / "typo").exists(), "no directory is made"
    assert keys.asked == [], "no key is asked for (let alone created)"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StoreNotFound):
        make_store(empty).open(keys, create=False)
    assert list(empty.iterdir()) == [] and keys.asked == []


def test_open_without_create_opens_an_existing_store_and_makes_no_reserve(tmp_path: Path, key: bytes) -> None:
    first = _opened(tmp_path, key)
    stored = first.store(new_payment(1)).offline_id
    first.close()
    (tmp_path / "payments.db.reserve").unlink()
    keys = RecordingKeys(key)
    again = make_store(tmp_path)
    again.open(keys, create=False)
    try:
        assert again.get(stored).amount == 1001
        assert keys.asked == [False]
        assert not (tmp_path / "payments.db.reserve").exists(), "an inspection tool holds no disk-space reserve"
    finally:
        again.close()
