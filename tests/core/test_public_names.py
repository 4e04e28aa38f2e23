"""What offterm.core's public modules list in ``__all__`` exists: ``import *`` and the API reference rely on it."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import offterm.core
import offterm.core.contracts


def _public_modules() -> list[str]:
    names = [offterm.core.__name__, offterm.core.contracts.__name__]
    for package in (offterm.core, offterm.core.contracts):
        names += [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__) if m.name[0] != "_"]
    return sorted(set(names))


def test_the_public_modules_are_found() -> None:
    found = set(_public_modules())
    assert {"offterm.core.hookspecs", "offterm.core.manager", "offterm.core.contracts.storage"} <= found


@pytest.mark.parametrize("name", _public_modules())
def test_every_name_in_all_exists_and_star_import_works(name: str) -> None:
    module = importlib.import_module(name)
    missing = [item for item in getattr(module, "__all__", ()) if not hasattr(module, item)]
    assert missing == [], f"{name}.__all__ names what it does not have"
    exec(f"from {name} import *", {})  # noqa: S102 - the check is that it runs
