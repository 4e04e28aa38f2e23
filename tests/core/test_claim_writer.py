"""ClaimWriter: updates made while a write is in flight travel together; each caller hears its own result.

The store here is a stand-in with a gate, so the test decides when a write finishes; the real store
under it (SQLCipher, one transaction per call) is tested in tests/storage/test_group_commit.py and,
inside a drain, in tests/forwarding/test_forwarding_group_commit.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from offterm.core.claim_writer import ClaimWriter
from offterm.core.contracts.storage import AttemptUpdate, ClaimUpdate
from offterm.core.errors import InvalidTransition, StorageError

NOW = datetime(2026, 11, 26, tzinfo=UTC)


class GatedStore:
    """Stands in for AsyncStore.apply_claim_updates: records each call, answers when its gate opens."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gates: list[asyncio.Event] = []
        self.answer: object = None  # None: one result per update (its id); else returned or raised as is
        self.arrived = asyncio.Event()

    async def apply_claim_updates(self, updates: Sequence[ClaimUpdate]) -> list[object]:
        self.calls.append([u.offline_id for u in updates])
        gate = asyncio.Event()
        self.gates.append(gate)
        self.arrived.set()
        await gate.wait()
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.answer is not None:
            return self.answer  # type: ignore[return-value]
        return [f"done:{u.offline_id}" if u.offline_id != "lost" else InvalidTransition("lost") for u in updates]

    async def open_next(self) -> None:
        """Let the oldest waiting call return (waiting for one to arrive first)."""
        while not any(not gate.is_set() for gate in self.gates):
            self.arrived.clear()
            await self.arrived.wait()
        next(gate for gate in self.gates if not gate.is_set()).set()


def update(offline_id: str) -> AttemptUpdate:
    return AttemptUpdate(offline_id, "fwd-test", NOW)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_updates_made_while_a_write_is_in_flight_share_the_next_call() -> None:
    store = GatedStore()
    writer = ClaimWriter(store)  # type: ignore[arg-type]
    first = writer.submit(update("a"))
    await settle()
    assert store.calls == [["a"]], "an update that finds the store idle is written at once, alone"
    later = [writer.submit(update(x)) for x in ("b", "lost", "c")]
    await settle()
    assert store.calls == [["a"]], "nothing else starts while a write is in flight"
    assert not first.done(), "a caller hears nothing before its write returned"
    await store.open_next()
    assert await first == "done:a"
    await settle()
    assert store.calls == [["a"], ["b", "lost", "c"]], "everything that waited goes in one call, in order"
    await store.open_next()
    assert await later[0] == "done:b" and await later[2] == "done:c"
    with pytest.raises(InvalidTransition):
        await later[1]  # its own error, not its neighbours'
    await writer.drain()


async def test_a_failed_call_fails_everyone_in_it_and_the_next_call_still_runs() -> None:
    store = GatedStore()
    writer = ClaimWriter(store)  # type: ignore[arg-type]
    store.answer = StorageError("disk full")
    failed = [writer.submit(update(x)) for x in ("a", "b")]
    await store.open_next()
    for future in failed:
        with pytest.raises(StorageError, match="disk full"):
            await future
    store.answer = None
    again = writer.submit(update("a"))
    await store.open_next()
    assert await again == "done:a"


async def test_a_store_that_answers_the_wrong_number_of_results_fails_the_call() -> None:
    store = GatedStore()
    writer = ClaimWriter(store)  # type: ignore[arg-type]
    store.answer = ["only one"]
    futures = [writer.submit(update(x)) for x in ("a", "b")]
    await store.open_next()
    for future in futures:
        with pytest.raises(StorageError, match="1 results for 2"):
            await future


async def test_a_caller_that_stops_listening_does_not_stop_the_write() -> None:
    store = GatedStore()
    writer = ClaimWriter(store)  # type: ignore[arg-type]
    gone, kept = writer.submit(update("a")), writer.submit(update("b"))
    gone.cancel()
    await store.open_next()
    assert await kept == "done:b"
    assert store.calls == [["a", "b"]], "the cancelled caller's update was still written"


async def test_drain_waits_for_updates_submitted_by_callbacks_of_earlier_ones() -> None:
    """A withdrawal is submitted when its attempt's write returns; drain must wait for that one too."""
    store = GatedStore()
    writer = ClaimWriter(store)  # type: ignore[arg-type]
    chained: list[asyncio.Future[object]] = []
    first = writer.submit(update("a"))
    first.add_done_callback(lambda _: chained.append(writer.submit(update("a-undo"))))  # type: ignore[arg-type]
    draining = asyncio.create_task(writer.drain())
    await store.open_next()
    await store.open_next()
    await draining
    assert store.calls == [["a"], ["a-undo"]]
    assert chained and chained[0].done() and chained[0].result() == "done:a-undo"


async def test_a_writer_cancelled_mid_write_still_tells_each_caller_what_the_store_did() -> None:
    """Cancelled (the loop shutting down) while the store writes: the batch's callers hear the real results."""
    store = GatedStore()
    writer = ClaimWriter(store)  # type: ignore[arg-type]
    written = writer.submit(update("a"))
    await settle()
    writing = writer._writing
    assert writing is not None
    writing.cancel()
    await store.open_next()
    with contextlib.suppress(asyncio.CancelledError):
        await writing
    assert await written == "done:a", "committed, so reported as committed"
