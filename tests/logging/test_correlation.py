"""Correlation ids: offline_id per payment, request_id per processor request, per task."""

from __future__ import annotations

import asyncio
import io
import json

import structlog

from offterm.core.logs import bind_payment, bind_request, configure_logging, new_request_id, payment_scoped


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_bind_payment_and_bind_request_nest_and_unwind(log_output):
    configure_logging(json=True, stream=log_output)
    log = structlog.get_logger("offterm.test")
    with bind_payment("offpi_" + "a" * 32):
        log.info("outer")
        with bind_request() as rid:
            log.info("inner")
        log.info("after_request")
    log.info("outside")
    outer, inner, after, outside = lines(log_output)
    assert outer["offline_id"] == "offpi_" + "a" * 32 and "request_id" not in outer
    assert inner["offline_id"] == outer["offline_id"] and inner["request_id"] == rid
    assert rid.startswith("req_") and len(rid) == 36
    assert "request_id" not in after and after["offline_id"] == outer["offline_id"]
    assert "offline_id" not in outside


def test_explicit_value_wins_over_the_bound_one(log_output):
    configure_logging(json=True, stream=log_output)
    with bind_request("req_given"):
        structlog.get_logger("offterm.test").info("x", request_id="req_explicit")
    assert lines(log_output)[0]["request_id"] == "req_explicit"


def test_request_ids_are_unique():
    assert len({new_request_id() for _ in range(1000)}) == 1000


def test_stdlib_records_carry_the_bound_ids(log_output):
    import logging

    configure_logging(json=True, stream=log_output)
    with bind_payment("offpi_" + "b" * 32), bind_request("req_x"):
        logging.getLogger("httpx").info("HTTP Request: POST /v1/payment_intents")
    [line] = lines(log_output)
    assert line["offline_id"] == "offpi_" + "b" * 32 and line["request_id"] == "req_x"


async def test_concurrent_payments_keep_their_own_ids(log_output):
    configure_logging(json=True, stream=log_output)
    log = structlog.get_logger("offterm.test")

    class Payment:
        def __init__(self, offline_id: str) -> None:
            self.offline_id = offline_id

    @payment_scoped
    async def forward(payment: Payment, step_gate: asyncio.Event) -> None:
        log.info("start")
        await step_gate.wait()  # interleave with the other payment
        with bind_request():
            log.info("request")
        log.info("done", expected=payment.offline_id)

    gate = asyncio.Event()
    ids = ["offpi_" + c * 32 for c in "cdef"]
    tasks = [asyncio.create_task(forward(Payment(i), gate)) for i in ids]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    records = lines(log_output)
    assert len(records) == 12
    for record in records:
        assert record["offline_id"] in ids
        if record["event"] == "done":
            assert record["offline_id"] == record["expected"]
    request_ids = [r["request_id"] for r in records if r["event"] == "request"]
    assert len(set(request_ids)) == 4
    for oid in ids:
        assert [r["event"] for r in records if r["offline_id"] == oid] == ["start", "request", "done"]
    log.info("after")
    assert "offline_id" not in lines(log_output)[-1]


async def test_payment_scoped_finds_the_id_in_keyword_arguments_and_tolerates_none(log_output):
    configure_logging(json=True, stream=log_output)
    log = structlog.get_logger("offterm.test")

    class Intent:
        offline_id = "offpi_" + "1" * 32

    @payment_scoped
    async def step(self_like: object, *, intent: object) -> str:
        log.info("step")
        return "ok"

    assert await step(object(), intent=Intent()) == "ok"
    assert await step(object(), intent=object()) == "ok"
    first, second = lines(log_output)
    assert first["offline_id"] == Intent.offline_id
    assert "offline_id" not in second
    assert step.__name__ == "step"
