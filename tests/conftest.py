"""Suite-wide: logging hygiene, and the suite's names for the fixtures offterm ships.

The simulator, the network proxy and the data directory come from
``offterm.testing`` (the ``pytest11`` plugin every install registers), so
this suite tests the very fixtures plugin authors get.  The short names the
tests were written with are aliases here, not copies; options go through
the shipped markers (``@pytest.mark.offterm_simulator(...)``,
``@pytest.mark.offterm_network(...)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from offterm.core.logs import reset_logging
from offterm.sim.netproxy import FaultProxy
from offterm.sim.processor import SimHandle
from offterm.sim.processor.spec import StripeSpec, find_spec


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    yield
    reset_logging()


@pytest.fixture
def sim(processor_simulator: SimHandle) -> SimHandle:
    """``processor_simulator``."""
    return processor_simulator


@pytest.fixture
def simulator(processor_simulator: SimHandle) -> SimHandle:
    """``processor_simulator``."""
    return processor_simulator


@pytest.fixture
def proxy(offterm_network: FaultProxy) -> FaultProxy:
    """``offterm_network``: every request (API, backend, probe) goes through it."""
    return offterm_network


@pytest.fixture
def network(offterm_network: FaultProxy) -> FaultProxy:
    """``offterm_network``: every request to the processor and the backend goes through it."""
    return offterm_network


@pytest.fixture
def data_dir(offterm_data_dir: Path) -> Path:
    """``offterm_data_dir``."""
    return offterm_data_dir


@pytest.fixture(scope="session")
def stripe_spec() -> StripeSpec:
    """Stripe's OpenAPI spec (``find_spec``); the tests that need it skip when it is absent."""
    path = find_spec()
    if path is None:
        pytest.skip("Stripe's OpenAPI spec is absent (set OFFTERM_STRIPE_SPEC or place ../shared/stripe-openapi)")
    return StripeSpec.load(path)
