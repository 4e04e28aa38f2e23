"""offterm as a library: nothing on stdout, its records in the app's `logging`, the app's choice of levels.

Each scenario runs in a fresh interpreter, as an app would: a test process has
pytest's own logging capture installed, which would hide exactly what is tested.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from offterm.sim.processor import SimHandle, start_simulator

PAN = "4242424242424242"

# A POS app in a few lines: a Terminal on the simulator, one online payment, one FORCE_OFFLINE payment, close.
APP = textwrap.dedent(
    """
    import asyncio, json, sys

    SETUP

    from offterm.core import OfflineBehavior, Terminal, create_plugin_manager

    async def main(api, backend, data_dir):
        config = {
            "terminal": {"data_dir": data_dir, "offline_enabled": True},
            "plugins": {"autoload": False},
            "reader": {"transport": "simulated"},
            "storage": {"backend": "sqlcipher", "key_provider": "file"},
            "tokens": {"providers": ["http"], "http": {"url": backend}},
            "forwarding": {"transport": "stripe", "stripe": {"api_base": api}},
        }
        pm = create_plugin_manager(autoload=False, env={})
        async with Terminal.from_config(config, plugin_manager=pm) as terminal:
            [reader] = await terminal.discover_readers()
            await terminal.connect_reader(reader)
            for behavior in (OfflineBehavior.PREFER_ONLINE, OfflineBehavior.FORCE_OFFLINE):
                intent = await terminal.create_payment_intent(
                    {"amount": 1250, "currency": "usd", "metadata": {"note": "card PAN"}}, offline_behavior=behavior
                )
                terminal.connected_reader.present_card("visa")
                intent = await terminal.collect_payment_method(intent)
                intent = await terminal.confirm_payment_intent(intent)
                assert intent.status.value == "succeeded", intent.status
            await terminal.close()

    asyncio.run(main(*sys.argv[1:4]))
    """
)


@pytest.fixture(scope="module")
def sim() -> SimHandle:
    handle = start_simulator()
    yield handle
    handle.stop()


def run_app(tmp_path: Path, sim: SimHandle, setup: str = "") -> subprocess.CompletedProcess[str]:
    script = tmp_path / "app.py"
    script.write_text(APP.replace("SETUP", textwrap.dedent(setup).replace("PAN", PAN)).replace("PAN", PAN))
    result = subprocess.run(
        [sys.executable, str(script), sim.url, sim.backend_url, str(tmp_path / "pos")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_an_app_that_configures_nothing_gets_nothing_on_stdout_and_only_warnings_on_stderr(tmp_path, sim):
    result = run_app(tmp_path, sim)
    assert result.stdout == "", "offterm wrote to stdout"
    # The one warning of this run: a new storage key was made (back it up).  INFO lines go nowhere.
    assert "storage_key_created" in result.stderr
    for info_event in ("terminal_opened", "payment_stored", "processor_session_opened", "terminal_closed"):
        assert info_event not in result.stderr, result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        line for line in result.stderr.splitlines() if "storage_key_created" in line
    ], result.stderr


def test_an_app_that_configures_stdlib_logging_receives_offterms_records(tmp_path, sim):
    setup = """
    import logging

    class Keep(logging.Handler):
        def emit(self, record):
            print(json.dumps({"name": record.name, "level": record.levelname, "message": record.getMessage(),
                              "offline_id": record.msg.get("offline_id") if isinstance(record.msg, dict) else None}))

    logging.basicConfig(level=logging.INFO, handlers=[Keep()])
    import structlog
    import offterm.core.logs  # noqa: F401  (an offterm logger used before offterm is imported would print)
    structlog.get_logger("offterm.app_test").info("app_check", card_number="PAN", note="paid with PAN")
    """
    result = run_app(tmp_path, sim, setup)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    names = {r["name"] for r in records}
    assert {"offterm.terminal", "offterm.storage.sqlcipher", "offterm.session"} <= names, names
    stored = [r for r in records if r["message"].startswith("payment_stored ")]
    assert len(stored) == 1 and stored[0]["level"] == "INFO"
    assert stored[0]["offline_id"] and stored[0]["offline_id"] in stored[0]["message"], "fields stay structured"
    [check] = [r for r in records if r["message"].startswith("app_check ")]
    assert "card_number='[REDACTED]'" in check["message"] and "****4242" in check["message"]
    assert PAN not in result.stdout and PAN not in result.stderr, "redacted before any handler"


def test_the_apps_levels_decide(tmp_path, sim):
    setup = """
    import logging
    logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("offterm").setLevel(logging.WARNING)
    """
    result = run_app(tmp_path, sim, setup)
    offterm_lines = [line for line in result.stdout.splitlines() if " offterm" in line]
    assert offterm_lines and all(line.startswith(("WARNING", "ERROR")) for line in offterm_lines), offterm_lines


def test_configure_logging_takes_over_as_documented(tmp_path, sim):
    setup = """
    from offterm.core.logs import configure_logging
    configure_logging(json=True, level="info", stream=sys.stdout)
    """
    result = run_app(tmp_path, sim, setup)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    events = {line["event"] for line in lines}
    assert {"terminal_opened", "payment_stored", "terminal_closed"} <= events
    assert all({"level", "logger", "timestamp"} <= set(line) for line in lines)
    assert result.stderr == ""


def test_other_structlog_loggers_keep_structlogs_defaults(tmp_path):
    code = (
        "import structlog, offterm.core.logs\n"
        "structlog.get_logger('app').info('app_line', x=1)\n"
        "structlog.get_logger('offterm.terminal').info('not_shown')\n"
        "structlog.get_logger('offterm.terminal').warning('shown_on_stderr')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "app_line" in result.stdout and "x=1" in result.stdout, "structlog's default printing, unchanged"
    assert "not_shown" not in result.stdout + result.stderr
    assert "shown_on_stderr" in result.stderr and "shown_on_stderr" not in result.stdout
