"""examples/backend: the official stripe library, pointed at the simulator, feeds the http provider."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from offterm.core.contracts import TokenRequest
from offterm.core.errors import ConnectionTokenError
from offterm.plugins.transport.stripe import StripeTransport
from offterm.plugins.transport.tokens import HttpTokenProvider
from offterm.sim.processor import SimHandle, running_simulator
from offterm.sim.processor.spec import find_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "backend" / "backend.py"
READY = "backend listening on "


@pytest.fixture
def spec_sim() -> Iterator[SimHandle]:
    spec = find_spec()
    with running_simulator(spec_path=str(spec) if spec else None) as sim:
        yield sim


def _start_backend(sim: SimHandle, auth_token: str | None) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "STRIPE_SECRET_KEY": sim.secret_key, "STRIPE_API_BASE": sim.url}
    if auth_token:
        env["BACKEND_AUTH_TOKEN"] = auth_token
    proc = subprocess.Popen([sys.executable, str(EXAMPLE), "--port", "0"], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(READY):
        proc.kill()
        proc.wait()
        pytest.fail(f"example backend did not start: {line!r}")
    return proc, line[len(READY) :].strip()


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=10)
    assert proc.stdout is not None
    proc.stdout.close()


async def test_official_stripe_library_mints_tokens_offterm_can_use(spec_sim: SimHandle) -> None:
    proc, url = _start_backend(spec_sim, auth_token="pos-42")
    try:
        provider = HttpTokenProvider(url, auth_token="pos-42")
        token = await provider.fetch(TokenRequest(reason="forwarding"))
        assert token is not None and token.secret.startswith("pst_test_")
        transport = StripeTransport(spec_sim.url)
        try:
            session = await transport.authenticate(token)
        finally:
            await transport.close()
        assert session.account_id == spec_sim.config.account_id

        with pytest.raises(ConnectionTokenError, match="HTTP 401"):
            await HttpTokenProvider(url, auth_token="nope").fetch(TokenRequest(reason="forwarding"))
    finally:
        _stop(proc)
    minted = [r for r in spec_sim.requests() if r["path"] == "/v1/terminal/connection_tokens"]
    assert len(minted) == 1 and minted[0]["auth"] == "secret_key" and minted[0]["status"] == 200
    assert minted[0]["stripe_version"]  # the library pins its own API version
    assert spec_sim.spec_violations() == []
