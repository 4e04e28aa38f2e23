"""offterm's bundled plugins, one package per kind.

Each package's ``__all__`` names its public modules; a module whose name starts with ``_`` is
not API and may change without notice.
"""

__all__ = ["policies", "readers", "storage", "transport"]
