"""Fixtures: the reader emulator as a real separate process, driven through its control channel."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


class EmulatorProcess:
    """``python -m offterm.sim.reader_emulator`` with helpers to script it and watch its events."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "offterm.sim.reader_emulator", "--exit-with-parent", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().strip()
        if not first:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"emulator did not start: {err[-2000:]}")
        self.address = first
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put({"raw": line})

    def _next(self, deadline: float) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("emulator said nothing in time")
        item = self.lines.get(timeout=remaining)
        self.seen.append(item)
        return item

    def command(self, line: str, timeout: float = 5.0) -> dict[str, Any]:
        """Send one control line and return its ok/error answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            item = self._next(deadline)
            if "ok" in item or "error" in item:
                return item

    def wait_event(self, name: str, timeout: float = 5.0) -> dict[str, Any]:
        for item in self.seen:
            if item.get("event") == name and not item.get("_consumed"):
                item["_consumed"] = True
                return item
        deadline = time.monotonic() + timeout
        while True:
            item = self._next(deadline)
            if item.get("event") == name:
                item["_consumed"] = True
                return item

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def spawn_emulator() -> Iterator[Callable[..., EmulatorProcess]]:
    """Start emulator processes with the given arguments; all are stopped after the test."""
    started: list[EmulatorProcess] = []

    def spawn(*args: str) -> EmulatorProcess:
        emu = EmulatorProcess(*args)
        started.append(emu)
        return emu

    try:
        yield spawn
    finally:
        for emu in started:
            emu.stop()


@pytest.fixture
def serial_emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """An emulator on a pty, reachable through a stable symlink (``address`` is that symlink)."""
    link = tmp_path / "reader"
    emu = EmulatorProcess("--serial", "--link", str(link), "--wait")
    emu.pty_path = emu.address  # type: ignore[attr-defined]
    emu.address = str(link)
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def tcp_emulator() -> Iterator[EmulatorProcess]:
    emu = EmulatorProcess("--tcp", "0", "--wait")
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def ble_emulator(monkeypatch: pytest.MonkeyPatch, spawn_emulator: Callable[..., EmulatorProcess]) -> EmulatorProcess:
    """An emulated BLE reader behind a fake BlueZ on a private system bus, which bleak here talks to."""
    emu = spawn_emulator("--ble", "--wait")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", emu.address)
    return emu
