"""examples/backend: the official stripe library, pointed at the simulator, feeds the http provider."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import stripe

from offterm.core.contracts import ConnectionToken, TokenRequest
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


# -- the README, verbatim: `offterm sim` (the CLI), the example backend, curl ---------------------

README = EXAMPLE.with_name("README.md")
SIM_READY = "offterm-sim listening on "


def _readme_commands() -> list[str]:
    text = README.read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def _shell(command: str) -> subprocess.Popen[str]:
    """Run one README command as a shell would (exec env: stopping it stops the server), with this
    environment's offterm and python first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    root = EXAMPLE.parents[2]  # the README runs from the repository root
    return subprocess.Popen(["bash", "-c", "exec env " + command], stdout=subprocess.PIPE, text=True, env=env, cwd=root)


def _ready(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(prefix):
        proc.kill()
        proc.wait()
        pytest.fail(f"did not start: {line!r}")
    return line[len(prefix) :].strip()


def test_the_readme_commands_work_against_offterm_sim() -> None:
    sim_cmd, backend_cmd, curl_cmd = _readme_commands()
    assert sim_cmd.startswith("offterm sim ") and sim_cmd.endswith(" &") and "--port 12480" in sim_cmd
    assert "STRIPE_API_BASE=http://127.0.0.1:12480" in backend_cmd and "--port 8000" in backend_cmd
    assert curl_cmd.startswith("curl ") and "http://127.0.0.1:8000/connection_token" in curl_cmd
    key = sim_cmd.split("--secret-key ", 1)[1].split()[0]
    assert f"STRIPE_SECRET_KEY={key} " in backend_cmd  # the backend holds the simulator's key

    sim = _shell(sim_cmd.removesuffix(" &").replace("--port 12480", "--port 0"))
    procs = [sim]
    try:
        sim_url = _ready(sim, SIM_READY)
        backend = _shell(
            backend_cmd.removesuffix(" &").replace("http://127.0.0.1:12480", sim_url).replace("--port 8000", "--port 0")
        )
        procs.append(backend)
        token_url = _ready(backend, READY)
        curl = subprocess.run(
            ["bash", "-c", curl_cmd.replace("http://127.0.0.1:8000/connection_token", token_url)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert curl.returncode == 0, curl.stderr
        secret = json.loads(curl.stdout)["secret"]
        assert secret.startswith("pst_test_")

        # offterm redeems what the official library minted, through the CLI's simulator.
        async def redeem() -> str:
            transport = StripeTransport(sim_url)
            try:
                return (await transport.authenticate(ConnectionToken(secret=secret))).account_id
            finally:
                await transport.close()

        assert asyncio.run(redeem()).startswith("acct_")

        # And the library's own calls a merchant's backend makes around Terminal payments work too.
        library = stripe.StripeClient(key, base_addresses={"api": sim_url}, max_network_retries=0)
        paid = library.v1.payment_intents.create(
            params={"amount": 2500, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
        )
        [charge] = library.v1.charges.list(params={"payment_intent": paid.id}).data
        assert paid.status == "succeeded" and charge.status == "succeeded" and charge.amount == 2500
        card = library.v1.payment_methods.retrieve(str(paid.payment_method)).card
        assert card is not None and card.brand == "visa"
    finally:
        for proc in reversed(procs):
            _stop(proc)
