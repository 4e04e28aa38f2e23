"""The emulator process: one endpoint, one emulated reader, a control channel on stdin/stdout.

stdout: the first line is the address to connect to (the pty path, the
``socket://`` URL, or the D-Bus address of the fake BlueZ); every later line
is one JSON object: ``{"event": ...}`` for what the reader did, ``{"ok": ...}``
or ``{"error": ...}`` answering a control line.  stdin: control lines (see
``script``); the process keeps running after stdin ends, until ``quit``,
SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from offterm.plugins.readers import card_encryption

from .core import Identity, ReaderEmulator
from .endpoints import PtyEndpoint, TcpEndpoint
from .script import HELP, Presentation, ScriptError, parse_line


class Endpoint(Protocol):
    async def start(self) -> str: ...

    def send(self, data: bytes) -> None: ...

    def drop(self, seconds: float) -> None: ...

    async def close(self) -> None: ...


@dataclass
class EmulatorOptions:
    identity: Identity = field(default_factory=Identity)
    card_key: bytes = bytes.fromhex(card_encryption.TEST_BASE_KEY_HEX)
    default: Presentation | None = None
    script: list[Presentation] = field(default_factory=list)
    #: No event lines on stdout (benchmarks); control answers are still printed.
    quiet: bool = False


class Console:
    """Writes the address line, then JSON lines; thread-safe."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            self._out.write(text + "\n")
            self._out.flush()

    def json(self, obj: dict[str, Any]) -> None:
        self.line(json.dumps(obj, separators=(",", ":"), default=str))


class EmulatorApp:
    """Wires an endpoint to the emulator core and runs the control channel."""

    def __init__(
        self,
        make_endpoint: Callable[[Callable[[bytes], None], Callable[[], None], Any], Endpoint],
        options: EmulatorOptions,
        out: TextIO | None = None,
        control: TextIO | None = None,
    ) -> None:
        self.options = options
        self.console = Console(out or sys.stdout)
        self._control = control if control is not None else sys.stdin
        self._make_endpoint = make_endpoint
        self._stop: asyncio.Event | None = None

    def _notify(self, name: str, fields: dict[str, Any]) -> None:
        if not self.options.quiet:
            self.console.json({"event": name, **fields})

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        endpoint: Endpoint | None = None

        def send(data: bytes) -> None:
            assert endpoint is not None
            endpoint.send(data)

        def drop(seconds: float) -> None:
            assert endpoint is not None
            endpoint.drop(seconds)

        emulator = ReaderEmulator(
            send,
            loop,
            identity=self.options.identity,
            card_key=self.options.card_key,
            default=self.options.default,
            drop_link=drop,
            on_event=None if self.options.quiet else self._notify,
        )
        for presentation in self.options.script:
            emulator.present(presentation)
        endpoint = self._make_endpoint(emulator.receive, emulator.link_reset, self._notify)
        address = await endpoint.start()
        self.console.line(address)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._start_control(loop, emulator, endpoint)
        try:
            await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await endpoint.close()
        return 0

    def _start_control(self, loop: asyncio.AbstractEventLoop, emulator: ReaderEmulator, endpoint: Endpoint) -> None:
        def handle(line: str) -> None:
            try:
                command = parse_line(line)
            except ScriptError as exc:
                self.console.json({"error": str(exc)})
                return
            if command is None:
                return
            if command.name == "present":
                assert command.presentation is not None
                emulator.present(command.presentation)
                self.console.json({"ok": "present", "next": command.presentation.describe()})
            elif command.name == "disconnect":
                endpoint.drop(command.seconds)
                self.console.json({"ok": "disconnect", "seconds": command.seconds})
            elif command.name == "noise":
                endpoint.send(os.urandom(command.count))
                self.console.json({"ok": "noise", "bytes": command.count})
            elif command.name == "clear":
                emulator.queue.clear()
                self.console.json({"ok": "clear"})
            elif command.name == "status":
                self.console.json({"ok": "status", **emulator.status()})
            elif command.name == "help":
                self.console.json({"ok": "help", "text": HELP})
            elif command.name == "quit":
                self.console.json({"ok": "quit"})
                assert self._stop is not None
                self._stop.set()

        def reader() -> None:
            for line in self._control:
                loop.call_soon_threadsafe(handle, line)

        threading.Thread(target=reader, name="emulator-control", daemon=True).start()


def run_serial(options: EmulatorOptions | None = None, link: Path | None = None) -> int:
    """Serve the reader on a new pseudo-terminal; prints its path first."""
    options = options or EmulatorOptions()
    app = EmulatorApp(lambda rx, reset, notify: PtyEndpoint(rx, reset, notify, link), options)
    return asyncio.run(app.run())


def run_tcp(port: int, options: EmulatorOptions | None = None) -> int:
    """Serve the reader's byte stream on 127.0.0.1:PORT (0: any free port); prints ``socket://...`` first."""
    options = options or EmulatorOptions()
    app = EmulatorApp(lambda rx, reset, notify: TcpEndpoint(rx, reset, notify, port), options)
    return asyncio.run(app.run())
