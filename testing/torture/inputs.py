"""Bad input: hostile processor answers, malformed config values, tampered databases, wrong keys, fuzzed frames.

The promise under test is the same everywhere: bad input ends in a typed
error (an ``OfftermError`` naming the problem), never in an untyped
exception, a hang or a changed file, and nothing already stored is lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from offterm.core import OfflineBehavior, Terminal
from offterm.core.errors import OfftermError, ReaderProtocolError

from .hostile import ACTS, HostileProcessor
from .payments import (
    Outcome,
    check_ledger,
    connect,
    drain,
    forward,
    pay,
    pos_config,
    record_history_codes,
    row,
    running,
    successful,
)

# -- hostile processor answers ---------------------------------------------------------------------


async def hostile_case(
    act: str, sim: Any, workdir: Path, rng: random.Random, *, huge_bytes: int, bomb_bytes: int
) -> dict[str, Any]:
    """Stored payments are forwarded into ``act`` (and online confirms meet it), then drained honestly."""
    outcome = Outcome()
    with HostileProcessor(sim.url, seed=rng.randrange(2**31), huge_bytes=huge_bytes, bomb_bytes=bomb_bytes) as bad:
        config = pos_config(workdir / act, bad.url)
        async with running(config, outcome) as terminal:
            await connect(terminal)
            for i in range(3):
                await pay(terminal, outcome, 1000 + i, behavior=OfflineBehavior.FORCE_OFFLINE)
            bad.arm(act, count=rng.randint(1, 3))
            await forward(terminal, outcome, timeout=4.0)
            bad.arm(act, count=rng.randint(1, 3))
            for i in range(2):  # the same answers on the online path: fall back offline, or a typed error
                await pay(terminal, outcome, 2000 + i)
            bad.disarm()
            await drain(terminal, outcome, seconds=40.0)
            payments = await record_history_codes(terminal, outcome)
        check_ledger(outcome, payments, successful(sim.ledger()))
        served = bad.served[act]
    kind = "after the processor ran it" if ACTS[act] == "after" else "instead of an answer"
    return row(f"processor: {act.replace('_', ' ')}", outcome, served, note=kind)


async def hostile_backend_case(act: str, sim: Any, workdir: Path, rng: random.Random) -> dict[str, Any]:
    """The connection-token backend and the session endpoint answer ``act``: typed errors, then recovery."""
    outcome = Outcome()
    with HostileProcessor(sim.url, seed=rng.randrange(2**31), huge_bytes=1 << 20, bomb_bytes=8 << 20) as bad:
        config = pos_config(workdir / f"backend-{act}", bad.url)
        async with running(config, outcome) as terminal:
            await connect(terminal)
            # The next session needs a new token: online payments meet the act, fall back to being stored.
            terminal.sessions.invalidate()
            bad.arm(act, count=3, paths=("/backend/connection_token", "/device/v1/sessions"))
            for i in range(2):
                await pay(terminal, outcome, 3000 + i)
            await forward(terminal, outcome, timeout=4.0)
            bad.disarm()
            await drain(terminal, outcome, seconds=30.0)
            payments = await record_history_codes(terminal, outcome)
        check_ledger(outcome, payments, successful(sim.ledger()))
        served = bad.served[act]
    return row(f"token backend: {act.replace('_', ' ')}", outcome, served)


# -- malformed configuration -------------------------------------------------------------------------

_PATH_OPTIONS = {("terminal", "data_dir"), ("storage.sqlcipher", "path"), ("storage_key.file", "path")}


def _mutants(rng: random.Random, is_path: bool) -> list[Any]:
    values: list[Any] = [None, [], {}, {"nested": {"deep": 1}}, -1, -0.5, 10**30, math.nan, math.inf, -math.inf, True]
    if not is_path:
        values += ["", "x" * 10_000, "\x00\u202e\U0001f4b3", "-1", "nan", "http://192.0.2.1:1/", "1e309"]
    else:
        values += ["/proc/self/forbidden/dir"]
    rng.shuffle(values)
    return values


def _option_sites() -> list[tuple[str, str]]:
    """(section or "kind.component", key) for every option in play: core ones and the components' own."""
    from offterm.core.config import CORE_OPTIONS
    from offterm.core.manager import create_plugin_manager
    from offterm.core.registrations import Registration

    sites = [(section, spec.key) for section, specs in CORE_OPTIONS.items() for spec in specs]
    pm = create_plugin_manager(autoload=False, env={})
    chosen: dict[str, Sequence[Registration[Any]]] = {
        "reader": [pm.reader_transport("simulated")],
        "storage": [pm.storage_backend("sqlcipher")],
        "storage_key": [pm.storage_key_provider("file")],
        "tokens": [pm.token_provider("http")],
        "forwarding": [pm.forwarding_transport("stripe")],
        "forwarding_policy": [pm.forwarding_policy("default")],
        "acceptance": pm.acceptance_policies(),
    }
    for kind, registrations in chosen.items():
        for reg in registrations:
            sites += [(f"{kind}.{reg.name}", spec.key) for spec in reg.options]
    return sites


def _set(config: dict[str, Any], site: str, key: str, value: Any) -> None:
    section, _, component = site.partition(".")
    table = config.setdefault(section, {})
    if component:
        table = table.setdefault(component, {})
    table[key] = value


async def _try_config(config: dict[str, Any]) -> str:
    """'typed:<code>', 'ok' (accepted and still works) or 'untyped:<what>'."""
    try:
        terminal = Terminal.from_config(config)
        await asyncio.wait_for(terminal.open(), timeout=8)
    except OfftermError as exc:
        return f"typed:{exc.code}"
    except TimeoutError:
        return "untyped:open hung for 8 s"
    except Exception as exc:  # noqa: BLE001
        return f"untyped:{type(exc).__name__}: {str(exc)[:120]}"
    try:
        outcome = Outcome()
        await asyncio.wait_for(_smoke(terminal, outcome), timeout=6)
        if outcome.untyped:
            return "untyped:" + outcome.untyped[0]
        return "ok"
    except TimeoutError:
        return "untyped:two payments and a forward took over 6 s (hung)"
    except OfftermError as exc:
        return f"typed:{exc.code}"
    except Exception as exc:  # noqa: BLE001
        return f"untyped:{type(exc).__name__}: {str(exc)[:120]}"
    finally:
        try:
            await asyncio.wait_for(terminal.close(timeout=0.5), timeout=15)
        except Exception as exc:  # noqa: BLE001
            return f"untyped:close raised {type(exc).__name__}"


async def _smoke(terminal: Terminal, outcome: Outcome) -> None:
    await connect(terminal)
    await pay(terminal, outcome, 1234, behavior=OfflineBehavior.FORCE_OFFLINE)
    await pay(terminal, outcome, 1235)
    await forward(terminal, outcome, timeout=5)


def config_trials(rng: random.Random, limit: int | None) -> list[tuple[str, str, Any]]:
    """(site, key, bad value): every option in play gets every mutant, plus unknown keys and sections."""
    trials: list[tuple[str, str, Any]] = []
    for site, key in _option_sites():
        for value in _mutants(rng, (site, key) in _PATH_OPTIONS):
            trials.append((site, key, value))
    trials += [("terminal", "no_such_option", 1), ("storage.sqlcipher", "pathh", "x"), ("forwarding.strip", "x", 1)]
    trials += [("nosection", "x", 1)]
    rng.shuffle(trials)
    return trials if limit is None else trials[:limit]


def config_cases(sim_url: str, workdir: Path, rng: random.Random, limit: int | None) -> list[dict[str, Any]]:
    """One bad value at a time: a typed error, or accepted and still working — run in child processes
    with a memory limit and a time limit, so a value that makes the library hang or eat memory is caught."""
    trials = config_trials(rng, limit)
    verdicts = run_config_trials(trials, sim_url, workdir)
    results: Counter[str] = Counter(v.split(":", 1)[0] for v in verdicts)
    outcome = Outcome()
    outcome.typed["config"] = results["typed"]
    known: list[str] = []
    for (site, key, value), verdict in zip(trials, verdicts, strict=True):
        if not verdict.startswith(("typed", "ok")):
            text = f"{site}.{key} = {value!r:.40}: {verdict.split(':', 1)[-1]}"
            (known if is_known_config_bug(site, key, value) else outcome.untyped).append(text)
    note = f"{results['typed']} refused with a typed error, {results['ok']} accepted and still worked"
    result = row("malformed configuration values", outcome, len(trials), note=note)
    if known:
        result["known_bug"] = "test_found_bugs.py::test_bad_config_value_is_refused_or_works"
        result["known"] = known
        result["note"] += f"; {len(known)} known bug(s): " + "; ".join(known)
    return [result]


#: Values that once ended in an untyped error, a hang or exhausted memory: (site, key, value, what happened).
#: All are refused with a ConfigError now; each stays a case of
#: test_found_bugs.py::test_bad_config_value_is_refused_or_works so the bug cannot come back.
CONFIG_REGRESSIONS: list[tuple[str, str, Any, str]] = [
    ("forwarding", "lease_seconds", math.nan, "core config accepts NaN; the store fails converting it (ValueError)"),
    ("forwarding", "lease_seconds", math.inf, "core config accepts infinity; the store fails converting it"),
    ("forwarding", "rate_limit", math.inf, "core config accepts infinity; the rate limiter fails (OverflowError)"),
    ("forwarding", "concurrency", 10**30, "no upper bound: the forwarder starts one task per unit (memory)"),
    ("terminal", "data_dir", "/proc/self/forbidden/dir", "Terminal.open makes the directory unguarded"),
    ("storage.sqlcipher", "path", "/proc/self/forbidden/dir", "the store makes the directory unguarded"),
    ("storage_key.file", "path", "/proc/self/forbidden/dir", "FileKeyProvider makes the directory unguarded"),
    ("acceptance.limits", "reader_online_within_days", math.inf, "accepted; timedelta overflows at confirm"),
    ("acceptance.limits", "reader_online_within_days", 10**30, "accepted; timedelta overflows at confirm"),
    ("acceptance.limits", "reader_online_within_days", math.nan, "accepted; timedelta fails at confirm"),
    (
        "terminal",
        "offline_timeout",
        math.nan,
        "core config accepts NaN; a NaN timer breaks the event loop's "
        "timer heap and the online attempt never times out (hang)",
    ),
    ("forwarding.stripe", "connect_timeout", math.nan, "accepted; every request fails (ValueError)"),
    ("forwarding.stripe", "probe_timeout", math.nan, "accepted; the reachability probe never answers (hang)"),
    (
        "forwarding.stripe",
        "stripe_version",
        "\x00\u202e\U0001f4b3",
        "accepted; every request fails (UnicodeEncodeError building the header)",
    ),
    ("forwarding", "interval", math.nan, "as terminal.offline_timeout = nan: a NaN timer (hung some of the time)"),
]
#: Values that today end in an untyped error, a hang or exhausted memory (an xfail case each).  None now.
KNOWN_CONFIG_BUGS: list[tuple[str, str, Any, str]] = []
_KNOWN = {(site, key, repr(value)) for site, key, value, _ in KNOWN_CONFIG_BUGS}


def is_known_config_bug(site: str, key: str, value: Any) -> bool:
    return (site, key, repr(value)) in _KNOWN


CHILD_MEMORY = 2 << 30
TRIAL_SECONDS = 45.0


def run_config_trials(
    trials: list[tuple[str, str, Any]],
    sim_url: str,
    workdir: Path,
    *,
    seconds: float = TRIAL_SECONDS,
    memory: int = CHILD_MEMORY,
) -> list[str]:
    """Verdicts in order; a child that dies or stalls is blamed on the trial it was running and restarted."""
    import select
    import subprocess

    verdicts: list[str] = []
    workdir.mkdir(parents=True, exist_ok=True)
    while len(verdicts) < len(trials):
        first = len(verdicts)
        batch = [[site, key, value] for site, key, value in trials[first:]]
        job = workdir / "trials.json"
        job.write_text(json.dumps({"url": sim_url, "dir": str(workdir), "first": first, "trials": batch}))
        proc = subprocess.Popen(
            [sys.executable, "-m", "offterm.testing.torture.inputs", "config", str(job)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=lambda: _limit_memory(memory),
        )
        assert proc.stdout is not None
        try:
            while len(verdicts) < len(trials):
                ready, _, _ = select.select([proc.stdout], [], [], seconds)
                line = proc.stdout.readline() if ready else None
                if line is None:
                    verdicts.append(f"untyped:no verdict within {seconds:.0f} s (hung)")
                    break
                if not line:
                    proc.wait(timeout=30)
                    # A clean exit right after a bad verdict is the child making way for a fresh one.
                    if proc.returncode != 0 or len(verdicts) == first:
                        verdicts.append(f"untyped:the process died (status {proc.returncode}; out of memory?)")
                    break
                if line.startswith("verdict "):
                    verdicts.append(json.loads(line.split(" ", 1)[1]))
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            proc.stdout.close()
    return verdicts


def _limit_memory(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _config_child(job: dict[str, Any]) -> None:
    """In the child: each trial on a fresh event loop, one ``verdict`` line each.  After a bad verdict the
    child exits, so whatever the bad value left running cannot spoil the next trial (the parent restarts)."""
    workdir = Path(job["dir"])
    for n, (site, key, value) in enumerate(job["trials"], start=job["first"]):
        config = pos_config(workdir / f"c{n}", job["url"])
        _set(config, site, key, value)
        verdict = asyncio.run(_try_config(config))
        print("verdict", json.dumps(verdict), flush=True)
        shutil.rmtree(workdir / f"c{n}", ignore_errors=True)
        if not verdict.startswith(("typed", "ok")):
            os._exit(0)


# -- tampered databases and wrong keys -----------------------------------------------------------------


async def _make_store(directory: Path, sim_url: str, count: int) -> list[str]:
    """A station with ``count`` stored payments, closed cleanly (no WAL left)."""
    outcome = Outcome()
    config = pos_config(directory, sim_url)
    async with running(config, outcome) as terminal:
        await connect(terminal)
        for i in range(count):
            await pay(terminal, outcome, 700 + i, behavior=OfflineBehavior.FORCE_OFFLINE)
    return outcome.stored


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _open_and_read(directory: Path, sim_url: str) -> tuple[str, dict[str, Any] | None]:
    """Open with an inspection Terminal: ('typed:<code>' | 'ok' | 'untyped:...', payments)."""
    terminal = Terminal.from_config(pos_config(directory, sim_url), background=False)
    try:
        await terminal.open()
    except OfftermError as exc:
        return f"typed:{exc.code}", None
    except Exception as exc:  # noqa: BLE001
        return f"untyped:{type(exc).__name__}: {str(exc)[:120]}", None
    try:
        return "ok", {p.offline_id: p for p in await terminal.list_stored_payments()}
    except OfftermError as exc:
        return f"typed:{exc.code}", None
    except Exception as exc:  # noqa: BLE001
        return f"untyped:{type(exc).__name__}: {str(exc)[:120]}", None
    finally:
        await terminal.close()


async def tamper_cases(sim: Any, workdir: Path, rng: random.Random, tries: int) -> list[dict[str, Any]]:
    """Flip bytes of a closed database: a typed error and an untouched file, or the intact payments still there."""
    pristine = workdir / "pristine"
    stored = await _make_store(pristine, sim.url, 12)
    db = pristine / "payments.db"
    size = db.stat().st_size
    verdicts: Counter[str] = Counter()
    outcome = Outcome()
    for n in range(tries):
        case = workdir / f"t{n}"
        shutil.copytree(pristine, case)
        target = case / "payments.db"
        data = bytearray(target.read_bytes())
        how = rng.choice(("byte", "burst", "page_zero", "header", "truncate_tail"))
        if how == "byte":
            data[rng.randrange(size)] ^= 1 << rng.randrange(8)
        elif how == "burst":
            at = rng.randrange(size - 64)
            data[at : at + 64] = os.urandom(64)
        elif how == "page_zero":
            page = rng.randrange(size // 4096)
            data[page * 4096 : (page + 1) * 4096] = bytes(4096)
        elif how == "header":
            data[rng.randrange(100)] ^= 0xFF
        else:
            data = data[: size - rng.randrange(1, 4096)]
        target.write_bytes(bytes(data))
        before = _digest(target)
        verdict, payments = await _open_and_read(case, sim.url)
        verdicts[verdict.split(":", 1)[0]] += 1
        if verdict.startswith("untyped"):
            outcome.untyped.append(f"{how}: {verdict[8:]}")
        if verdict.startswith("typed") and _digest(target) != before:
            outcome.problems.append(f"{how}: the refused database file was changed")
        if payments is not None:
            # Whatever opened must account for every payment: readable, or quarantined as needs_attention.
            missing = [oid for oid in stored if oid not in payments]
            if missing and how not in ("page_zero", "truncate_tail", "burst"):
                outcome.problems.append(f"{how}: {len(missing)} payment(s) vanished without an error")
        shutil.rmtree(case, ignore_errors=True)
    outcome.typed["tamper"] = verdicts["typed"]
    note = f"{verdicts['typed']} refused (file left untouched), {verdicts['ok']} opened"
    return [row("tampered database bytes", outcome, tries, note=note)]


async def key_cases(sim: Any, workdir: Path) -> list[dict[str, Any]]:
    """Wrong key, garbage key file, short key, world-readable key file, missing key: typed, file untouched."""
    pristine = workdir / "keys"
    await _make_store(pristine, sim.url, 3)
    db = pristine / "payments.db"
    before = _digest(db)
    key_file = pristine / "storage.key"
    original = key_file.read_bytes()

    def replace_with_a_directory() -> None:
        key_file.unlink()
        key_file.mkdir()

    mutations: list[tuple[str, Callable[[], object]]] = [
        ("another valid key", lambda: key_file.write_bytes(os.urandom(32).hex().encode() + b"\n")),
        ("garbage key file", lambda: key_file.write_bytes(b"\x00\xffnot a key\n")),
        ("short key", lambda: key_file.write_bytes(b"abcd\n")),
        ("key file readable by others", lambda: os.chmod(key_file, 0o644)),
        ("key file missing", lambda: key_file.unlink()),
        ("key file is a directory", replace_with_a_directory),
    ]
    outcome = Outcome()
    typed = 0
    known: list[str] = []
    for name, mutate in mutations:
        mutate()
        verdict, _ = await _open_and_read(pristine, sim.url)
        if verdict.startswith("typed"):
            typed += 1
        elif name == "key file is a directory" and "IsADirectoryError" in verdict:
            known.append(f"{name}: {verdict}")
        else:
            outcome.untyped.append(f"{name}: {verdict}")
        if _digest(db) != before:
            outcome.problems.append(f"{name}: the database file was changed")
        if key_file.is_dir():
            key_file.rmdir()
        key_file.write_bytes(original)
        os.chmod(key_file, 0o600)
    verdict, payments = await _open_and_read(pristine, sim.url)
    if verdict != "ok" or payments is None or len(payments) != 3:
        outcome.lost += 3
        outcome.problems.append(f"the right key no longer opens the database: {verdict}")
    outcome.typed["key"] = typed
    result = row("wrong or unusable storage keys", outcome, len(mutations), note="all payments readable afterwards")
    if known:
        result["known_bug"] = "test_found_bugs.py::test_a_key_file_that_is_a_directory_is_a_typed_error"
        result["known"] = known
        result["note"] = "; ".join([*known, result["note"]])
    return [result]


# -- fuzzed reader frames -----------------------------------------------------------------------------


def frame_cases(rng: random.Random, tries: int) -> list[dict[str, Any]]:
    """Random bytes, mutated frames and valid frames with hostile JSON: only ReaderProtocolError, never a crash."""
    from offterm.plugins.readers.protocol import FrameDecoder, decode, encode_frame

    outcome = Outcome()
    typed = 0
    decoded = 0
    hostile_json: list[Any] = [
        None,
        [],
        "x",
        1,
        {},
        {"v": "1"},
        {"amount": -1, "currency": 5},
        {"txn": {"id": []}},
        {"a" * 300: "b"},
        {"card": {"last4": 1234}},
        {"networks": "visa"},
        {"blob": "not base64 !!"},
        {"code": None, "message": {"x": 1}},
        {"type": "\ud800"},
        json.loads("[" * 50 + "]" * 50),
    ]
    types = list(range(0, 40)) + [0x7F, 0x80, 0xFF]
    for _ in range(tries):
        choice = rng.random()
        decoder = FrameDecoder()
        try:
            if choice < 0.3:
                decoder.feed(bytes(rng.randrange(256) for _ in range(rng.randint(0, 600))))
            else:
                body = rng.choice(hostile_json)
                payload = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
                if rng.random() < 0.3:
                    payload = payload[: rng.randrange(len(payload) + 1)]
                frame = bytearray(encode_frame(rng.choice(types), payload[:4096]))
                if choice > 0.85:
                    frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
                decoder.feed(bytes(frame))
            frames, errors = decoder.frames()
            typed += len(errors)
            for frame_ in frames:
                try:
                    decode(frame_)
                    decoded += 1
                except ReaderProtocolError:
                    typed += 1
        except ReaderProtocolError:
            typed += 1
        except Exception as exc:  # noqa: BLE001
            outcome.untyped.append(f"{type(exc).__name__}: {str(exc)[:100]}")
    outcome.typed["reader_protocol_error"] = typed
    note = f"{typed} ReaderProtocolError, {decoded} decoded as valid messages"
    untyped_kinds = Counter(u.split(":", 1)[0] for u in outcome.untyped)
    if untyped_kinds:
        outcome.untyped = [f"{k} x{v}" for k, v in untyped_kinds.items()] + outcome.untyped[:3]
    return [row("fuzzed reader frames", outcome, tries, note=note)]


if __name__ == "__main__":
    from offterm.core.logs import configure_logging

    configure_logging(level="critical")
    if sys.argv[1] == "config":
        _config_child(json.loads(Path(sys.argv[2]).read_text()))
