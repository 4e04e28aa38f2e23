"""offterm.testing: pytest fixtures and helpers for people who write offterm plugins.

Installing offterm registers the fixtures with pytest (entry point
``pytest11``: ``offterm``), so a plugin's test suite can simply ask for them:

* ``offterm_plugin_manager`` - a fresh, strict :class:`ScratchPluginManager`
  with the bundled plugins; ``.add(plugin)`` / ``.temporary(plugin)`` register
  yours for one test.
* ``offterm_hook_recorder`` - a :class:`HookRecorder` registered in it: every
  event hook call, with its arguments.
* ``processor_simulator`` - a running processor simulator
  (``offterm.sim.processor.SimHandle``) on 127.0.0.1; options through
  ``@pytest.mark.offterm_simulator(**options)``.
* ``offterm_network`` - a network fault proxy (``offterm.sim.netproxy.FaultProxy``)
  in front of it; options through ``@pytest.mark.offterm_network(**options)``.
* ``offterm_data_dir`` - the Terminal's data directory, ``tmp_path / "offterm"``.
* ``reader_emulator`` - the reader emulator in its own process
  (:class:`ReaderEmulatorProcess`), on a pseudo-terminal.
* ``offterm_store`` - an open SQLCipher store with a file key in ``tmp_path``.
* ``offterm_config`` - a Terminal configuration dict wired to the simulator,
  data in ``offterm_data_dir``.

``offterm.testing.fixtures`` documents each fixture's parameters.

Everything here is also usable without pytest.  Unlike ``offterm.core``,
this package may import the simulators.
"""

from __future__ import annotations

from .config import terminal_config
from .plugins import ScratchPluginManager, make_plugin_manager
from .reader import EmulatorError, ReaderEmulatorProcess
from .recorder import EVENT_HOOKS, HookCall, HookRecorder
from .store import open_store

__all__ = [
    "EVENT_HOOKS",
    "EmulatorError",
    "HookCall",
    "HookRecorder",
    "ReaderEmulatorProcess",
    "ScratchPluginManager",
    "make_plugin_manager",
    "open_store",
    "terminal_config",
]

# Conformance kits (pytest test classes to subclass).  Without pytest the rest of this package still works.
try:
    import pytest

    # Their checks report with pytest's assertion introspection, wherever offterm is installed.
    pytest.register_assert_rewrite("offterm.testing.reader_kit", "offterm.testing.transport_kit")
    from .reader_kit import CardPresenter, LinkAction, ReaderTransportConformance, TransportSource
    from .transport_kit import ForwardingTransportConformance, TransportFactory
except ModuleNotFoundError as exc:  # pragma: no cover - pytest absent
    if exc.name != "pytest":
        raise
else:
    __all__ += [
        "CardPresenter",
        "ForwardingTransportConformance",
        "LinkAction",
        "ReaderTransportConformance",
        "TransportFactory",
        "TransportSource",
    ]

# The storage conformance kit (a pytest test class to subclass); without pytest the rest still works.
try:
    import pytest

    pytest.register_assert_rewrite("offterm.testing.store_kit")  # its failures show the values compared
    from .store_kit import StoreConformance
except ModuleNotFoundError as exc:  # pragma: no cover - pytest absent
    if exc.name != "pytest":
        raise
else:
    __all__ += ["StoreConformance"]
