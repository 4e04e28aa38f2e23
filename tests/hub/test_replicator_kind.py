"""Replication is a plugin kind: registered through ``offterm_replicators``, chosen by ``[hub] replicator``."""

from __future__ import annotations

import pytest

from offterm.core import create_plugin_manager, hookimpl
from offterm.core.contracts.replication import Replicator
from offterm.core.errors import ComponentNotFound
from offterm.core.registrations import ReplicatorRegistration


class _Plugin:
    @hookimpl
    def offterm_replicators(self):
        yield ReplicatorRegistration(name="acme-hub", factory=lambda ctx: None, description="a third party's hub")


def test_replicators_are_chosen_by_name() -> None:
    pm = create_plugin_manager(autoload=False, plugins={"acme": _Plugin()})
    assert pm.available("replicator") == {"postgres": "postgres-hub", "acme-hub": "acme"}
    reg = pm._select("offterm_replicators", ReplicatorRegistration, "postgres")
    assert reg.kind == "replicator" and {o.key for o in reg.options} >= {"url", "password", "sslmode"}
    with pytest.raises(ComponentNotFound, match="acme-hub"):
        pm._select("offterm_replicators", ReplicatorRegistration, "postgress")


def test_the_postgres_replicator_implements_the_contract() -> None:
    pm = create_plugin_manager(autoload=False)
    reg = pm._select("offterm_replicators", ReplicatorRegistration, "postgres")
    from offterm.core.registrations import ComponentContext

    built = reg.factory(ComponentContext("postgres", {}, None))  # type: ignore[arg-type]
    assert isinstance(built, Replicator)
