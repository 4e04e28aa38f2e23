"""Suite-wide hygiene: no test inherits another test's logging setup."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from offterm.core.logs import reset_logging


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    yield
    reset_logging()
