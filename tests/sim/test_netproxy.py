"""FaultProxy: the network between a client and the simulator, switched on and off."""

from __future__ import annotations

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
