"""WorkerThread: blocking calls in order on a daemon thread; a stuck call never holds close() or exit hostage."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from offterm.core._engine.worker_thread import WorkerThread


async def test_calls_run_in_order_and_return_their_results_or_exceptions() -> None:
    worker = WorkerThread("test-worker")
    seen: list[int] = []

    def call(n: int) -> int:
        seen.append(n)
        return n * 10

    def fail() -> None:
        raise ValueError("boom")

    results = await asyncio.gather(*(worker.run(lambda n=n: call(n)) for n in range(5)))
    assert results == [0, 10, 20, 30, 40] and seen == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="boom"):
        await worker.run(fail)
    names: list[str] = []
    await worker.run(lambda: names.append(threading.current_thread().name))
    assert names == ["test-worker"]
    assert await worker.close(1.0) is True
    with pytest.raises(RuntimeError):
        await worker.run(lambda: None)


async def test_close_leaves_a_stuck_call_behind_and_skips_calls_nobody_waits_for() -> None:
    worker = WorkerThread("test-stuck")
    release = threading.Event()
    started = threading.Event()
    ran: list[str] = []

    def stuck() -> None:
        started.set()
        release.wait(30)  # a query whose answer never comes
        ran.append("stuck")

    first = asyncio.ensure_future(worker.run(stuck))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    with pytest.raises(TimeoutError):  # its caller stops waiting (a sync confirm's timeout)
        async with asyncio.timeout(0.1):
            await worker.run(lambda: ran.append("queued"))
    began = time.monotonic()
    assert await worker.close(0.2) is False  # left behind, not waited for
    assert time.monotonic() - began < 2.0
    release.set()  # the call ends at last; the thread with it
    await first
    for _ in range(200):
        if worker._thread is not None and not worker._thread.is_alive():
            break
        await asyncio.sleep(0.01)
    assert worker._thread is not None and not worker._thread.is_alive() and worker._thread.daemon
    assert ran == ["stuck"]  # the call whose caller gave up before it started never ran


STUCK_PROCESS = """
import asyncio, threading
from offterm.core._engine.worker_thread import WorkerThread

async def main():
    worker = WorkerThread("stuck")
    call = asyncio.ensure_future(worker.run(lambda: threading.Event().wait()))  # never returns
    await asyncio.sleep(0.2)
    print("left behind" if not await worker.close(0.2) else "ended", flush=True)
    call.cancel()

asyncio.run(main())
"""


def test_a_process_exits_with_a_call_stuck_on_its_worker_thread() -> None:
    done = subprocess.run([sys.executable, "-c", STUCK_PROCESS], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "left behind"
