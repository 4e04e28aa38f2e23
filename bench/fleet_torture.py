"""The fleet torture: three lanes, the hub forwarder and PostgreSQL killed at random; device loss.

    python bench/fleet_torture.py --seed 15 --kills 300 --payments 5000 --max-minutes 30 --code HEAD \
        --json docs/data/fleet-<date>.json                        # the published run (docs/fleet.md, "Proof")
    python bench/fleet_torture.py --seed 7 --kills 15 --payments 150  # about a minute and a half

The harness is ``offterm.testing.torture.fleet`` (it reuses the crash torture's stations, POS
worker, weather and verdicts); this script is its command line.  It needs PostgreSQL's server
binaries (Debian's postgresql-15; ``$OFFTERM_PG_BINDIR`` elsewhere) and, as root, the user
``nobody`` to run the cluster.  Exit status 0 only when nothing acknowledged was lost, nothing
was charged twice and every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from torture import snapshot  # bench/torture.py: this folder is on sys.path for a script

from offterm.testing.torture import fleet

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT_ENV = "OFFTERM_TORTURE_CODE"


def log(line: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {line}", flush=True)


def code_under_test() -> str:
    if os.environ.get(SNAPSHOT_ENV):
        return f"commit {os.environ[SNAPSHOT_ENV][:12]} (git archive)"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "core", "plugins", "sim", "cli", "testing"],
        capture_output=True,
        text=True,
    )
    rev = head.stdout.strip() or "unknown"
    return f"working tree at {rev}" + (" with uncommitted changes to the library" if dirty.stdout.strip() else "")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kills", type=int, default=300, help="kills to reach: lanes, hub forwarder, PostgreSQL")
    parser.add_argument("--payments", type=int, default=5000, help="payments acknowledged to the apps to reach")
    parser.add_argument("--lanes", type=int, default=3)
    parser.add_argument(
        "--idempotency-window",
        type=float,
        default=None,
        help="[forwarding] idempotency_window of lanes and hub forwarder (default: the crash torture's 1 s)",
    )
    parser.add_argument(
        "--max-minutes", type=float, default=None, help="stop the torture short of the targets (says so)"
    )
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--workdir", metavar="DIR", help="keep the lanes here (default: a temporary directory)")
    parser.add_argument(
        "--code",
        default="worktree",
        metavar="REV",
        help="'worktree' (default), or a git revision to run against (git archive, immune to edits during the run)",
    )
    raw = list(argv if argv is not None else sys.argv[1:])
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped run still stops every process and the cluster
    args = parser.parse_args(raw)
    settings = fleet.FleetSettings(
        seed=args.seed,
        kills=args.kills,
        payments=args.payments,
        lanes=args.lanes,
        **({} if args.idempotency_window is None else {"idempotency_window": args.idempotency_window}),
        max_seconds=None if args.max_minutes is None else args.max_minutes * 60.0,
        log=log,
    )
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="offterm-fleet-"))
    command = "python bench/fleet_torture.py " + " ".join(
        a
        for i, a in enumerate(raw)
        if a not in ("--json", "--workdir") and (i == 0 or raw[i - 1] not in ("--json", "--workdir"))
    )
    workdir.mkdir(parents=True, exist_ok=True)
    if args.code != "worktree" and not os.environ.get(SNAPSHOT_ENV):
        snapshot(args.code, workdir, [*raw, *([] if args.workdir else ["--workdir", str(workdir)])], "fleet_torture.py")
    log(f"fleet torture: seed={args.seed} kills={args.kills} payments={args.payments} workdir={workdir}")
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    stats = fleet.run(settings, workdir).to_json()
    results = {
        "command": command,
        "started_at": started_at,
        "machine": f"{platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs",
        "code": code_under_test(),
        **stats,
    }
    print(fleet.summary(results), flush=True)
    for failure in (results["failures"] + results["lanes"]["failures"])[:50]:
        print("FAILURE", failure, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
