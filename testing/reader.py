"""The reader emulator in its own process, driven through its control channel.

``python -m offterm.sim.reader_emulator`` prints the address to connect to
(a pseudo-terminal path, or a ``socket://`` URL), then one JSON object per
line: ``{"event": ...}`` for what the reader did and ``{"ok": ...}`` /
``{"error": ...}`` answering each control line written to its stdin.
"""

from __future__ import annotations

import collections
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any


class EmulatorError(RuntimeError):
    """The emulator refused a control line, died, or did not answer in time."""


class ReaderEmulatorProcess:
    """A running emulator: ``address`` to connect a reader transport to, and control methods."""

    def __init__(
        self,
        mode: str = "serial",
        *,
        args: Sequence[str] = (),
        start_timeout: float = 15.0,
    ) -> None:
        if mode not in ("serial", "tcp"):
            raise ValueError("mode must be 'serial' or 'tcp'")
        cmd = [sys.executable, "-m", "offterm.sim.reader_emulator"]
        cmd += ["--serial"] if mode == "serial" else ["--tcp", "0"]
        cmd += list(args)
        self.mode = mode
        self.process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.events: list[dict[str, Any]] = []
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._address: queue.Queue[str] = queue.Queue()
        self._cond = threading.Condition()
        self._lock = threading.Lock()
        assert self.process.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stdout,), name="reader-emulator-out", daemon=True
        )
        self._reader.start()
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        assert self.process.stderr is not None
        self._drain = threading.Thread(
            target=self._stderr.extend, args=(self.process.stderr,), name="reader-emulator-err", daemon=True
        )
        self._drain.start()
        try:
            address = self._address.get(timeout=start_timeout)
        except queue.Empty:
            address = ""
        if not address:
            self.stop()
            raise EmulatorError(f"reader emulator did not start: {self._stderr_tail()}")
        self.address = address

    def _read(self, stream: IO[str]) -> None:
        first = True
        for line in stream:
            line = line.strip()
            if not line:
                continue
            if first:
                first = False
                self._address.put(line)
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if "event" in obj:
                with self._cond:
                    self.events.append(obj)
                    self._cond.notify_all()
            else:
                self._answers.put(obj)
        if first:  # ended before announcing an address: wake the starter
            self._address.put("")

    def _stderr_tail(self) -> str:
        self._drain.join(timeout=2)
        text = "".join(self._stderr)[-2000:].strip()
        return text or f"exit status {self.process.returncode}"

    def command(self, line: str, timeout: float = 10.0) -> dict[str, Any]:
        """Send one control line and return the emulator's answer; an ``error`` answer raises."""
        with self._lock:
            if self.process.poll() is not None or self.process.stdin is None:
                raise EmulatorError("the reader emulator is not running")
            self.process.stdin.write(line.rstrip("\n") + "\n")
            self.process.stdin.flush()
            try:
                answer = self._answers.get(timeout=timeout)
            except queue.Empty:
                raise EmulatorError(f"no answer to {line.split()[0]!r} within {timeout}s") from None
        if "error" in answer:
            raise EmulatorError(str(answer["error"]))
        return answer

    def present(self, script: str) -> dict[str, Any]:
        """Queue what the next customer does: ``"visa tap"``, ``"visa_de insert pin"``..."""
        return self.command(f"present {script}")

    def disconnect(self, seconds: float = 1.0) -> dict[str, Any]:
        """Drop the link now; it comes back after ``seconds``."""
        return self.command(f"disconnect {seconds}")

    def status(self) -> dict[str, Any]:
        return self.command("status")

    def wait_event(self, name: str, timeout: float = 10.0, after: int = 0) -> dict[str, Any]:
        """The first ``{"event": name}`` line at index ``after`` or later, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for obj in self.events[after:]:
                    if obj.get("event") == name:
                        return obj
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [e.get("event") for e in self.events]
                    raise EmulatorError(f"no {name!r} event within {timeout}s (seen: {seen})")
                self._cond.wait(remaining)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Ask it to quit, then terminate, then kill; always reaps the process."""
        proc = self.process
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            except (OSError, ValueError):
                pass
            try:
                proc.wait(timeout=timeout / 2)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout / 2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._reader.join(timeout=2)
        self._drain.join(timeout=2)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass

    def __enter__(self) -> ReaderEmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
