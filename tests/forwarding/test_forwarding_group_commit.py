"""The forwarder's bookkeeping, group-committed: shared transactions, exact counts, a stop in the middle.

Workers' attempt and outcome records share transactions (offterm.core.claim_writer), and a worker records
its next payment's attempt while the one before is being sent.  None of that may change what the store
says happened: one attempt per send, none for a payment that was not sent, an outcome durable before its
event, nothing lost or doubled when a stop lands while a shared transaction is being written.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from forwarding_kit import (
    check_exactly_once,
    config,
    forwarded_events,
    new_payment,
    plugin_manager,
    populate,
    read_store,
)

from offterm.core import Terminal
from offterm.core.contracts import PaymentState
from offterm.core.contracts.storage import (
    AttemptUpdate,
    AttemptWithdrawal,
    ClaimUpdate,
    OutcomeUpdate,
    StoredPayment,
)
from offterm.core.errors import AccountMismatch
from offterm.plugins.storage.sqlcipher import SqlCipherStore

S = PaymentState


class Batches:
    """Wraps SqlCipherStore.apply_claim_updates: notes each call; can hold the first call carrying an outcome."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, hold_first_outcome: bool = False) -> None:
        self.calls: list[list[ClaimUpdate]] = []
        self.holding = hold_first_outcome
        self.inside = threading.Event()  # the held call is running (its transaction not written yet)
        self.gate = threading.Event()
        real = SqlCipherStore.apply_claim_updates
        batches = self

        def apply(store: SqlCipherStore, updates: Sequence[ClaimUpdate]) -> list[StoredPayment | Exception]:
            batches.calls.append(list(updates))
            if batches.holding and any(isinstance(u, OutcomeUpdate) for u in updates):
                batches.holding = False
                batches.inside.set()
                batches.gate.wait(30)
            return real(store, updates)

        monkeypatch.setattr(SqlCipherStore, "apply_claim_updates", apply)

    def updates(self, kind: type) -> list[str]:
        return [u.offline_id for call in self.calls for u in call if isinstance(u, kind)]


async def test_a_drain_records_one_attempt_and_one_outcome_per_payment_in_fewer_transactions(
    data_dir, sim, recorder, monkeypatch
):
    ids = populate(data_dir, [new_payment(i) for i in range(40)])
    batches = Batches(monkeypatch)
    cfg = config(data_dir, sim.url, forwarding={"concurrency": 4, "batch_size": 10})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        assert await terminal.forward_now(timeout=60) == 0
    payments = read_store(data_dir)
    assert check_exactly_once(sim, payments) == {S.FORWARDED: 40}
    assert sorted(batches.updates(AttemptUpdate)) == sorted(ids), "one attempt record per payment"
    assert sorted(batches.updates(OutcomeUpdate)) == sorted(ids), "one outcome record per payment"
    assert len(batches.calls) <= 80
    assert all(payments[pid].attempts == 1 for pid in ids)
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        for pid in ids:
            steps = [(h.to_state, h.attempt) for h in await terminal.payment_history(pid)]
            assert steps == [(S.STORED, 0), (S.FORWARDING, 0), (S.FORWARDED, 1)]
    assert sorted(forwarded_events(recorder)) == sorted(ids)


async def test_a_stop_while_an_outcome_is_being_written_loses_and_doubles_nothing(data_dir, sim, recorder, monkeypatch):
    """forward_now times out while the store is writing an outcome (and, with it, the next attempt).

    The outcomes in the held transaction are announced once written; the attempts in it (and any recorded
    ahead) belong to payments that were never sent, so they are withdrawn and those payments go back
    untouched; every payment is then forwarded once.
    """
    ids = populate(data_dir, [new_payment(i) for i in range(12)])
    batches = Batches(monkeypatch, hold_first_outcome=True)
    cfg = config(data_dir, sim.url, forwarding={"concurrency": 3, "batch_size": 12})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        opener = threading.Timer(1.0, batches.gate.set)  # the disk answers, long after the stop
        opener.start()
        try:
            remaining = await terminal.forward_now(timeout=0.3)
        finally:
            opener.cancel()
            batches.gate.set()
        assert batches.inside.is_set()
        after_stop = read_store(data_dir)
        held = next(call for call in batches.calls if any(isinstance(u, OutcomeUpdate) for u in call))
        for update in held:  # everything in the held transaction was written, and each outcome announced
            p = after_stop[update.offline_id]
            if isinstance(update, OutcomeUpdate):
                assert p.state is S.FORWARDED
                assert update.offline_id in forwarded_events(recorder), "recorded, so announced"
            else:
                assert (p.state, p.attempts) == (S.STORED, 0), "its request never went out: withdrawn"
        events = forwarded_events(recorder)
        for pid, p in after_stop.items():
            assert (p.state is S.FORWARDED) == (pid in events), "an event for every recorded outcome, no other"
            if p.state is S.STORED:
                assert p.attempts == 0, "given back untouched"
            assert p.state is not S.FORWARDING, "every claim was given back"
        assert remaining == sum(1 for p in after_stop.values() if p.state is not S.FORWARDED)

        assert await terminal.forward_now(timeout=60) == 0
    payments = read_store(data_dir)
    assert check_exactly_once(sim, payments) == {S.FORWARDED: 12}
    assert {pid: len(calls) for pid, calls in forwarded_events(recorder).items()} == dict.fromkeys(ids, 1)


async def test_a_payment_refused_after_its_attempt_was_recorded_ahead_counts_no_attempt(
    data_dir, sim, recorder, monkeypatch
):
    """Payments for another account, each queued right behind one for this account (one worker).

    The worker records the next payment's attempt while the current one is sent; the next one turns out
    to be refused (another account), so its attempt is withdrawn before it is set aside: needs_attention
    with no attempt counted, because nothing was sent.
    """
    base = datetime.now(UTC) - timedelta(minutes=5)
    mine = [new_payment(2 * i, stored_at=base + timedelta(seconds=2 * i)) for i in range(4)]
    other = [
        new_payment(2 * i + 1, account_id="acct_1OtherMerchant00", stored_at=base + timedelta(seconds=2 * i + 1))
        for i in range(4)
    ]
    ids = populate(data_dir, [p for pair in zip(mine, other, strict=True) for p in pair])  # oldest first: alternate
    batches = Batches(monkeypatch)
    cfg = config(data_dir, sim.url, forwarding={"concurrency": 1, "batch_size": 8})
    async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder), background=False) as terminal:
        assert await terminal.forward_now(timeout=60) == 0
    payments = read_store(data_dir)
    refused = {p.offline_id for p in other}
    withdrawn = set(batches.updates(AttemptWithdrawal))
    assert withdrawn, "an attempt was recorded ahead for a payment that was then refused"
    assert withdrawn <= refused
    for pid in ids:
        p = payments[pid]
        if pid in refused:
            assert (p.state, p.attempts, p.last_error_code) == (S.NEEDS_ATTENTION, 0, AccountMismatch.code)
        else:
            assert (p.state, p.attempts) == (S.FORWARDED, 1)
    assert sim.successful_charges() == {pid: 1 for pid in ids if pid not in refused}
    assert {pid: len(calls) for pid, calls in forwarded_events(recorder).items()} == dict.fromkeys(ids, 1)
