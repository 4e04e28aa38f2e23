"""``offterm hub init / add-lane / status`` and ``offterm doctor``'s hub check, against a real PostgreSQL.

Driven through click's runner with a real configuration file, as an operator runs them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from pgcluster import HUB_KEY
from test_replicator import payment, record

from offterm.cli.main import cli
from offterm.core.contracts import PaymentState
from offterm.plugins.storage.postgres import PostgresReplicator
from offterm.plugins.storage.postgres.schema import SCHEMA_VERSION

KEY_VAR = "OFFTERM_TEST_CLI_HUB_KEY"


def write_config(path: Path, *, admin_url: str, url: str = "", lane: str = "", silent_after: float = 120) -> Path:
    path.write_text(
        f"""
[terminal]
data_dir = "{path.parent / "pos"}"
[plugins]
autoload = false
[hub]
replicator = "postgres"
key_provider = "env"
lane = "{lane}"
lane_silent_after = {silent_after}
[storage_key.env]
variable = "{KEY_VAR}"
[replicator.postgres]
admin_url = "{admin_url}"
url = "{url}"
sslmode = "disable"
"""
    )
    return path


def run(config: Path, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, ["--config", str(config), *args], env={KEY_VAR: HUB_KEY.hex(), **(env or {})})


def test_init_add_lane_and_status_on_a_fresh_hub(pg, hub_db, tmp_path) -> None:
    admin = pg.url(database=hub_db)
    config = write_config(tmp_path / "offterm.toml", admin_url=admin)

    first = run(config, "hub", "init", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.output) == {"schema_version": SCHEMA_VERSION}
    assert run(config, "hub", "init").exit_code == 0  # again: nothing to do

    lane, other = f"lane_a_{hub_db}", f"lane_b_{hub_db}"
    for name in (lane, other):
        added = run(config, "hub", "add-lane", name, "--password", "pw-" + name)
        assert added.exit_code == 0, added.output
        assert "pw-" not in added.output  # the password is never echoed
    # the role logs in, and row-level security binds it to its own rows
    lane_url = pg.url(user=lane, password="pw-" + lane, database=hub_db)
    replicator = PostgresReplicator({**_options(admin_url=""), "url": lane_url})
    replicator.open(HUB_KEY)
    replicator.replicate([record(lane, payment(1, amount=1500)), record(lane, payment(2, amount=700))])
    replicator.replicate([record(lane, payment(3, amount=900, state=PaymentState.NEEDS_ATTENTION))])
    replicator.heartbeat(lane, datetime.now(UTC), None)
    replicator.close()

    shown = run(config, "hub", "status", "--json")
    assert shown.exit_code == 1, shown.output  # a payment needs attention
    lanes = {entry["lane"]: entry for entry in json.loads(shown.output)["lanes"]}
    mine = lanes[lane]
    assert mine["states"]["stored"] == {"count": 2, "amounts": {"usd": 2200}}
    assert mine["states"]["needs_attention"] == {"count": 1, "amounts": {"usd": 900}}
    assert mine["replication_lag_seconds"] == 0 and mine["silent"] is False
    assert mine["oldest_stored_at"] is not None
    table = run(config, "hub", "status", env={"COLUMNS": "200"})
    assert lane in table.output and "22.00 USD" in table.output


def test_status_of_a_silent_lane_and_typed_failures(hub, tmp_path) -> None:
    lane_url = hub.lane("lane_s")
    lane = f"lane_s_{hub.database}"
    r = hub.replicator(lane_url)
    r.replicate([record(lane, payment(1))])
    r.heartbeat(lane, datetime.now(UTC) - timedelta(seconds=30), None)
    r.close()
    config = write_config(tmp_path / "offterm.toml", admin_url=hub.admin_url, silent_after=10)
    shown = run(config, "hub", "status", "--json")
    assert shown.exit_code == 1
    [entry] = [e for e in json.loads(shown.output)["lanes"] if e["lane"] == lane]
    assert entry["silent"] is True

    wrong = run(config, "hub", "init", env={KEY_VAR: "ab" * 32})
    assert wrong.exit_code == 6 and "wrong_hub_key" in wrong.output

    no_hub = tmp_path / "none.toml"
    no_hub.write_text("[plugins]\nautoload = false\n")
    assert run(no_hub, "hub", "status").exit_code == 2

    hub.cluster.stop("fast")
    try:
        down = run(config, "hub", "status")
        assert down.exit_code == 6 and "hub_unavailable" in down.output
    finally:
        hub.cluster.start()


def test_doctor_checks_the_hub(hub, tmp_path) -> None:
    lane_url = hub.lane("lane_d")
    lane = f"lane_d_{hub.database}"
    config = write_config(tmp_path / "offterm.toml", admin_url="", url=lane_url, lane=lane)
    checks = {c["check"]: c for c in json.loads(run(config, "doctor", "--json").output)}
    assert checks["hub"]["status"] == "warn" and "no heartbeat" in checks["hub"]["detail"]

    r = hub.replicator(lane_url)
    r.heartbeat(lane, datetime.now(UTC), None)
    r.close()
    checks = {c["check"]: c for c in json.loads(run(config, "doctor", "--json").output)}
    assert checks["hub"]["status"] == "ok", checks["hub"]
    assert lane_url.split("@")[0] not in checks["hub"]["detail"]  # no credentials in the report

    bad = {c["check"]: c for c in json.loads(run(config, "doctor", "--json", env={KEY_VAR: "cd" * 32}).output)}
    assert bad["hub"]["status"] == "fail" and bad["hub"]["code"] == "wrong_hub_key"


def _options(**more):
    base = {
        "url": "",
        "password": "",
        "admin_url": "",
        "sslmode": "disable",
        "sslrootcert": "",
        "sslcert": "",
        "sslkey": "",
        "connect_timeout": 2,
        "statement_timeout": 5.0,
    }
    return {**base, **more}


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch) -> None:
    for var in ("OFFTERM_CONFIG", "OFFTERM_REPLICATOR_POSTGRES_ADMIN_URL", "OFFTERM_REPLICATOR_POSTGRES_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
