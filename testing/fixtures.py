"""The pytest plugin (entry point ``pytest11``: ``offterm``): fixtures for plugin authors.

Loaded by pytest in every project where offterm is installed, so importing
it stays cheap: the simulators and the store are imported by the fixtures
that need them.  Disable with ``-p no:offterm``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from offterm.core.contracts import PaymentStore
    from offterm.sim.processor import SimHandle

    from .plugins import ScratchPluginManager
    from .reader import ReaderEmulatorProcess
    from .recorder import HookRecorder


@pytest.fixture
def offterm_plugin_manager() -> Iterator[ScratchPluginManager]:
    """A fresh, strict plugin manager with the bundled plugins and no entry-point autoload.

    Register your plugin with ``offterm_plugin_manager.add(plugin)`` (or
    ``with offterm_plugin_manager.temporary(plugin):``); pass the manager to
    ``Terminal.from_config(config, plugin_manager=offterm_plugin_manager)``.
    """
    from .plugins import make_plugin_manager

    manager = make_plugin_manager()
    yield manager
    manager.remove_added()


@pytest.fixture
def offterm_hook_recorder(offterm_plugin_manager: ScratchPluginManager) -> HookRecorder:
    """Records every event hook call made through ``offterm_plugin_manager``."""
    from .recorder import HookRecorder

    recorder = HookRecorder()
    offterm_plugin_manager.add(recorder, "hook-recorder")
    return recorder


@pytest.fixture
def processor_simulator() -> Iterator[SimHandle]:
    """A processor simulator serving on 127.0.0.1 (a free port) for one test, with fresh books."""
    from offterm.sim.processor import running_simulator

    with running_simulator() as sim:
        yield sim


@pytest.fixture
def reader_emulator() -> Iterator[ReaderEmulatorProcess]:
    """The reader emulator in its own process on a pseudo-terminal (``.address`` is its path).

    Drive it with ``.present("visa tap")``, ``.disconnect(2)``, ``.status()``.
    """
    from .reader import ReaderEmulatorProcess

    if sys.platform == "win32":  # pragma: no cover - no pseudo-terminals
        mode = "tcp"
    else:
        mode = "serial"
    with ReaderEmulatorProcess(mode) as emulator:
        yield emulator


@pytest.fixture
def offterm_store(tmp_path: Path, offterm_plugin_manager: ScratchPluginManager) -> Iterator[PaymentStore]:
    """An open SQLCipher store (``sqlcipher`` backend, ``file`` key provider) under ``tmp_path``."""
    from .store import open_store

    store = open_store(offterm_plugin_manager, tmp_path / "offterm-store")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def offterm_config(tmp_path: Path, processor_simulator: SimHandle) -> dict[str, Any]:
    """A Terminal configuration dict wired to ``processor_simulator``, data in ``tmp_path``.

    Simulated reader, SQLCipher store with a file key, ``http`` token provider
    and ``stripe`` transport; offline payments enabled; short timers; plugin
    autoload off.  Edit the dict before building the Terminal.
    """
    from .config import terminal_config

    return terminal_config(processor_simulator, tmp_path / "offterm")
