"""One failing plugin, one warning: not one per lookup, not a log line plus a Python warning.

Every signal an operator could see is counted: log records at WARNING and
above that name the plugin, and Python warnings (RuntimeWarning...).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from offterm.core import OfflineBehavior, Terminal, create_plugin_manager, hookimpl
from offterm.core.logs import configure_logging
from offterm.core.registrations import AcceptancePolicyRegistration


class BrokenTokenRegistration:
    @hookimpl
    def offterm_connection_token_providers(self):
        raise RuntimeError("broken-registration")


class BrokenListener:
    @hookimpl
    def offterm_on_payment_stored(self, intent):
        raise RuntimeError("broken-listener")


class BrokenFactory:
    @hookimpl
    def offterm_offline_acceptance_policies(self):
        yield AcceptancePolicyRegistration(name="broken_factory", factory=self.build)

    @staticmethod
    def build(ctx: Any) -> Any:
        raise RuntimeError("broken-factory")


@pytest.fixture
def signals(log_output: io.StringIO) -> Iterator[Callable[[str], list[str]]]:
    """``signals(marker)``: every log line at WARNING or above and every Python warning that mentions it."""
    configure_logging(json=True, level="debug", stream=log_output)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")

        def about(marker: str) -> list[str]:
            lines = [json.loads(line) for line in log_output.getvalue().splitlines()]
            seen = [json.dumps(line) for line in lines if line["level"] in ("warning", "error", "critical")]
            seen += [f"{w.category.__name__}: {w.message}" for w in caught]
            return [s for s in seen if marker in s]

        yield about


async def _run(config: dict[str, Any], plugin: object, *, pay: bool = False) -> None:
    pm = create_plugin_manager(autoload=False, env={}, plugins={"broken": plugin})
    async with Terminal.from_config(config, plugin_manager=pm) as terminal:
        [reader] = await terminal.discover_readers()
        await terminal.connect_reader(reader)
        if pay:
            intent = await terminal.create_payment_intent(
                {"amount": 700, "currency": "usd"}, offline_behavior=OfflineBehavior.FORCE_OFFLINE
            )
            terminal.connected_reader.present_card("visa")
            await terminal.confirm_payment_intent(await terminal.collect_payment_method(intent))


async def test_a_failing_registration_hook_is_one_warning(offterm_config, signals):
    offterm_config["tokens"] = {
        "providers": ["http", "static"],
        "http": offterm_config["tokens"]["http"],
        "static": {"secret": "pst_test_placeholder"},
    }
    await _run(offterm_config, BrokenTokenRegistration())
    assert len(signals("broken-registration")) == 1, signals("broken-registration")


async def test_a_failing_listener_is_one_warning_per_event(offterm_config, signals):
    await _run(offterm_config, BrokenListener(), pay=True)
    assert len(signals("broken-listener")) == 1, signals("broken-listener")


async def test_a_failing_factory_is_raised_once_and_not_also_logged(offterm_config, signals):
    with pytest.raises(RuntimeError, match="broken-factory"):
        await _run(offterm_config, BrokenFactory())
    assert signals("broken-factory") == [], "the app gets the error; a log line too would be a second"


def test_a_plugin_failure_before_the_terminal_is_imported_goes_to_stderr_never_stdout(tmp_path):
    """An app that builds a plugin manager first: structlog's default would print to stdout."""
    script = """
import importlib.metadata, sys
from offterm.core import create_plugin_manager
ep = importlib.metadata.EntryPoint(name="ghost", value="no_such_module_for_offterm", group="offterm")
pm = create_plugin_manager(bundled=(), entry_points=lambda: [ep], env={"OFFTERM_DISABLE_PLUGINS": "ghots"})
assert "offterm.core._engine.terminal" not in sys.modules
assert "ghost" in pm.load_failures
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("plugin_load_failed") == 1 and "ghost" in proc.stderr
    assert proc.stderr.count("plugin_disable_unknown") == 1 and "did you mean ghost?" in proc.stderr
    assert "RuntimeWarning" not in proc.stderr
