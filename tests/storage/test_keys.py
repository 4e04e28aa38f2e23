"""Key providers: key file, environment variable, OS keyring; and how the store uses them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import keyring
import keyring.backend
import pytest
from keyring.backends import fail
from storage_testkit import make_store, new_payment

from offterm.core.config import validate_options
from offterm.core.errors import ConfigError, StorageKeyUnavailable, WrongStorageKey
from offterm.core.registrations import ComponentContext
from offterm.plugins.storage import keys as keys_mod
from offterm.plugins.storage.keys import EnvKeyProvider, FileKeyProvider, KeyringKeyProvider, StaticKeyProvider


def providers(tmp_path: Path, **options: dict) -> dict:
    regs = {r.name: r for r in keys_mod.offterm_storage_key_providers()}
    return {
        name: reg.factory(
            ComponentContext(
                name, validate_options(f"storage_key.{name}", reg.options, options.get(name, {}), env={}), tmp_path
            )
        )
        for name, reg in regs.items()
    }


def test_the_hook_registers_file_env_and_keyring_with_documented_defaults(tmp_path: Path) -> None:
    regs = {r.name: r for r in keys_mod.offterm_storage_key_providers()}
    assert set(regs) == {"file", "env", "keyring"}
    assert {o.key: o.default for o in regs["env"].options} == {"variable": "OFFTERM_STORAGE_KEY"}
    built = providers(tmp_path)
    assert built["file"].path == tmp_path / "storage.key"
    assert built["env"].variable == "OFFTERM_STORAGE_KEY"
    with pytest.raises(ConfigError, match="variable"):
        providers(tmp_path, env={"variable": "not a name"})


# -- file ----------------------------------------------------------------------------


def test_key_file_is_created_0600_on_first_run_and_reused(tmp_path: Path) -> None:
    provider = FileKeyProvider(tmp_path / "keys" / "storage.key")
    assert provider.get_key("s", create=False) is None
    key = provider.get_key("s", create=True)
    assert isinstance(key, bytes) and len(key) == 32
    mode = stat.S_IMODE((tmp_path / "keys" / "storage.key").stat().st_mode)
    assert mode == 0o600
    assert provider.get_key("s", create=False) == key
    assert provider.get_key("s", create=True) == key
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["storage.key"], "no temp file left behind"


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "storage.key"
    path.write_text(os.urandom(32).hex())
    path.chmod(0o644)
    with pytest.raises(StorageKeyUnavailable, match="chmod 600"):
        FileKeyProvider(path).get_key("s", create=True)


def test_key_file_with_garbage_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "storage.key"
    path.write_text("secret-but-not-hex-" * 4)
    path.chmod(0o600)
    with pytest.raises(StorageKeyUnavailable) as err:
        FileKeyProvider(path).get_key("s", create=True)
    assert "secret-but-not-hex" not in str(err.value)
    assert path.read_text().startswith("secret"), "an unreadable key file is never replaced"


def test_concurrent_first_runs_agree_on_one_key(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "storage.key"
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: FileKeyProvider(path).get_key("s", create=True), range(16)))
    assert len(set(got)) == 1


# -- env -----------------------------------------------------------------------------


def test_env_provider_reads_hex_and_never_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    provider = EnvKeyProvider("OFFTERM_TEST_KEY")
    monkeypatch.delenv("OFFTERM_TEST_KEY", raising=False)
    assert provider.get_key("s", create=True) is None
    monkeypatch.setenv("OFFTERM_TEST_KEY", key.hex().upper())
    assert provider.get_key("s", create=False) == key


def test_env_provider_rejects_a_bad_value_naming_the_variable_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFTERM_TEST_KEY", "abcd1234")
    with pytest.raises(StorageKeyUnavailable, match="OFFTERM_TEST_KEY") as err:
        EnvKeyProvider("OFFTERM_TEST_KEY").get_key("s", create=False)
    assert "abcd1234" not in str(err.value)


# -- keyring -------------------------------------------------------------------------


class MemoryKeyring(keyring.backend.KeyringBackend):
    """A real keyring backend (the keyring package's API) that keeps entries in memory."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        del self.entries[(service, username)]


class BrokenKeyring(MemoryKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        raise keyring.errors.KeyringLocked("the keychain is locked")


@pytest.fixture
def keyring_backend():
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


def test_keyring_provider_creates_once_and_reads_back_per_store(keyring_backend) -> None:
    provider = KeyringKeyProvider("offterm-test")
    assert provider.get_key("/data/a.db", create=False) is None
    key_a = provider.get_key("/data/a.db", create=True)
    key_b = provider.get_key("/data/b.db", create=True)
    assert key_a != key_b and len(key_a) == 32
    assert provider.get_key("/data/a.db", create=False) == key_a
    assert keyring_backend.entries[("offterm-test", "/data/a.db")] == key_a.hex()


def test_keyring_without_a_backend_names_why() -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        with pytest.raises(StorageKeyUnavailable, match="no usable OS keyring.*fail.Keyring"):
            KeyringKeyProvider("offterm-test").get_key("s", create=True)
    finally:
        keyring.set_keyring(previous)


def test_keyring_errors_become_storage_key_unavailable() -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(BrokenKeyring())
    try:
        with pytest.raises(StorageKeyUnavailable, match="KeyringLocked"):
            KeyringKeyProvider("offterm-test").get_key("s", create=False)
    finally:
        keyring.set_keyring(previous)


def test_store_opens_with_a_keyring_key_across_restarts(tmp_path: Path, keyring_backend) -> None:
    provider = KeyringKeyProvider("offterm-test")
    store = make_store(tmp_path)
    store.open(provider)
    pid = store.store(new_payment()).offline_id
    store.close()
    again = make_store(tmp_path)
    again.open(provider)
    assert again.get(pid).offline_id == pid
    again.close()


# -- the store and its key ---------------------------------------------------------


def test_store_creates_the_key_file_on_first_run_and_needs_it_afterwards(tmp_path: Path) -> None:
    key_path = tmp_path / "storage.key"
    store = make_store(tmp_path)
    store.open(FileKeyProvider(key_path))
    pid = store.store(new_payment()).offline_id
    store.close()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600

    key_path.rename(tmp_path / "elsewhere.key")
    lost = make_store(tmp_path)
    with pytest.raises(StorageKeyUnavailable, match="restore the key"):
        lost.open(FileKeyProvider(key_path))
    assert not key_path.exists(), "a missing key is never re-created for an existing database"

    found = make_store(tmp_path)
    found.open(FileKeyProvider(tmp_path / "elsewhere.key"))
    assert found.get(pid).offline_id == pid
    found.close()


def test_env_provider_without_the_variable_cannot_create_a_store(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("OFFTERM_TEST_KEY", raising=False)
    with pytest.raises(StorageKeyUnavailable, match="cannot create"):
        make_store(tmp_path).open(EnvKeyProvider("OFFTERM_TEST_KEY"))
    assert not (tmp_path / "payments.db").exists()


def test_a_provider_returning_a_short_key_is_refused(tmp_path: Path) -> None:
    class Short(StaticKeyProvider):
        def get_key(self, store_id: str, *, create: bool) -> bytes | None:
            return b"short"

    with pytest.raises(StorageKeyUnavailable, match="32 bytes"):
        make_store(tmp_path).open(Short(os.urandom(32)))


def test_wrong_key_is_a_distinct_error_and_changes_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.open(StaticKeyProvider(os.urandom(32)))
    store.store(new_payment())
    store.close()
    before = (tmp_path / "payments.db").read_bytes()
    with pytest.raises(WrongStorageKey):
        make_store(tmp_path).open(StaticKeyProvider(os.urandom(32)))
    assert (tmp_path / "payments.db").read_bytes() == before


def test_static_provider_repr_hides_the_key() -> None:
    key = os.urandom(32)
    assert key.hex() not in repr(StaticKeyProvider(key))
