"""Fixtures for the forwarding tests: a recorder and the kit plugins.

The simulator (``sim``), the fault proxy (``proxy``) and ``data_dir`` are offterm.testing's,
aliased in tests/conftest.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from forwarding_kit import KitPlugin  # noqa: E402

from offterm.testing import HookRecorder  # noqa: E402


@pytest.fixture
def recorder() -> HookRecorder:
    return HookRecorder()


@pytest.fixture
def kit() -> KitPlugin:
    return KitPlugin()
