"""configure_logging: both renderers, stdlib integration, levels, idempotence, no handler at import."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys

import pytest
import structlog

from offterm.core.errors import ConfigError
from offterm.core.logs import configure_logging

PAN = "4242424242424242"
AMEX = "378282246310005"


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_importing_offterm_adds_no_handler_and_keeps_an_apps_structlog_setup():
    code = (
        "import logging, structlog\n"
        "structlog.configure(processors=[structlog.processors.KeyValueRenderer()])\n"
        "mine = structlog.get_config()\n"
        "import offterm.core, offterm.core.logs, offterm.core._engine.terminal, offterm.core.manager\n"
        "assert structlog.get_config() == mine, 'offterm replaced the app structlog configuration'\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
        "print('clean')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_json_renderer_writes_one_object_per_line_with_the_standard_fields(log_output):
    configure_logging(json=True, level="info", stream=log_output)
    structlog.get_logger("offterm.test").info("payment_stored", amount=1999, currency="usd")
    [line] = json_lines(log_output)
    assert line["event"] == "payment_stored"
    assert line["amount"] == 1999 and line["currency"] == "usd"
    assert line["level"] == "info"
    assert line["logger"] == "offterm.test"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line["timestamp"])


def test_console_renderer_is_for_people(log_output):
    configure_logging(json=False, level="info", stream=log_output)
    structlog.get_logger("offterm.test").warning("forwarding_failure", code="connection_token_provider_error")
    out = log_output.getvalue()
    assert "forwarding_failure" in out
    assert "warning" in out
    assert "code=connection_token_provider_error" in out
    assert "\x1b[" not in out  # no colours when the stream is not a terminal
    with pytest.raises(ValueError):
        json.loads(out.splitlines()[0])


def test_third_party_stdlib_records_go_through_the_same_pipeline(log_output):
    configure_logging(json=True, level="info", stream=log_output)
    logging.getLogger("somelib.http").warning("retrying %s for card %s", "POST /v1/charges", PAN)
    [line] = json_lines(log_output)
    assert line["logger"] == "somelib.http"
    assert line["level"] == "warning"
    assert line["event"] == "retrying POST /v1/charges for card ****4242"


def test_level_filters_both_structlog_and_stdlib(log_output):
    configure_logging(json=True, level="warning", stream=log_output)
    log = structlog.get_logger("offterm.test")
    log.info("hidden")
    logging.getLogger("somelib").info("hidden too")
    log.warning("shown")
    logging.getLogger("somelib").error("shown too")
    assert [line["event"] for line in json_lines(log_output)] == ["shown", "shown too"]


def test_calling_it_again_replaces_the_configuration(log_output):
    first = io.StringIO()
    configure_logging(json=True, stream=first)
    configure_logging(json=True, stream=first)
    configure_logging(json=True, stream=log_output)
    marked = [h for h in logging.getLogger().handlers if getattr(h, "_offterm_log_handler", False)]
    assert len(marked) == 1
    structlog.get_logger("offterm.test").info("once")
    assert first.getvalue() == ""
    assert [line["event"] for line in json_lines(log_output)] == ["once"]


def test_foreign_handlers_are_left_in_place(log_output):
    other = logging.StreamHandler(io.StringIO())
    root = logging.getLogger()
    root.addHandler(other)
    try:
        configure_logging(json=True, stream=log_output)
        configure_logging(json=True, stream=log_output)
        assert other in root.handlers
    finally:
        root.removeHandler(other)


def test_unknown_level_is_a_config_error_naming_the_option(log_output):
    with pytest.raises(ConfigError) as info:
        configure_logging(level="chatty", stream=log_output)
    assert info.value.key == "log_level"
    assert "chatty" in str(info.value)


def test_levels_are_case_insensitive(log_output):
    configure_logging(json=True, level="DEBUG", stream=log_output)
    structlog.get_logger("offterm.test").debug("visible")
    assert json_lines(log_output)[0]["event"] == "visible"


def test_nothing_sensitive_leaks_through_either_renderer(configured):
    log = structlog.get_logger("offterm.test")
    log.info(f"collected {PAN}", card={"number": "5555 5555 5555 4444", "brand": "mastercard"})
    log.info("read", track1="%B4242424242424242^DOE/JANE^2512101000000000?", raw=";6011111111111117=2512101?")
    log.info("auth", headers={"Authorization": "Bearer pst_test_abcdefgh123"}, url="https://x/?token=tok_abc123")
    log.info("keys", storage_key=b"\x01" * 32, blob="ff" * 32, secret_key="sk_test_4eC39HqLyjWDarjtT1zdp7dc")
    log.info("list", cards=[AMEX, 36227206271667, ("6205500000000000004",)])
    logging.getLogger("thirdparty").error("lib logged %s and %s", "3566002020360505", "rk_live_abcdefgh")
    track2 = ";" + PAN + "=" + "25" + "12101?"  # built at run time: tracebacks quote source lines
    try:
        raise ValueError(f"declined {PAN} with {track2}")
    except ValueError:
        log.exception("forward_crashed")
    try:
        raise KeyError("6011000990139424")
    except KeyError:
        logging.getLogger("thirdparty").exception("lib crashed")
    out = configured.getvalue()
    flat = digits(out)
    for pan in (PAN, "5555555555554444", "6011111111111117", AMEX, "36227206271667", "6205500000000000004"):
        assert pan not in flat, pan
    for pan in ("3566002020360505", "6011000990139424"):
        assert pan not in flat, pan
    for secret in ("pst_test_abcdefgh123", "tok_abc123", "ff" * 32, "sk_test_4eC39", "rk_live_abcdefgh", "DOE/JANE"):
        assert secret not in out, secret
    assert "2512101" not in out
    # what is useful survives
    assert "****4242" in out and "****4444" in out and "mastercard" in out
    assert "forward_crashed" in out and "ValueError" in out and "Traceback" in out
    assert "lib crashed" in out and "KeyError" in out


def test_ordinary_numbers_survive_either_renderer(configured):
    structlog.get_logger("offterm.test").info(
        "order 123456789012 paid",
        amount=1999,
        amounts={"usd": 250000},
        at=1700000000,
        reference="4242424242424241",
        offline_id="offpi_" + "0" * 32,
    )
    out = configured.getvalue()
    for kept in ("123456789012", "1999", "250000", "1700000000", "4242424242424241", "offpi_" + "0" * 32):
        assert kept in out, kept
