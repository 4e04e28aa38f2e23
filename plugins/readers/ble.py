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

from offterm.core.config import validate_options
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
    "settings_from",
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

#: what ``uuid.UUID`` reads: 32 hex digits, dashes anywhere, optionally braced or as a URN
_UUID = r"(?i)(?:urn:)?(?:uuid:)?\{?(?:-*[0-9a-f]){32}-*\}?"

OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "service_uuid",
        str,
        gatt.SERVICE_UUID,
        "GATT service UUID readers advertise.",
        pattern=_UUID,
        pattern_help="a 128-bit UUID",
    ),
    OptionSpec(
        "name_prefix",
        str,
        "OFFTERM",
        "Only readers whose advertised name starts with this ('' for any).",
        max_length=29,
    ),
    OptionSpec(
        "scan_timeout",
        (int, float),
        5.0,
        "Seconds to look for a reader when connecting or reconnecting.",
        exclusive_minimum=True,
        maximum=120,
    ),
    OptionSpec(
        "adapter",
        (str, type(None)),
        None,
        "Bluetooth adapter (Linux: hci0); default: the system's.",
        pattern=r"[^\W_]+",
        pattern_help="an adapter name such as hci0",
    ),
    *LINK_OPTIONS,
)


def settings_from(options: Mapping[str, Any], prefix: str = "reader.ble") -> BleSettings:
    """Settings from options the core validated against ``OPTIONS`` (every key present)."""
    return BleSettings(
        service_uuid=str(uuid.UUID(options["service_uuid"].lower())),
        name_prefix=options["name_prefix"],
        scan_timeout=float(options["scan_timeout"]),
        adapter=options["adapter"],
        link=link_settings(options, prefix),
    )


def parse_options(options: Mapping[str, Any] | None, prefix: str = "reader.ble") -> BleSettings:
    """Settings from a raw options table, validated by the core as the configuration is."""
    return settings_from(validate_options(prefix, OPTIONS, dict(options or {}), env={}), prefix)


def _factory(context: ComponentContext) -> BleReaderTransport:
    from .ble_link import BleReaderTransport

    return BleReaderTransport(settings_from(context.options, prefix=f"reader.{context.name}"))


@hookimpl
def offterm_reader_transports() -> Iterator[ReaderTransportRegistration]:
    yield ReaderTransportRegistration(
        name=TRANSPORT_NAME,
        factory=_factory,
        description="Card readers over Bluetooth LE (bleak) speaking the offterm reader protocol.",
        options=OPTIONS,
    )
