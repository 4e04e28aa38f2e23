"""The torture run: crashes, network faults, full disks and hostile input, with figures anyone can reproduce.

    python bench/torture.py --seed 7 --quick                                 # about two minutes
    python bench/torture.py --seed 20261126 --kills 1000 --payments 10000 --code HEAD \
        --write-docs docs/reliability.md                                     # the published run (~45 min)
    python bench/torture.py --from-json results.json --write-docs docs/reliability.md   # re-render saved figures

Sections (``--sections``, default all):

* ``crash``   POS processes SIGKILLed again and again under mixed network and
  processor faults (offterm.testing.torture.crash), every station drained and
  checked against the simulator's ledger;
* ``network`` one payment set per fault mode of the proxy and the simulator;
* ``disk``    a full filesystem, a read-only one, the database removed underneath;
* ``input``   hostile processor answers, malformed configuration values, tampered
  database bytes, a wrong key, fuzzed reader frames.

The harness is the installed package ``offterm.testing.torture``; this script is
its command line.  Everything random is drawn from ``--seed``.  The exit status is 0 only when the
crash run lost and doubled nothing, every database opened, and every other
case passed or failed only through a known bug (an xfail test in
tests/torture/test_found_bugs.py), which the summary lists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from offterm.testing.torture import crash as torture_crash
from offterm.testing.torture import report as torture_report

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT_ENV = "OFFTERM_TORTURE_CODE"
#: What a code snapshot holds: the installed namespace's folders (the harness is offterm.testing.torture) and
#: this script; tests/storage and tests/torture too, where revisions from before the harness moved kept it.
SNAPSHOT_PATHS = ("core", "plugins", "sim", "cli", "testing", "tests/storage", "tests/torture", "bench")

SECTIONS = ("crash", "network", "disk", "input")


def log(line: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {line}", flush=True)


def run_crash(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    settings = torture_crash.Settings(
        seed=args.seed,
        kills=args.kills,
        payments=args.payments,
        lives_per_station=8 if args.quick else 25,
        max_seconds=None if args.max_minutes is None else args.max_minutes * 60.0,
        log=log,
    )
    stats = torture_crash.run(settings, workdir / "crash")
    return stats.to_json()


def run_section(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    if name == "crash":
        return run_crash(args, workdir)
    from offterm.testing.torture import battery

    return battery.run(name, seed=args.seed, quick=args.quick, workdir=workdir / name, log=log)


def snapshot(rev: str, workdir: Path, argv: list[str], script: str = "torture.py") -> None:
    """Re-run this command against ``git archive <rev>`` of the library, so edits made to the working tree
    during a long run cannot change the code under test half-way."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", rev + "^{commit}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    code = workdir / "code"
    (code / "offterm").mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, *SNAPSHOT_PATHS], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    for name in ("core", "plugins", "sim", "cli", "testing"):
        (code / name).rename(code / "offterm" / name)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code) + os.pathsep + env.get("PYTHONPATH", "")
    env[SNAPSHOT_ENV] = commit
    log(f"running against commit {commit[:12]} (git archive into {code})")
    # The harness too (this script, the POS worker, the batteries) comes from the snapshot.
    os.execve(sys.executable, [sys.executable, str(code / "bench" / script), *argv], env)


def _public(argv: list[str]) -> list[str]:
    """The arguments that decide the results (not where scratch files or the JSON went)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--workdir", "--json", "--from-json"):
            skip = True
        elif not arg.startswith(("--workdir=", "--json=", "--from-json=")):
            out.append(arg)
    return out


def code_under_test() -> str:
    if os.environ.get(SNAPSHOT_ENV):
        return f"commit {os.environ[SNAPSHOT_ENV][:12]} (git archive)"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True)
    rev = head.stdout.strip() or "unknown"
    return f"working tree at {rev}" + (" with uncommitted changes" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kills", type=int, default=None, help="SIGKILLs to reach (default 1000; 20 with --quick)")
    parser.add_argument("--payments", type=int, default=None, help="reported payments to reach (default 10000)")
    parser.add_argument("--quick", action="store_true", help="a small run (CI-sized)")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="crash run: start no new station after this many minutes, even short of the targets (says so)",
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated subset of: " + ", ".join(SECTIONS)
    )
    parser.add_argument("--write-docs", metavar="PATH", help="write the results page (docs/reliability.md)")
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument(
        "--from-json", metavar="PATH", help="run nothing: print (and --write-docs) the results saved by --json"
    )
    parser.add_argument("--workdir", metavar="DIR", help="keep the stations here (default: a temporary directory)")
    parser.add_argument(
        "--code",
        default="worktree",
        metavar="REV",
        help="'worktree' (default), or a git revision to run against (git archive, immune to edits during the run)",
    )
    raw_argv = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args(raw_argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        print(torture_report.summary_table(saved), flush=True)
        if args.write_docs:
            Path(args.write_docs).write_text(torture_report.reliability_page(saved), encoding="utf-8")
        return 0 if torture_report.passed(saved) else 1
    args.kills = args.kills if args.kills is not None else (20 if args.quick else 1000)
    args.payments = args.payments if args.payments is not None else (200 if args.quick else 10_000)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")

    command = "python bench/torture.py " + " ".join(_public(raw_argv))
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="offterm-torture-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.code != "worktree" and not os.environ.get(SNAPSHOT_ENV):
        snapshot(args.code, workdir, [*raw_argv, *([] if args.workdir else ["--workdir", str(workdir)])])
    log(f"torture run: seed={args.seed} kills={args.kills} payments={args.payments} workdir={workdir}")
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": command,
        "seed": args.seed,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs",
        "code": code_under_test(),
        "sections": {},
    }
    for name in sections:
        log(f"section {name}: starting")
        results["sections"][name] = run_section(name, args, workdir)
        log(f"section {name}: done")
    results["seconds"] = round(time.monotonic() - started, 1)

    print(torture_report.summary_table(results), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    if args.write_docs:
        Path(args.write_docs).write_text(torture_report.reliability_page(results), encoding="utf-8")
        log(f"wrote {args.write_docs}")
    return 0 if torture_report.passed(results) else 1


if __name__ == "__main__":
    sys.exit(main())
