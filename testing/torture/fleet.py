"""The fleet torture: three lanes, the hub forwarder and PostgreSQL, each killed at random.

One run (``python bench/fleet_torture.py --seed N --kills 300 --payments 5000``):

* a processor simulator in its own process behind a fault proxy (the crash torture's ``Rig``),
  with the crash torture's weather: simulator faults and proxy modes switching all the time;
* a real PostgreSQL cluster (``offterm.testing.pgcluster.Cluster``) holding the store hub, with one login role
  per lane and one for the hub forwarder; now and then ``pg_ctl stop -m immediate`` (a crash of
  the server: crash recovery at the next start), then started again;
* three lanes, each a POS data directory (the crash torture's ``Station``) whose "lives" are
  ``pos_worker`` processes with the hub configured (``sync`` mode most of the time, ``async``
  sometimes), reaching PostgreSQL through a fault proxy of their own (``FaultProxy`` relays
  any TCP, here the PostgreSQL protocol): LAN cuts (down, black hole, reset) per lane, long
  enough now and then for the lane to go silent while it still reaches the processor;
* the hub forwarder (``offterm hub forward``, a long-lived service or ``--once`` passes),
  SIGKILLed at random; lanes go silent after ``silent_after`` seconds, so it takes over the
  payments of killed and cut-off lanes while they come back and forward the same payments;
* lives SIGKILLed at random moments or exact points (``crash.choose_kill``).

The final pass calms everything, lets the hub forwarder pass, drains every lane (a last POS
process with the hub configured: it forwards what remains, learns the hub's outcomes and
reconciles its in-flight journal), lets the hub forwarder pass again, then checks each lane
with the crash torture's ``verify_station`` against the simulator's ledger (what each lane's
app was told is in its side file, fsynced), every hub decision against the ledger, and the
whole ledger for a second charge.

``device_loss`` is the other proof: a lane in ``sync`` mode with the LAN up takes payments
offline, is SIGKILLed and its data directory deleted; ``offterm hub forward --once`` must
charge every payment it acknowledged exactly once.

Everything is drawn from one seeded generator per actor (timing inside the OS still varies).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..pgcluster import Cluster
from . import crash

#: ``offterm`` by module name (the hub forwarder's processes).
OFFTERM = [sys.executable, "-m", "offterm.cli.main"]
HUB_KEY_VARIABLE = "OFFTERM_FLEET_HUB_KEY"
HUB_DATABASE = "offterm_hub"
LAN_CUTS = ("down", "blackhole", "reset")
WAITING = ("stored", "forwarding", "outcome_unknown")


@dataclass
class FleetSettings:
    seed: int = 1
    kills: int = 15
    payments: int = 150
    lanes: int = 3
    #: share of lane lives replicating in ``sync`` mode (the others ``async``)
    sync_share: float = 0.8
    #: chance that a lane life is SIGKILLed (the others end on their own, after their payments)
    kill_rate: float = 0.7
    payments_per_life: tuple[int, int] = (8, 22)
    #: ``[hub] lane_silent_after`` of the hub forwarder: short, so it races lanes that come back
    silent_after: float = 2.0
    #: seconds between two ``pg_ctl stop -m immediate`` (drawn uniformly)
    pg_every: tuple[float, float] = (15.0, 40.0)
    #: seconds between two LAN cuts (one lane each), and how long a cut lasts
    lan_every: tuple[float, float] = (1.0, 5.0)
    lan_cut_for: tuple[float, float] = (0.3, 4.0)
    max_life_seconds: float = 120.0
    device_loss_payments: int = 20
    #: ``[forwarding] idempotency_window`` of lanes and hub forwarder: the crash torture's tiny one by default,
    #: so resends go through the lookup path as they would a day later
    idempotency_window: float = crash.IDEMPOTENCY_WINDOW
    #: wall-time budget of the torture part: past it the run stops short of the targets (and says so)
    max_seconds: float | None = None
    log: Callable[[str], None] = lambda line: None


@dataclass
class FleetStats:
    seed: int = 0
    #: the lanes' figures, counted by the crash torture's own ``account`` and ``verify_station``
    lanes: crash.Stats = field(default_factory=crash.Stats)
    lane_kills: int = 0
    hub_forwarder_kills: int = 0
    postgres_kills: int = 0
    hub_forwarder_runs: Counter[str] = field(default_factory=Counter)
    hub_forwarder_exits: Counter[str] = field(default_factory=Counter)
    lan_cuts: Counter[str] = field(default_factory=Counter)
    lives_by_mode: Counter[str] = field(default_factory=Counter)
    hub: dict[str, int] = field(default_factory=dict)
    final_passes: list[dict[str, Any]] = field(default_factory=list)
    device_loss: dict[str, Any] = field(default_factory=dict)
    ledger_duplicates: int = 0
    #: acknowledged stored payments missing from the hub after the final pass (first 50)
    not_on_hub: list[str] = field(default_factory=list)
    out_of_time: bool = False
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def kills(self) -> int:
        return self.lane_kills + self.hub_forwarder_kills + self.postgres_kills

    @property
    def payments(self) -> int:
        return self.lanes.payments

    def passed(self) -> bool:
        lanes = self.lanes
        return not (
            self.failures
            or lanes.failures
            or lanes.lost
            or lanes.duplicated
            or lanes.unreported_charges
            or self.ledger_duplicates
            or self.device_loss.get("lost", 1)
            or self.device_loss.get("duplicated", 1)
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Counter):
                value = dict(value)
            elif isinstance(value, crash.Stats):
                value = value.to_json()
            out[name] = value
        out["kills"] = self.kills
        out["payments"] = self.payments
        out["passed"] = self.passed()
        return out


# -- configuration -----------------------------------------------------------------------------------


def toml(config: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for these configurations: tables of scalars and lists, and sub-tables."""
    scalars, tables = [], []
    for key, value in config.items():
        if isinstance(value, dict):
            tables.append(toml(value, f"{prefix}{key}."))
        elif value is not None:
            scalars.append(f"{key} = {json.dumps(value)}")
    head = f"[{prefix[:-1]}]\n" if prefix and scalars else ""
    return head + "\n".join(scalars) + "\n" + "\n".join(tables)


def replicator_options(url: str) -> dict[str, Any]:
    return {
        "url": url,
        "password": "",
        "admin_url": "",
        "sslmode": "disable",
        "connect_timeout": 1,
        "statement_timeout": 2.0,
    }


def hub_sections(url: str, lane: str, **hub: Any) -> dict[str, Any]:
    return {
        "hub": {
            "replicator": "postgres",
            "lane": lane,
            "key_provider": "env",
            "interval": 0.3,
            "batch_size": 50,
            **hub,
        },
        "replicator": {"postgres": replicator_options(url)},
        "storage_key": {"env": {"variable": HUB_KEY_VARIABLE}},
    }


class Hub:
    """The cluster, the hub database, its roles, and an administrator's view of its rows."""

    def __init__(self, workdir: Path, key: bytes) -> None:
        import psycopg

        from offterm.plugins.storage.postgres import PostgresReplicator

        self.cluster = Cluster()  # in the system temp dir: `nobody` cannot enter a root-only workdir
        self.cluster.start()
        self.key = key
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{HUB_DATABASE}"')
        options = {
            **replicator_options(""),
            "admin_url": self.cluster.url(database=HUB_DATABASE),
            "sslrootcert": "",
            "sslcert": "",
            "sslkey": "",
        }
        self.admin = PostgresReplicator(options)
        self.admin.initialise(key)
        self.lock = threading.Lock()  # the PostgreSQL killer and the final pass

    def role(self, name: str, *, forwarder: bool = False) -> str:
        """Create login role ``name``; its URL straight to the server (callers may swap the port)."""
        password = "pw-" + name
        self.admin.add_lane(name, password, forwarder=forwarder)
        return self.cluster.url(user=name, password=password, database=HUB_DATABASE)

    def ensure_running(self) -> None:
        with self.lock:
            if not self.cluster.running:
                self.cluster.start()

    def rows(self) -> list[tuple[str, str, str, str | None]]:
        """(offline_id, lane, state, hub_state) of every replicated payment."""
        import psycopg

        with psycopg.connect(self.cluster.dsn(HUB_DATABASE)) as conn:
            cur = conn.execute("SELECT offline_id, lane, state, hub_state FROM hub_payments ORDER BY ingest_seq")
            return [(str(a), str(b), str(c), None if d is None else str(d)) for a, b, c, d in cur.fetchall()]

    def destroy(self) -> None:
        self.cluster.destroy()


class Lane:
    """One lane: a crash-torture station with its hub role and its LAN (a fault proxy in front of PostgreSQL)."""

    def __init__(self, workdir: Path, number: int, hub: Hub, rng: random.Random, window: float) -> None:
        from offterm.sim.netproxy import FaultProxy

        self.number = number
        self.name = f"lane_{number}"
        self.station = crash.Station(workdir, number)
        self.lan = FaultProxy(hub.cluster.port).start()
        self.url = hub.role(self.name).replace(f":{hub.cluster.port}/", f":{self.lan.port}/")
        self.rng = rng
        self.window = window

    def config(self, rig_url: str, seed: int, mode: str, **hub: Any) -> dict[str, Any]:
        config = crash.worker_config(self.station, rig_url, seed)
        config["forwarding"]["idempotency_window"] = self.window
        config.update(hub_sections(self.url, self.name, mode=mode, **hub))
        return config

    def stop(self) -> None:
        self.lan.stop()


class HubForwarders:
    """Runs ``offterm hub forward`` processes: a service SIGKILLed after a while, or ``--once`` passes."""

    def __init__(self, workdir: Path, hub: Hub, rig_url: str, settings: FleetSettings) -> None:
        station_dir = workdir / "hub-forwarder"
        station_dir.mkdir(parents=True, exist_ok=True)
        url = hub.role("hub_forwarder", forwarder=True)
        config = crash.worker_config(crash.Station(workdir, 0), rig_url, settings.seed)
        config["terminal"]["data_dir"] = str(station_dir / "data")
        config["forwarding"]["idempotency_window"] = settings.idempotency_window
        config.update(hub_sections(url, "", lane_silent_after=settings.silent_after, forward_interval=0.5))
        self.toml = station_dir / "offterm.toml"
        self.toml.write_text(toml(config), encoding="utf-8")
        self.stderr = station_dir / "stderr.log"

    def argv(self, *more: str) -> list[str]:
        return [*OFFTERM, "--config", str(self.toml), "hub", "forward", *more]

    def once(self, timeout: float = 120.0) -> dict[str, Any]:
        """One pass to its end; what it did (``--json``), with its exit status."""
        with open(self.stderr, "a", encoding="utf-8") as err:
            done = subprocess.run(
                self.argv("--once", "--json"), capture_output=False, stdout=subprocess.PIPE, stderr=err, timeout=timeout
            )
        try:
            report: dict[str, Any] = json.loads(done.stdout.decode() or "{}")
        except ValueError:
            report = {"output": done.stdout.decode()[-300:]}
        report["status"] = done.returncode
        return report

    def settle(self, passes: int = 12) -> list[dict[str, Any]]:
        """Passes until one takes nothing (bounded)."""
        out = []
        for _ in range(passes):
            report = self.once()
            out.append(report)
            if report["status"] in (0, 1) and report.get("taken") == 0:
                break
            time.sleep(0.5)
        return out


# -- the actors of the torture -------------------------------------------------------------------------


class Fleet:
    def __init__(self, settings: FleetSettings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.stats = FleetStats(seed=settings.seed)
        self.stats.lanes.seed = settings.seed
        self.master = random.Random(settings.seed)
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.rig: crash.Rig | None = None
        self.hub: Hub | None = None
        self.lanes: list[Lane] = []
        self.forwarders: HubForwarders | None = None
        self.threads: list[threading.Thread] = []
        self.lane_threads: list[threading.Thread] = []

    def rng(self) -> random.Random:
        return random.Random(self.master.randrange(2**31))

    def failure(self, message: str) -> None:
        with self.lock:
            self.stats.failures.append(message)
        self.settings.log("FAILURE " + message)

    # -- lanes --

    def plan(
        self, lane: Lane, rig: crash.Rig, rng: random.Random, payments: int, kill: dict[str, Any], mode: str
    ) -> dict[str, Any]:
        return {
            "side_file": str(lane.station.side),
            "life": lane.station.lives,
            "seed": rng.randrange(2**31),
            "payments": payments,
            "forward_every": rng.randint(2, 6),
            "forward_timeout": 2.0,
            "kill": kill,
            "config": lane.config(rig.url, rng.randrange(2**31), mode, sync_timeout=0.3),
        }

    def live(
        self, lane: Lane, rig: crash.Rig, plan: dict[str, Any], point: str, outside: float | None, mode: str
    ) -> None:
        result = crash.run_life(
            lane.station, rig, plan, outside_kill_after=outside, max_seconds=self.settings.max_life_seconds
        )
        with self.lock:
            lane.station.lives += 1
            self.stats.lanes.lives += 1
            self.stats.lives_by_mode[mode] += 1
            before = self.stats.lanes.kills
            crash.account(result, point, lane.station, self.stats.lanes)
            self.stats.lane_kills += self.stats.lanes.kills - before

    def lane_loop(self, lane: Lane, rig: crash.Rig) -> None:
        rng = lane.rng
        while not self.stop_event.is_set():
            payments = rng.randint(*self.settings.payments_per_life)
            mode = "sync" if rng.random() < self.settings.sync_share else "async"
            if rng.random() < self.settings.kill_rate:
                kill, outside = crash.choose_kill(rng, lane.station, payments)
                if outside is not None:
                    outside += 1.5  # a lane life also connects to the hub before its first payment
            else:
                kill, outside = {"point": "none"}, None
            self.live(lane, rig, self.plan(lane, rig, rng, payments, kill, mode), kill["point"], outside, mode)

    # -- the other actors --

    def weather_loop(self, rig: crash.Rig, rng: random.Random) -> None:
        """The crash torture's weather at the processor, changing every few seconds."""
        while not self.stop_event.is_set():
            weather = rng.choices(crash.WEATHERS, weights=crash.WEATHER_WEIGHTS)[0]
            with self.lock:
                self.stats.lanes.weather[weather] += 1
            chaos = crash.start_weather(rig, rng, weather, self.stats.lanes)
            self.stop_event.wait(rng.uniform(3.0, 10.0))
            if chaos is not None:
                chaos.stop()
            crash.calm(rig)

    def lan_loop(self, rng: random.Random) -> None:
        low, high = self.settings.lan_every
        while not self.stop_event.wait(rng.uniform(low, high)):
            lane = rng.choice(self.lanes)
            mode = rng.choice(LAN_CUTS)
            with self.lock:
                self.stats.lan_cuts[mode] += 1
            lane.lan.set_mode(mode)
            self.stop_event.wait(rng.uniform(*self.settings.lan_cut_for))
            lane.lan.set_mode("pass")

    def postgres_loop(self, hub: Hub, rng: random.Random) -> None:
        low, high = self.settings.pg_every
        while not self.stop_event.wait(rng.uniform(low, high)):
            with hub.lock:
                hub.cluster.stop("immediate")
            with self.lock:
                self.stats.postgres_kills += 1
            self.stop_event.wait(rng.uniform(0.3, 3.0))
            hub.ensure_running()

    def forwarder_loop(self, forwarders: HubForwarders, rng: random.Random) -> None:
        while not self.stop_event.is_set():
            once = rng.random() < 0.4
            argv = forwarders.argv("--once", "--json") if once else forwarders.argv()
            if once:
                kill_after: float | None = rng.uniform(0.3, 4.0) if rng.random() < 0.5 else None
            else:
                kill_after = rng.uniform(2.0, 12.0)
            with open(forwarders.stderr, "a", encoding="utf-8") as err:
                proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
                deadline = time.monotonic() + (kill_after if kill_after is not None else 120.0)
                while proc.poll() is None and time.monotonic() < deadline and not self.stop_event.is_set():
                    time.sleep(0.05)
                killed = proc.poll() is None
                if killed:
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            with self.lock:
                self.stats.hub_forwarder_runs["once" if once else "service"] += 1
                if killed and not self.stop_event.is_set():
                    self.stats.hub_forwarder_kills += 1
                    self.stats.hub_forwarder_exits["SIGKILL"] += 1
                elif not killed:
                    self.stats.hub_forwarder_exits[str(proc.returncode)] += 1
            if not killed and proc.returncode not in (0, 1, 6):  # 6: the hub is down (PostgreSQL killed)
                self.failure(f"offterm hub forward exited with status {proc.returncode} (see {forwarders.stderr})")
            self.stop_event.wait(rng.uniform(0.0, 1.0))

    def start_thread(self, target: Callable[..., None], *args: Any, lane: bool = False) -> None:
        thread = threading.Thread(target=self._guarded, args=(target, *args), daemon=True)
        thread.start()
        (self.lane_threads if lane else self.threads).append(thread)

    def _guarded(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:  # noqa: BLE001 - a harness failure is reported, never swallowed
            self.failure(f"harness thread {target.__name__} failed: {type(exc).__name__}: {exc}")
            self.stop_event.set()

    # -- the run --

    def torture(self, rig: crash.Rig, hub: Hub) -> None:
        settings, stats = self.settings, self.stats
        started = time.monotonic()
        for lane in self.lanes:  # a POS must have been online once before it may store anything
            plan = self.plan(lane, rig, lane.rng, 2, {"point": "none"}, "sync")
            self.live(lane, rig, plan, "none", None, "sync")
        assert self.forwarders is not None
        for lane in self.lanes:
            self.start_thread(self.lane_loop, lane, rig, lane=True)
        self.start_thread(self.weather_loop, rig, self.rng())
        self.start_thread(self.lan_loop, self.rng())
        self.start_thread(self.postgres_loop, hub, self.rng())
        self.start_thread(self.forwarder_loop, self.forwarders, self.rng())
        last_log = 0.0
        while not self.stop_event.is_set():
            time.sleep(0.5)
            elapsed = time.monotonic() - started
            met = stats.kills >= settings.kills and stats.payments >= settings.payments
            over = settings.max_seconds is not None and elapsed > settings.max_seconds
            if elapsed - last_log > 30:
                last_log = elapsed
                settings.log(
                    f"fleet: kills={stats.kills} (lanes {stats.lane_kills}, hub forwarder {stats.hub_forwarder_kills}, "
                    f"postgres {stats.postgres_kills}) payments={stats.payments} lives={stats.lanes.lives} "
                    f"failures={len(stats.failures) + len(stats.lanes.failures)} t={elapsed:.0f}s"
                )
            if met or over:
                stats.out_of_time = over and not met
                break
        self.stop_event.set()
        for thread in self.threads + self.lane_threads:
            thread.join(timeout=settings.max_life_seconds + 60)
            if thread.is_alive():
                self.failure(f"harness thread {thread.name} did not stop")

    def final_pass(self, rig: crash.Rig, hub: Hub) -> None:
        """Calm everything; the hub forwarder passes, every lane drains, the hub forwarder passes again."""
        assert self.forwarders is not None
        crash.calm(rig)
        for lane in self.lanes:
            lane.lan.set_mode("pass")
        hub.ensure_running()
        time.sleep(max(2.1, self.settings.silent_after + 0.5))  # leases of killed processes, lanes silent
        self.stats.final_passes += self.forwarders.settle()
        for lane in self.lanes:
            plan = {
                "side_file": str(lane.station.side),
                "life": lane.station.lives,
                "seed": 0,
                "payments": 0,
                "drain": True,
                "drain_seconds": 60.0,
                "config": lane.config(rig.url, 0, "async"),
            }
            result = crash.run_life(lane.station, rig, plan, outside_kill_after=None, max_seconds=120.0)
            drained = [r for r in result.records if r.get("e") == "drained"]
            if result.returncode != 0 or not drained:
                self.failure(
                    f"{lane.name}: the final drain did not finish (status {result.returncode}, "
                    f"{drained[-1] if drained else 'no drain record'}): {result.stderr[-500:]}"
                )
            # a last quiet life: the lane's replication loop sends what the drain changed (and what a
            # killed life stored without reaching the hub), so the hub's view is whole for the checks
            plan = {**plan, "drain": False, "linger": 2.0, "kill": {"point": "none"}}
            crash.run_life(lane.station, rig, plan, outside_kill_after=None, max_seconds=60.0)
        time.sleep(self.settings.silent_after + 0.5)
        self.stats.final_passes += self.forwarders.settle()
        self.check_passes(self.stats.final_passes, "final pass")

    def check_passes(self, passes: list[dict[str, Any]], where: str) -> None:
        """Every calm ``offterm hub forward --once`` must end its pass (0, or 1: a payment needs attention)."""
        for report in passes:
            if report["status"] not in (0, 1) or "taken" not in report:
                self.failure(f"{where}: offterm hub forward --once failed: {report}")

    def verify(self, rig: crash.Rig, hub: Hub) -> None:
        ledger = rig.sim.ledger()
        charged = {oid: sum(1 for c in charges if c["status"] == "succeeded") for oid, charges in ledger.items()}
        known: set[str] = set()
        for lane in self.lanes:
            known |= crash.verify_station(lane.station, rig, self.stats.lanes, ledger)
        known |= set(self.stats.device_loss.get("ids", ()))
        crash.check_strangers(rig, self.stats.lanes, known)
        for oid, n in charged.items():
            if n > 1:
                self.stats.ledger_duplicates += 1
                self.failure(f"{oid} is charged {n} times on the ledger")
        rows = hub.rows()
        figures: Counter[str] = Counter()
        acknowledged = {rec["id"] for lane in self.lanes for rec in lane.station.records() if rec.get("e") == "stored"}
        for oid, lane_name, state, hub_state in rows:
            figures["rows"] += 1
            figures[f"lane state {state}"] += 1
            if hub_state is not None:
                figures[f"decided by the hub forwarder: {hub_state}"] += 1
                if hub_state == "forwarded" and charged.get(oid, 0) != 1:
                    self.failure(
                        f"{lane_name} {oid}: the hub forwarded it but it is charged {charged.get(oid, 0)} times"
                    )
                if hub_state == "declined" and charged.get(oid, 0):
                    self.failure(f"{lane_name} {oid}: the hub decided declined but it is charged")
            elif state in WAITING:
                figures["still waiting on the hub"] += 1
            if oid in acknowledged:
                figures["acknowledged stored payments on the hub"] += 1
        figures["acknowledged stored payments"] = len(acknowledged)
        on_hub = {row[0] for row in rows}
        missing = sorted(acknowledged - on_hub)
        self.stats.not_on_hub = missing[:50]
        if missing:  # the final pass ran every lane's replication with the LAN and the hub up
            self.failure(f"{len(missing)} acknowledged stored payments never reached the hub, e.g. {missing[0]}")
        self.stats.hub = dict(figures)

    def run(self) -> FleetStats:
        from offterm.core.logs import configure_logging

        configure_logging(level="error")
        settings = self.settings
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        key = bytes(self.master.randrange(256) for _ in range(32))
        saved_key = os.environ.get(HUB_KEY_VARIABLE)
        os.environ[HUB_KEY_VARIABLE] = key.hex()
        rig = hub = None
        try:
            rig = self.rig = crash.Rig(self.workdir / "simulator.log")
            hub = self.hub = Hub(self.workdir, key)
            self.forwarders = HubForwarders(self.workdir, hub, rig.url, settings)
            settings.log("fleet: device loss")
            self.stats.device_loss = device_loss(self, rig, hub)
            self.check_passes(self.stats.device_loss["hub_forward_passes"], "device loss")
            self.lanes = [
                Lane(self.workdir, n, hub, self.rng(), settings.idempotency_window)
                for n in range(1, settings.lanes + 1)
            ]
            settings.log(
                f"fleet: torture, {settings.lanes} lanes, targets {settings.kills} kills / {settings.payments} payments"
            )
            self.torture(rig, hub)
            settings.log("fleet: final pass")
            self.final_pass(rig, hub)
            self.verify(rig, hub)
        finally:
            self.stop_event.set()
            for thread in self.threads + self.lane_threads:
                thread.join(timeout=settings.max_life_seconds + 60)
            for lane in self.lanes:
                lane.stop()
            try:
                if rig is not None:
                    self.stats.lanes.sim_faults = dict(rig.sim.injected())
                    rig.stop()
            finally:
                if hub is not None:
                    hub.destroy()
                if saved_key is None:
                    os.environ.pop(HUB_KEY_VARIABLE, None)
                else:
                    os.environ[HUB_KEY_VARIABLE] = saved_key
                self.stats.seconds = round(time.monotonic() - started, 1)
        return self.stats


def device_loss(fleet: Fleet, rig: crash.Rig, hub: Hub) -> dict[str, Any]:
    """A lane in sync mode with the LAN up stores payments, is SIGKILLed and loses its data directory;
    the hub forwarder must charge every payment its app was told was stored, exactly once."""
    from offterm.sim.netproxy import FaultProxy

    assert fleet.forwarders is not None
    lane = Lane(fleet.workdir, 99, hub, fleet.rng(), fleet.settings.idempotency_window)
    processor = FaultProxy(rig.sim.port).start()  # this lane's own internet (the fleet's stays up)
    try:
        calm = {"point": "none"}
        first = fleet.plan(lane, rig, lane.rng, 2, calm, "sync")
        first["config"] = lane.config(processor.url, 1, "sync", sync_timeout=2.0)
        first.update(behavior_weights=(100, 0, 0), cards=("visa",))  # online, while the internet is up
        crash.run_life(lane.station, rig, first, outside_kill_after=None, max_seconds=60.0)
        processor.set_mode("down")  # the internet is gone; the LAN (to the hub) is up
        n = fleet.settings.device_loss_payments
        plan = fleet.plan(lane, rig, lane.rng, n, {"point": "after_confirm", "nth": n}, "sync")
        plan.update(behavior_weights=(0, 100, 0), cards=("visa",), forward_every=n + 1)
        plan["config"] = lane.config(processor.url, 2, "sync", sync_timeout=2.0)
        result = crash.run_life(lane.station, rig, plan, outside_kill_after=None, max_seconds=120.0)
        shutil.rmtree(lane.station.data)  # the device is gone, and its store with it
        stored = [r["id"] for r in lane.station.records() if r.get("e") == "stored"]
        online = [r["id"] for r in lane.station.records() if r.get("e") == "online"]
        time.sleep(fleet.settings.silent_after + 0.5)
        passes = fleet.forwarders.settle()
    finally:
        processor.stop()
        lane.stop()
    charged = rig.sim.successful_charges()
    rows = {oid: (state, hub_state) for oid, name, state, hub_state in hub.rows() if name == lane.name}
    lost = [oid for oid in stored + online if charged.get(oid, 0) == 0]
    doubled = [oid for oid in stored + online if charged.get(oid, 0) > 1]
    for oid in lost:
        fleet.failure(f"device loss: {oid} was acknowledged but is not charged")
    for oid in doubled:
        fleet.failure(f"device loss: {oid} is charged {charged[oid]} times")
    return {
        "mode": "sync",
        "killed": result.returncode == -signal.SIGKILL,
        "acknowledged_stored": len(stored),
        "on_the_hub": sum(1 for oid in stored if oid in rows),
        "forwarded_by_the_hub": sum(1 for oid in stored if rows.get(oid, ("", None))[1] == "forwarded"),
        "charged_once": sum(1 for oid in stored if charged.get(oid, 0) == 1),
        "lost": len(lost),
        "duplicated": len(doubled),
        "hub_forward_passes": passes,
        "ids": stored + online,
    }


def run(settings: FleetSettings, workdir: Path) -> FleetStats:
    """Device loss, then the torture until both targets are met (or the budget ends), the final pass, the checks."""
    return Fleet(settings, workdir).run()


def summary(stats: dict[str, Any]) -> str:
    """The figures as a Markdown table (from ``FleetStats.to_json()``)."""
    lanes = stats["lanes"]
    loss = stats["device_loss"]
    hub = stats["hub"]
    reported = lanes["reported"]
    acked = " / ".join(f"{reported.get(k, 0):,}" for k in ("stored", "online", "declined"))
    on_hub = (
        f"{hub.get('acknowledged stored payments on the hub', 0):,} of {hub.get('acknowledged stored payments', 0):,}"
    )
    loss_figures = " / ".join(str(loss.get(k)) for k in ("acknowledged_stored", "on_the_hub", "charged_once", "lost"))
    rows = [
        ("SIGKILLs / stops, all told", f"{stats['kills']:,}"),
        ("- lane processes (SIGKILL)", f"{stats['lane_kills']:,}"),
        ("- hub forwarder processes (SIGKILL)", f"{stats['hub_forwarder_kills']:,}"),
        ("- PostgreSQL (`pg_ctl stop -m immediate`)", f"{stats['postgres_kills']:,}"),
        (
            "lane lives (POS processes), sync / async",
            f"{lanes['lives']:,} ({stats['lives_by_mode'].get('sync', 0)} / {stats['lives_by_mode'].get('async', 0)})",
        ),
        (
            "payments acknowledged to the app (stored / online / declined)",
            f"{stats['payments']:,} ({acked})",
        ),
        ("LAN cuts (down / black hole / reset)", " / ".join(str(stats["lan_cuts"].get(m, 0)) for m in LAN_CUTS)),
        ("processor faults injected (simulator)", f"{sum(lanes['sim_faults'].values()):,}"),
        (
            "hub forwarder runs (service / --once)",
            f"{stats['hub_forwarder_runs'].get('service', 0)} / {stats['hub_forwarder_runs'].get('once', 0)}",
        ),
        (
            "payments decided by the hub forwarder (forwarded)",
            str(hub.get("decided by the hub forwarder: forwarded", 0)),
        ),
        (
            "acknowledged stored payments on the hub at the end",
            on_hub,
        ),
        ("**lost** (acknowledged, not charged once nor in a named final state)", f"**{lanes['lost']}**"),
        (
            "**charged twice** (lanes' payments / whole ledger)",
            f"**{lanes['duplicated']} / {stats['ledger_duplicates']}**",
        ),
        ("unreported charges", str(lanes["unreported_charges"])),
        (
            "device loss (sync, LAN up): acknowledged / on the hub / charged once / lost",
            loss_figures,
        ),
        ("targets met within the time budget", "no (ran out of time)" if stats["out_of_time"] else "yes"),
        ("failures", str(len(stats["failures"]) + len(lanes["failures"]))),
        ("wall time (s)", str(stats["seconds"])),
    ]
    lines = ["| figure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)
