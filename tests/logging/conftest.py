from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
import structlog

from offterm.core.logs import configure_logging, reset_logging


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """A stream the pipeline writes to; logging is reset to structlog's defaults afterwards."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    yield stream
    reset_logging()
    root.setLevel(level)
    structlog.contextvars.clear_contextvars()


@pytest.fixture(params=["json", "console"])
def configured(request: pytest.FixtureRequest, log_output: io.StringIO) -> io.StringIO:
    """The full pipeline, once per renderer, at debug level."""
    configure_logging(json=request.param == "json", level="debug", stream=log_output)
    return log_output
