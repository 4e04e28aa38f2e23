"""Replication is a plugin kind: registered through ``offterm_replicators``, chosen by ``[hub] replicator``."""

from __future__ import annotations

import pytest

from offterm.core import create_plugin_manager, hookimpl
from offterm.core.errors import ComponentNotFound
from offterm.core.registrations import ReplicatorRegistration


class _Plugin:
    @hookimpl
    def offterm_replicators(self):
        yield ReplicatorRegistration(name="acme-hub", factory=lambda ctx: None, description="a third party's hub")


def test_replicators_are_chosen_by_name() -> None:
    pm = create_plugin_manager(autoload=False, plugins={"acme": _Plugin()})
    assert pm.available("replicator")["acme-hub"] == "acme"
    reg = pm._select("offterm_replicators", ReplicatorRegistration, "acme-hub")
    assert reg.kind == "replicator"
    with pytest.raises(ComponentNotFound, match="acme-hub"):
        pm._select("offterm_replicators", ReplicatorRegistration, "acme-hu")
