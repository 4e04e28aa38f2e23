"""The design card's layout installs as one namespace, offterm.*, and nothing else."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tomllib
import venv
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
    assert "offterm/core/_engine/terminal.py" in names and "offterm/plugins/storage/sqlcipher/_store.py" in names
    assert not any(n.startswith("offterm/__init__") for n in names), "offterm is a namespace package"


def _quick_start_install_args() -> list[str]:
    """The arguments after ``pip install`` in the README's Quick start command."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    install = next(part for part in block.strip().splitlines()[0].split("&&") if "pip install" in part)
    words = shlex.split(install)
    return words[words.index("install") + 1 :]


def test_every_package_under_core_cli_sim_testing_is_marked_typed():
    """PEP 561: without py.typed in the installed package, mypy refuses to check code against it."""
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        top = ".".join(package.split(".")[:2])
        if top == "offterm.plugins":
            continue  # plugins/ are checked by their own packaging test
        folder = ROOT / mapping[top] / Path(*package.split(".")[2:])
        assert (folder / "py.typed").is_file(), package
        assert "py.typed" in package_data.get(package, []), package


@pytest.mark.slow
def test_type_checkers_resolve_offterm_after_the_readme_install(tmp_path):
    """Installed the README's way, mypy sees offterm's own types, not Any.

    setuptools' default editable install is an import hook that static tools
    cannot follow (the folders are mapped: core/ -> offterm.core), so the
    README asks for strict mode: a link tree whose path sits in a plain .pth.
    """
    args = _quick_start_install_args()
    assert "editable_mode=strict" in args, args
    # A copy of the sources: strict mode writes its link tree into <project>/build/, and the
    # repository's own is the one the developer's (or CI's) environment imports from.
    project = tmp_path / "project"
    for name in ("pyproject.toml", "README.md", *PYPROJECT["tool"]["setuptools"]["package-dir"].values()):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    args = [str(project) if arg == "." else arg for arg in args]
    env_dir = tmp_path / "venv"
    # No pip in the new environment: this environment's pip installs into it (--python), which is
    # seconds faster.  --no-deps: mypy needs offterm's files here, not its dependencies.  The build
    # stays isolated: pyproject needs a newer setuptools than the surrounding environment may have.
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr

    app = tmp_path / "app.py"
    app.write_text(
        "from offterm.core import Terminal\n"
        "from offterm.testing import HookRecorder, terminal_config\n"
        "reveal_type(Terminal)\n"
        "reveal_type(HookRecorder)\n"
        "reveal_type(terminal_config)\n"
    )
    (tmp_path / "mypy.ini").write_text("[mypy]\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(tmp_path / "mypy.ini"),
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "--python-executable",
            str(python),
            str(app),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    revealed = [line.split("Revealed type is ", 1)[1] for line in proc.stdout.splitlines() if "Revealed type" in line]
    assert "error" not in proc.stdout.replace("Revealed type", ""), proc.stdout
    assert len(revealed) == 3, proc.stdout
    assert "offterm.core._engine.terminal.Terminal" in revealed[0], revealed
    assert "offterm.testing.recorder.HookRecorder" in revealed[1], revealed
    assert "offterm.testing.config.SimulatorLike" in revealed[2], revealed
    assert all(r.strip('"') != "Any" for r in revealed), revealed


def test_test_file_names_are_unique():
    """pytest imports test modules by basename (no __init__.py in tests/): two alike stop the whole run."""
    names = [p.name for p in ROOT.joinpath("tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
