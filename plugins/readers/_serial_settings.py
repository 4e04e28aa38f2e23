"""Settings of the USB-serial reader transport: its options and what they build.

Shared by the hook module (:mod:`.serial`) and the implementation (:mod:`._serial_link`),
so neither imports the other for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from offterm.core.config import validate_options
from offterm.core.errors import ConfigError
from offterm.core.registrations import OptionSpec

from .protocol.host import LINK_OPTIONS, LinkSettings, link_settings

TRANSPORT_NAME = "serial"


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
