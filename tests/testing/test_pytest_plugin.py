"""offterm.testing is a pytest plugin: installing offterm gives any project the fixtures."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap

THIRD_PARTY_TEST = """
import os
import re
from offterm.core import hookimpl


class Listener:
    @hookimpl
    def offterm_on_forwarding_failure(self, error):
        pass


def test_uses_the_kit(offterm_plugin_manager, offterm_hook_recorder, offterm_store, reader_emulator, tmp_path):
    offterm_plugin_manager.add(Listener(), "listener")
    offterm_plugin_manager.emit("forwarding_failure", error=None)
    offterm_hook_recorder.assert_called("forwarding_failure", times=1)
    assert offterm_store.summary().pending_count == 0
    assert reader_emulator.status()["ok"] == "status"
    with open(os.environ["PID_FILE"], "w") as fh:
        fh.write(str(reader_emulator.process.pid))


def test_config(offterm_config, processor_simulator):
    assert offterm_config["tokens"]["http"]["url"] == processor_simulator.backend_url
"""


def test_the_fixtures_are_registered_through_the_pytest11_entry_point():
    [ep] = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "offterm"]
    assert ep.value == "offterm.testing.fixtures"
    assert ep.dist is not None and ep.dist.name == "offterm"


def _run_pytest(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_third_party.py").write_text(textwrap.dedent(THIRD_PARTY_TEST))
    env = dict(os.environ, PID_FILE=str(tmp_path / "emulator.pid"), PYTEST_ADDOPTS="")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_third_party_project_gets_the_fixtures_without_any_conftest(tmp_path):
    result = _run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    pid = int((tmp_path / "emulator.pid").read_text())
    assert (
        not os.path.exists(f"/proc/{pid}/cmdline")
        or b"reader_emulator" not in open(f"/proc/{pid}/cmdline", "rb").read()
    ), "the emulator process outlived its fixture"


def test_the_plugin_can_be_switched_off(tmp_path):
    result = _run_pytest(tmp_path, "-p", "no:offterm")
    assert result.returncode != 0
    assert "fixture 'offterm_plugin_manager' not found" in result.stdout


DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "plugins.md")


def _docs_block(first_line: str) -> str:
    """The fenced python block of docs/plugins.md that starts with ``first_line``."""
    with open(DOCS) as fh:
        text = fh.read()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    [block] = [b for b in blocks if b.startswith(first_line)]
    return block


def test_the_documented_fixtures_are_the_shipped_ones():
    import inspect

    from offterm.testing import fixtures

    shipped = set(re.findall(r"^@pytest\.fixture[^\n]*\n(?:async )?def (\w+)", inspect.getsource(fixtures), re.M))
    assert len(shipped) >= 6
    with open(DOCS) as fh:
        section = fh.read().split("## Testing a plugin", 1)[1].split("### Conformance kits", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M))
    assert documented == shipped
    assert "pip install offterm pytest pytest-asyncio" in section


def test_the_documented_listener_test_passes_in_a_third_party_project(tmp_path):
    """docs/plugins.md's example listener test, run as a plugin author would, with pytest-asyncio."""
    package = tmp_path / "acme_offterm"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "listener.py").write_text(_docs_block("# acme_offterm/listener.py"))
    (tmp_path / "test_acme_listener.py").write_text(_docs_block("# tests/test_acme_listener.py"))
    env = dict(os.environ, PYTEST_ADDOPTS="", PYTHONPATH=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
