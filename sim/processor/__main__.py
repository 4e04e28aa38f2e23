"""``python -m offterm.sim.processor`` (and ``offterm sim``): serve a simulated Stripe account on loopback.

Tests start it this way as a child process; ``offterm sim`` runs this same
command line, so both take the same options.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from .config import FaultConfig
from .server import DEFAULT_PORT, PortInUseError, config_from_json, serve

#: Exit status when the port is taken (error code ``sim_port_in_use``) or an option is wrong.
EXIT_USAGE = 2

EPILOG = """\
The first line on stdout is "offterm-sim listening on http://HOST:PORT" once it
accepts connections.  Without --secret-key (or a secret_key in --config-json) a
random sk_test_... key is generated and printed to stderr: give it to your backend.

Exit codes:
  0  stopped (Ctrl-C or SIGTERM)
  2  usage error: a bad option or fault setting, or the port is in use
     (printed as "error sim_port_in_use: ..."; choose another --port, or 0 for any free one)
"""

PORT_HELP = (
    f"TCP port (default {DEFAULT_PORT}; 0 picks a free one). The default is none of the ports "
    "Stripe tools use: 12111/12112 belong to stripe-mock, and 4242 to Stripe's sample servers "
    "(what `stripe listen --forward-to localhost:4242` targets), so the simulator can run beside them."
)


def _rate(text: str) -> tuple[int, float]:
    status, _, rate = text.partition("=")
    return int(status), float(rate)


def _status_rate(text: str) -> tuple[str, float]:
    status, _, rate = text.partition("=")
    return status, float(rate)


def build_parser(prog: str = "python -m offterm.sim.processor") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the processor simulator: a Stripe-shaped API, the device API, "
        "a connection-token backend and a ledger, on loopback.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=PORT_HELP)
    parser.add_argument("--config-json", help="SimConfig as JSON, or '-' to read it from stdin")
    parser.add_argument("--secret-key", help="the account's secret key, sk_test_... (default: a random one, printed)")
    parser.add_argument(
        "--error-rate",
        action="append",
        type=_rate,
        default=[],
        metavar="STATUS=RATE",
        help="answer STATUS (500, 502, 503, 429) at RATE before running a request (repeatable)",
    )
    parser.add_argument(
        "--confirm-status",
        action="append",
        type=_status_rate,
        default=[],
        metavar="STATUS=RATE",
        help="answer confirms with a non-final status: processing=RATE or requires_action=RATE",
    )
    helps = {
        "reset-rate": "share of requests whose connection is reset (RST) before they run",
        "drop-rate": "share of requests closed without an answer before they run",
        "commit-drop-rate": "share of requests that run (take effect) and are never answered",
        "commit-delay-rate": "share of requests that run and are answered only after --commit-delay",
        "commit-delay": "seconds a delayed answer waits (default 30)",
        "latency": "seconds added to every faultable request",
        "processing-for": "seconds until a 'processing' confirm settles (default 1)",
        "idempotency-ttl": "seconds an idempotency key is remembered (default 86400)",
        "search-delay": "seconds before a new PaymentIntent is visible to search (default 0)",
    }
    for name, text in helps.items():
        parser.add_argument(f"--{name}", type=float, help=text)
    parser.add_argument("--seed", type=int, help="seed for the fault randomness")
    parser.add_argument("--log-level", default="warning", help="uvicorn's log level (default warning)")
    return parser


FAULT_FLAGS = ("reset_rate", "drop_rate", "commit_drop_rate", "commit_delay_rate", "commit_delay", "latency")


def main(argv: list[str] | None = None, prog: str = "python -m offterm.sim.processor") -> int:
    parser = build_parser(prog)
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
    for name in (*FAULT_FLAGS, "processing_for", "seed"):
        value = getattr(args, name)
        if value is not None:
            fault_data[name] = value
    try:
        data["faults"] = FaultConfig.from_json(fault_data).to_json()
        config = config_from_json(data)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    banner = None
    if "secret_key" not in data:
        banner = f"offterm-sim secret key (generated; --secret-key sets one): {config.secret_key}"
    # uvicorn stops gracefully on SIGINT/SIGTERM and then re-raises the signal: end with status 0
    # instead of dying by it (or a KeyboardInterrupt traceback).
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        serve(args.host, args.port, log_level=args.log_level, banner=banner, config=config)
    except PortInUseError as exc:
        print(f"{prog}: error {exc.code}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
