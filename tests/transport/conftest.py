"""Fixtures for the transport tests: a hostile front for the simulator.

The simulator (``sim``) and Stripe's spec (``stripe_spec``) come from tests/conftest.py
(``sim`` is offterm.testing's ``processor_simulator``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from stripe_hostile import HostileFront

from offterm.sim.processor import SimHandle


@pytest.fixture
async def hostile(sim: SimHandle) -> AsyncIterator[HostileFront]:
    front = await HostileFront(sim.url).start()
    try:
        yield front
    finally:
        await front.close()
