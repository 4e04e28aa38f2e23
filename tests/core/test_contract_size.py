"""The plugin contract stays readable in one sitting (issue #13, "The house").

"The contract" is the folder a plugin author reads: every public module under ``core/``
(``offterm.core``), that is ``core/*.py`` and ``core/contracts/*.py`` (hookspecs, registrations,
the component ABCs, models, errors, and the short ``manager``, ``config``, ``logs``, ``paths`` and
``currency`` modules that re-export the engine's public names).  Not counted: the engine that runs
the contract (``core/_engine/``) and any private ``_name.py`` module.  docs/plugins.md says the same.

Lines are physical lines, as ``wc -l`` counts them: blank lines and docstrings are read too.
"""

from __future__ import annotations

from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core"

#: The aim of issue #13: the whole contract in under 1,500 lines.
AIM = 1_500
#: What the contract may not grow past today (it is about 2,360 lines).  The aim is out of reach
#: while the folder holds everything the issue lists: without a single docstring, its code, comments
#: and blank lines (the ABCs' signatures, the data classes' fields, 46 error classes) would
#: still come to about 1,530.  This ceiling stops it growing meanwhile.  Lower it when the contract
#: shrinks; raise it only with a reason in the commit.
CEILING = 2_400


def contract_files() -> list[Path]:
    """Every public module under core/: no path part (folder or file) starting with ``_``, ``__init__.py`` aside."""
    return sorted(
        path
        for path in CORE.rglob("*.py")
        if not any(part.startswith("_") for part in path.relative_to(CORE).parent.parts)
        and (path.name == "__init__.py" or not path.name.startswith("_"))
    )


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_the_contract_is_what_a_plugin_author_reads() -> None:
    """The pieces issue #13 lists are counted, and the engine is not: the count cannot be dodged by a rename."""
    counted = {path.relative_to(CORE).as_posix() for path in contract_files()}
    must = {"__init__.py", "hookspecs.py", "registrations.py", "models.py", "errors.py", "manager.py", "config.py"}
    assert must <= counted
    for kind in ("readers", "storage", "forwarding", "tokens", "policies", "replication"):
        assert f"contracts/{kind}.py" in counted
    assert not any(name.startswith("_engine/") for name in counted)


def test_the_contract_stays_under_its_ceiling() -> None:
    sizes = {path.relative_to(CORE).as_posix(): _lines(path) for path in contract_files()}
    total = sum(sizes.values())
    largest = ", ".join(f"{name} {n}" for name, n in sorted(sizes.items(), key=lambda item: -item[1])[:6])
    assert total <= CEILING, (
        f"the plugin contract (public modules under core/) is {total} lines, over its ceiling of {CEILING} "
        f"(aim: {AIM}); largest: {largest}. Move engine code to core/_engine/, or say things once."
    )
