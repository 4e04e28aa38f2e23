"""AsyncStore (the store on its own thread) passes every new and changed call through to a real store."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from storage_testkit import new_payment

from offterm.core._engine.store_runner import AsyncStore
from offterm.core.contracts.storage import OnlineAttempt, PaymentState


async def test_the_async_wrappers_reach_the_store_on_its_thread(store) -> None:
    runner = AsyncStore(store)
    now = datetime.now(UTC)
    pid = (await runner.store(new_payment())).offline_id
    [claimed] = await runner.claim("w", 1, 30, now)
    assert claimed.offline_id == pid
    assert (await runner.record_attempt(pid, "w", now, ["confirm"])).steps_sent == {"confirm": (now, now)}
    assert (await runner.record_intent(pid, "w", "pi_1", now)).intent_id == "pi_1"
    assert (await runner.start_key_generation(pid, "w", now, None)).key_generation == 1
    later = now + timedelta(minutes=5)
    await runner.complete(pid, "w", PaymentState.OUTCOME_UNKNOWN, now, next_attempt_at=later)
    assert await runner.claim("w", 1, 30, now) == []
    assert [p.offline_id for p in await runner.claim("w", 1, 30, now, ignore_backoff=True)] == [pid]

    threads: list[str] = []

    def owner_gone(owner: str) -> bool:
        threads.append(threading.current_thread().name)
        return True

    assert await runner.recover_expired_claims(now, owner_gone) == 1
    assert threads and threads[0].startswith("offterm-store")
    assert (await runner.get(pid)).state is PaymentState.OUTCOME_UNKNOWN

    entry = OnlineAttempt("offpi_on", "offterm-key-on", 500, "usd", "w", now)
    await runner.begin_online(entry)
    assert await runner.online_attempts(resolved=False) == [entry]
    resolved = await runner.resolve_online("offpi_on", "not_charged", now, error_code="no_intent")
    assert resolved.resolution == "not_charged"
    assert [a.offline_id for a in await runner.online_attempts(resolved=True)] == ["offpi_on"]
    await runner.end_online("offpi_on")
    assert await runner.online_attempts() == []
    await runner.close()
