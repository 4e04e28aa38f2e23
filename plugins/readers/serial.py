"""USB-serial card readers (pyserial), speaking the offterm reader protocol.

Discovery probes the configured ``port`` (a device path or any pyserial URL
such as ``socket://127.0.0.1:7000``) or, without one, every USB serial port
``serial.tools.list_ports`` finds (filtered by ``vid``/``pid``): a port is a
reader if it answers the protocol's Hello.  A lost link is reopened with
backoff; if the device re-enumerated under another name, the USB ports are
searched again for the same serial number.

This is the hook module and stays light: pyserial is imported by the factory,
through :mod:`.serial_link` (which holds the implementation).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from offterm.core.config import validate_options
from offterm.core.errors import ConfigError
from offterm.core.hookspecs import hookimpl
from offterm.core.registrations import ComponentContext, OptionSpec, ReaderTransportRegistration

from .protocol.host import LINK_OPTIONS, LinkSettings, link_settings

if TYPE_CHECKING:
    from .serial_link import SerialLink, SerialReaderTransport

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

TRANSPORT_NAME = "serial"

#: Names re-exported from ``.serial_link`` on first access (it imports pyserial);
#: ``serial`` is the pyserial package itself, as this module used to expose it.
_LAZY = frozenset({"SerialLink", "SerialReaderTransport", "serial"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(".serial_link", __package__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class SerialSettings:
    port: str | None = None
    vid: int | None = None
    pid: int | None = None
    baudrate: int = 115200
    link: LinkSettings = LinkSettings()


# -- configuration -----------------------------------------------------------------------------

OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "port",
        (str, type(None)),
        None,
        "Serial port of the reader: a device path (/dev/ttyACM0, COM3) or a pyserial URL "
        "(socket://127.0.0.1:7000). Unset: discover USB serial ports.",
        pattern=r"(?s).*\S.*",
        pattern_help="a device path or a pyserial URL",
    ),
    OptionSpec(
        "vid",
        (int, str, type(None)),
        None,
        "Only discover USB ports with this vendor id (1027 or '0x0403'), 0 to 0xFFFF.",
        maximum=0xFFFF,
    ),
    OptionSpec("pid", (int, str, type(None)), None, "Only discover USB ports with this product id.", maximum=0xFFFF),
    OptionSpec(
        "baudrate", int, 115200, "Line speed (ignored by pseudo-terminals and sockets).", minimum=50, maximum=4_000_000
    ),
    *LINK_OPTIONS,
)


def _usb_id(value: int | str | None, key: str) -> int | None:
    """An id given as text (``'0x0403'``) is read here, so its range too; the core bounds an integer."""
    if value is None or isinstance(value, int):
        return value
    try:
        number = int(value, 0)
    except ValueError:
        raise ConfigError(key, "must be a USB id: an integer or a hex string like '0x0403'", value) from None
    if not 0 <= number <= 0xFFFF:
        raise ConfigError(key, "must be a USB id from 0 to 0xFFFF", value)
    return number


def settings_from(options: Mapping[str, Any], prefix: str = "reader.serial") -> SerialSettings:
    """Settings from options the core validated against ``OPTIONS`` (every key present)."""
    port = options["port"]
    return SerialSettings(
        port=port.strip() if port is not None else None,
        vid=_usb_id(options["vid"], f"{prefix}.vid"),
        pid=_usb_id(options["pid"], f"{prefix}.pid"),
        baudrate=options["baudrate"],
        link=link_settings(options, prefix),
    )


def parse_options(options: Mapping[str, Any] | None, prefix: str = "reader.serial") -> SerialSettings:
    """Settings from a raw options table, validated by the core as the configuration is."""
    return settings_from(validate_options(prefix, OPTIONS, dict(options or {}), env={}), prefix)


def _factory(context: ComponentContext) -> SerialReaderTransport:
    from .serial_link import SerialReaderTransport

    return SerialReaderTransport(settings_from(context.options, prefix=f"reader.{context.name}"))


@hookimpl
def offterm_reader_transports() -> Iterator[ReaderTransportRegistration]:
    yield ReaderTransportRegistration(
        name=TRANSPORT_NAME,
        factory=_factory,
        description="Card readers on USB serial ports (or pyserial URLs) speaking the offterm reader protocol.",
        options=OPTIONS,
    )
