"""Store hub benchmarks (docs/fleet.md), each on its own throwaway PostgreSQL cluster, against a baseline
measured in the same run.

    python bench/bench_hub.py                    # all three, full size
    python bench/bench_hub.py --catch-up         # only 1; likewise --sync, --status
    python bench/bench_hub.py --quick --json     # a smoke run, figures as JSON
    python bench/bench_hub.py --sync --burn 4    # the same with 4 busy loops competing for the CPUs

The cluster is ``offterm.testing.pgcluster.Cluster``, the one the hub tests start: Debian's server,
as ``nobody`` when run as root, on 127.0.0.1, ``fsync = on``, ``synchronous_commit = on``, 32 MB of
shared buffers.  Every cluster and process started here is stopped before the script ends.  The
load average before and after is part of the figures: latency tails follow it.  ``--burn N`` runs
N busy loops (processes) beside the benchmarks, so a loaded machine can be measured on purpose.

1. **Catch-up after a hub outage.**  20 lanes each hold 1,000 payments the hub has never seen
   (SQLCipher stores built with the store's weak-durability option, not timed).  The hub is
   stopped; 20 lane processes start, each running the lane's real replication loop
   (``Replication`` with ``[hub]`` defaults: async, interval 2 s, batch_size 200) on its own store,
   failing each round; the hub comes back.  Timed from the moment the server accepts connections
   again to the moment the hub holds all 20,000 payments (polled every 0.2 s).  Target <= 60 s.
   Processes, not 20 loops in one: each lane is its own device with its own interpreter, store and
   connection, and a process per lane keeps that (a GIL each) -- here 20 of them and the server share
   2 cores, far less CPU than 20 real lanes have, so the figure is pessimistic.
   Reference (no target): hub ingest rows/s (rows over the span of their ``replicated_at``, the
   server's clock) beside bare psycopg sending the same sealed rows with the same upsert, from 20
   processes too, in transactions of 200 rows (``executemany``), ``synchronous_commit`` on, into an
   identical hub database.
2. **Sync-mode confirm latency over loopback.**  Terminals with the same code and configuration take
   turns confirming FORCE_OFFLINE payments: one with no hub (local only), one with ``[hub] mode =
   "sync"`` (the local commit, then the hub's, over TCP on 127.0.0.1), one the same with the
   background replication loop running as on a real lane.  p50 / p99 of each; target: sync p99 at
   most 5 ms above local-only p99.
3. **``offterm hub status``, 1,000,000 rows from 200 lanes vs 10,000.**  Rows are bulk-inserted
   server-side (``INSERT ... SELECT generate_series``, sealed blobs of a real record's size), then
   ``VACUUM ANALYZE`` (what autovacuum does on a live hub).  Two shapes: *history* (the realistic
   one: the same 2,000 payments still waiting, 10 per lane, and the rest forwarded or declined) and
   *all open* (every row waiting: the worst case).  Timed: the status query alone (median of 30 on
   a warm connection), ``PostgresReplicator.status()`` (connects, queries, builds the lanes) and the
   command end to end (``offterm hub status --json`` in a new process, median of 5).  Target: the
   query and the command on 1,000,000 rows at most 1.5x their time on 10,000.  The report carries
   ``EXPLAIN (ANALYZE, BUFFERS)`` of the query on both sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from offterm.core import OfflineBehavior, Terminal
from offterm.core._engine.replication import Replication
from offterm.core._engine.store_runner import AsyncStore
from offterm.core.config import validate_options
from offterm.core.contracts import NewPayment, PaymentStore, StorageKeyProvider
from offterm.core.contracts.replication import ReplicationRecord
from offterm.core.logs import configure_logging
from offterm.core.models import CaptureMethod, new_offline_id
from offterm.core.registrations import ComponentContext
from offterm.plugins.storage.keys import StaticKeyProvider
from offterm.plugins.storage.postgres import PostgresReplicator, sealing
from offterm.plugins.storage.postgres.replicator import _STATUS, _UPSERT
from offterm.plugins.storage.sqlcipher import new_idempotency_key
from offterm.sim.processor import running_simulator
from offterm.sim.processor.testing import card_result
from offterm.testing import make_plugin_manager, open_store, terminal_config
from offterm.testing.pgcluster import HUB_KEY, Cluster

HUB_KEY_VAR = "OFFTERM_BENCH_HUB_KEY"
#: the server's own durability, checked at the start of each benchmark
DURABILITY = ("fsync", "synchronous_commit")
LANE_PASSWORD = "bench-lane-pw"
BATCH = 200  # [hub] batch_size's default


# -- the cluster and hub databases ---------------------------------------------------------------


@contextmanager
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    c.start()
    try:
        yield c
    finally:
        c.destroy()


def plain(url: str) -> str:
    """SQLAlchemy's URL as libpq's."""
    return url.replace("+psycopg", "")


def options(url: str = "", admin_url: str = "") -> dict[str, Any]:
    """``[replicator.postgres]`` as validated, for a lane (``url``) or an administrator (``admin_url``)."""
    return {
        "url": url,
        "password": "",
        "admin_url": admin_url,
        "sslmode": "disable",
        "sslrootcert": "",
        "sslcert": "",
        "sslkey": "",
        "connect_timeout": 2,
        "statement_timeout": 60.0,
    }


def new_hub(c: Cluster, name: str) -> str:
    """A database initialised as a hub with ``HUB_KEY``; its administrator URL."""
    with psycopg.connect(plain(c.url()), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    admin = c.url(database=name)
    PostgresReplicator(options(admin_url=admin)).initialise(HUB_KEY)
    return admin


def add_lane(admin_url: str, role: str) -> None:
    PostgresReplicator(options(admin_url=admin_url)).add_lane(role, LANE_PASSWORD)


def server_settings(c: Cluster) -> dict[str, str]:
    with psycopg.connect(plain(c.url())) as conn:
        return {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in DURABILITY}  # type: ignore[index]


# -- lanes' stores --------------------------------------------------------------------------------


def make_payments(n: int) -> list[NewPayment]:
    card = card_result("4242424242424242")
    now = datetime.now(UTC)
    return [
        NewPayment(
            offline_id=new_offline_id(),
            idempotency_key=new_idempotency_key(),
            amount=100 + i % 5000,
            currency="usd",
            capture_method=CaptureMethod.AUTOMATIC,
            metadata={"order": f"order-{i}", "lane": "3"},
            account_id="acct_1SimulatedOfftrm",
            livemode=False,
            stored_at=now,
            card=card,
        )
        for i in range(n)
    ]


def build_lane_store(data_dir: Path, n: int) -> None:
    """``n`` stored payments in a real SQLCipher store, written without fsync (setup, not timed)."""
    weak = {"allow_weak_durability": True, "synchronous": "off"}
    store = open_store(make_plugin_manager(), data_dir, backend_options=weak)
    try:
        for payment in make_payments(n):
            store.store(payment)
    finally:
        store.close()


def unopened_store(data_dir: Path) -> tuple[PaymentStore, StorageKeyProvider]:
    """The lane's store with the store's default options (durable) and its file key, not yet open."""
    pm = make_plugin_manager()
    store_reg, key_reg = pm.storage_backend("sqlcipher"), pm.storage_key_provider("file")
    store_opts = validate_options("storage.sqlcipher", store_reg.options, {}, env={})
    key_opts = validate_options("storage_key.file", key_reg.options, {}, env={})
    return (
        store_reg.factory(ComponentContext("sqlcipher", store_opts, data_dir)),
        key_reg.factory(ComponentContext("file", key_opts, data_dir)),
    )


# -- 1. catch-up after a hub outage: the lane processes ------------------------------------------


def _psycopg_sql(statement: str) -> str:
    return re.sub(r"(?<!:):(\w+)", r"%(\1)s", statement)


async def _lane_offterm(spec: dict[str, Any]) -> dict[str, Any]:
    """The lane's real replication loop on its store until the parent says stop (or 900 s)."""
    store, keys = unopened_store(Path(spec["data_dir"]))
    astore = AsyncStore(store)
    await astore.open(keys)
    replicator = PostgresReplicator(options(url=spec["url"]))
    repl = Replication(
        replicator,
        astore,
        lane=spec["lane"],
        mode="async",
        keys=StaticKeyProvider(HUB_KEY),
        interval=2.0,
        batch_size=spec["batch"],
    )
    repl.start()
    print("ready", flush=True)
    try:
        await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), timeout=900)
    finally:
        await repl.stop()
        await astore.close()
    return {"lane": spec["lane"]}


async def _lane_rows(data_dir: Path, lane: str) -> list[dict[str, Any]]:
    """The rows ``PostgresReplicator.replicate`` sends for every payment of the store, sealed."""
    store, keys = unopened_store(data_dir)
    astore = AsyncStore(store)
    await astore.open(keys)
    try:
        payments = await astore.list_payments()
        records = [ReplicationRecord(lane, p, await astore.history(p.offline_id)) for p in payments]
    finally:
        await astore.close()
    records.sort(key=lambda r: (r.changed_at, r.payment.offline_id))
    return [
        {
            "offline_id": r.payment.offline_id,
            "lane": r.lane,
            "amount": r.payment.amount,
            "currency": r.payment.currency,
            "state": str(r.payment.state),
            "attempts": r.payment.attempts,
            "stored_at": r.payment.stored_at,
            "updated_at": r.changed_at,
            "card_data": r.payment.card.encrypted_card_data if r.payment.card is not None else None,
            "key_serial": r.payment.card.key_serial if r.payment.card is not None else None,
            "scheme": r.payment.card.encryption_scheme if r.payment.card is not None else None,
            "sealed": sealing.seal(HUB_KEY, r.lane, r.payment, r.history),
        }
        for r in records
    ]


def _lane_bare(spec: dict[str, Any]) -> dict[str, Any]:
    """The baseline: the same rows with bare psycopg, ``executemany`` in transactions of ``batch``."""
    rows = asyncio.run(_lane_rows(Path(spec["data_dir"]), spec["lane"]))
    upsert = _psycopg_sql(_UPSERT.text)
    lane_row = (
        "INSERT INTO hub_lanes (lane, last_replicated_at) VALUES (%(lane)s, now()) "
        "ON CONFLICT (lane) DO UPDATE SET last_replicated_at = EXCLUDED.last_replicated_at"
    )
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return {"lane": spec["lane"], "aborted": True}
    start = time.perf_counter()
    with psycopg.connect(plain(spec["url"])) as conn:
        for i in range(0, len(rows), spec["batch"]):
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(lane_row, {"lane": spec["lane"]})
                cur.executemany(upsert, rows[i : i + spec["batch"]])
    return {"lane": spec["lane"], "seconds": time.perf_counter() - start, "rows": len(rows)}


def lane_child(raw: str) -> None:
    spec = json.loads(raw)
    configure_logging(json=True, level="error", stream=open(os.devnull, "w"))  # noqa: SIM115
    result = asyncio.run(_lane_offterm(spec)) if spec["mode"] == "offterm" else _lane_bare(spec)
    print(json.dumps(result), flush=True)


class Lanes:
    """20 lane processes (this script with ``--lane-child``); stopped and reaped on exit."""

    def __init__(self, specs: Sequence[dict[str, Any]]) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--lane-child", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for spec in specs
        ]

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            assert proc.stdout is not None
            line = _readline(proc.stdout, deadline - time.monotonic())
            if line.strip() != "ready":
                raise RuntimeError(f"a lane process did not start: {line!r}")

    def say(self, word: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(word + "\n")
            proc.stdin.flush()

    def results(self, timeout: float = 600) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            assert proc.stdout is not None
            out.append(json.loads(_readline(proc.stdout, deadline - time.monotonic())))
        return out

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    assert proc.stdin is not None
                    proc.stdin.close()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def cpu_burners(n: int) -> Iterator[None]:
    """``n`` processes spinning on the CPU (``--burn``) for the span of the block, then stopped."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        if procs:
            time.sleep(10)  # let the load average show them
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def _readline(stream: Any, timeout: float) -> str:
    """One line from a child's stdout, or an error after ``timeout`` seconds."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(max(0.0, timeout))
    if not box:
        raise TimeoutError("a lane process said nothing in time")
    return box[0]


def _ingest(admin_url: str) -> tuple[int, float]:
    """(rows on the hub, seconds between the first and the last ``replicated_at``)."""
    with psycopg.connect(plain(admin_url)) as conn:
        row = conn.execute(
            "SELECT count(*), extract(epoch FROM max(replicated_at) - min(replicated_at)) FROM hub_payments"
        ).fetchone()
    assert row is not None
    return int(row[0]), float(row[1] or 0.0)


def catch_up(lanes: int, per_lane: int) -> dict[str, Any]:
    total = lanes * per_lane
    roles = [f"lane_{i:02d}" for i in range(lanes)]
    with tempfile.TemporaryDirectory(prefix="offterm-bench-hub-") as tmp, cluster() as c:
        settings = server_settings(c)
        hub = new_hub(c, "hub_offterm")
        bare = new_hub(c, "hub_bare")
        for role in roles:
            add_lane(hub, role)  # roles are cluster-wide: the bare database uses the same ones
        t = time.perf_counter()
        dirs = [Path(tmp) / role for role in roles]
        for d in dirs:
            build_lane_store(d, per_lane)
        setup_s = time.perf_counter() - t

        def specs(mode: str, db: str) -> list[dict[str, Any]]:
            return [
                {
                    "mode": mode,
                    "lane": role,
                    "data_dir": str(d),
                    "batch": BATCH,
                    "url": c.url(user=role, password=LANE_PASSWORD, database=db),
                }
                for role, d in zip(roles, dirs, strict=True)
            ]

        # the baseline first: bare psycopg, 20 processes, the hub up
        procs = Lanes(specs("bare", "hub_bare"))
        try:
            procs.wait_ready()
            t = time.perf_counter()
            procs.say("go")
            bare_results = procs.results()
            bare_wall = time.perf_counter() - t
        finally:
            procs.close()
        bare_rows, bare_span = _ingest(bare)
        if bare_rows != total:
            raise RuntimeError(f"the baseline wrote {bare_rows} rows, not {total}")

        # the outage: the hub stops, the lanes start and fail each round, the hub comes back
        c.stop("fast")
        procs = Lanes(specs("offterm", "hub_offterm"))
        try:
            procs.wait_ready()
            time.sleep(3.0)  # a round or two against a hub that is down
            t = time.perf_counter()
            c.start()
            back = time.perf_counter()
            start_s = back - t
            seen, done_at = 0, None
            lane_done: dict[str, float] = {}
            deadline = back + 600
            with psycopg.connect(plain(hub), autocommit=True) as conn:
                while time.perf_counter() < deadline:
                    counts = dict(conn.execute("SELECT lane, count(*) FROM hub_payments GROUP BY lane").fetchall())
                    now = time.perf_counter() - back
                    for lane, n in counts.items():
                        if n >= per_lane:
                            lane_done.setdefault(lane, now)
                    seen = sum(counts.values())
                    if seen >= total:
                        done_at = now
                        break
                    time.sleep(0.2)
            procs.say("stop")
            procs.results()
        finally:
            procs.close()
        rows, span = _ingest(hub)
        with psycopg.connect(plain(hub)) as conn:
            duplicates = conn.execute("SELECT count(*) - count(DISTINCT offline_id) FROM hub_payments").fetchone()[0]  # type: ignore[index]
    ingest = rows / span if span else 0.0
    bare_ingest = bare_rows / bare_span if bare_span else 0.0
    return {
        "lanes": lanes,
        "payments_per_lane": per_lane,
        "lane_processes": lanes,
        "batch_size": BATCH,
        "server": settings,
        "store_setup_seconds": round(setup_s, 1),
        "hub_start_seconds": round(start_s, 2),
        "all_replicated_seconds": None if done_at is None else round(done_at, 2),
        "first_lane_done_seconds": round(min(lane_done.values()), 2) if lane_done else None,
        "rows_on_hub": rows,
        "duplicates": duplicates,
        "target_seconds": 60,
        "target_met": done_at is not None and done_at <= 60 and rows == total,
        "hub_ingest_rows_per_s": round(ingest),
        "hub_ingest_span_seconds": round(span, 2),
        "bare_rows_per_s": round(bare_ingest),
        "bare_span_seconds": round(bare_span, 2),
        "bare_wall_seconds": round(bare_wall, 2),
        "bare_slowest_lane_seconds": round(max(r["seconds"] for r in bare_results), 2),
        "ingest_ratio": round(ingest / bare_ingest, 3) if bare_ingest else None,
    }


# -- 2. sync-mode confirm latency -----------------------------------------------------------------


async def _confirm_latencies(sim: Any, c: Cluster, admin: str, root: Path, n: int) -> dict[str, list[float]]:
    limits = {"limits": {"max_amount": {"usd": 10_000_000}, "max_count": 10_000_000, "max_age_hours": 0}}

    def config(name: str, hub: dict[str, Any] | None) -> dict[str, Any]:
        cfg = terminal_config(sim, root / name, forwarding={"interval": 3600.0}, acceptance=limits)
        if hub is not None:
            cfg.update(hub)
        return cfg

    def hub_sections(role: str) -> dict[str, Any]:
        add_lane(admin, role)
        url = c.url(user=role, password=LANE_PASSWORD, database="hub_sync")
        return {
            "hub": {"replicator": "postgres", "lane": role, "key_provider": "env", "mode": "sync"},
            "replicator": {"postgres": {**options(url=url), "statement_timeout": 5.0}},
            "storage_key": {"env": {"variable": HUB_KEY_VAR}},
        }

    pm = make_plugin_manager
    names = ("local", "sync", "sync_loop")
    terminals = {
        "local": Terminal.from_config(config("local", None), plugin_manager=pm(), background=False),
        "sync": Terminal.from_config(config("sync", hub_sections("lane_sync")), plugin_manager=pm(), background=False),
        "sync_loop": Terminal.from_config(
            config("sync_loop", hub_sections("lane_sync_loop")), plugin_manager=pm(), background=False
        ),
    }
    spent: dict[str, list[float]] = {name: [] for name in names}
    reached: dict[str, int] = dict.fromkeys(names, 0)
    for terminal in terminals.values():
        await terminal.open()
    try:
        for terminal in terminals.values():
            [reader] = await terminal.discover_readers()
            await terminal.connect_reader(reader)
        # the background replication loop of a real lane (the forwarder stays off: nothing to forward here)
        terminals["sync_loop"].replication.start()
        for i in range(n + 20):
            order = names[i % 3 :] + names[: i % 3]
            for name in order:
                terminal = terminals[name]
                intent = await terminal.create_payment_intent(
                    {"amount": 1000 + i, "currency": "usd", "metadata": {"order": f"order-{i}"}},
                    offline_behavior=OfflineBehavior.FORCE_OFFLINE,
                )
                reader = terminal.connected_reader
                assert reader is not None
                reader.present_card("visa")  # type: ignore[attr-defined]
                intent = await terminal.collect_payment_method(intent)
                t = time.perf_counter()
                intent = await terminal.confirm_payment_intent(intent)
                elapsed = time.perf_counter() - t
                if i >= 20:  # the first 20 warm up connections and caches
                    spent[name].append(elapsed)
                    details = intent.offline_details
                    reached[name] += bool(details is not None and details.replicated_to_hub)
    finally:
        for terminal in terminals.values():
            await terminal.close(timeout=0)
    return {**spent, "reached": [float(reached[name]) for name in names]}


def _pct(values: Sequence[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def sync_latency(n: int) -> dict[str, Any]:
    os.environ[HUB_KEY_VAR] = HUB_KEY.hex()
    with tempfile.TemporaryDirectory(prefix="offterm-bench-sync-") as tmp, cluster() as c, running_simulator() as sim:
        settings = server_settings(c)
        admin = new_hub(c, "hub_sync")
        got = asyncio.run(_confirm_latencies(sim, c, admin, Path(tmp), n))
    reached = dict(zip(("local", "sync", "sync_loop"), got.pop("reached"), strict=True))
    out: dict[str, Any] = {"confirms_each": n, "server": settings}
    for name, values in got.items():
        out[name] = {
            "p50_ms": round(_pct(values, 50), 3),
            "p99_ms": round(_pct(values, 99), 3),
            "max_ms": round(max(values) * 1000, 3),
            "replicated_to_hub": int(reached[name]),
        }
    for name in ("sync", "sync_loop"):
        extra = out[name]["p99_ms"] - out["local"]["p99_ms"]
        out[name]["p99_over_local_ms"] = round(extra, 3)
        out[name]["p50_over_local_ms"] = round(out[name]["p50_ms"] - out["local"]["p50_ms"], 3)
        out[name]["target_met"] = extra <= 5.0 and out[name]["replicated_to_hub"] == n
    return out


# -- 3. offterm hub status ------------------------------------------------------------------------

_OPEN_MIX = (
    "(ARRAY['stored','stored','stored','stored','stored','stored','forwarding','forwarding',"
    "'outcome_unknown','needs_attention'])"
)


def load_status_rows(admin: str, rows: int, lanes: int, open_rows: int, sealed_size: int) -> float:
    """``rows`` payments over ``lanes`` lanes, the first ``open_rows`` waiting; seconds it took."""
    t = time.perf_counter()
    with psycopg.connect(plain(admin), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO hub_lanes (lane, last_heartbeat, oldest_unreplicated, last_replicated_at) "
            "SELECT 'lane_' || lpad(g::text, 3, '0'), now(), NULL, now() FROM generate_series(0, %s - 1) g",
            (lanes,),
        )
        conn.execute(
            "INSERT INTO hub_payments (offline_id, lane, amount, currency, state, attempts, stored_at, updated_at, "
            "card_data, key_serial, encryption_scheme, sealed) "
            "SELECT 'pay_' || lpad(g::text, 8, '0'), 'lane_' || lpad((g %% %(lanes)s)::text, 3, '0'), "
            "100 + g %% 5000, CASE WHEN g %% 10 = 0 THEN 'eur' ELSE 'usd' END, "
            f"CASE WHEN g < %(open)s THEN {_OPEN_MIX}[1 + (g / %(lanes)s) %% 10] "
            "WHEN g %% 20 = 0 THEN 'declined' ELSE 'forwarded' END, "
            "1, now() - make_interval(secs => %(rows)s - g), now() - make_interval(secs => %(rows)s - g), "
            "CASE WHEN g < %(open)s THEN %(card)s END, CASE WHEN g < %(open)s THEN 'FFFF9876543210E00001' END, "
            "CASE WHEN g < %(open)s THEN 'aes_gcm_dukpt' END, %(sealed)s "
            "FROM generate_series(0, %(rows)s - 1) g",
            {
                "lanes": lanes,
                "open": open_rows,
                "rows": rows,
                "card": os.urandom(96),
                "sealed": os.urandom(sealed_size),
            },
        )
        conn.execute("VACUUM ANALYZE hub_payments")
        conn.execute("VACUUM ANALYZE hub_lanes")
    return time.perf_counter() - t


def _sealed_size() -> int:
    """The size of one real sealed record (a payment as a lane stores it, with its history)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(make_plugin_manager(), Path(tmp), backend_options={"allow_weak_durability": True})
        try:
            stored = store.store(make_payments(1)[0])
            return len(sealing.seal(HUB_KEY, "lane_000", stored, store.history(stored.offline_id)))
        finally:
            store.close()


def time_status(admin: str, tmp: Path, runs: int, command_runs: int) -> dict[str, Any]:
    sql = _STATUS.text
    with psycopg.connect(plain(admin)) as conn:
        for _ in range(3):
            conn.execute(sql).fetchall()
        query = []
        for _ in range(runs):
            t = time.perf_counter()
            conn.execute(sql).fetchall()
            query.append(time.perf_counter() - t)
            conn.rollback()
        plan = [r[0] for r in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql).fetchall()]
        conn.rollback()
    replicator = PostgresReplicator(options(admin_url=admin))
    call = []
    for _ in range(max(5, runs // 3)):
        t = time.perf_counter()
        lanes = replicator.status()
        call.append(time.perf_counter() - t)
    config = tmp / "offterm.toml"
    config.write_text(
        f'[terminal]\ndata_dir = "{tmp / "pos"}"\n[plugins]\nautoload = false\n'
        f'[hub]\nreplicator = "postgres"\nkey_provider = "env"\n[storage_key.env]\nvariable = "{HUB_KEY_VAR}"\n'
        f'[replicator.postgres]\nadmin_url = "{admin}"\nsslmode = "disable"\n'
    )
    offterm = Path(sys.executable).with_name("offterm")
    env = {**os.environ, HUB_KEY_VAR: HUB_KEY.hex()}
    command = []
    shown = 0
    for _ in range(command_runs):
        t = time.perf_counter()
        done = subprocess.run(
            [str(offterm), "--config", str(config), "hub", "status", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        command.append(time.perf_counter() - t)
        if done.returncode not in (0, 1):
            raise RuntimeError(f"offterm hub status failed ({done.returncode}): {done.stderr[-500:]}")
        try:
            shown = len(json.loads(done.stdout)["lanes"])
        except ValueError:
            raise RuntimeError(
                f"offterm hub status printed no JSON: {done.stdout[-500:]!r} {done.stderr[-500:]!r}"
            ) from None
    return {
        "query_ms": round(statistics.median(query) * 1000, 3),
        "status_call_ms": round(statistics.median(call) * 1000, 3),
        "command_ms": round(statistics.median(command) * 1000, 1),
        "lanes_shown": shown,
        "lanes_in_call": len(lanes),
        "uses_index": "hub_payments_lane_open" in "\n".join(plan),
        "plan": plan,
    }


def status_scaling(small: int, large: int, lanes: int, open_rows: int, runs: int, command_runs: int) -> dict[str, Any]:
    sealed = _sealed_size()
    out: dict[str, Any] = {"lanes": lanes, "small_rows": small, "large_rows": large, "sealed_bytes": sealed}
    shapes = {"history": open_rows, "all_open": None}
    with tempfile.TemporaryDirectory(prefix="offterm-bench-status-") as tmp, cluster() as c:
        out["server"] = server_settings(c)
        for shape, waiting in shapes.items():
            figures: dict[str, Any] = {}
            for size in (small, large):
                db = f"status_{shape}_{size}"
                admin = new_hub(c, db)
                load_s = load_status_rows(admin, size, lanes, size if waiting is None else waiting, sealed)
                where = Path(tmp) / db
                where.mkdir()
                figures[str(size)] = {
                    "open_rows": size if waiting is None else waiting,
                    "load_seconds": round(load_s, 1),
                }
                figures[str(size)].update(time_status(admin, where, runs, command_runs))
            s, big = figures[str(small)], figures[str(large)]
            for what in ("query_ms", "status_call_ms", "command_ms"):
                figures[what.replace("_ms", "_ratio")] = round(big[what] / s[what], 3)
            figures["target_met"] = figures["query_ratio"] <= 1.5 and figures["command_ratio"] <= 1.5
            out[shape] = figures
    return out


# -- the command line -----------------------------------------------------------------------------


def summary(results: dict[str, Any]) -> None:
    load = results["load_average"]
    print(
        f"load average (1, 5, 15 min) before {load['before']}, after {load['after']}; "
        f"{results['cpus']} CPUs; {results['burners']} busy loops beside (--burn)"
    )
    if "catch_up" in results:
        r = results["catch_up"]
        print(
            f"1. catch-up after a hub outage: {r['lanes']} lane processes x {r['payments_per_lane']} payments, "
            f"all on the hub {r['all_replicated_seconds']} s after it accepted connections again "
            f"(server start {r['hub_start_seconds']} s; first lane whole at {r['first_lane_done_seconds']} s); "
            f"target <= 60 s: {'met' if r['target_met'] else 'NOT met'}; rows {r['rows_on_hub']}, "
            f"duplicates {r['duplicates']}.\n   hub ingest {r['hub_ingest_rows_per_s']} rows/s "
            f"(over {r['hub_ingest_span_seconds']} s) vs bare psycopg executemany {r['bare_rows_per_s']} rows/s "
            f"(over {r['bare_span_seconds']} s), ratio {r['ingest_ratio']} (reference, no target)"
        )
    if "sync" in results:
        r = results["sync"]
        print(f"2. offline confirm latency over loopback, {r['confirms_each']} each (ms):")
        for name in ("local", "sync", "sync_loop"):
            f = r[name]
            extra = (
                ""
                if name == "local"
                else f" (+{f['p99_over_local_ms']} p99 vs local; target <= +5: "
                + ("met)" if f.get("target_met") else "NOT met)")
            )
            print(
                f"   {name:10s} p50 {f['p50_ms']:8.3f}  p99 {f['p99_ms']:8.3f}  max {f['max_ms']:9.3f}  "
                f"reached hub {f['replicated_to_hub']}" + extra
            )
    if "status" in results:
        r = results["status"]
        print(f"3. offterm hub status, {r['large_rows']:,} rows vs {r['small_rows']:,}, {r['lanes']} lanes:")
        for shape in ("history", "all_open"):
            f = r[shape]
            s, big = f[str(r["small_rows"])], f[str(r["large_rows"])]
            print(
                f"   {shape:9s} open {s['open_rows']:>9,} / {big['open_rows']:>9,}: query {s['query_ms']} -> "
                f"{big['query_ms']} ms ({f['query_ratio']}x), status() {s['status_call_ms']} -> "
                f"{big['status_call_ms']} ms ({f['status_call_ratio']}x), command {s['command_ms']} -> "
                f"{big['command_ms']} ms ({f['command_ratio']}x); index used {s['uses_index']}/{big['uses_index']}; "
                f"target <= 1.5x: {'met' if f['target_met'] else 'NOT met'}"
            )
            print("     EXPLAIN ANALYZE at the large size:\n       " + "\n       ".join(big["plan"]))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--lane-child":
        lane_child(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description="Store hub benchmarks (catch-up, sync latency, status)")
    parser.add_argument("--quick", action="store_true", help="a smoke run at small sizes")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--catch-up", action="store_true", help="only benchmark 1")
    parser.add_argument("--sync", action="store_true", help="only benchmark 2")
    parser.add_argument("--status", action="store_true", help="only benchmark 3")
    parser.add_argument("--lanes", type=int, default=20)
    parser.add_argument("--per-lane", type=int, default=1000)
    parser.add_argument("--confirms", type=int, default=1000)
    parser.add_argument("--burn", type=int, default=0, help="run N busy loops beside the benchmarks")
    args = parser.parse_args()
    configure_logging(json=True, level="error", stream=open(os.devnull, "w"))  # noqa: SIM115
    every = not (args.catch_up or args.sync or args.status)
    results: dict[str, Any] = {"cpus": os.cpu_count(), "quick": args.quick, "burners": args.burn}
    with cpu_burners(args.burn):
        before = [round(x, 2) for x in os.getloadavg()]
        if every or args.catch_up:
            lanes, per_lane = (4, 200) if args.quick else (args.lanes, args.per_lane)
            results["catch_up"] = catch_up(lanes, per_lane)
        if every or args.sync:
            results["sync"] = sync_latency(100 if args.quick else args.confirms)
        if every or args.status:
            sizes = (1_000, 100_000, 3) if args.quick else (10_000, 1_000_000, 5)
            results["status"] = status_scaling(sizes[0], sizes[1], 200, 2_000 if not args.quick else 200, 30, sizes[2])
        results["load_average"] = {"before": before, "after": [round(x, 2) for x in os.getloadavg()]}
    if args.json:
        print(json.dumps(results, default=str))
    else:
        summary(results)


if __name__ == "__main__":
    main()
