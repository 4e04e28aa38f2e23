"""Issue #14, "An operator must never be misled": what the store commands say, create and exit with."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import offterm.cli._inspection as inspection
import offterm.cli.main as cli_main
from offterm.cli.main import PAYMENT_COLUMNS, cli
from offterm.core import Terminal, hookimpl
from offterm.core.registrations import StorageBackendRegistration

OFFTERM = [sys.executable, "-c", "from offterm.cli.main import main; main()"]
READ_ONLY_COMMANDS = [
    ["status"],
    ["payments", "list"],
    ["payments", "show", "offpi_"],
    ["export", "--format", "csv"],
    ["doctor"],
]


def run(*args: str, env: dict[str, str | None] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def with_data_dir(world: dict[str, Any], tmp_path: Path, data_dir: Path, name: str = "other.toml") -> Path:
    """The world's configuration file, pointed at another data directory."""
    text = world["config"].read_text().replace(str(world["config"].parent / "pos"), str(data_dir))
    path = tmp_path / name
    path.write_text(text)
    return path


# -- 1. nothing is created; a missing store is said, with its own exit code ---------------------------


@pytest.mark.parametrize("args", READ_ONLY_COMMANDS, ids=lambda a: " ".join(a))
def test_a_mistyped_data_dir_creates_nothing_and_exits_5(world, tmp_path: Path, args: list[str]) -> None:
    typo = tmp_path / "pso"
    config = with_data_dir(world, tmp_path, typo)
    result = run("--config", str(config), *args)
    assert result.exit_code == 5, result.output + result.stderr
    said = result.stdout + result.stderr
    assert "storage_not_found" in said and str(typo / "payments.db") in said.replace("\n", "")
    assert not typo.exists(), f"`offterm {' '.join(args)}` created {sorted(p.name for p in typo.rglob('*'))}"


def test_status_of_the_real_store_still_counts_its_payments(world) -> None:
    result = run("--config", str(world["config"]), "status", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["offline_payments_count"] == 2


@pytest.fixture
def defaults_only(world, tmp_path: Path) -> Iterator[dict[str, str | None]]:
    """No configuration file anywhere; the world's store in platformdirs' default data directory."""
    data_home, config_home = tmp_path / "xdg-data", tmp_path / "xdg-config"
    config_home.mkdir()
    shutil.copytree(world["config"].parent / "pos", data_home / "offterm")
    yield {"XDG_DATA_HOME": str(data_home), "XDG_CONFIG_HOME": str(config_home), "OFFTERM_CONFIG": None}


def test_read_only_commands_run_with_no_config_file_and_no_token_url(world, defaults_only) -> None:
    status = run("status", "--json", env=defaults_only)
    assert status.exit_code == 0, status.stderr
    assert json.loads(status.stdout)["offline_payments_count"] == 2
    listed = run("payments", "list", "--json", env=defaults_only)
    assert [r["offline_id"] for r in json.loads(listed.stdout)] == world["ids"]
    assert run("export", env=defaults_only).stdout.count("offpi_") == 2
    doctor = run("doctor", "--json", env=defaults_only)
    checks = {c["check"]: c for c in json.loads(doctor.stdout)}
    assert checks["config"]["detail"].startswith("none: defaults"), checks["config"]
    assert checks["store"]["status"] == "ok", "the store is checked without a token backend"
    assert checks["backend"]["status"] == "fail" and "tokens.http.url" in checks["backend"]["detail"]
    assert doctor.exit_code == 1


def test_doctor_names_the_config_file_it_loaded(world) -> None:
    result = run("--config", str(world["config"]), "doctor", "--json")
    config = next(c for c in json.loads(result.stdout) if c["check"] == "config")
    assert config["detail"].startswith(f"loaded from {world['config']}")


# -- 2. read-only or unavailable store, a plugin of the wrong type: coded errors, no traceback ----------


def _run_read_only(data_dir: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run offterm with ``data_dir`` really read-only: a read-only bind mount (root), else its mode."""
    if os.geteuid() != 0:
        data_dir.chmod(0o500)
        try:
            return subprocess.run([*OFFTERM, *args], capture_output=True, text=True, timeout=60)
        finally:
            data_dir.chmod(0o700)
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
        pytest.fail("as root this test needs `unshare --mount` to make a read-only bind mount")
    d = str(data_dir)
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", d, *OFFTERM, *args], capture_output=True, text=True, timeout=60
    )


def test_a_read_only_store_directory_is_a_coded_error_exit_3(world) -> None:
    proc = _run_read_only(world["config"].parent / "pos", ["--config", str(world["config"]), "status"])
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "error [storage_error]" in proc.stderr
    assert "Read-only file system" in proc.stderr or "Permission denied" in proc.stderr or "READONLY" in proc.stderr


def test_a_data_dir_that_is_a_file_is_a_coded_error_exit_3(world, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run("--config", str(with_data_dir(world, tmp_path, blocker / "pos")), "payments", "list")
    assert result.exit_code == 3 and "storage_error" in result.stderr and "Not a directory" in result.stderr


class WrongTypePlugin:
    """A third-party plugin whose storage factory returns something that is not a PaymentStore."""

    @hookimpl
    def offterm_storage_backends(self) -> Iterator[StorageBackendRegistration]:
        yield StorageBackendRegistration(name="acme", factory=lambda ctx: {"not": "a store"})


def test_a_factory_of_the_wrong_type_is_a_plugin_error_exit_4(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = inspection.create_plugin_manager

    def with_acme(**kwargs: Any) -> Any:
        kwargs["plugins"] = {**kwargs.get("plugins", {}), "acme-storage": WrongTypePlugin()}
        return real(**kwargs)

    monkeypatch.setattr(inspection, "create_plugin_manager", with_acme)
    config = tmp_path / "acme.toml"
    config.write_text(world["config"].read_text().replace("[plugins]", '[storage]\nbackend = "acme"\n[plugins]'))
    result = run("--config", str(config), "status")
    assert result.exit_code == 4, result.stderr
    message = result.stderr.replace("\n", "")
    assert "component_wrong_type" in message
    assert "'acme-storage'" in message and "'acme'" in message and "PaymentStore" in message


# -- 3. forward: per-payment progress, and why each remaining payment remains ---------------------------


def test_forward_says_why_each_remaining_payment_remains(world) -> None:
    cfg = str(world["config"])
    result = run("--config", cfg, "forward", "--json", "--timeout", "3")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["remaining"] == 2
    assert [w["offline_id"] for w in data["waiting"]] == world["ids"]
    assert all(w["state"] in ("stored", "outcome_unknown") and w["reason"] for w in data["waiting"])
    text = run("--config", cfg, "forward", "--timeout", "3", env={"COLUMNS": "100"})
    assert text.exit_code == 1
    assert "the processor is not reachable" in text.stdout
    for offline_id in world["ids"]:
        assert offline_id[-8:] in text.stdout, "each remaining payment is listed"


def test_forward_advances_its_progress_per_payment(world, monkeypatch: pytest.MonkeyPatch) -> None:
    advanced: list[str] = []

    class Spy(cli_main.ForwardProgress):
        @hookimpl
        def offterm_on_payment_intent_forwarded(self, intent: Any, error: Any) -> None:
            advanced.append(intent.offline_id)
            super().offterm_on_payment_intent_forwarded(intent, error)

    monkeypatch.setattr(cli_main, "ForwardProgress", Spy)
    world["proxy"].set_mode("pass")
    result = run("--config", str(world["config"]), "forward", env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.stdout + result.stderr
    assert sorted(advanced) == sorted(world["ids"]), "one step per payment, as each one ends"
    assert "2/2" in result.stdout and "forwarded 2, remaining 0" in result.stdout


# -- 4. payment ids: any unique part, shown by their tail at 80 columns; exit codes in every --help -----


def test_show_takes_a_unique_prefix_or_suffix_and_lists_an_ambiguous_ones_matches(world) -> None:
    cfg = str(world["config"])
    first, second = world["ids"]
    for given in (first[-6:], first[:-6], f"offpi_…{first[-8:]}", f"offpi_...{first[-8:]}"):
        result = run("--config", cfg, "payments", "show", given, "--json")
        assert result.exit_code == 0, (given, result.stderr)
        assert json.loads(result.stdout)["offline_id"] == first
    ambiguous = run("--config", cfg, "payments", "show", "offpi_")
    assert ambiguous.exit_code == 2
    message = ambiguous.stderr.replace("\n", "")
    assert "ambiguous_payment_id" in message and first in message and second in message
    none = run("--config", cfg, "payments", "show", "zzzz")
    assert none.exit_code == 1 and "payment_not_found" in none.stderr


def test_list_at_80_columns_shows_each_id_by_a_tail_that_show_accepts(world) -> None:
    cfg = str(world["config"])
    result = run("--config", cfg, "payments", "list", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    shown = [line.split("│")[1].strip() for line in result.stdout.splitlines() if "offpi_" in line]
    assert len(shown) == 2 and all(s.startswith("offpi_…") for s in shown), result.stdout
    for offline_id, short in zip(world["ids"], shown, strict=True):
        assert offline_id.endswith(short.removeprefix("offpi_…"))
        again = run("--config", cfg, "payments", "show", short, "--json")
        assert json.loads(again.stdout)["offline_id"] == offline_id
    wide = run("--config", cfg, "payments", "list", env={"COLUMNS": "200"})
    assert all(offline_id in wide.stdout for offline_id in world["ids"]), "a wide terminal shows ids whole"


def test_short_ids_grow_their_tail_until_they_tell_ids_apart() -> None:
    from offterm.cli._ids import short_id, short_ids

    a, b = "offpi_0000000000000000000000aa12345678", "offpi_0000000000000000000000bb12345678"
    assert short_id(a) == short_id(b) == "offpi_…12345678"
    assert short_ids([a, b]) == {a: "offpi_…a12345678", b: "offpi_…b12345678"}


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        ["plugins"],
        ["status"],
        ["payments"],
        ["payments", "list"],
        ["payments", "show"],
        ["payments", "requeue"],
        ["forward"],
        ["export"],
        ["doctor"],
    ],
    ids=lambda c: " ".join(c),
)
def test_every_command_lists_its_exit_codes_in_its_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Exit codes:" in result.output and "  0  " in result.output, result.output
    if command[0] not in ("demo", "plugins"):
        assert "  5  no payment store" in result.output


# -- 5. a CSV export of an empty store has its header row ---------------------------------------------------


def test_csv_export_of_an_empty_store_has_every_column(world, tmp_path: Path) -> None:
    import asyncio

    empty = tmp_path / "empty"
    config = with_data_dir(world, tmp_path, empty)

    async def create() -> None:
        async with Terminal.from_config(config, background=False):
            pass

    asyncio.run(create())
    result = run("--config", str(config), "export", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows == [list(PAYMENT_COLUMNS)]
    full = run("--config", str(world["config"]), "export", "--format", "csv")
    assert next(csv.reader(io.StringIO(full.stdout))) == list(PAYMENT_COLUMNS)
