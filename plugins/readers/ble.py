"""Bluetooth LE card readers (bleak), speaking the offterm reader protocol over GATT.

Discovery scans for the reader service UUID (and an optional name prefix);
a reader's serial number comes from its service data.  A connection writes
frames to the RX characteristic and receives them as TX notifications, both
cut to the negotiated MTU (see ``protocol.ble``).  A dropped link is
reconnected with backoff.  At start-up, links BlueZ still holds for readers
of this service (left by a process that crashed) are disconnected, so the
reader advertises again and starts a clean session.

This is the hook module and stays light: bleak is imported by the factory,
through :mod:`._ble_link` (which holds the implementation).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from offterm.core.hookspecs import hookimpl
from offterm.core.registrations import ComponentContext, ReaderTransportRegistration

from ._ble_settings import OPTIONS, TRANSPORT_NAME, BleSettings, parse_options, settings_from

if TYPE_CHECKING:
    from ._ble_link import BleLink, BleReaderTransport

__all__ = [
    "OPTIONS",
    "TRANSPORT_NAME",
    "BleLink",
    "BleReaderTransport",
    "BleSettings",
    "offterm_reader_transports",
    "parse_options",
    "settings_from",
]

#: Names re-exported from ``._ble_link`` on first access (it imports bleak).
_LAZY = frozenset({"BleLink", "BleReaderTransport"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module("._ble_link", __package__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _factory(context: ComponentContext) -> BleReaderTransport:
    from ._ble_link import BleReaderTransport

    return BleReaderTransport(settings_from(context.options, prefix=f"reader.{context.name}"))


@hookimpl
def offterm_reader_transports() -> Iterator[ReaderTransportRegistration]:
    yield ReaderTransportRegistration(
        name=TRANSPORT_NAME,
        factory=_factory,
        description="Card readers over Bluetooth LE (bleak) speaking the offterm reader protocol.",
        options=OPTIONS,
    )
