"""The configuration as plugins see it: one TOML file (or a dict), validated before anything is built.

A component's options live in ``[<kind>.<name>]`` (``[storage.sqlcipher]``), a listener plugin's in
``[plugins.<name>]``; each table is checked against the ``OptionSpec``s its registration declares
(:func:`validate_options`), every error names the key, and a ``secret`` option may come from
``OFFTERM_<KIND>_<NAME>_<KEY>`` instead.  The loader and the core's own options (``CORE_OPTIONS``,
docs/configuration.md) live in ``offterm.core._engine.config``.
"""

from ._engine.config import CORE_OPTIONS, Config, load_config, validate_options

__all__ = ["CORE_OPTIONS", "Config", "load_config", "validate_options"]
