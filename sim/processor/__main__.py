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


def _status_rate(text: str) -> tuple[str, float]:
    status, _, rate = text.partition("=")
    return status, float(rate)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m offterm.sim.processor", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4242)
    parser.add_argument("--config-json", help="SimConfig as JSON, or '-' to read it from stdin")
    parser.add_argument("--secret-key")
    parser.add_argument("--error-rate", action="append", type=_rate, default=[], metavar="STATUS=RATE")
    parser.add_argument(
        "--confirm-status",
        action="append",
        type=_status_rate,
        default=[],
        metavar="STATUS=RATE",
        help="answer confirms with a non-final status: processing=RATE or requires_action=RATE",
    )
    fault_flags = ("reset-rate", "drop-rate", "commit-drop-rate", "commit-delay-rate", "commit-delay", "latency")
    for name in (*fault_flags, "processing-for", "idempotency-ttl", "search-delay"):
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
    for name in ("idempotency_ttl", "search_delay"):
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    fault_data = dict(data.get("faults") or {})
    if args.error_rate:
        fault_data["error_rates"] = {str(s): r for s, r in args.error_rate}
    if args.confirm_status:
        fault_data["confirm_status"] = dict(args.confirm_status)
    for name in (*(f.replace("-", "_") for f in fault_flags), "processing_for", "seed"):
        value = getattr(args, name)
        if value is not None:
            fault_data[name] = value
    data["faults"] = FaultConfig.from_json(fault_data).to_json()
    serve(args.host, args.port, log_level=args.log_level, config=config_from_json(data))


if __name__ == "__main__":
    main()
