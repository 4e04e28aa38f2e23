"""Command line of the reader emulator (``python -m offterm.sim.reader_emulator``)."""

from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from offterm.plugins.readers import card_encryption

from .core import Identity
from .script import HELP, ScriptError, parse_presentation

ENV_CARD_KEY = "OFFTERM_EMULATOR_CARD_KEY"


EXIT_CODES = """
Exit codes:
  0  stopped cleanly (stdin closed, SIGTERM or SIGINT)
  2  usage error: a bad option, card key or presentation script
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offterm reader-emulator",
        description="An emulated card reader in its own process, speaking the offterm reader protocol.",
        epilog="Control lines on stdin:\n" + HELP + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--serial", action="store_true", help="serve on a new pseudo-terminal; prints its path first")
    mode.add_argument("--tcp", type=int, metavar="PORT", help="serve on 127.0.0.1:PORT (0: a free port)")
    mode.add_argument("--ble", action="store_true", help="serve as a BLE peripheral on a private fake BlueZ")
    parser.add_argument("--link", type=Path, help="(--serial) keep a symlink at PATH to the current pty")
    parser.add_argument("--serial-number", default=Identity.serial_number)
    parser.add_argument("--reader-type", default=Identity.reader_type)
    parser.add_argument("--firmware-version", default=Identity.firmware_version)
    parser.add_argument("--location-id", default=None)
    parser.add_argument(
        "--card-key",
        default=None,
        help=f"base key, 64 hex characters (or ${ENV_CARD_KEY}); default: the public test key",
    )
    parser.add_argument("--default-card", default="visa insert pin", help="what a customer does when nothing is queued")
    parser.add_argument("--wait", action="store_true", help="no default card: collections wait for a present line")
    parser.add_argument("--present", action="append", default=[], metavar="SCRIPT", help="queue a presentation")
    parser.add_argument("--quiet", action="store_true", help="print no event lines (control answers still)")
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="(Linux) end when the process that started this one ends"
    )
    parser.add_argument("--ble-name", default=None, help="(--ble) advertised name (default: OFFTERM-<serial>)")
    parser.add_argument("--ble-mtu", type=int, default=185, help="(--ble) ATT MTU the fake link negotiates")
    return parser


def _exit_with_parent() -> None:
    """Ask Linux to SIGTERM us when our parent dies (prctl PR_SET_PDEATHSIG), so a killed test run leaves nothing."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    from .app import EmulatorOptions, run_serial, run_tcp

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        _exit_with_parent()
    key_hex = args.card_key or os.environ.get(ENV_CARD_KEY) or card_encryption.TEST_BASE_KEY_HEX
    try:
        card_key = bytes.fromhex(key_hex)
    except ValueError:
        card_key = b""
    if len(card_key) != 32:
        parser.error("--card-key must be 64 hexadecimal characters")
    try:
        default = None if args.wait else parse_presentation(shlex.split(args.default_card))
        script = [parse_presentation(shlex.split(s)) for s in args.present]
    except ScriptError as exc:
        parser.error(str(exc))
    identity = Identity(args.serial_number, args.reader_type, args.firmware_version, args.location_id)
    options = EmulatorOptions(identity=identity, card_key=card_key, default=default, script=script, quiet=args.quiet)
    if args.serial:
        return run_serial(options, link=args.link)
    if args.tcp is not None:
        if not 0 <= args.tcp <= 65535:
            parser.error("--tcp PORT must be from 0 to 65535")
        return run_tcp(args.tcp, options)
    try:
        from .ble import run_ble
    except ImportError as exc:
        parser.error(f"--ble needs python-dbusmock and dbus-python (pip install 'offterm[test]'): {exc}")
    return run_ble(options, name=args.ble_name, mtu=args.ble_mtu)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
