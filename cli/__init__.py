"""The ``offterm`` command (``offterm.cli.main:main``).

Modules with a leading underscore are its internals; ``python -m offterm.cli.configdocs``
regenerates docs/configuration.md.
"""

__all__: list[str] = []
