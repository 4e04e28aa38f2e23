"""offterm.testing's simulator, network and data-directory fixtures, and their markers."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.offterm_simulator(session_ttl=0.4)
def test_the_simulator_marker_passes_its_options(processor_simulator):
    assert processor_simulator.config.session_ttl == 0.4


def test_the_network_fronts_the_simulator(offterm_network, processor_simulator):
    assert offterm_network.mode == "pass"
    assert offterm_network.upstream_port == processor_simulator.port
    resp = httpx.post(offterm_network.url + "/backend/connection_token", timeout=5)
    assert resp.status_code == 200, resp.text
    assert offterm_network.connections_total >= 1


@pytest.mark.offterm_network(mode="down")
def test_the_network_marker_starts_it_cut(offterm_network):
    assert offterm_network.mode == "down"
    with pytest.raises(httpx.TransportError):
        httpx.post(offterm_network.url + "/backend/connection_token", timeout=2)


def test_the_config_keeps_its_data_in_the_data_dir(offterm_data_dir, offterm_config, tmp_path):
    assert offterm_data_dir == tmp_path / "offterm"
    assert offterm_config["terminal"]["data_dir"] == str(offterm_data_dir)


def test_the_suites_short_names_are_the_shipped_fixtures(
    sim, simulator, processor_simulator, proxy, network, offterm_network, data_dir, offterm_data_dir
):
    assert sim is simulator is processor_simulator
    assert proxy is network is offterm_network
    assert data_dir == offterm_data_dir
