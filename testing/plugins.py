"""A fresh, strict plugin manager for tests, with plugins that come and go per test."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Mapping

from offterm.core.manager import BUNDLED_PLUGINS, PluginManager, create_plugin_manager

_counter = itertools.count(1)


class ScratchPluginManager(PluginManager):
    """offterm's ``PluginManager`` plus helpers to add and remove plugins during a test.

    Everything the real manager does works unchanged (selection by name,
    ``emit``, strict loading); pass it to ``Terminal.from_config(...,
    plugin_manager=...)``.
    """

    added: list[str]

    @classmethod
    def adopt(cls, base: PluginManager) -> ScratchPluginManager:
        manager = cls.__new__(cls)
        manager.__dict__.update(base.__dict__)
        manager.added = []
        return manager

    def add(self, plugin: object, name: str | None = None) -> str:
        """Register ``plugin`` (a module or an object with ``@hookimpl`` methods); returns its name.

        Misspelled hooks raise ``PluginError``, as for any plugin.
        """
        if name is None:
            label = getattr(plugin, "__name__", type(plugin).__name__)
            name = f"test-{label}-{next(_counter)}".lower()
        self.register(plugin, name, source="test")
        self.added.append(name)
        return name

    def remove(self, name: str) -> None:
        """Unregister a plugin by name."""
        self.pm.unregister(name=name)
        self.info.pop(name, None)
        if name in self.added:
            self.added.remove(name)

    @contextlib.contextmanager
    def temporary(self, plugin: object, name: str | None = None) -> Iterator[str]:
        """``with pm.temporary(MyPlugin()) as name:`` - registered only inside the block."""
        added = self.add(plugin, name)
        try:
            yield added
        finally:
            self.remove(added)

    def remove_added(self) -> None:
        """Unregister every plugin added through this helper."""
        for name in list(reversed(self.added)):
            self.remove(name)


def make_plugin_manager(
    plugins: Mapping[str, object] | None = None,
    *,
    autoload: bool = False,
    strict: bool = True,
    disabled: Iterable[str] = (),
    bundled: Iterable[tuple[str, str]] = BUNDLED_PLUGINS,
) -> ScratchPluginManager:
    """A fresh manager: bundled plugins, no entry points (unless ``autoload``), strict.

    The ``OFFTERM_*`` environment switches are ignored so a developer's shell
    cannot change what a test sees.
    """
    base = create_plugin_manager(
        disabled=disabled, autoload=autoload, strict=strict, plugins=plugins, env={}, bundled=bundled
    )
    return ScratchPluginManager.adopt(base)
