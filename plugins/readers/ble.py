"""Bluetooth LE card readers (bleak), speaking the offterm reader protocol over GATT.

Discovery scans for the reader service UUID (and an optional name prefix);
a reader's serial number comes from its service data.  A connection writes
frames to the RX characteristic and receives them as TX notifications, both
cut to the negotiated MTU (see ``protocol.ble``).  A dropped link is
reconnected with backoff.  At start-up, links BlueZ still holds for readers
of this service (left by a process that crashed) are disconnected, so the
reader advertises again and starts a clean session.

This is the hook module and stays light: bleak is imported by the factory,
through :mod:`.ble_link` (which holds the implementation).
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from offterm.core.errors import ConfigError
from offterm.core.hookspecs import hookimpl
from offterm.core.registrations import ComponentContext, OptionSpec, ReaderTransportRegistration

from .protocol import ble as gatt
from .protocol.host import LINK_OPTIONS, LinkSettings, link_settings

if TYPE_CHECKING:
    from .ble_link import BleLink, BleReaderTransport

__all__ = [
    "OPTIONS",
    "TRANSPORT_NAME",
    "BleLink",
    "BleReaderTransport",
    "BleSettings",
    "offterm_reader_transports",
    "parse_options",
]

TRANSPORT_NAME = "ble"

#: Names re-exported from ``.ble_link`` on first access (it imports bleak).
_LAZY = frozenset({"BleLink", "BleReaderTransport"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(".ble_link", __package__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class BleSettings:
    service_uuid: str = gatt.SERVICE_UUID
    name_prefix: str = "OFFTERM"
    scan_timeout: float = 5.0
    adapter: str | None = None
    link: LinkSettings = LinkSettings()

    @property
    def bluez(self) -> Any:
        """BlueZ-only arguments of bleak's client, scanner and adapter (all three take just ``adapter``)."""
        return {"adapter": self.adapter} if self.adapter else {}


# -- configuration -----------------------------------------------------------------------------

OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("service_uuid", str, gatt.SERVICE_UUID, "GATT service UUID readers advertise."),
    OptionSpec("name_prefix", str, "OFFTERM", "Only readers whose advertised name starts with this ('' for any)."),
    OptionSpec(
        "scan_timeout", (int, float), 5.0, "Seconds to look for a reader when connecting or reconnecting.", maximum=600
    ),
    OptionSpec("adapter", (str, type(None)), None, "Bluetooth adapter (Linux: hci0); default: the system's."),
    *LINK_OPTIONS,
)


def parse_options(options: Mapping[str, Any] | None, prefix: str = "reader.ble") -> BleSettings:
    """Check every option; errors name the key."""
    opts = dict(options or {})
    unknown = set(opts) - {spec.key for spec in OPTIONS}
    if unknown:
        raise ConfigError(f"{prefix}.{sorted(unknown)[0]}", "unknown option")
    uuid_text = str(opts.get("service_uuid", gatt.SERVICE_UUID)).lower()
    try:
        uuid_text = str(uuid.UUID(uuid_text))
    except ValueError:
        raise ConfigError(f"{prefix}.service_uuid", "must be a 128-bit UUID", opts.get("service_uuid")) from None
    name_prefix = opts.get("name_prefix", "OFFTERM")
    if not isinstance(name_prefix, str) or len(name_prefix) > 29:
        raise ConfigError(f"{prefix}.name_prefix", "must be a string of at most 29 characters", name_prefix)
    scan_timeout = float(opts.get("scan_timeout", 5.0))
    if not 0 < scan_timeout <= 120:
        raise ConfigError(f"{prefix}.scan_timeout", "must be more than 0 and at most 120 seconds", scan_timeout)
    adapter = opts.get("adapter")
    if adapter is not None and (not isinstance(adapter, str) or not adapter.isalnum()):
        raise ConfigError(f"{prefix}.adapter", "must be an adapter name such as hci0", adapter)
    return BleSettings(
        service_uuid=uuid_text,
        name_prefix=name_prefix,
        scan_timeout=scan_timeout,
        adapter=adapter,
        link=link_settings(opts, prefix),
    )


def _factory(context: ComponentContext) -> BleReaderTransport:
    from .ble_link import BleReaderTransport

    return BleReaderTransport(parse_options(context.options, prefix=f"reader.{context.name}"))


@hookimpl
def offterm_reader_transports() -> Iterator[ReaderTransportRegistration]:
    yield ReaderTransportRegistration(
        name=TRANSPORT_NAME,
        factory=_factory,
        description="Card readers over Bluetooth LE (bleak) speaking the offterm reader protocol.",
        options=OPTIONS,
    )
