"""The bundled Stripe transport passes the forwarding transport conformance kit."""

from __future__ import annotations

import pytest

from offterm.plugins.transport.stripe import StripeTransport
from offterm.testing import ForwardingTransportConformance, TransportFactory


class TestStripeTransportConformance(ForwardingTransportConformance):
    @pytest.fixture
    def transport_factory(self) -> TransportFactory:
        return lambda url: StripeTransport(url, timeout=2.0, connect_timeout=1.0, probe_timeout=2.0)


class TestStripeTransportWithASearchLag(ForwardingTransportConformance):
    """The simulator's search lags as Stripe's does; the transport declares the lag it allows for."""

    simulator_options = {"search_delay": 30.0}

    @pytest.fixture
    def transport_factory(self) -> TransportFactory:
        return lambda url: StripeTransport(url, timeout=2.0, connect_timeout=1.0, search_delay=30.0)
