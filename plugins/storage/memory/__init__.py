"""The in-memory reference store: the whole storage contract in plain Python.

Configured under ``[storage.memory]``.  Payments live in this process only and are
**lost when it exits**, so the store refuses to open unless
``i_understand_payments_are_lost_on_exit = true``: it is for tests, demos and as the
model a new backend copies (``_store.py``), never for real payments.
"""

from __future__ import annotations

from collections.abc import Iterator

from offterm.core.hookspecs import hookimpl
from offterm.core.registrations import ComponentContext, OptionSpec, StorageBackendRegistration

from ._store import OPT_IN, MemoryStore

__all__ = ["OPTIONS", "OPT_IN", "MemoryStore", "build_store", "offterm_storage_backends"]

OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        OPT_IN,
        bool,
        False,
        "Must be true for the store to open: payments are kept in memory only and LOST when the process "
        "exits (tests and demos only).",
    ),
)


def build_store(ctx: ComponentContext) -> MemoryStore:
    """Factory: options the core validated against ``OPTIONS`` -> an unopened store."""
    return MemoryStore(**{OPT_IN: ctx.options[OPT_IN]})


@hookimpl
def offterm_storage_backends() -> Iterator[StorageBackendRegistration]:
    yield StorageBackendRegistration(
        name="memory",
        factory=build_store,
        description="In-memory reference store; payments are LOST on exit (tests, demos; needs an explicit opt-in).",
        options=OPTIONS,
    )
