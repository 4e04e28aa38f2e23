"""The offterm command, through click's runner and as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from offterm.cli.main import cli

OFFTERM = [sys.executable, "-c", "from offterm.cli.main import main; main()"]


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_demo_json_reports_no_duplicates():
    result = run("demo", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["duplicates_on_processor"] == 0
    assert summary["stored"] == 4 and summary["forwarded"] == 3 and summary["declined"] == 1
    assert summary["remaining"] == 0 and summary["needs_attention"] == 0


def test_demo_as_a_real_subprocess_tells_the_whole_story():
    proc = subprocess.run(
        [*OFFTERM, "demo"], capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "120"}
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for phrase in (
        "1. Online",
        "2. Outage",
        "3. Offline",
        "4. Reboot",
        "5. Recovery",
        "Reconciliation",
        "stored, not yet authorised",
        "card_swipe_not_available",
        "amount_exceeds_max_offline_amount",
        "duplicate charges on the processor: 0",
    ):
        assert phrase in out, f"demo output lacks {phrase!r}"
    assert "4242424242424242" not in out + proc.stderr


def test_status_json(world):
    result = run("--config", str(world["config"]), "status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["offline_payments_count"] == 2
    assert data["offline_payment_amounts_by_currency"] == {"usd": 3000}
    assert data["network_status"] == "offline"
    assert data["oldest_stored_at"]


def test_payments_list_and_show(world):
    result = run("--config", str(world["config"]), "payments", "list", "--json")
    rows = json.loads(result.stdout)
    assert [r["offline_id"] for r in rows] == world["ids"]
    assert {r["state"] for r in rows} == {"stored"}
    assert rows[0]["last4"] == "4242" and "card" not in rows[0]
    shown = json.loads(run("--config", str(world["config"]), "payments", "show", world["ids"][0], "--json").stdout)
    assert shown["history"][0]["to"] == "stored"
    missing = run("--config", str(world["config"]), "payments", "show", "offpi_nope")
    assert missing.exit_code == 1, "the store opened: exit 3 would say it could not be"
    assert "payment_not_found" in missing.stderr


def test_forward_exit_code_follows_what_remains(world):
    cfg = str(world["config"])
    result = run("--config", cfg, "forward", "--json", "--timeout", "5")
    assert result.exit_code == 1, "the network is down: payments remain"
    assert json.loads(result.stdout)["remaining"] == 2
    world["proxy"].set_mode("pass")
    result = run("--config", cfg, "forward", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["remaining"] == 0
    charges = world["sim"].successful_charges()
    assert charges[world["ids"][0]] == 1 and charges.get(world["ids"][1], 0) == 0
    states = {
        r["offline_id"]: r["state"] for r in json.loads(run("--config", cfg, "payments", "list", "--json").stdout)
    }
    assert states == {world["ids"][0]: "forwarded", world["ids"][1]: "declined"}


def test_export_jsonl_and_csv(world, tmp_path):
    cfg = str(world["config"])
    lines = run("--config", cfg, "export", "--format", "jsonl").stdout.strip().splitlines()
    assert [json.loads(line)["offline_id"] for line in lines] == world["ids"]
    out = tmp_path / "rec.csv"
    assert run("--config", cfg, "export", "--format", "csv", "-o", str(out)).exit_code == 0
    text = out.read_text()
    assert text.splitlines()[0].startswith("offline_id,")
    assert world["ids"][1] in text and "4242424242424242" not in text


def test_doctor_reports_each_check(world):
    result = run("--config", str(world["config"]), "doctor", "--json")
    checks = {c["check"]: c for c in json.loads(result.stdout)}
    assert {"config", "plugins", "components", "store", "processor", "backend"} <= set(checks)
    assert checks["store"]["status"] == "ok"
    assert checks["processor"]["status"] == "fail", "the proxy is down"
    assert result.exit_code == 1
    world["proxy"].set_mode("pass")
    result = run("--config", str(world["config"]), "doctor", "--json")
    checks = {c["check"]: c for c in json.loads(result.stdout)}
    assert checks["processor"]["status"] == "ok" and checks["backend"]["status"] == "ok"
    assert result.exit_code == 0, result.stdout


def test_bad_config_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[forwarding]\nconcurrency = 0\n")
    result = run("--config", str(bad), "status")
    assert result.exit_code == 2
    assert "forwarding.concurrency" in result.stderr


def test_wrong_storage_key_exits_3(world, tmp_path):
    (tmp_path / "pos" / "storage.key").write_bytes(os.urandom(32).hex().encode())
    result = run("--config", str(world["config"]), "status")
    assert result.exit_code == 3
    assert "wrong_storage_key" in result.stderr


def test_unknown_component_exits_4(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[terminal]\ndata_dir = "{tmp_path}"\n[storage]\nbackend = "postgres"\n')
    result = run("--config", str(cfg), "status")
    assert result.exit_code == 4
    assert "Choose one of: memory, sqlcipher" in result.stderr


def test_plugins_lists_bundled_components():
    result = run("plugins", "--json", env={"OFFTERM_CONFIG": os.devnull})
    data = json.loads(result.stdout)
    assert {"sqlcipher", "stripe", "simulated-reader"} <= {p["name"] for p in data["plugins"]}
    assert data["components"]["storage"]["sqlcipher"] == "sqlcipher"


def test_plugins_as_subprocess_with_env_disable():
    proc = subprocess.run(
        [*OFFTERM, "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OFFTERM_DISABLE_PLUGINS": "stripe", "OFFTERM_CONFIG": os.devnull},
    )
    assert proc.returncode == 0, proc.stderr
    assert "stripe" not in {p["name"] for p in json.loads(proc.stdout)["plugins"]}


def test_sim_command_serves_over_http(tmp_path):
    proc = subprocess.Popen([*OFFTERM, "sim", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on http://" in line, line
        url = line.strip().rsplit(" ", 1)[-1]
        deadline = time.monotonic() + 10
        while True:
            try:
                resp = httpx.get(url + "/_sim/ledger", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert resp.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_sim_rejects_bad_fault_settings():
    result = run("sim", "--error-rate", "503=2.0")
    assert result.exit_code == 2


def test_reader_emulator_serial_prints_its_pty(tmp_path):
    proc = subprocess.Popen(
        [*OFFTERM, "reader-emulator", "--serial"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        first = proc.stdout.readline().strip()
        assert first.startswith("/dev/pts/"), first
        assert os.path.exists(first.split()[0])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_help_documents_exit_codes():
    result = run("--help")
    assert "Exit codes" in result.output and "payment store could not be opened" in result.output


@pytest.mark.parametrize(
    ("args", "expect_code"),
    [
        (["status", "--json"], 0),
        (["payments", "list", "--json"], 0),
        (["export", "--format", "csv"], 0),
        (["doctor", "--json"], 1),  # the network is down: the processor check fails
        (["forward", "--json", "--timeout", "3"], 1),  # ... so payments remain
    ],
)
def test_store_commands_as_real_subprocesses(world, args, expect_code):
    proc = subprocess.run(
        [*OFFTERM, "--config", str(world["config"]), *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == expect_code, proc.stderr
    assert world["ids"][0] in proc.stdout or args[0] in ("status", "doctor", "forward")
    assert "4242424242424242" not in proc.stdout + proc.stderr


def test_payments_show_as_a_real_subprocess(world):
    proc = subprocess.run(
        [*OFFTERM, "--config", str(world["config"]), "payments", "show", world["ids"][1], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["offline_id"] == world["ids"][1]


def test_reader_emulator_help_through_the_runner():
    result = CliRunner().invoke(cli, ["reader-emulator", "--help"])
    assert result.exit_code == 0
    assert "--serial" in result.output and "--tcp" in result.output
