"""The Terminal as offterm's own tools open it: only an existing store, and components of the right type."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offterm.core import Terminal, hookimpl
from offterm.core.errors import ComponentWrongType, StoreNotFound
from offterm.core.manager import create_plugin_manager
from offterm.core.registrations import ForwardingTransportRegistration, StorageBackendRegistration


def _config(tmp_path: Path, data_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    return {
        "terminal": {"data_dir": str(data_dir), "offline_enabled": True},
        "plugins": {"autoload": False},
        "tokens": {"providers": ["static"], "static": {"secret": "pst_test"}},
        "forwarding": {"stripe": {"api_base": "http://127.0.0.1:9"}},
        **sections,
    }


def test_create_store_false_creates_nothing_and_raises_store_not_found(tmp_path: Path) -> None:
    typo = tmp_path / "typo" / "pos"
    terminal = Terminal.from_config(_config(tmp_path, typo), background=False, create_store=False)
    with pytest.raises(StoreNotFound, match=str(typo / "payments.db")):
        asyncio.run(terminal.open())
    assert not (tmp_path / "typo").exists()


def test_create_store_false_opens_an_existing_store(tmp_path: Path) -> None:
    pos = tmp_path / "pos"

    async def create_then_inspect() -> int:
        async with Terminal.from_config(_config(tmp_path, pos), background=False):
            pass
        (pos / "payments.db.reserve").unlink()
        inspect = Terminal.from_config(_config(tmp_path, pos), background=False, create_store=False)
        async with inspect:
            return (await inspect.refresh_offline_status()).sdk.offline_payments_count

    assert asyncio.run(create_then_inspect()) == 0
    assert not (pos / "payments.db.reserve").exists(), "an inspecting Terminal holds no space reserve"


class WrongTypes:
    """A third-party plugin whose factories return things that are not the contract of their kind."""

    @hookimpl
    def offterm_storage_backends(self) -> Iterator[StorageBackendRegistration]:
        yield StorageBackendRegistration(name="acme", factory=lambda ctx: {"not": "a store"})

    @hookimpl
    def offterm_forwarding_transports(self) -> Iterator[ForwardingTransportRegistration]:
        yield ForwardingTransportRegistration(name="acme-pay", factory=lambda ctx: object())


@pytest.mark.parametrize(
    ("section", "component", "expected"),
    [
        ({"storage": {"backend": "acme"}}, "acme", "PaymentStore"),
        ({"forwarding": {"transport": "acme-pay"}}, "acme-pay", "ForwardingTransport"),
    ],
)
def test_a_factory_of_the_wrong_type_is_a_plugin_error_naming_plugin_component_and_type(
    tmp_path: Path, section: dict[str, Any], component: str, expected: str
) -> None:
    pm = create_plugin_manager(autoload=False, plugins={"acme-plugin": WrongTypes()})
    config = _config(tmp_path, tmp_path / "pos")
    for key, value in section.items():
        config[key] = {**config.get(key, {}), **value}
    terminal = Terminal.from_config(config, plugin_manager=pm, background=False)
    with pytest.raises(ComponentWrongType) as caught:
        asyncio.run(terminal.open())
    assert caught.value.code == "component_wrong_type"
    assert caught.value.details == {"plugin": "acme-plugin", "component": component, "expected": expected}
    assert "acme-plugin" in str(caught.value) and expected in str(caught.value)
