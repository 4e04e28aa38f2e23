"""Fixtures for the transport tests: the simulator, Stripe's spec, and a hostile front for the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from stripe_hostile import HostileFront

from offterm.sim.processor import SimHandle, running_simulator
from offterm.sim.processor.spec import StripeSpec, find_spec


@pytest.fixture(scope="session")
def stripe_spec() -> StripeSpec:
    path = find_spec()
    if path is None:
        pytest.skip("Stripe's OpenAPI spec is absent (set OFFTERM_STRIPE_SPEC or place ../shared/stripe-openapi)")
    return StripeSpec.load(path)


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    with running_simulator() as handle:
        yield handle


@pytest.fixture
async def hostile(sim: SimHandle) -> AsyncIterator[HostileFront]:
    front = await HostileFront(sim.url).start()
    try:
        yield front
    finally:
        await front.close()
