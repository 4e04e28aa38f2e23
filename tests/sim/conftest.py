from __future__ import annotations

from collections.abc import Iterator

import pytest

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
