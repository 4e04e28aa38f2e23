"""Start ``offterm serve`` in tests and benchmarks: a real process on 127.0.0.1, port 0.

    with ServiceProcess.start(config_dict, tmp_path) as svc:
        stripe.api_base, stripe.api_key = svc.url, svc.key
        ...
        svc.kill()              # SIGKILL, as a crash
        svc = svc.restart()     # same configuration and data directory

``config`` is a Terminal configuration dict (as ``Terminal.from_config`` takes) with an optional
``serve`` table; it is written as TOML, so the service reads it exactly as in production.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .keys import read_key


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(config: dict[str, Any]) -> str:
    """A configuration dict as TOML: sections, their sub-tables, scalars, lists and inline tables."""
    lines: list[str] = []

    def table(name: str, data: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        nested = {k: v for k, v in data.items() if isinstance(v, dict) and not k.startswith("max_")}
        for key, value in data.items():
            if key not in nested:
                lines.append(f"{json.dumps(key)} = {_toml_value(value)}")
        lines.append("")
        for key, value in nested.items():
            table(f"{name}.{json.dumps(key)}", value)

    for section, data in config.items():
        table(section, data)
    return "\n".join(lines)


class ServiceProcess:
    """One ``offterm serve`` process; ``url`` and ``key`` once it said it is ready."""

    def __init__(self, config_path: Path, proc: subprocess.Popen[str], ready: dict[str, Any], log_path: Path) -> None:
        self.config_path = config_path
        self.proc = proc
        self.ready = ready
        self.url: str = ready["url"]
        self.port: int = ready["port"]
        self.key = read_key(Path(ready["key_file"]))
        self.log_path = log_path

    @classmethod
    def start(
        cls, config: dict[str, Any] | Path, directory: Path, *, timeout: float = 30.0, extra_args: tuple[str, ...] = ()
    ) -> ServiceProcess:
        if isinstance(config, Path):
            path = config
        else:
            config = {**config, "serve": {"port": 0, **config.get("serve", {})}}
            path = directory / "offterm-serve.toml"
            path.write_text(to_toml(config))
        log_path = directory / f"offterm-serve-{time.monotonic_ns()}.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    sys.executable,
                    "-m",
                    "offterm.cli.main",
                    "--config",
                    str(path),
                    "--log-level",
                    "info",
                    "serve",
                    *extra_args,
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if selector.select(timeout=0.2):
                line = proc.stdout.readline()
                if line:
                    try:
                        ready = json.loads(line)
                    except ValueError:
                        continue
                    if ready.get("event") == "serve_ready":
                        return cls(path, proc, ready, log_path)
                    continue
            if proc.poll() is not None:
                break
        proc.kill()
        proc.wait()
        raise RuntimeError(f"offterm serve did not start (exit {proc.returncode}):\n{log_path.read_text()[-4000:]}")

    def restart(self, timeout: float = 30.0) -> ServiceProcess:
        """Start again on the same configuration (a new port unless [serve] port is fixed)."""
        if self.proc.poll() is None:
            self.stop()
        return ServiceProcess.start(self.config_path, self.config_path.parent, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: the process dies mid-whatever, as in a crash."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
