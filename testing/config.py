"""A Terminal configuration wired to a processor simulator, tuned for fast tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class SimulatorLike(Protocol):
    """What the configuration needs from a simulator handle (``offterm.sim.processor.SimHandle``)."""

    @property
    def url(self) -> str: ...

    @property
    def backend_url(self) -> str: ...


def terminal_config(simulator: SimulatorLike, data_dir: Path | str, **sections: dict[str, Any]) -> dict[str, Any]:
    """Config dict: simulated reader, SQLCipher store with a file key in ``data_dir``,
    the ``http`` token provider and the ``stripe`` transport pointed at ``simulator``.

    Offline payments are enabled; timers are short so tests run quickly; plugin
    autoload is off and loading is strict.  ``sections`` are merged over the
    result one level deep (``forwarding={"interval": 5}``).
    """
    config: dict[str, Any] = {
        "terminal": {
            "data_dir": str(data_dir),
            "offline_enabled": True,
            "offline_timeout": 2.0,
            "probe_min_interval": 0.05,
            "probe_max_interval": 0.5,
        },
        "plugins": {"autoload": False, "strict": True},
        "reader": {"transport": "simulated"},
        "storage": {"backend": "sqlcipher", "key_provider": "file"},
        "tokens": {"providers": ["http"], "http": {"url": simulator.backend_url, "timeout": 5.0}},
        "forwarding": {
            "transport": "stripe",
            "policy": "default",
            "interval": 0.5,
            "close_timeout": 5.0,
            "stripe": {"api_base": simulator.url, "timeout": 5.0, "connect_timeout": 2.0, "probe_timeout": 1.0},
        },
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config
