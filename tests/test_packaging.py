"""The design card's layout installs as one namespace, offterm.*, and nothing else."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from offterm.core.manager import BUNDLED_PLUGINS

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_no_top_level_core_or_plugins_module_is_importable(tmp_path):
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('offterm.core') is not None\n"
        "for name in ('core', 'plugins', 'sim', 'cli', 'testing'):\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
        "import offterm.core, offterm.plugins.storage, offterm.sim\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_every_source_package_is_listed():
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = set()
    for namespace, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([namespace, *rel.parts]))
    assert found == listed


def test_every_bundled_plugin_has_an_entry_point():
    eps = PYPROJECT["project"]["entry-points"]["offterm"]
    assert {name: module for name, module in BUNDLED_PLUGINS} == eps


def test_console_script_and_test_extra():
    assert PYPROJECT["project"]["scripts"]["offterm"] == "offterm.cli.main:main"
    assert "pytest>=8" in PYPROJECT["project"]["optional-dependencies"]["test"]
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"


@pytest.mark.slow
def test_wheel_holds_only_the_offterm_namespace(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    [wheel] = tmp_path.glob("offterm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"offterm", next(t for t in tops if t.endswith(".dist-info"))}
    assert "offterm/core/terminal.py" in names and "offterm/plugins/storage/sqlcipher/store.py" in names
    assert not any(n.startswith("offterm/__init__") for n in names), "offterm is a namespace package"
