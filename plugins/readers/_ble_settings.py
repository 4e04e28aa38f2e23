"""Settings of the Bluetooth LE reader transport: its options and what they build.

Shared by the hook module (:mod:`.ble`) and the implementation (:mod:`._ble_link`),
so neither imports the other for them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from offterm.core.config import validate_options
from offterm.core.registrations import OptionSpec

from .protocol import ble as gatt
from .protocol.host import LINK_OPTIONS, LinkSettings, link_settings

TRANSPORT_NAME = "ble"


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
