"""A card reader emulator that runs as its own process (``offterm reader-emulator``).

It speaks the offterm reader protocol over a pseudo-terminal (``--serial``),
a loopback TCP socket (``--tcp PORT``) or a fake BlueZ GATT service on a
private D-Bus bus (``--ble``), presents scripted Stripe test cards, and seals
card data for the processor so the POS never holds a card number.
"""

from __future__ import annotations

from pathlib import Path

from .app import EmulatorOptions
from .cli import main
from .core import Identity, ReaderEmulator
from .script import Presentation, ScriptError, parse_line, parse_presentation


def run_serial(options: EmulatorOptions | None = None, link: Path | None = None) -> int:
    from .app import run_serial as run

    return run(options, link)


def run_tcp(port: int, options: EmulatorOptions | None = None) -> int:
    from .app import run_tcp as run

    return run(port, options)


def run_ble(options: EmulatorOptions | None = None, name: str | None = None, mtu: int = 185) -> int:
    from .ble import run_ble as run

    return run(options, name=name, mtu=mtu)


__all__ = [
    "EmulatorOptions",
    "Identity",
    "Presentation",
    "ReaderEmulator",
    "ScriptError",
    "main",
    "parse_line",
    "parse_presentation",
    "run_ble",
    "run_serial",
    "run_tcp",
]
