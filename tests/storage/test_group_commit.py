"""Group commit in the store: claim updates applied together, each exactly as its single call.

``PaymentStore.apply_claim_updates``: the contract's default loop and the SQLCipher store's
one-transaction version.  The forwarder's side (which updates travel together) is tested in
tests/forwarding/test_forwarding_group_commit.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from storage_testkit import T0, make_store, new_payment, raw_connect

from offterm.core.contracts.storage import (
    AttemptUpdate,
    AttemptWithdrawal,
    OutcomeUpdate,
    PaymentState,
    PaymentStore,
    StoredPayment,
)
from offterm.core.errors import InvalidRequest, InvalidTransition, PaymentNotFound, StorageError
from offterm.plugins.storage.sqlcipher import SqlCipherStore

S = PaymentState
NOW = T0 + timedelta(hours=1)
LATER = NOW + timedelta(seconds=2)


def claimed(store: SqlCipherStore, n: int, owner: str = "w") -> list[str]:
    ids = [store.store(new_payment(i)).offline_id for i in range(n)]
    assert [p.offline_id for p in store.claim(owner, n, 60, NOW)] == ids
    return ids


def history(store: SqlCipherStore, offline_id: str) -> list[tuple[S | None, S, int, str | None]]:
    return [(h.from_state, h.to_state, h.attempt, h.error_code) for h in store.history(offline_id)]


def essentials(p: StoredPayment) -> tuple[Any, ...]:
    return (
        p.state,
        p.attempts,
        p.intent_id,
        p.last_error_code,
        p.last_error_message,
        p.decline_code,
        p.next_attempt_at,
        p.updated_at,
        p.card is None,
    )


def count_transactions(store: SqlCipherStore) -> list[bool]:
    """Patch the store to note every transaction it opens (True for a write).

    Two ways in: ``_tx`` (explicit BEGIN .. COMMIT) and ``_statement`` (one statement, its own transaction).
    """
    opened: list[bool] = []
    real = store._tx
    real_statement = store._statement

    def one_statement(sql: str, params: Any) -> list[Any]:
        opened.append(True)
        return real_statement(sql, params)

    store._statement = one_statement  # type: ignore[method-assign]

    @contextlib.contextmanager
    def counting(*, write: bool) -> Iterator[Any]:
        opened.append(write)
        with real(write=write) as conn:
            yield conn

    store._tx = counting  # type: ignore[method-assign]
    return opened


# -- the SQLCipher store: one transaction, each update as its single call -----------------------------------


def test_a_batch_is_one_transaction_with_the_same_effects_as_the_single_calls(tmp_path: Path, keys) -> None:
    single, batched = make_store(tmp_path / "a"), make_store(tmp_path / "b")
    single.open(keys)
    batched.open(keys)
    try:
        a, b = claimed(single, 4), claimed(batched, 4)
        due = LATER + timedelta(minutes=5)
        for i in range(4):
            single.record_attempt(a[i], "w", NOW)
        single.complete(a[0], "w", S.FORWARDED, LATER, intent_id="pi_1")
        single.complete(a[1], "w", S.DECLINED, LATER, error_code="card_declined", decline_code="generic_decline")
        single.complete(a[2], "w", S.OUTCOME_UNKNOWN, LATER, error_code="timeout", next_attempt_at=due)
        single.complete(a[3], "w", S.NEEDS_ATTENTION, LATER, error_code="invalid", error_message="bad request")

        opened = count_transactions(batched)
        attempts = batched.apply_claim_updates([AttemptUpdate(pid, "w", NOW) for pid in b])
        outcomes = batched.apply_claim_updates(
            [
                OutcomeUpdate(b[0], "w", S.FORWARDED, LATER, intent_id="pi_1"),
                OutcomeUpdate(b[1], "w", S.DECLINED, LATER, error_code="card_declined", decline_code="generic_decline"),
                OutcomeUpdate(b[2], "w", S.OUTCOME_UNKNOWN, LATER, error_code="timeout", next_attempt_at=due),
                OutcomeUpdate(b[3], "w", S.NEEDS_ATTENTION, LATER, error_code="invalid", error_message="bad request"),
            ]
        )
        assert opened == [True, True], "each batch is one write transaction"

        assert [r.attempts for r in attempts if isinstance(r, StoredPayment)] == [1, 1, 1, 1]
        assert all(isinstance(r, StoredPayment) for r in outcomes)
        for pa, pb, result in zip(a, b, outcomes, strict=True):
            assert essentials(single.get(pa)) == essentials(batched.get(pb)) == essentials(result)  # type: ignore[arg-type]
            assert history(single, pa) == history(batched, pb)
        assert batched.get(b[0]).card is None, "card data is purged once final, as by complete()"
        assert batched.recover_expired_claims(LATER + timedelta(hours=1)) == 0, "every claim was released"
    finally:
        single.close()
        batched.close()


def test_an_update_that_fails_fails_alone_and_changes_nothing(store: SqlCipherStore) -> None:
    ids = claimed(store, 5)
    store.record_attempt(ids[3], "w", NOW)
    results = store.apply_claim_updates(
        [
            AttemptUpdate(ids[0], "w", NOW),
            AttemptUpdate(ids[1], "intruder", NOW),  # a claim this owner does not hold
            OutcomeUpdate(ids[2], "w", S.OUTCOME_UNKNOWN, NOW),  # nothing was ever sent
            OutcomeUpdate(ids[3], "w", S.FORWARDED, NOW, intent_id="pi_3"),
            AttemptUpdate("offpi_nope", "w", NOW),
            AttemptUpdate(ids[4], "w", NOW + timedelta(minutes=5)),  # the lease ran out
        ]
    )
    ok0, lost, unsent, ok3, missing, expired = results
    assert isinstance(ok0, StoredPayment) and ok0.attempts == 1
    assert isinstance(lost, InvalidTransition) and "another forwarder" in str(lost)
    assert isinstance(unsent, InvalidTransition) and "never sent" in str(unsent)
    assert isinstance(ok3, StoredPayment) and ok3.state is S.FORWARDED and ok3.intent_id == "pi_3"
    assert isinstance(missing, PaymentNotFound)
    assert isinstance(expired, InvalidTransition) and "expired" in str(expired)
    assert store.get(ids[1]).attempts == 0 and store.get(ids[1]).state is S.FORWARDING
    assert store.get(ids[2]).state is S.FORWARDING
    assert store.get(ids[4]).attempts == 0
    assert [h[1] for h in history(store, ids[2])] == [S.STORED, S.FORWARDING]


def test_an_update_the_database_refuses_is_undone_alone(store: SqlCipherStore, key: bytes) -> None:
    """A trigger that refuses one UPDATE (RAISE ABORT) undoes that statement only; the others commit."""
    ids = claimed(store, 3)
    for pid in ids:
        store.record_attempt(pid, "w", NOW)
    tamper = raw_connect(store.path, key)
    tamper.execute("DELETE FROM allowed_transitions WHERE from_state = 'forwarding' AND to_state = 'declined'")
    tamper.close()

    results = store.apply_claim_updates(
        [
            OutcomeUpdate(ids[0], "w", S.FORWARDED, LATER, intent_id="pi_0"),
            OutcomeUpdate(ids[1], "w", S.DECLINED, LATER, error_code="card_declined", decline_code="do_not_honor"),
            OutcomeUpdate(ids[2], "w", S.FORWARDED, LATER, intent_id="pi_2"),
        ]
    )
    assert isinstance(results[0], StoredPayment) and isinstance(results[2], StoredPayment)
    assert isinstance(results[1], InvalidTransition) and "not allowed" in str(results[1])
    refused = store.get(ids[1])
    assert refused.state is S.FORWARDING and refused.decline_code is None and refused.card is not None
    assert [h[1] for h in history(store, ids[1])] == [S.STORED, S.FORWARDING]
    assert store.get(ids[0]).state is store.get(ids[2]).state is S.FORWARDED


def test_an_update_refused_before_any_io_is_that_updates_result(store: SqlCipherStore) -> None:
    ids = claimed(store, 2)
    naive = NOW.replace(tzinfo=None)
    results = store.apply_claim_updates(
        [
            AttemptUpdate(ids[0], "w", naive),
            OutcomeUpdate(ids[1], "w", "bogus", NOW),  # type: ignore[arg-type]
            AttemptUpdate(ids[1], "", NOW),
            AttemptUpdate(ids[1], "w", NOW),
        ]
    )
    assert isinstance(results[0], InvalidRequest)
    assert isinstance(results[1], InvalidTransition) and "unknown payment state" in str(results[1])
    assert isinstance(results[2], InvalidRequest)
    assert isinstance(results[3], StoredPayment) and results[3].attempts == 1
    assert store.get(ids[0]).attempts == 0


def test_a_transaction_that_fails_applies_no_update_and_raises(store: SqlCipherStore) -> None:
    ids = claimed(store, 3)
    real = store._tx
    driver = store._driver
    assert driver is not None

    class FailingThird:
        def __init__(self, conn: Any) -> None:
            self.conn, self.n = conn, 0

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("UPDATE"):
                self.n += 1
                if self.n == 3:
                    raise driver.OperationalError("disk I/O error")
            return self.conn.execute(sql, *args)

    @contextlib.contextmanager
    def failing(*, write: bool) -> Iterator[Any]:
        with real(write=write) as conn:
            yield FailingThird(conn)

    store._tx = failing  # type: ignore[method-assign]
    with pytest.raises(StorageError):
        store.apply_claim_updates([AttemptUpdate(pid, "w", NOW) for pid in ids])
    store._tx = real  # type: ignore[method-assign]
    assert [store.get(pid).attempts for pid in ids] == [0, 0, 0], "the first two were rolled back with the third"


def test_the_contract_default_makes_one_single_call_per_update(store: SqlCipherStore) -> None:
    """A third-party store that does not override apply_claim_updates still works, update by update."""
    ids = claimed(store, 3)
    opened = count_transactions(store)
    results = PaymentStore.apply_claim_updates(
        store,
        [AttemptUpdate(ids[0], "w", NOW), AttemptUpdate(ids[1], "intruder", NOW), AttemptUpdate(ids[2], "w", NOW)],
    )
    assert isinstance(results[0], StoredPayment) and results[0].attempts == 1
    assert isinstance(results[1], InvalidTransition)
    assert isinstance(results[2], StoredPayment) and results[2].attempts == 1
    assert opened.count(True) == 3, "one write transaction per update"


# -- withdrawing an attempt recorded ahead -----------------------------------------------------------------


def test_a_withdrawn_attempt_leaves_the_payment_as_if_it_had_never_been_tried(store: SqlCipherStore) -> None:
    [fresh, retried] = claimed(store, 2)
    store.record_attempt(retried, "w", NOW)
    store.complete(retried, "w", S.OUTCOME_UNKNOWN, NOW, error_code="timeout")  # sent once, no answer
    assert [p.offline_id for p in store.claim("w", 5, 60, NOW)] == [retried]
    for pid in (fresh, retried):
        store.record_attempt(pid, "w", LATER)
    results = store.apply_claim_updates([AttemptWithdrawal(fresh, "w", LATER), AttemptWithdrawal(retried, "w", LATER)])
    assert [r.attempts for r in results if isinstance(r, StoredPayment)] == [0, 1]
    assert store.release("w", LATER) == 2
    assert (store.get(fresh).state, store.get(fresh).attempts) == (S.STORED, 0), "back as it was: never sent"
    assert (store.get(retried).state, store.get(retried).attempts) == (S.OUTCOME_UNKNOWN, 1), (
        "back as it was: sent once before, outcome still unknown"
    )


def test_only_an_attempt_of_the_current_claim_can_be_withdrawn(store: SqlCipherStore) -> None:
    [untried, tried] = claimed(store, 2)
    store.record_attempt(tried, "w", NOW)
    with pytest.raises(InvalidTransition, match="no attempt in this claim"):
        store.withdraw_attempt(untried, "w", NOW)
    with pytest.raises(InvalidTransition, match="another forwarder"):
        store.withdraw_attempt(tried, "intruder", NOW)
    store.withdraw_attempt(tried, "w", NOW)
    with pytest.raises(InvalidTransition, match="no attempt in this claim"):
        store.withdraw_attempt(tried, "w", NOW)  # not twice
    assert store.get(tried).attempts == 0
    with pytest.raises(PaymentNotFound):
        store.withdraw_attempt("offpi_missing", "w", NOW)
