"""``offterm sim``: the same options as ``python -m offterm.sim.processor``, a printed key,
a default port no Stripe tool uses, a coded error for a busy port, quiet hang-ups (issue #14)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from offterm.sim.processor import DEFAULT_PORT
from offterm.sim.processor.__main__ import build_parser
from offterm.sim.processor.server import READY_PREFIX

OFFTERM = str(Path(sys.executable).with_name("offterm"))
KEY_PREFIX = "offterm-sim secret key (generated; --secret-key sets one): "


class CliSim:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit status and everything it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        assert self.proc.stderr is not None and self.proc.stdout is not None
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        self.proc.stdout.close()
        return code, err


@contextmanager
def cli_sim(*args: str) -> Iterator[CliSim]:
    proc = subprocess.Popen(
        [OFFTERM, "sim", "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(READY_PREFIX):
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"offterm sim did not start: {line!r} {err!r}")
    handle = CliSim(proc, line[len(READY_PREFIX) :].strip())
    try:
        yield handle
    finally:
        if proc.poll() is None:
            handle.stop()


def _token_status(url: str, key: str) -> int:
    resp = httpx.post(url + "/v1/terminal/connection_tokens", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return resp.status_code


def test_without_a_key_it_prints_the_one_it_generated_and_that_key_works() -> None:
    with cli_sim() as sim:
        assert sim.proc.stderr is not None
        line = sim.proc.stderr.readline()
        assert line.startswith(KEY_PREFIX), line
        key = line[len(KEY_PREFIX) :].strip()
        assert key.startswith("sk_test_")
        assert _token_status(sim.url, key) == 200
        assert _token_status(sim.url, "sk_test_other") == 401
        code, err = sim.stop()
    assert code == 0 and "Traceback" not in err


def test_secret_key_option_sets_the_key_and_nothing_is_printed() -> None:
    with cli_sim("--secret-key", "sk_test_mine") as sim:
        assert _token_status(sim.url, "sk_test_mine") == 200
        code, err = sim.stop()
    assert code == 0 and "sk_test_mine" not in err and KEY_PREFIX not in err


def test_fault_options_have_the_module_names_and_work() -> None:
    with cli_sim("--secret-key", "sk_test_f", "--error-rate", "503=1.0", "--seed", "3", "--latency", "0.01") as sim:
        resp = httpx.post(
            sim.url + "/v1/payment_intents",
            headers={"Authorization": "Bearer sk_test_f"},
            data={"amount": "100", "currency": "usd"},
            timeout=10,
        )
        assert resp.status_code == 503
        assert httpx.get(sim.url + "/_sim/faults", timeout=10).json()["injected"] == {"503": 1}
        faults = httpx.get(sim.url + "/_sim/faults", timeout=10).json()["faults"]
        assert faults["latency"] == 0.01 and faults["seed"] == 3
    with cli_sim("--drop-rate", "0.25", "--commit-drop-rate", "0.25", "--confirm-status", "processing=0.5") as sim:
        faults = httpx.get(sim.url + "/_sim/faults", timeout=10).json()["faults"]
        assert faults["drop_rate"] == 0.25 and faults["commit_drop_rate"] == 0.25
        assert faults["confirm_status"] == {"processing": 0.5}
    helped = subprocess.run([OFFTERM, "sim", "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert flag in helped.stdout, flag


@pytest.mark.parametrize(
    "args", [["--error-rate", "503=2"], ["--drop-rate", "0.7", "--reset-rate", "0.7"], ["--seed", "x"]]
)
def test_bad_fault_settings_exit_2_without_a_traceback(args: list[str]) -> None:
    proc = subprocess.run([OFFTERM, "sim", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "offterm sim" in proc.stderr


def test_the_default_port_is_not_a_stripe_tools_and_help_says_why() -> None:
    assert DEFAULT_PORT not in (12111, 12112, 4242)
    helped = subprocess.run([OFFTERM, "sim", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert f"default {DEFAULT_PORT}" in helped and "stripe-mock" in helped and "4242" in helped
    assert "sim_port_in_use" in helped  # the exit codes are documented


def test_a_busy_port_is_a_coded_error_with_a_documented_exit_code() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([OFFTERM, "sim", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"error sim_port_in_use: 127.0.0.1:{port} is already in use" in proc.stderr
    assert KEY_PREFIX not in proc.stderr  # nothing served, no key to hand out


def test_the_module_form_reports_a_busy_port_the_same_way() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "offterm.sim.processor", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error sim_port_in_use" in proc.stderr


def _hang_up(port: int, request: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        time.sleep(0.2)  # the server is now waiting for the rest of the body


def test_clients_that_hang_up_leave_no_traceback() -> None:
    with cli_sim("--secret-key", "sk_test_h") as sim:
        port = int(sim.url.rsplit(":", 1)[1])
        partial = (
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: 500\r\n"
            "Authorization: Bearer sk_test_h\r\nIdempotency-Key: k-hangup\r\n\r\n{body}"
        )
        _hang_up(
            port,
            partial.format(
                path="/v1/payment_intents", ctype="application/x-www-form-urlencoded", body="amount=1"
            ).encode(),
        )
        _hang_up(port, partial.format(path="/_sim/faults", ctype="application/json", body='{"lat').encode())
        _hang_up(port, partial.format(path="/backend/connection_token", ctype="application/json", body="{").encode())
        # Reset mid-answer: a client that sends a whole request and aborts at once.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.sendall(b"GET /v1/payment_intents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_test_h\r\n\r\n")
        time.sleep(0.3)
        # Still serving, and the key of the abandoned request is free to use.
        resp = httpx.post(
            sim.url + "/v1/payment_intents",
            headers={"Authorization": "Bearer sk_test_h", "Idempotency-Key": "k-hangup"},
            data={"amount": "100", "currency": "usd"},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        log = httpx.get(sim.url + "/_sim/requests", timeout=10).json()["requests"]
        code, err = sim.stop()
    assert [r["status"] for r in log if r["path"] == "/v1/payment_intents" and r["method"] == "POST"] == [499, 200]
    assert code == 0
    assert "Traceback" not in err and "Exception in ASGI application" not in err, err
