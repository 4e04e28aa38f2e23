"""Meta-tests: every hook is documented and exercised by a test."""

from __future__ import annotations

import inspect
from pathlib import Path

from offterm.core import hookspecs

TESTS = Path(__file__).resolve().parents[1]


def _hookspecs():
    return {name: fn for name, fn in vars(hookspecs).items() if name.startswith("offterm_") and callable(fn)}


def test_there_are_hooks():
    names = set(_hookspecs())
    assert {
        "offterm_reader_transports",
        "offterm_storage_backends",
        "offterm_storage_key_providers",
        "offterm_connection_token_providers",
        "offterm_forwarding_transports",
        "offterm_offline_acceptance_policies",
        "offterm_forwarding_policies",
        "offterm_listener_settings",
        "offterm_on_offline_status_changed",
        "offterm_on_network_status_changed",
        "offterm_on_payment_stored",
        "offterm_on_payment_intent_forwarded",
        "offterm_on_forwarding_failure",
        "offterm_on_reader_connected",
        "offterm_on_reader_disconnected",
        "offterm_on_reader_reconnecting",
    } <= names


def test_every_hook_is_documented():
    for name, fn in _hookspecs().items():
        doc = inspect.getdoc(fn) or ""
        assert len(doc.splitlines()[0]) > 10, f"{name}: no summary line"
        assert ":return:" in doc, f"{name}: return meaning undocumented"
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc, f"{name}: parameter {param} undocumented"


def test_every_hook_is_exercised_by_a_test():
    """Each hook name must appear in some test module other than this one."""
    corpus = "".join(p.read_text() for p in TESTS.rglob("test_*.py") if p.name != "test_hookspecs.py")
    corpus += "".join(p.read_text() for p in TESTS.rglob("conftest.py"))
    unexercised = [name for name in _hookspecs() if name not in corpus]
    assert not unexercised, f"hooks without a test: {unexercised}"


def test_every_hook_is_documented_in_plugins_md():
    docs = (TESTS.parent / "docs" / "plugins.md").read_text()
    missing = [name for name in _hookspecs() if f"`{name}" not in docs]
    assert not missing, f"docs/plugins.md lacks: {missing}"
