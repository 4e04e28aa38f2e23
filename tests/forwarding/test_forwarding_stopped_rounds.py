"""A round that stops part-way (a forward_now deadline, a refused session) while attempts are recorded ahead.

Found by review of the group commit: none of these charged twice, but each left the store's account
wrong (an attempt counted that was never sent, or claims still held after the round).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from forwarding_kit import KitPlugin, config, new_payment, plugin_manager, populate, read_store

from offterm.core import Terminal
from offterm.core.contracts import PaymentState as S
from offterm.core.contracts.storage import AttemptWithdrawal, OutcomeUpdate
from offterm.core.errors import AuthenticationFailed
from offterm.plugins.storage.sqlcipher import SqlCipherStore


async def hang(_submission: Any) -> None:
    await asyncio.sleep(30)


async def test_a_worker_cancelled_in_the_rate_limiter_takes_back_the_attempt_recorded_ahead(
    data_dir, sim, recorder
) -> None:
    ids = populate(data_dir, [new_payment(i) for i in range(3)])
    # 3 requests/s and 3 requests per payment: the second payment waits about a second in the limiter
    cfg = config(data_dir, sim.url, forwarding={"concurrency": 1, "batch_size": 3, "rate_limit": 3.0})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        await terminal.forward_now(timeout=0.5)
        after = read_store(data_dir)
    charged = sim.successful_charges()
    never_sent = [pid for pid in ids if pid not in charged]
    assert never_sent
    for pid in never_sent:
        assert (after[pid].state, after[pid].attempts) == (S.STORED, 0), "never sent, so never counted"


async def test_an_attempt_recorded_ahead_for_a_payment_no_worker_took_is_withdrawn_before_the_release(
    data_dir, sim, recorder, monkeypatch
) -> None:
    order: list[str] = []
    real_apply, real_release = SqlCipherStore.apply_claim_updates, SqlCipherStore.release

    def apply(store: SqlCipherStore, updates: Any) -> Any:
        results = real_apply(store, updates)
        order.extend(
            f"withdraw:{type(r).__name__}"
            for u, r in zip(updates, results, strict=True)
            if isinstance(u, AttemptWithdrawal)
        )
        return results

    def release(store: SqlCipherStore, owner: str, now: Any) -> int:
        order.append("release")
        return real_release(store, owner, now)

    monkeypatch.setattr(SqlCipherStore, "apply_claim_updates", apply)
    monkeypatch.setattr(SqlCipherStore, "release", release)
    kit = KitPlugin()
    ids = populate(data_dir, [new_payment(i) for i in range(3)])
    cfg = config(data_dir, sim.url, forwarding={"concurrency": 1, "batch_size": 3}, transport="observed")
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder, kit), background=False) as terminal:
        [transport] = kit.transports
        transport.hold[ids[0]] = hang  # stuck; the next payment's attempt is recorded ahead meanwhile
        await terminal.forward_now(timeout=0.5)
        after = read_store(data_dir)
    assert {c.offline_id for c in transport.calls} == {ids[0]}
    assert "withdraw:StoredPayment" in order and order.index("release") > order.index("withdraw:StoredPayment")
    assert (after[ids[0]].state, after[ids[0]].attempts) == (S.OUTCOME_UNKNOWN, 1)
    for pid in ids[1:]:
        assert (after[pid].state, after[pid].attempts) == (S.STORED, 0)


async def test_a_deadline_while_the_round_ends_does_not_skip_the_release(data_dir, sim, recorder, monkeypatch) -> None:
    slow = threading.Event()
    real = SqlCipherStore.apply_claim_updates

    def apply(store: SqlCipherStore, updates: Any) -> Any:
        if any(isinstance(u, OutcomeUpdate) for u in updates):
            slow.wait(1.0)  # a slow fsync for the round's last outcome, while forward_now's deadline passes
        return real(store, updates)

    monkeypatch.setattr(SqlCipherStore, "apply_claim_updates", apply)
    kit = KitPlugin()
    ids = populate(data_dir, [new_payment(i) for i in range(4)])
    cfg = config(data_dir, sim.url, forwarding={"concurrency": 1, "batch_size": 4}, transport="observed")
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder, kit), background=False) as terminal:

        async def refuse(_submission: Any) -> None:
            raise AuthenticationFailed("session refused")

        kit.transports[0].hold[ids[0]] = refuse  # refused twice (with a renewal): the round stops, 3 still claimed
        await terminal.forward_now(timeout=0.4)
        await asyncio.sleep(1.5)  # the ending goes on after the deadline; give it the slow write's time
        after = read_store(data_dir)
    assert [pid for pid in ids if after[pid].state is S.FORWARDING] == [], "every claim was given back"
    assert (after[ids[0]].state, after[ids[0]].attempts) == (S.OUTCOME_UNKNOWN, 2)


async def test_an_attempt_recorded_ahead_long_before_its_send_is_renewed_first(
    data_dir, sim, recorder, monkeypatch
) -> None:
    """The payment ahead waited longer than half a lease: its claim is checked again by a fresh attempt."""
    calls: list[list[Any]] = []
    real = SqlCipherStore.apply_claim_updates

    def apply(store: SqlCipherStore, updates: Any) -> Any:
        calls.append(list(updates))
        return real(store, updates)

    monkeypatch.setattr(SqlCipherStore, "apply_claim_updates", apply)
    kit = KitPlugin()
    first, second = populate(data_dir, [new_payment(i) for i in range(2)])
    fwd = {"concurrency": 1, "batch_size": 2, "lease_seconds": 2}
    cfg = config(data_dir, sim.url, forwarding=fwd, transport="observed")
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder, kit), background=False) as terminal:

        async def slow(_submission: Any) -> None:
            await asyncio.sleep(
                1.5
            )  # longer than half the lease; the second payment's attempt was recorded at its start

        kit.transports[0].hold[first] = slow
        assert await terminal.forward_now(timeout=30) == 0
    after = read_store(data_dir)
    assert (after[second].state, after[second].attempts) == (S.FORWARDED, 1), "one attempt counted for one send"
    updates = [type(u).__name__ for call in calls for u in call if u.offline_id == second]
    assert updates[:3] == ["AttemptUpdate", "AttemptWithdrawal", "AttemptUpdate"]
    assert sim.successful_charges() == {first: 1, second: 1}
