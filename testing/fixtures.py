"""The pytest plugin (entry point ``pytest11``: ``offterm``): fixtures for plugin authors.

Loaded by pytest in every project where offterm is installed, so importing
it stays cheap: the simulators and the store are imported by the fixtures
that need them.  Disable with ``-p no:offterm``.

Fixtures (each for one test, all stopped or closed after it):

* ``offterm_plugin_manager`` - a fresh, strict plugin manager with the bundled plugins.
* ``offterm_hook_recorder`` - a ``HookRecorder`` registered in ``offterm_plugin_manager``.
* ``processor_simulator`` - a processor simulator on 127.0.0.1; options through
  ``@pytest.mark.offterm_simulator(**options)``.
* ``offterm_network`` - a network fault proxy (``offterm.sim.netproxy.FaultProxy``) in
  front of ``processor_simulator``; options through ``@pytest.mark.offterm_network(**options)``.
* ``offterm_data_dir`` - the Terminal's data directory, ``tmp_path / "offterm"`` (not created).
* ``reader_emulator`` - the reader emulator in its own process, on a pseudo-terminal.
* ``offterm_store`` - an open SQLCipher store with a file key in ``tmp_path``.
* ``offterm_config`` - a Terminal configuration dict wired to ``processor_simulator``.

Markers (registered here, so ``--strict-markers`` accepts them):

* ``offterm_simulator(**options)`` - keyword arguments for
  ``offterm.sim.processor.running_simulator``: ``faults={...}``, ``session_ttl=...``,
  ``subprocess=True`` (the simulator in its own process), any ``SimConfig`` field.
* ``offterm_network(**options)`` - keyword arguments for ``FaultProxy``: ``mode="down"``
  (start cut), ``delay=...``, ``drip_bytes=...``, ``drip_interval=...``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from offterm.core.contracts import PaymentStore
    from offterm.sim.netproxy import FaultProxy
    from offterm.sim.processor import SimHandle

    from .plugins import ScratchPluginManager
    from .reader import ReaderEmulatorProcess
    from .recorder import HookRecorder


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "offterm_simulator(**options): options for the processor_simulator fixture "
        "(offterm.sim.processor.running_simulator's keyword arguments)",
    )
    config.addinivalue_line(
        "markers",
        "offterm_network(**options): options for the offterm_network fixture (FaultProxy's keyword arguments)",
    )


def _marker_options(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    """Keyword arguments of the closest ``@pytest.mark.<name>(...)`` (test, then class, then module)."""
    marker = request.node.get_closest_marker(name)
    if marker is None:
        return {}
    if marker.args:
        raise TypeError(f"@pytest.mark.{name} takes keyword arguments only")
    return dict(marker.kwargs)


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
def processor_simulator(request: pytest.FixtureRequest) -> Iterator[SimHandle]:
    """A processor simulator serving on 127.0.0.1 (a free port) for one test, with fresh books.

    ``@pytest.mark.offterm_simulator(**options)`` passes ``options`` to
    ``offterm.sim.processor.running_simulator``: ``faults={"error_rates": {503: 0.2}}``,
    ``session_ttl=0.4``, ``subprocess=True``, or any other ``SimConfig`` field.
    Faults can also be changed during the test: ``processor_simulator.set_faults(...)``.
    """
    from offterm.sim.processor import running_simulator

    with running_simulator(**_marker_options(request, "offterm_simulator")) as sim:
        yield sim


@pytest.fixture
def offterm_network(request: pytest.FixtureRequest, processor_simulator: SimHandle) -> Iterator[FaultProxy]:
    """The POS's network: a fault proxy (``offterm.sim.netproxy.FaultProxy``) in front of ``processor_simulator``.

    Point the Terminal at ``offterm_network.url`` (``.terminal_config()`` does it)
    and cut or degrade the link with ``.set_mode("down")``.
    ``@pytest.mark.offterm_network(**options)`` passes ``options`` to ``FaultProxy``:
    ``mode="down"`` starts with the network cut; ``delay``, ``drip_bytes``,
    ``drip_interval`` tune the slow modes.
    """
    from offterm.sim.netproxy import FaultProxy

    proxy = FaultProxy(processor_simulator.port, **_marker_options(request, "offterm_network")).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def offterm_data_dir(tmp_path: Path) -> Path:
    """The Terminal's data directory for one test: ``tmp_path / "offterm"``, not yet created.

    ``offterm_config`` uses it; the Terminal and ``offterm.testing.open_store`` create it.
    """
    return tmp_path / "offterm"


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
def offterm_config(offterm_data_dir: Path, processor_simulator: SimHandle) -> dict[str, Any]:
    """A Terminal configuration dict wired to ``processor_simulator``, data in ``offterm_data_dir``.

    Simulated reader, SQLCipher store with a file key, ``http`` token provider
    and ``stripe`` transport; offline payments enabled; short timers; plugin
    autoload off.  Edit the dict before building the Terminal.
    """
    from .config import terminal_config

    return terminal_config(processor_simulator, offterm_data_dir)
