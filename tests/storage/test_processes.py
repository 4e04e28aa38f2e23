"""Real OS processes on one database: exclusive claims, SIGKILL after store, crashed forwarders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from storage_testkit import make_store, new_payment, worker_cmd

from offterm.core.contracts.storage import PaymentState
from offterm.plugins.storage.keys import StaticKeyProvider

pytestmark = pytest.mark.slow


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(worker_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def test_two_processes_never_forward_the_same_payment(tmp_path: Path, key: bytes) -> None:
    store = make_store(tmp_path)
    store.open(StaticKeyProvider(key))
    ids = {store.store(new_payment(i)).offline_id for i in range(300)}
    store.close()

    go = tmp_path / "go"
    procs = [spawn("forward", str(tmp_path), key.hex(), f"worker{n}", str(go)) for n in range(2)]
    claimed: list[list[str]] = []
    try:
        for proc in procs:  # both have opened the database before either starts
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        go.touch()
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            claimed.append([line.split()[1] for line in out.splitlines() if line.startswith("claimed ")])
    finally:
        for proc in procs:
            reap(proc)

    first, second = claimed
    assert first and second, "both processes took part"
    assert not set(first) & set(second), "no payment was claimed by both processes"
    assert len(first) + len(second) == len(ids) and set(first) | set(second) == ids

    store = make_store(tmp_path)
    store.open(StaticKeyProvider(key))
    try:
        done = store.list_payments()
        assert {p.state for p in done} == {PaymentState.FORWARDED}
        assert all(p.attempts == 1 for p in done)
        by_owner = {p.offline_id: p.intent_id for p in done}
        assert {by_owner[i] for i in first} == {"pi_worker0"}
        assert {by_owner[i] for i in second} == {"pi_worker1"}
    finally:
        store.close()


def test_a_payment_reported_stored_survives_sigkill(tmp_path: Path, key: bytes) -> None:
    proc = spawn("store", str(tmp_path), key.hex(), "100000")
    reported: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            reported.append(line.split()[1])
            if len(reported) == 150:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=30)
    finally:
        reap(proc)
    assert proc.returncode == -signal.SIGKILL

    store = make_store(tmp_path)
    store.open(StaticKeyProvider(key))
    try:
        present = {p.offline_id: p for p in store.list_payments()}
        missing = [pid for pid in reported if pid not in present]
        assert missing == [], "every payment reported as stored is on disk after a SIGKILL"
        assert all(present[pid].state is PaymentState.STORED for pid in reported)
        assert store.summary().pending_count == len(present)
    finally:
        store.close()


def test_claims_of_a_killed_forwarder_are_recovered_at_start_up(tmp_path: Path, key: bytes) -> None:
    store = make_store(tmp_path)
    store.open(StaticKeyProvider(key))
    ids = [store.store(new_payment(i)).offline_id for i in range(6)]
    store.close()

    proc = spawn("claim-and-hang", str(tmp_path), key.hex(), "2")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready "), line
        info = json.loads(line.split(" ", 1)[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        reap(proc)
    assert sorted(info["claimed"]) == sorted(ids)

    store = make_store(tmp_path)
    store.open(StaticKeyProvider(key))
    try:
        assert {p.state for p in store.list_payments()} == {PaymentState.FORWARDING}
        assert store.claim("me", 10, 30, datetime.now(UTC)) == [], "a live lease is respected"
        assert store.recover_expired_claims(datetime.now(UTC) + timedelta(seconds=31)) == 6
        sent = set(info["sent"])
        for pid in ids:
            got = store.get(pid)
            if pid in sent:
                assert got.state is PaymentState.OUTCOME_UNKNOWN and got.attempts == 1
            else:
                assert got.state is PaymentState.STORED and got.attempts == 0
        again = store.claim("me", 10, 30, datetime.now(UTC) + timedelta(seconds=31))
        assert sorted(p.offline_id for p in again) == sorted(ids)
        assert {p.offline_id: p.idempotency_key for p in again} == {
            pid: store.get(pid).idempotency_key for pid in ids
        }, "the same idempotency key is reused after the crash"
    finally:
        store.close()
