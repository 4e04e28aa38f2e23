"""Import cost: listing plugins must not import the heavy libraries behind them.

Each check runs in a fresh interpreter (cwd = a temp dir), because this test
process has long since imported everything.  Only *which* modules get loaded
is asserted, never how long it took.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: What the bundled hook modules must leave to their factories.
HEAVY = ("sqlalchemy", "sqlcipher3", "httpx", "bleak", "dbus_fast", "serial", "keyring")

_PRELUDE = f"""
import json, sys
HEAVY = {HEAVY!r}
def loaded(names):
    return sorted(n for n in names if n in sys.modules)
"""


def _run(tmp_path: Path, body: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _PRELUDE + body],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_listing_every_component_kind_imports_no_heavy_library(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        """
from offterm.core.manager import COMPONENT_KINDS, create_plugin_manager
pm = create_plugin_manager(autoload=False, env={})
available = {kind: sorted(pm.available(kind)) for kind in COMPONENT_KINDS}
options = {r.name: [o.key for o in r.options] for r in pm.acceptance_policies()}
options["sqlcipher"] = [o.key for o in pm.storage_backend("sqlcipher").options]
options["stripe"] = [o.key for o in pm.forwarding_transport("stripe").options]
options["http"] = [o.key for o in pm.token_provider("http").options]
options["serial"] = [o.key for o in pm.reader_transport("serial").options]
options["ble"] = [o.key for o in pm.reader_transport("ble").options]
print(json.dumps({"heavy": loaded(HEAVY), "available": available, "options": options, "failures": pm.load_failures}))
""",
    )
    assert out["failures"] == {}
    # every bundled component is still there, with its option specs
    assert {"simulated", "serial", "ble"} <= set(out["available"]["reader"])
    assert "sqlcipher" in out["available"]["storage"]
    assert {"file", "env", "keyring"} <= set(out["available"]["storage_key"])
    assert {"http", "callable", "static"} <= set(out["available"]["tokens"])
    assert "stripe" in out["available"]["forwarding"]
    assert out["available"]["acceptance"] and out["available"]["forwarding_policy"]
    assert "busy_timeout_ms" in out["options"]["sqlcipher"]
    assert "api_base" in out["options"]["stripe"]
    assert "url" in out["options"]["http"]
    assert "port" in out["options"]["serial"]
    assert "service_uuid" in out["options"]["ble"]
    assert out["heavy"] == [], f"plugin hook modules imported {out['heavy']} just to list components"


def test_importing_offterm_core_loads_no_heavy_library_nor_log_renderers(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        """
import offterm.core
print(json.dumps({"heavy": loaded(HEAVY + ("structlog.dev", "rich"))}))
""",
    )
    assert out["heavy"] == [], f"import offterm.core pulled in {out['heavy']}"


def test_lazy_re_exports_still_work_and_bring_their_library_in_then(tmp_path: Path) -> None:
    """The names tests, benches and apps import from the hook packages resolve on first use."""
    out = _run(
        tmp_path,
        """
import offterm.plugins.storage.sqlcipher as store_pkg
import offterm.plugins.transport.stripe as stripe_pkg
before = loaded(HEAVY)
from offterm.plugins.storage.sqlcipher import SqlCipherStore, StoreConfig, new_idempotency_key
from offterm.plugins.transport.stripe import StripeTransport
from offterm.core._engine.keys import step_key
after = loaded(HEAVY)
from offterm.plugins.storage.sqlcipher import _store as store
from offterm.plugins.transport.stripe import _transport as transport
same = [SqlCipherStore is store.SqlCipherStore, StoreConfig is store.StoreConfig,
        StripeTransport is transport.StripeTransport, step_key("k", "confirm") == "k-confirm",
        new_idempotency_key().startswith("offterm-")]
try:
    store_pkg.NoSuchName
except AttributeError as exc:
    missing = str(exc)
print(json.dumps({"before": before, "after": after, "same": same, "missing": missing}))
""",
    )
    assert out["before"] == []
    assert {"sqlalchemy", "httpx"} <= set(out["after"])
    assert all(out["same"]), out["same"]
    assert "NoSuchName" in out["missing"]
