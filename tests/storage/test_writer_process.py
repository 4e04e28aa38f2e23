"""The writer process: a drain's claims and claim updates run in a child process, with the same effects.

Calls reach the child from the store's thread (the store's methods) or straight from the event loop
(``drain_channel``, used by ``AsyncStore``); both are tested.

Real child processes on real SQLCipher files: each test checks where a call ran
(the child's pid), what it did to the file, and what happens when the child dies,
cannot start, or outlives its parent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from storage_testkit import T0, make_store, new_payment

from offterm.core.contracts.storage import AttemptUpdate, OutcomeUpdate, PaymentState
from offterm.core.errors import InvalidRequest, InvalidTransition, OfflineStorageFull, StorageError
from offterm.core.store_runner import AsyncStore
from offterm.plugins.storage.keys import StaticKeyProvider
from offterm.plugins.storage.sqlcipher import SqlCipherStore
from offterm.plugins.storage.sqlcipher import writer_process as wp

S = PaymentState
NOW = T0 + timedelta(hours=1)
LATER = NOW + timedelta(seconds=2)


def ready_writer(store: SqlCipherStore) -> wp.WriterProcess:
    writer = store.writer_process
    assert writer is not None
    assert writer.wait_until_ready(60), "the writer process started and opened the store"
    assert writer.pid is not None and writer.pid != os.getpid()
    return writer


def drain_steps(store: SqlCipherStore, n: int) -> list[Any]:
    """Store n payments, claim them, record attempts, then outcomes; return everything the calls returned."""
    ids = [store.store(new_payment(i)).offline_id for i in range(n)]
    claimed = store.claim("w", n, 60, NOW)
    attempts = store.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids])
    outcomes = store.apply_claim_updates(
        [OutcomeUpdate(i, "w", S.FORWARDED, LATER, intent_id=f"pi_{k}") for k, i in enumerate(ids)]
    )
    return [ids, claimed, attempts, outcomes]


def view(p: Any) -> tuple[Any, ...]:
    """What a payment looks like, less its offline id (random per store)."""
    return (p.amount, p.state, p.attempts, p.intent_id, p.updated_at, p.card is None)


def test_a_drain_in_the_writer_process_has_the_effects_of_one_in_process(open_store: Any, tmp_path: Path) -> None:
    here = open_store(tmp_path / "here", writer_process=False)
    there = open_store(tmp_path / "there", writer_process_after=0)
    assert here.writer_process is None
    writer = ready_writer(there)

    a = drain_steps(here, 12)
    b = drain_steps(there, 12)
    assert [view(p) for p in a[1]] == [view(p) for p in b[1]]
    assert [view(p) for p in a[2]] == [view(p) for p in b[2]]
    assert [view(p) for p in a[3]] == [view(p) for p in b[3]]
    assert all(p.state is S.FORWARDED and p.attempts == 1 and p.card is None for p in b[3])
    # and on disk, read by this process's own connection
    assert [view(p) for p in here.list_payments()] == [view(p) for p in there.list_payments()]
    assert writer.pid is not None, "still the same child"


def test_the_writer_process_starts_only_once_a_drain_has_written_enough(open_store: Any) -> None:
    store = open_store(writer_process_after=6)
    writer = store.writer_process
    assert writer is not None and writer.pid is None, "no child for a store that has not drained"
    ids = [store.store(new_payment(i)).offline_id for i in range(8)]
    store.claim("w", 8, 60, NOW)
    store.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids[:4]])
    assert writer.pid is None, "4 records written here, fewer than 6"
    store.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids[4:]])
    ready_writer(store)
    done = store.apply_claim_updates([OutcomeUpdate(i, "w", S.FORWARDED, LATER) for i in ids])
    assert [p.state for p in done] == [S.FORWARDED] * 8


def test_errors_come_back_typed_with_the_same_words(open_store: Any, tmp_path: Path) -> None:
    here = open_store(tmp_path / "here", writer_process=False)
    there = open_store(tmp_path / "there", writer_process_after=0)
    ready_writer(there)
    answers = []
    for store in (here, there):
        pid = store.store(new_payment(1)).offline_id
        store.claim("w", 1, 60, NOW)
        results = store.apply_claim_updates(
            [
                OutcomeUpdate(pid, "someone-else", S.FORWARDED, LATER),  # not theirs
                OutcomeUpdate(pid, "w", S.OUTCOME_UNKNOWN, LATER),  # never sent
                AttemptUpdate(pid, "w", NOW),  # fine
            ]
        )
        with pytest.raises(InvalidRequest) as refused:
            store.claim("w", 0, 60, NOW)
        words = [(type(r), str(r).replace(pid, "ID")) for r in results[:2]]
        answers.append((words, results[2].attempts, str(refused.value)))
    assert answers[0] == answers[1]
    assert answers[1][0][0][0] is InvalidTransition


def test_a_writer_process_killed_between_calls_loses_nothing_and_is_replaced(open_store: Any) -> None:
    store = open_store(writer_process_after=0)
    first = ready_writer(store).pid
    ids = [store.store(new_payment(i)).offline_id for i in range(4)]
    store.claim("w", 4, 60, NOW)
    store.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids[:2]])
    assert first is not None
    os.kill(first, signal.SIGKILL)
    with pytest.raises(StorageError, match="may or may not have been made"):
        store.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids[2:]])
    # the failed call ran nowhere (the child was dead before it): it can simply be made again, here or there
    again = store.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids[2:]])
    assert [p.attempts for p in again] == [1, 1]
    second = ready_writer(store).pid
    assert second != first, "a new child took over"
    done = store.apply_claim_updates([OutcomeUpdate(i, "w", S.FORWARDED, LATER) for i in ids])
    assert [(p.state, p.attempts) for p in done] == [(S.FORWARDED, 1)] * 4


def test_a_writer_process_killed_during_a_call_leaves_the_batch_all_or_nothing(
    open_store: Any, key: bytes, tmp_path: Path
) -> None:
    from storage_testkit import raw_connect

    store = open_store(writer_process_after=0, busy_timeout_ms=20_000)
    writer = ready_writer(store)
    ids = [store.store(new_payment(i)).offline_id for i in range(3)]
    store.claim("w", 3, 60, NOW)
    blocker = raw_connect(tmp_path / "payments.db", key)
    blocker.execute("BEGIN IMMEDIATE")  # the child's transaction now waits for the write lock
    killer = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", f"import os, signal, time; time.sleep(1.0); os.kill({writer.pid}, signal.SIGKILL)"]
    )
    try:
        with pytest.raises(StorageError, match="may or may not have been made"):
            store.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids])
    finally:
        killer.wait(timeout=30)
        blocker.execute("ROLLBACK")
        blocker.close()
    attempts = {p.attempts for p in store.list_payments()}
    assert attempts == {0}, "the killed child's transaction never committed: none of the batch was applied"
    assert [p.attempts for p in store.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids])] == [1, 1, 1]


def test_no_writer_process_where_none_can_start(open_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    store = open_store(writer_process_after=0)
    writer = store.writer_process
    assert writer is not None and writer.given_up and writer.pid is None
    _, _, _, outcomes = drain_steps(store, 3)
    assert [p.state for p in outcomes] == [S.FORWARDED] * 3, "everything runs in-process instead"


def test_closing_the_store_ends_its_writer_process(tmp_path: Path, key: bytes) -> None:
    store = make_store(tmp_path, writer_process_after=0)
    store.open(StaticKeyProvider(key))
    pid = ready_writer(store).pid
    assert pid is not None and Path(f"/proc/{pid}").exists()
    store.close()
    assert not Path(f"/proc/{pid}").exists(), "the child exited and was reaped"


def test_the_key_is_never_in_the_writer_process_arguments_or_environment(open_store: Any, key: bytes) -> None:
    store = open_store(writer_process_after=0)
    pid = ready_writer(store).pid
    for what in ("cmdline", "environ"):
        seen = Path(f"/proc/{pid}/{what}").read_bytes()
        assert key not in seen and key.hex().encode() not in seen and key.hex().upper().encode() not in seen


def test_the_writer_process_exits_when_its_parent_dies(tmp_path: Path, key: bytes) -> None:
    program = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from storage_testkit import make_store, new_payment
        from offterm.plugins.storage.keys import StaticKeyProvider
        from pathlib import Path
        store = make_store(Path({str(tmp_path)!r}), writer_process_after=0)
        store.open(StaticKeyProvider(bytes.fromhex({key.hex()!r})))
        assert store.writer_process.wait_until_ready(60)
        store.store(new_payment(1))
        print("child", store.writer_process.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)  # noqa: S603
    assert result.returncode == -signal.SIGKILL, result.stderr
    child = int(result.stdout.split("child ")[1].split()[0])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and _state(child) != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or _state(child) == "Z", "the orphaned child noticed and exited"
    store = make_store(tmp_path, writer_process=False)
    store.open(StaticKeyProvider(key))
    try:
        assert [p.state for p in store.list_payments()] == [S.STORED]
    finally:
        store.close()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_the_writer_process_is_given_up_after_repeated_losses(open_store: Any) -> None:
    store = open_store(writer_process_after=0)
    writer = store.writer_process
    assert writer is not None
    for lost in range(wp.MAX_FAILURES):
        pid = ready_writer(store).pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(StorageError, match="may or may not have been made"):
            store.claim("w", 1, 60, NOW)
        assert writer.given_up is (lost == wp.MAX_FAILURES - 1)
    assert writer.pid is None and not writer.ready()
    offline_id = store.store(new_payment(1)).offline_id
    assert [p.offline_id for p in store.claim("w", 1, 60, NOW)] == [offline_id], "the store works on, in-process"


# -- the event loop's channel (PaymentStore.drain_channel) -------------------------------------------------


def channel_store(open_store: Any) -> tuple[SqlCipherStore, AsyncStore]:
    store = open_store(writer_process_after=0)
    ready_writer(store)
    return store, AsyncStore(store)


def refuse_thread_calls(store: SqlCipherStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the store thread's way to the child fail loudly, so passing calls prove they took the channel."""

    def no(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("went through the store's thread")

    monkeypatch.setattr(store.writer_process, "call", no)


def test_the_drain_calls_take_the_event_loops_channel_once_the_writer_is_ready(
    open_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, runner = channel_store(open_store)
    ids = [store.store(new_payment(i)).offline_id for i in range(5)]
    refuse_thread_calls(store, monkeypatch)
    before = store.writer_process.calls_answered

    async def drain() -> list[Any]:
        assert [p.offline_id for p in await runner.claim("w", 5, 60, NOW)] == ids
        await runner.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids])
        return await runner.apply_claim_updates([OutcomeUpdate(i, "w", S.FORWARDED, LATER) for i in ids])

    done = asyncio.run(drain())
    assert [(p.state, p.attempts) for p in done] == [(S.FORWARDED, 1)] * 5
    assert store.writer_process.calls_answered == before + 3
    assert {p.state for p in store.list_payments()} == {S.FORWARDED}


def test_a_cancelled_caller_leaves_the_channel_in_step_and_its_batch_written(open_store: Any) -> None:
    store, runner = channel_store(open_store)
    ids = [store.store(new_payment(i)).offline_id for i in range(4)]
    store.claim("w", 4, 60, NOW)

    async def cancel_then_go_on() -> list[Any]:
        first = asyncio.ensure_future(runner.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids[:2]]))
        for _ in range(20):  # until its request is on the wire (then the exchange is committed to its end)
            await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await runner.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids[2:]])

    second = asyncio.run(cancel_then_go_on())
    assert [p.offline_id for p in second] == ids[2:], "the answer read is the second call's, not the first's"
    assert [p.attempts for p in store.list_payments()] == [1, 1, 1, 1], "the cancelled batch was written anyway"


def test_a_call_cancelled_while_waiting_its_turn_is_never_sent(open_store: Any) -> None:
    store, runner = channel_store(open_store)
    ids = [store.store(new_payment(i)).offline_id for i in range(4)]

    async def queue_two_cancel_the_second() -> tuple[list[Any], BaseException | None]:
        first = asyncio.ensure_future(runner.claim("w", 2, 60, NOW))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(runner.claim("w", 2, 60, NOW))  # waits for the first's exchange
        await asyncio.sleep(0)
        second.cancel()
        claimed = await first
        try:
            await second
        except asyncio.CancelledError:
            return claimed, None
        return claimed, AssertionError("the second claim was not cancelled")

    claimed, problem = asyncio.run(queue_two_cancel_the_second())
    assert problem is None
    assert [p.offline_id for p in claimed] == ids[:2]
    states = {p.offline_id: p.state for p in store.list_payments()}
    assert [states[i] for i in ids] == [S.FORWARDING, S.FORWARDING, S.STORED, S.STORED], (
        "the cancelled claim took nothing: no payment is held for a caller that left"
    )
    assert [p.offline_id for p in asyncio.run(runner.claim("w", 2, 60, NOW))] == ids[2:], "still in step"


def test_the_channel_works_from_one_event_loop_after_another(open_store: Any) -> None:
    store, runner = channel_store(open_store)
    ids = [store.store(new_payment(i)).offline_id for i in range(2)]
    assert [p.offline_id for p in asyncio.run(runner.claim("w", 1, 60, NOW))] == ids[:1]
    assert [p.offline_id for p in asyncio.run(runner.claim("w", 1, 60, NOW))] == ids[1:]
    assert store.drain_channel() is not None


def test_a_child_killed_under_the_channel_gives_a_typed_error_then_calls_go_on(open_store: Any) -> None:
    store, runner = channel_store(open_store)
    ids = [store.store(new_payment(i)).offline_id for i in range(3)]
    first = store.writer_process.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    with pytest.raises(StorageError, match="may or may not have been made"):
        asyncio.run(runner.claim("w", 3, 60, NOW))
    assert store.drain_channel() is None, "a broken channel is not offered again"
    claimed = asyncio.run(runner.claim("w", 3, 60, NOW))  # on the store's thread; a new child is starting
    assert [p.offline_id for p in claimed] == ids, "the failed claim took nothing (its child was already dead)"
    second = ready_writer(store).pid
    assert second != first and store.drain_channel() is not None
    done = asyncio.run(runner.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids]))
    assert [p.attempts for p in done] == [1, 1, 1]


def test_a_full_disk_reported_through_the_channel_is_handled_by_the_store_on_its_thread(
    open_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child's OfflineStorageFull is simulated (a real full disk is tested above, in both processes)."""
    store, runner = channel_store(open_store)
    ids = [store.store(new_payment(i)).offline_id for i in range(2)]
    store.claim("w", 2, 60, NOW)
    channel = store.drain_channel()
    writer = store.writer_process
    assert isinstance(channel, wp.DrainSocket) and writer is not None
    tried: list[str] = []

    async def full(name: str, args: tuple[Any, ...]) -> Any:
        tried.append("channel")
        raise OfflineStorageFull("simulated: the disk is full")

    real_call = writer.call

    def full_once(name: str, args: Any, kwargs: Any) -> Any:
        tried.append("thread")
        if tried.count("thread") == 1:
            raise OfflineStorageFull("simulated: still full")
        return real_call(name, args, kwargs)

    freed: list[bool] = []
    monkeypatch.setattr(channel, "_call", full)
    monkeypatch.setattr(writer, "call", full_once)
    monkeypatch.setattr(store, "_on_disk_full", lambda: freed.append(True))
    done = asyncio.run(runner.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids]))
    assert tried == ["channel", "thread", "thread"], "the store's own method, on its thread, retried once"
    assert freed == [True], "the reserve was given up by the store, once"
    assert [p.attempts for p in done] == [1, 1]


def test_the_writer_process_gets_none_of_the_pos_environment(
    open_store: Any, key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFTERM_STORAGE_KEY", key.hex())  # where the env key provider would read it
    monkeypatch.setenv("POS_API_TOKEN", "sk_live_not_for_the_child")
    store = open_store(writer_process_after=0)
    pid = ready_writer(store).pid
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert key.hex().encode() not in environ and b"sk_live_not_for_the_child" not in environ
    assert b"PYTHONPATH=" in environ


def test_the_writer_process_outlives_a_shutdown_signal_until_the_store_closes(tmp_path: Path, key: bytes) -> None:
    store = make_store(tmp_path, writer_process_after=0)
    store.open(StaticKeyProvider(key))
    pid = ready_writer(store).pid
    assert pid is not None and os.getpgid(pid) != os.getpgid(0), "its own session, not the POS's process group"
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    offline_id = store.store(new_payment(1)).offline_id
    assert [p.offline_id for p in store.claim("w", 1, 60, NOW)] == [offline_id]
    assert store.writer_process is not None and store.writer_process.pid == pid, "the same child answered"
    store.close()
    assert not Path(f"/proc/{pid}").exists()


def test_a_writer_process_that_cannot_be_started_never_fails_a_committed_write(
    open_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(writer_process_after=2)
    ids = [store.store(new_payment(i)).offline_id for i in range(2)]
    store.claim("w", 2, 60, NOW)

    def no_descriptors() -> Any:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(wp.socket, "socketpair", no_descriptors)
    done = store.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids])  # written, then the start fails
    assert [p.attempts for p in done] == [1, 1], "the caller hears what was committed, not the failed start"
    writer = store.writer_process
    assert writer is not None and writer.given_up and writer.pid is None


def test_a_child_lost_by_the_store_thread_ends_a_waiting_channel_exchange_at_once(
    open_store: Any, key: bytes, tmp_path: Path
) -> None:
    from storage_testkit import raw_connect

    store = open_store(writer_process_after=0, busy_timeout_ms=3_000)  # the child's wait (and close's) is short
    runner = AsyncStore(store)
    ready_writer(store)
    ids = [store.store(new_payment(i)).offline_id for i in range(2)]
    store.claim("w", 2, 60, NOW)
    blocker = raw_connect(tmp_path / "payments.db", key)
    blocker.execute("BEGIN IMMEDIATE")  # the child's transaction waits for the write lock

    async def exchange_then_lose_the_child() -> BaseException:
        waiting = asyncio.ensure_future(runner.apply_claim_updates([AttemptUpdate(i, "w", NOW) for i in ids]))
        await asyncio.sleep(0.5)  # the request is with the child, which waits for the lock
        assert not waiting.done()
        await asyncio.to_thread(store.writer_process.close)  # the store's side gives the child up
        try:
            await waiting
        except StorageError as exc:
            return exc
        raise AssertionError("the exchange should have failed")

    try:
        error = asyncio.run(exchange_then_lose_the_child())
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert "may or may not have been made" in str(error)
    assert "did not answer" not in str(error), "it ended at end of file, not after waiting out its timeout"


def test_no_writer_process_in_a_frozen_application(open_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """PyInstaller and the like: sys.executable is the application itself, which must not be re-run."""
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    store = open_store(writer_process_after=0)
    writer = store.writer_process
    assert writer is not None and writer.given_up and writer.pid is None
    _, _, _, outcomes = drain_steps(store, 2)
    assert [p.state for p in outcomes] == [S.FORWARDED] * 2
