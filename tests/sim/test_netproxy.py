"""FaultProxy: the network between a client and the simulator, switched on and off."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import httpx
import pytest

from offterm.sim.netproxy import FaultProxy
from offterm.sim.processor import SimHandle


@pytest.fixture
def proxy(sim: SimHandle) -> Iterator[FaultProxy]:
    with FaultProxy(sim.port) as p:
        yield p


def _get(proxy: FaultProxy, timeout: float = 2.0) -> httpx.Response:
    with httpx.Client(base_url=proxy.url, timeout=timeout) as client:
        return client.get("/healthcheck")


def test_pass_forwards(proxy: FaultProxy) -> None:
    assert _get(proxy).json() == {"status": "ok"}


def test_down_refuses_and_comes_back_on_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    proxy.set_mode("down")
    with pytest.raises(httpx.ConnectError):
        _get(proxy)
    proxy.set_mode("pass")
    assert proxy.port == port
    assert _get(proxy).status_code == 200


def test_down_cuts_open_connections(sim: SimHandle, proxy: FaultProxy) -> None:
    sim.set_faults(latency=1.0)
    errors: list[BaseException] = []

    def slow_request() -> None:
        try:
            with httpx.Client(base_url=proxy.url, timeout=5.0) as client:
                client.post("/v1/payment_intents", headers={"Authorization": f"Bearer {sim.secret_key}"})
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=slow_request)
    thread.start()
    for _ in range(200):
        if proxy.open_connections:
            break
        threading.Event().wait(0.01)
    proxy.set_mode("down")
    thread.join(timeout=5)
    assert len(errors) == 1 and isinstance(errors[0], httpx.ReadError | httpx.RemoteProtocolError)


def test_reset_resets(proxy: FaultProxy) -> None:
    proxy.set_mode("reset")
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError)):
        _get(proxy)


def test_blackhole_never_answers(proxy: FaultProxy) -> None:
    proxy.set_mode("blackhole")
    with pytest.raises(httpx.ReadTimeout):
        _get(proxy, timeout=0.3)
    proxy.set_mode("pass")
    assert _get(proxy).status_code == 200


def test_delay_and_drip_still_deliver(proxy: FaultProxy) -> None:
    proxy.set_mode("delay", delay=0.05)
    assert _get(proxy).json() == {"status": "ok"}
    proxy.set_mode("drip", drip_bytes=64, drip_interval=0.001)
    assert _get(proxy).json() == {"status": "ok"}


def test_drip_slower_than_the_timeout_times_out(proxy: FaultProxy) -> None:
    proxy.set_mode("drip", drip_bytes=1, drip_interval=0.5)
    with pytest.raises(httpx.ReadTimeout):
        _get(proxy, timeout=0.2)


def test_unknown_mode_is_refused(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="unknown proxy mode"):
        proxy.set_mode("flaky")


def _rst_close(conn: socket.socket) -> None:
    """Close as a killed process does with bytes unread: the kernel sends RST, not FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def test_a_server_reset_reaches_the_client() -> None:
    """A server killed with a request unread resets the connection; the client must hear of it, not wait
    for ever (the fleet torture's lanes hung on PostgreSQL crashes: their query never got an answer)."""
    with socket.create_server(("127.0.0.1", 0)) as server, FaultProxy(server.getsockname()[1]) as proxy:

        def serve() -> None:
            conn, _ = server.accept()
            threading.Event().wait(0.3)  # the request arrives and stays unread
            _rst_close(conn)

        threading.Thread(target=serve, daemon=True).start()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
            client.sendall(b"SELECT 1")
            try:
                answer = client.recv(100)
            except TimeoutError:
                pytest.fail("the client was never told the server reset the connection")
            except ConnectionResetError:
                answer = b""
            assert answer == b""


def test_a_client_reset_reaches_the_server() -> None:
    """A client SIGKILLed with an answer unread resets the connection; the server must hear of it (else it
    keeps the dead client's transaction open, with its locks)."""
    with socket.create_server(("127.0.0.1", 0)) as server, FaultProxy(server.getsockname()[1]) as proxy:
        heard: list[bytes | str] = []

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(100)
                conn.sendall(b"an answer the client never reads")
                conn.settimeout(5)
                try:
                    heard.append(conn.recv(100))
                except TimeoutError:
                    heard.append("still waiting")
                except ConnectionResetError:
                    heard.append(b"")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        client.sendall(b"BEGIN; UPDATE hub_lanes ...")
        threading.Event().wait(0.3)  # the answer is in the client's buffer, unread
        _rst_close(client)
        thread.join(10)
        assert heard == [b""]
