"""USB-serial card readers (pyserial), speaking the offterm reader protocol.

Discovery probes the configured ``port`` (a device path or any pyserial URL
such as ``socket://127.0.0.1:7000``) or, without one, every USB serial port
``serial.tools.list_ports`` finds (filtered by ``vid``/``pid``): a port is a
reader if it answers the protocol's Hello.  A lost link is reopened with
backoff; if the device re-enumerated under another name, the USB ports are
searched again for the same serial number.

This is the hook module and stays light: pyserial is imported by the factory,
through :mod:`._serial_link` (which holds the implementation).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from offterm.core.hookspecs import hookimpl
from offterm.core.registrations import ComponentContext, ReaderTransportRegistration

from ._serial_settings import OPTIONS, TRANSPORT_NAME, SerialSettings, parse_options, settings_from

if TYPE_CHECKING:
    from ._serial_link import SerialLink, SerialReaderTransport

__all__ = [
    "OPTIONS",
    "TRANSPORT_NAME",
    "SerialLink",
    "SerialReaderTransport",
    "SerialSettings",
    "offterm_reader_transports",
    "parse_options",
    "settings_from",
]

#: Names re-exported from ``._serial_link`` on first access (it imports pyserial);
#: ``serial`` is the pyserial package itself, as this module used to expose it.
_LAZY = frozenset({"SerialLink", "SerialReaderTransport", "serial"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module("._serial_link", __package__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _factory(context: ComponentContext) -> SerialReaderTransport:
    from ._serial_link import SerialReaderTransport

    return SerialReaderTransport(settings_from(context.options, prefix=f"reader.{context.name}"))


@hookimpl
def offterm_reader_transports() -> Iterator[ReaderTransportRegistration]:
    yield ReaderTransportRegistration(
        name=TRANSPORT_NAME,
        factory=_factory,
        description="Card readers on USB serial ports (or pyserial URLs) speaking the offterm reader protocol.",
        options=OPTIONS,
    )
