"""``offterm payments requeue``: a needs_attention payment goes back in the queue, on a real store."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from click.testing import CliRunner

from offterm.cli.main import cli
from offterm.core.contracts import PaymentState as S
from offterm.core.manager import create_plugin_manager
from offterm.testing import open_store


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def give_up_on(world, offline_id: str) -> None:
    """What the forwarder does when it gives up: claim, then complete as needs_attention."""
    store = open_store(create_plugin_manager(autoload=False), world["config"].parent / "pos")
    try:
        now = datetime.now(UTC)
        assert offline_id in [p.offline_id for p in store.claim("operator-test", 5, 30, now)]
        store.complete(offline_id, "operator-test", S.NEEDS_ATTENTION, now, error_code="gave_up")
        store.release("operator-test", now)
    finally:
        store.close()


def test_requeue_moves_a_needs_attention_payment_back_and_says_so(world):
    cfg = str(world["config"])
    pid = world["ids"][0]
    give_up_on(world, pid)

    result = run("--config", cfg, "payments", "requeue", pid, "--reason", "issuer confirmed by phone")
    assert result.exit_code == 0, result.output
    assert f"requeued {pid}" in result.stdout and "needs_attention -> stored" in result.stdout

    shown = json.loads(run("--config", cfg, "payments", "show", pid, "--json").stdout)
    assert shown["state"] == "stored"
    assert shown["last_error_code"] == "requeued" and shown["last_error_message"] == "issuer confirmed by phone"
    assert [(h["from"], h["to"], h["error_code"]) for h in shown["history"][-2:]] == [
        ("forwarding", "needs_attention", "gave_up"),
        ("needs_attention", "stored", "requeued"),
    ]


def test_requeue_of_a_payment_not_needing_attention_changes_nothing_and_exits_1(world):
    cfg = str(world["config"])
    pid = world["ids"][1]
    result = run("--config", cfg, "payments", "requeue", pid)
    assert result.exit_code == 1 and "invalid_transition" in result.stderr and "stored" in result.stderr
    assert json.loads(run("--config", cfg, "payments", "show", pid, "--json").stdout)["state"] == "stored"

    missing = run("--config", cfg, "payments", "requeue", "offpi_nope")
    assert missing.exit_code == 1 and "payment_not_found" in missing.stderr


def test_requeue_help_lists_its_exit_codes():
    result = run("payments", "requeue", "--help")
    assert result.exit_code == 0
    assert "Exit codes:" in result.stdout and "1  nothing changed" in result.stdout and "0  requeued" in result.stdout
