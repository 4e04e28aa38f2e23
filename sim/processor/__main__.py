"""``python -m offterm.sim.processor``: serve a simulator (tests start it this way as a child process)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .config import FaultConfig
from .server import config_from_json, serve


def _rate(text: str) -> tuple[int, float]:
    status, _, rate = text.partition("=")
    return int(status), float(rate)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m offterm.sim.processor", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4242)
    parser.add_argument("--config-json", help="SimConfig as JSON, or '-' to read it from stdin")
    parser.add_argument("--secret-key")
    parser.add_argument("--error-rate", action="append", type=_rate, default=[], metavar="STATUS=RATE")
    for name in ("reset-rate", "drop-rate", "commit-drop-rate", "commit-delay-rate", "commit-delay", "latency"):
        parser.add_argument(f"--{name}", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    data: dict[str, Any] = {}
    if args.config_json:
        text = sys.stdin.read() if args.config_json == "-" else open(args.config_json, encoding="utf-8").read()
        data = json.loads(text)
    if args.secret_key:
        data["secret_key"] = args.secret_key
    faults = dict(data.get("faults") or {})
    if args.error_rate:
        faults["error_rates"] = {str(s): r for s, r in args.error_rate}
    for name in ("reset_rate", "drop_rate", "commit_drop_rate", "commit_delay_rate", "commit_delay", "latency", "seed"):
        value = getattr(args, name)
        if value is not None:
            faults[name] = value
    data["faults"] = FaultConfig.from_json(faults).to_json()
    serve(args.host, args.port, log_level=args.log_level, config=config_from_json(data))


if __name__ == "__main__":
    main()
