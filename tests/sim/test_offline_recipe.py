"""The "go offline and back" recipe in docs/simulator.md, run as written (issue #14)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from offterm.sim.netproxy import FaultProxy

DOC = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"
MARKER = "<!-- offline-recipe -->\n```python\n"


def _snippet() -> str:
    text = DOC.read_text()
    assert MARKER in text, "the recipe's snippet is marked in docs/simulator.md"
    return text.split(MARKER, 1)[1].split("```", 1)[0]


def test_the_documented_snippet_pays_online_stores_offline_and_forwards(tmp_path: Path) -> None:
    script = tmp_path / "recipe.py"
    script.write_text(_snippet())
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "forwarded: one charge each" in proc.stdout


def test_terminal_config_routes_every_upstream_url_through_the_proxy() -> None:
    base = {
        "forwarding": {
            "transport": "stripe",
            "interval": 60,
            "stripe": {"api_base": "https://api.stripe.com", "device_api_base": "https://d.example"},
        },
        "tokens": {"providers": ["env"], "http": {"url": "https://pos.example/token", "auth_token": "t"}},
    }
    proxy = FaultProxy(upstream_port=1, port=0)  # not started: only its URL matters here
    proxy.port = 45678
    routed = proxy.terminal_config(base)
    assert routed["forwarding"] == {"transport": "stripe", "interval": 60, "stripe": {"api_base": proxy.url}}
    assert routed["tokens"] == {
        "providers": ["http", "env"],
        "http": {"url": proxy.url + "/backend/connection_token", "auth_token": "t"},
    }
    assert base["forwarding"]["stripe"]["api_base"] == "https://api.stripe.com"  # a copy, not an edit
    untouched = proxy.terminal_config(base, token_path=None)
    assert untouched["tokens"] == base["tokens"]
    assert proxy.terminal_config()["forwarding"]["stripe"]["api_base"] == proxy.url
