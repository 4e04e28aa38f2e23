"""Serving the simulator with uvicorn: blocking (CLI), in a thread, or in a subprocess (tests)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

from .app import SimState, create_app
from .config import FaultConfig, SimConfig

READY_PREFIX = "offterm-sim listening on "
#: ``offterm sim``'s port: not stripe-mock's 12111/12112, nor 4242 (Stripe's sample servers).
DEFAULT_PORT = 12480


class PortInUseError(OSError):
    """The simulator's port is taken (``code`` ``sim_port_in_use``)."""

    code = "sim_port_in_use"

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"{host}:{port} is already in use (another simulator, stripe-mock, a dev server?); "
            "choose another --port, or 0 for any free one",
        )
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


def _bind(host: str, port: int) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when
    # it sees that proto, and without it every answer waits ~40 ms for a delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(host, port) from None
        raise
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _uvicorn_config(app: Any, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        loop="asyncio",
        http="h11",
        timeout_keep_alive=30,
        backlog=2048,
    )


class SimHandle:
    """A running simulator: its URLs, its secret key, its ledger and its faults.

    In-thread handles read the books directly; subprocess handles use the
    admin endpoints.  Both give the same answers.
    """

    def __init__(self, url: str, config: SimConfig, state: SimState | None = None) -> None:
        self.url = url
        self.config = config
        self._state = state
        self._stop_cb: Any = None

    @property
    def secret_key(self) -> str:
        return self.config.secret_key

    @property
    def backend_url(self) -> str:
        """Where the integrator's backend mints connection tokens (the ``http`` token provider's ``url``)."""
        return self.url + "/backend/connection_token"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            resp = client.request(method, path, json=body)
            resp.raise_for_status()
            return resp.json()

    def ledger(self) -> dict[str, list[dict[str, Any]]]:
        """Every authorisation attempt (charge) per ``offterm_offline_id``."""
        if self._state is not None:
            return self._state.books.ledger()
        return self._admin("GET", "/_sim/ledger")["charges_by_offline_id"]  # type: ignore[no-any-return]

    def successful_charges(self) -> dict[str, int]:
        """Successful charges per offline id; exactly-once means every value is 1."""
        if self._state is not None:
            return self._state.books.successful_counts()
        return self._admin("GET", "/_sim/ledger")["successful_counts"]  # type: ignore[no-any-return]

    def set_faults(self, faults: FaultConfig | None = None, **settings: Any) -> None:
        """Replace the faults (``set_faults()`` clears them); e.g. ``set_faults(error_rates={503: 0.2}, seed=1)``."""
        config = faults if faults is not None else FaultConfig(**settings)
        if self._state is not None:
            self._state.faults.set(config)
        else:
            self._admin("POST", "/_sim/faults", config.to_json())

    def injected(self) -> dict[str, int]:
        """How many faults of each kind were injected so far."""
        if self._state is not None:
            return dict(self._state.faults.counts)
        return self._admin("GET", "/_sim/faults")["injected"]  # type: ignore[no-any-return]

    def advance_clock(self, seconds: float) -> float:
        """Move the account's clock forward by ``seconds``; returns its new time (unix seconds).

        Everything timed in the account follows: idempotency keys expire,
        search sees intents past ``search_delay``, "processing" intents
        settle, and connection tokens and device sessions age too.
        """
        if self._state is not None:
            return self._state.clock.advance(seconds)
        return float(self._admin("POST", "/_sim/clock", {"advance": seconds})["now"])

    def now(self) -> float:
        """The account's clock (unix seconds): real time plus every ``advance_clock``."""
        if self._state is not None:
            return self._state.clock()
        return float(self._admin("GET", "/_sim/clock")["now"])

    def requests(self) -> list[dict[str, Any]]:
        """The request log (method, path, params, headers of interest; never credentials)."""
        if self._state is not None:
            return self._state.request_log()
        return self._admin("GET", "/_sim/requests")["requests"]  # type: ignore[no-any-return]

    def spec_violations(self) -> list[dict[str, Any]]:
        if self._state is not None:
            return list(self._state.spec_violations)
        return self._admin("GET", "/_sim/requests")["spec_violations"]  # type: ignore[no-any-return]

    def connection_token(self) -> str:
        """Mint a connection token the way an integrator's backend does (secret-key API)."""
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            resp = client.post("/v1/terminal/connection_tokens", headers={"Authorization": f"Bearer {self.secret_key}"})
            resp.raise_for_status()
            return str(resp.json()["secret"])

    def stop(self) -> None:
        if self._stop_cb is not None:
            cb, self._stop_cb = self._stop_cb, None
            cb()


class _ThreadServer:
    def __init__(self, app: Any, sock: socket.socket, log_level: str) -> None:
        self.server = uvicorn.Server(_uvicorn_config(app, log_level))
        self.sock = sock
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="offterm-sim", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.sock]))
        except BaseException as exc:  # reported to the starting thread
            self.error = exc

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        waited = 0.0
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"simulator failed to start: {self.error!r}")
            threading.Event().wait(0.01)
            waited += 0.01
            if waited > timeout:
                raise RuntimeError("simulator did not start in time")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.sock.close()


def start_simulator(port: int = 0, *, host: str = "127.0.0.1", log_level: str = "warning", **config: Any) -> SimHandle:
    """Start a simulator in a background thread; call ``.stop()`` when done."""
    sim_config = config.pop("config", None) or SimConfig.build(**config)
    app = create_app(sim_config)
    sock = _bind(host, port)
    server = _ThreadServer(app, sock, log_level)
    server.start()
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    handle = SimHandle(f"http://{shown}:{bound}", sim_config, app.state.sim)
    handle._stop_cb = server.stop
    return handle


def start_simulator_process(port: int = 0, *, host: str = "127.0.0.1", **config: Any) -> SimHandle:
    """Start a simulator in a child process (``python -m offterm.sim.processor``)."""
    sim_config = config.pop("config", None) or SimConfig.build(**config)
    args = [sys.executable, "-m", "offterm.sim.processor", "--host", host, "--port", str(port)]
    args += ["--config-json", "-"]
    env = dict(os.environ)
    proc = subprocess.Popen(  # noqa: S603
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(_config_to_json(sim_config)))
    proc.stdin.close()
    line = proc.stdout.readline()
    if not line.startswith(READY_PREFIX):
        proc.kill()
        proc.wait()
        raise RuntimeError("simulator process did not start")
    url = line[len(READY_PREFIX) :].strip()
    handle = SimHandle(url, sim_config)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()

    handle._stop_cb = stop
    handle.process = proc  # type: ignore[attr-defined]
    return handle


def _config_to_json(config: SimConfig) -> dict[str, Any]:
    data = {k: getattr(config, k) for k in SimConfig.__dataclass_fields__}
    data["faults"] = config.faults.to_json()
    return data


def config_from_json(data: dict[str, Any]) -> SimConfig:
    data = dict(data)
    faults = data.pop("faults", None)
    if faults is not None:
        data["faults"] = FaultConfig.from_json(faults)
    return SimConfig(**data)


@contextlib.contextmanager
def running_simulator(port: int = 0, *, subprocess: bool = False, **config: Any) -> Iterator[SimHandle]:
    """``with running_simulator(faults={...}) as sim:`` — a simulator on 127.0.0.1 for the block."""
    handle = start_simulator_process(port, **config) if subprocess else start_simulator(port, **config)
    try:
        yield handle
    finally:
        handle.stop()


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    log_level: str = "info",
    announce: bool = True,
    banner: str | None = None,
    config: SimConfig | None = None,
    **options: Any,
) -> None:
    """Serve a simulator until interrupted (``offterm sim``).

    Prints one line, ``offterm-sim listening on http://HOST:PORT``, once it
    accepts connections, then ``banner`` (if any) on stderr; ``options`` are
    SimConfig fields (``faults`` may be a dict).
    Raises :class:`PortInUseError` when the port is taken.
    """
    sim_config = config or SimConfig.build(**options)
    app = create_app(sim_config)
    sock = _bind(host, port)
    server = uvicorn.Server(_uvicorn_config(app, log_level))
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.01)
        if announce and server.started:
            print(f"{READY_PREFIX}http://{shown}:{bound}", flush=True)
            if banner:
                print(banner, file=sys.stderr, flush=True)
        await task

    asyncio.run(main())
