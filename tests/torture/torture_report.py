"""Turning a torture run's figures into the summary table and docs/reliability.md."""

from __future__ import annotations

from typing import Any

SIM_FAULT_NAMES = {
    "500": "HTTP 500 answer",
    "502": "HTTP 502 answer (HTML body)",
    "503": "HTTP 503 answer",
    "429": "HTTP 429 answer (rate limited)",
    "reset": "connection reset before the request ran",
    "drop": "connection closed before the request ran",
    "commit_drop": "request ran, connection closed without the answer",
    "commit_delay": "request ran, answer held past the client's timeout",
}
PROXY_FAULT_NAMES = {
    "down": "proxy: network down (refused, open connections cut)",
    "reset": "proxy: every connection reset",
    "blackhole": "proxy: black hole (accepted, never answered; open keep-alive connections stall half-open)",
    "delay": "proxy: every chunk delayed",
    "drip": "proxy: answers dripped out slowly",
}


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _n(value: int) -> str:
    return f"{value:,}"


def crash_rows(crash: dict[str, Any]) -> list[list[Any]]:
    reported = crash.get("reported", {})
    states = crash.get("final_states", {})
    attention = sum(v for k, v in states.items() if k.endswith("needs_attention"))
    return [
        ["POS processes run (lives)", _n(crash["lives"])],
        ["stations (databases), each drained and checked against the ledger", _n(crash["stations"])],
        ["SIGKILLs", _n(crash["kills"])],
        ["payments confirmed (reported to the merchant)", _n(crash["payments"])],
        ["- stored offline", _n(reported.get("stored", 0))],
        ["- authorised online", _n(reported.get("online", 0))],
        ["- declined online", _n(reported.get("declined", 0))],
        ["payments seeded into old-schema databases", _n(crash.get("legacy_seeded", 0))],
        ["confirms attempted (incl. ones a kill interrupted)", _n(crash.get("attempted", 0))],
        ["**lost**", f"**{crash['lost']}**"],
        ["**duplicated** (charged more than once)", f"**{crash['duplicated']}**"],
        ["ended needs_attention (named final state)", _n(attention)],
        ["database opens after a kill / failures to open", f"{_n(crash['opens'])} / {crash['open_failures']}"],
        [
            "schema migrations killed midway / completed",
            f"{crash.get('migrations_interrupted', 0)} / {crash.get('migrations_completed', 0)}",
        ],
        ["online charges of a POS killed mid-confirm (never reported)", crash.get("unreported_online_charges", 0)],
        ["lives that hung", crash.get("hung_lives", 0)],
        ["wall time (s)", crash.get("seconds", 0)],
    ]


def fault_rows(crash: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for key, name in SIM_FAULT_NAMES.items():
        rows.append([f"simulator: {name}", _n(crash.get("sim_faults", {}).get(key, 0))])
    for key, name in PROXY_FAULT_NAMES.items():
        rows.append([name, _n(crash.get("proxy_faults", {}).get(key, 0))])
    return rows


def battery_rows(section: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            row["case"],
            _n(row["tried"]),
            _n(row.get("typed_errors", 0)),
            row.get("lost", 0),
            row.get("duplicated", 0),
            _verdict(row),
            str(row.get("note", "")).replace("|", "/").replace("\n", " "),
        ]
        for row in section.get("rows", [])
    ]


def _verdict(row: dict[str, Any]) -> str:
    if not row["ok"]:
        return "**FAILED**"
    if "known_bug" in row:
        return "known bug"
    return "skipped" if str(row.get("note", "")).startswith("skipped") else "ok"


BATTERY_HEADERS = ["case", "tried", "typed errors", "lost", "duplicated", "result", "note"]


def all_failures(results: dict[str, Any]) -> list[str]:
    out = []
    for name, section in results["sections"].items():
        out += [f"{name}: {f}" for f in section.get("failures", [])]
    return out


def passed(results: dict[str, Any]) -> bool:
    """No failure the run cannot explain: crash figures 0 lost / 0 doubled, every case ok or a known bug."""
    for name, section in results["sections"].items():
        if section.get("failures"):
            return False
        if name == "crash" and (section.get("lost") or section.get("duplicated") or section.get("open_failures")):
            return False
        if any(not row["ok"] for row in section.get("rows", [])):
            return False
    return True


def known_bugs(results: dict[str, Any]) -> list[str]:
    """Everything a known bug (an xfail test in tests/torture/test_found_bugs.py) explains."""
    out = []
    crash = results["sections"].get("crash", {})
    for what, n in crash.get("known_bugs", {}).items():
        out.append(f"crash: {what}: {n} (test_require_online_confirm_with_an_unknown_outcome_says_so)")
    for reason, n in crash.get("attention_reasons", {}).items():
        if reason in ATTENTION_BUGS:
            out.append(f"crash: {n} payment(s) ended needs_attention with {reason} ({ATTENTION_BUGS[reason]})")
    for name, section in results["sections"].items():
        for row in section.get("rows", []):
            if "known_bug" in row:
                out.append(f"{name}: {row['case']}: {'; '.join(row.get('known', []))} ({row['known_bug']})")
    return out


#: needs_attention reasons that come from a known bug, and the test that pins it down.
ATTENTION_BUGS = {
    "idempotency_error": "an online attempt and the forwarder sent different parameters under one key; fixed in "
    "the transport since, see tests/forwarding/test_forwarding_exactly_once.py",
}


def summary_table(results: dict[str, Any]) -> str:
    """Plain text for the terminal."""
    out = [f"\n== offterm torture, seed {results['seed']} ({results.get('seconds', 0)} s)"]
    crash = results["sections"].get("crash")
    if crash:
        width = max(len(str(r[0])) for r in crash_rows(crash))
        out.append("-- crash")
        out += [
            f"  {str(label).replace('**', ''):<{width}}  {str(value).replace('**', '')}"
            for label, value in crash_rows(crash)
        ]
        out.append("-- kills by point")
        out += [f"  {k:<{width}}  {v}" for k, v in sorted(crash.get("kills_by_point", {}).items())]
        out.append("-- faults injected")
        out += [f"  {label:<{width}}  {value}" for label, value in fault_rows(crash)]
    for name, section in results["sections"].items():
        if name == "crash":
            continue
        out.append(f"-- {name}")
        for row in battery_rows(section):
            out.append(
                f"  {row[0]:<{width if crash else 60}}  tried {row[1]}, typed {row[2]}, lost {row[3]}, dup {row[4]}: {row[5]}"
            )
    known = known_bugs(results)
    out.append(f"-- known bugs: {len(known)}")
    out += [f"  {k}" for k in known]
    failures = all_failures(results)
    out.append(f"-- failures: {len(failures)}")
    out += [f"  {f}" for f in failures[:50]]
    out.append("PASSED" if passed(results) else "FAILED")
    return "\n".join(out)


def reliability_page(results: dict[str, Any]) -> str:
    """docs/reliability.md, generated: figures first, then how they were produced."""
    crash = results["sections"].get("crash", {})
    parts = [
        "# Reliability: what offterm survives, in figures",
        "",
        "<!-- Generated by bench/torture.py --write-docs; do not edit by hand. -->",
        "",
        "Every figure on this page comes from one command, reproducible with its seed:",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"Run {results['started_at']} on {results['machine']}, against the {results.get('code', 'working tree')}, "
        f"{results.get('seconds', 0)} s in all. "
        f"Result: **{'passed' if passed(results) else 'FAILED'}**.",
        "",
    ]
    if crash:
        parts += [
            "## Crashes under mixed faults",
            "",
            "A real POS process (`tests/torture/pos_worker.py`) takes payments through the public Terminal API",
            "against the processor simulator (in its own process, so a kill never touches the ledger), through a",
            "TCP fault proxy, and is SIGKILLed again and again. Each station (a POS database) lives for a number",
            "of processes, is then drained on a calm network and checked: every payment the POS reported must be",
            "on the simulator's ledger exactly once, or be in a named final state (declined, needs_attention);",
            "none lost, none charged twice; the database must open after every kill.",
            "",
            _table(["figure", "value"], crash_rows(crash)),
            "",
            "### Where the kills landed",
            "",
            _table(
                ["kill point", "kills"],
                [[k, _n(v)] for k, v in sorted(crash.get("kills_by_point", {}).items(), key=lambda kv: -kv[1])],
            ),
            "",
            "### Faults injected",
            "",
            _table(["fault", "count"], fault_rows(crash)),
            "",
            "### Final states of the payments checked",
            "",
            _table(["state", "payments"], [[k, _n(v)] for k, v in sorted(crash.get("final_states", {}).items())]),
            "",
        ]
        if crash.get("typed_errors"):
            parts += [
                "### Typed errors the POS saw (all expected under these faults)",
                "",
                _table(["code", "count"], [[k, _n(v)] for k, v in sorted(crash["typed_errors"].items())]),
                "",
            ]
    titles = {
        "network": "Network faults, one at a time",
        "disk": "Disk faults",
        "input": "Bad input",
    }
    for name, section in results["sections"].items():
        if name == "crash":
            continue
        parts += [f"## {titles.get(name, name)}", "", section.get("about", ""), ""]
        parts += [_table(BATTERY_HEADERS, battery_rows(section)), ""]
    known = known_bugs(results)
    parts += ["## Known bugs the run ran into", ""]
    parts += [
        "Each is pinned down by an `xfail(strict=True)` test in `tests/torture/test_found_bugs.py` (or, once "
        "fixed, by its owner's own test), so it cannot be forgotten and the mark goes the day it is fixed.",
        "",
    ]
    parts += [f"- {k}" for k in known] if known else ["None."]
    parts += [""]
    failures = all_failures(results)
    parts += ["## Failures", ""]
    parts += [f"- {f}" for f in failures] if failures else ["None."]
    parts += [""]
    return "\n".join(parts)
