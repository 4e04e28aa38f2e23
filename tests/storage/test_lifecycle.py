"""Claims, attempts, completion and recovery: the lifecycle of a stored payment."""

from __future__ import annotations

from datetime import timedelta

import pytest
from storage_testkit import T0, new_payment, raw_connect

from offterm.core.contracts.storage import ALLOWED_TRANSITIONS, PaymentState
from offterm.core.errors import InvalidRequest, InvalidTransition, PaymentNotFound

S = PaymentState
NOW = T0 + timedelta(hours=1)


def fill(store, n: int) -> list[str]:
    return [store.store(new_payment(i)).offline_id for i in range(n)]


def test_claim_takes_the_oldest_due_payments_and_marks_them_forwarding(store) -> None:
    ids = fill(store, 5)
    batch = store.claim("w1", 3, 30, NOW)
    assert [p.offline_id for p in batch] == ids[:3]
    assert all(p.state is S.FORWARDING and p.card is not None for p in batch)
    assert [p.offline_id for p in store.claim("w2", 10, 30, NOW)] == ids[3:]
    assert store.claim("w3", 10, 30, NOW) == []
    assert {p.state for p in store.list_payments()} == {S.FORWARDING}


def test_claim_skips_payments_whose_next_attempt_is_not_due(store) -> None:
    (pid,) = fill(store, 1)
    store.claim("w", 1, 30, NOW)
    store.record_attempt(pid, "w", NOW)
    store.complete(pid, "w", S.OUTCOME_UNKNOWN, NOW, error_code="timeout", next_attempt_at=NOW + timedelta(minutes=5))
    assert store.claim("w", 1, 30, NOW + timedelta(minutes=4)) == []
    again = store.claim("w", 1, 30, NOW + timedelta(minutes=5))
    assert [p.offline_id for p in again] == [pid]
    assert again[0].attempts == 1
    assert again[0].idempotency_key == store.get(pid).idempotency_key


def test_record_attempt_counts_attempts_and_needs_the_claim(store) -> None:
    (pid,) = fill(store, 1)
    with pytest.raises(InvalidTransition, match="not claimed"):
        store.record_attempt(pid, "w", NOW)
    store.claim("w", 1, 30, NOW)
    with pytest.raises(InvalidTransition, match="another forwarder"):
        store.record_attempt(pid, "intruder", NOW)
    assert store.record_attempt(pid, "w", NOW).attempts == 1
    assert store.record_attempt(pid, "w", NOW + timedelta(seconds=1)).attempts == 2
    with pytest.raises(PaymentNotFound):
        store.record_attempt("offpi_nope", "w", NOW)


def test_record_attempt_renews_the_lease_but_refuses_an_expired_one(store) -> None:
    (pid,) = fill(store, 1)
    store.claim("w", 1, 30, NOW)
    store.record_attempt(pid, "w", NOW + timedelta(seconds=20))  # lease now runs to +50s
    assert store.recover_expired_claims(NOW + timedelta(seconds=40)) == 0
    with pytest.raises(InvalidTransition, match="expired"):
        store.record_attempt(pid, "w", NOW + timedelta(seconds=50))


def test_forwarded_payment_keeps_a_summary_and_loses_its_card_data(store) -> None:
    (pid,) = fill(store, 1)
    store.claim("w", 1, 30, NOW)
    store.record_attempt(pid, "w", NOW)
    done = store.complete(pid, "w", S.FORWARDED, NOW, intent_id="pi_123")
    assert done.state is S.FORWARDED and done.intent_id == "pi_123"
    assert done.card is None
    assert done.card_details is not None and done.card_details.last4 == "4242"
    assert done.card_details.cardholder_name is None
    assert store.get(pid).card is None
    assert store.summary().pending_count == 0


def test_declined_payment_records_the_decline(store) -> None:
    (pid,) = fill(store, 1)
    store.claim("w", 1, 30, NOW)
    store.record_attempt(pid, "w", NOW)
    done = store.complete(
        pid, "w", S.DECLINED, NOW, error_code="card_declined", error_message="declined", decline_code="do_not_honor"
    )
    assert (done.state, done.decline_code, done.last_error_code) == (S.DECLINED, "do_not_honor", "card_declined")
    assert done.card is None


def test_complete_refuses_transitions_outside_the_contract(store) -> None:
    (pid,) = fill(store, 1)
    store.claim("w", 1, 30, NOW)
    for target in set(S) - ALLOWED_TRANSITIONS[S.FORWARDING]:
        with pytest.raises(InvalidTransition):
            store.complete(pid, "w", target, NOW)
    with pytest.raises(InvalidTransition, match="never sent"):
        store.complete(pid, "w", S.OUTCOME_UNKNOWN, NOW)
    with pytest.raises(InvalidTransition, match="another forwarder"):
        store.complete(pid, "intruder", S.FORWARDED, NOW)
    assert store.get(pid).state is S.FORWARDING
    store.complete(pid, "w", S.STORED, NOW)
    with pytest.raises(InvalidTransition, match="not claimed"):
        store.complete(pid, "w", S.FORWARDED, NOW)


@pytest.mark.parametrize("target", sorted(ALLOWED_TRANSITIONS[S.FORWARDING]))
def test_every_allowed_completion_works(store, target) -> None:
    (pid,) = fill(store, 1)
    store.claim("w", 1, 30, NOW)
    store.record_attempt(pid, "w", NOW)
    assert store.complete(pid, "w", target, NOW, error_code="e").state is target


def test_release_gives_claims_back_unsent_to_their_state_sent_to_outcome_unknown(store) -> None:
    a, b, c = fill(store, 3)
    store.claim("w", 3, 30, NOW)
    store.record_attempt(b, "w", NOW)
    store.claim("other", 1, 30, NOW)
    assert store.release("w", NOW) == 3
    assert store.get(a).state is S.STORED
    assert store.get(b).state is S.OUTCOME_UNKNOWN
    assert store.get(c).state is S.STORED


def test_recover_expired_claims_distinguishes_sent_from_unsent(store) -> None:
    a, b, c = fill(store, 3)
    store.claim("crashed", 2, 30, NOW)
    store.record_attempt(b, "crashed", NOW)
    store.claim("alive", 1, 600, NOW)
    assert store.recover_expired_claims(NOW + timedelta(seconds=29)) == 0
    assert store.recover_expired_claims(NOW + timedelta(seconds=31)) == 2
    assert store.get(a).state is S.STORED
    assert store.get(b).state is S.OUTCOME_UNKNOWN
    assert store.get(c).state is S.FORWARDING
    entry = store.history(b)[-1]
    assert (entry.from_state, entry.to_state, entry.attempt, entry.error_code) == (
        S.FORWARDING,
        S.OUTCOME_UNKNOWN,
        1,
        "claim_expired",
    )


def test_an_unsent_reclaim_of_an_unknown_outcome_stays_unknown(store) -> None:
    (pid,) = fill(store, 1)
    store.claim("w", 1, 30, NOW)
    store.record_attempt(pid, "w", NOW)
    store.complete(pid, "w", S.OUTCOME_UNKNOWN, NOW, error_code="timeout")
    store.claim("crashed", 1, 30, NOW)
    store.recover_expired_claims(NOW + timedelta(minutes=1))
    assert store.get(pid).state is S.OUTCOME_UNKNOWN


def test_history_records_every_transition_with_time_attempt_and_error(store) -> None:
    (pid,) = fill(store, 1)
    store.claim("w", 1, 30, NOW)
    store.record_attempt(pid, "w", NOW)
    store.complete(pid, "w", S.OUTCOME_UNKNOWN, NOW + timedelta(seconds=1), error_code="timeout")
    store.claim("w", 1, 30, NOW + timedelta(seconds=2))
    store.record_attempt(pid, "w", NOW + timedelta(seconds=2))
    store.complete(pid, "w", S.FORWARDED, NOW + timedelta(seconds=3), intent_id="pi_1")
    steps = [(h.from_state, h.to_state, h.attempt, h.error_code) for h in store.history(pid)]
    assert steps == [
        (None, S.STORED, 0, None),
        (S.STORED, S.FORWARDING, 0, None),
        (S.FORWARDING, S.OUTCOME_UNKNOWN, 1, "timeout"),
        (S.OUTCOME_UNKNOWN, S.FORWARDING, 1, None),
        (S.FORWARDING, S.FORWARDED, 2, None),
    ]
    times = [h.at for h in store.history(pid)]
    assert times[1:] == [NOW, NOW + timedelta(seconds=1), NOW + timedelta(seconds=2), NOW + timedelta(seconds=3)]


def test_requeue_moves_needs_attention_back_to_stored(store) -> None:
    (pid,) = fill(store, 1)
    with pytest.raises(InvalidTransition, match="only needs_attention"):
        store.requeue(pid, NOW)
    store.claim("w", 1, 30, NOW)
    store.complete(pid, "w", S.NEEDS_ATTENTION, NOW, error_code="account_id_mismatch_while_forwarding")
    assert store.requeue(pid, NOW).state is S.STORED
    assert store.history(pid)[-1].error_code == "requeued"


def test_claim_validates_its_arguments(store) -> None:
    with pytest.raises(InvalidRequest):
        store.claim("", 1, 30, NOW)
    with pytest.raises(InvalidRequest):
        store.claim("w", 0, 30, NOW)
    with pytest.raises(InvalidRequest):
        store.claim("w", 1, 0, NOW)
    with pytest.raises(InvalidRequest, match="timezone-aware"):
        store.claim("w", 1, 30, NOW.replace(tzinfo=None))


# -- the database itself enforces the rules, whatever code talks to it ---------------


@pytest.fixture
def raw(store, key):
    conn = raw_connect(store.path, key)
    yield conn
    conn.close()


def test_the_database_refuses_transitions_outside_the_contract(store, raw) -> None:
    (pid,) = fill(store, 1)
    for target in set(S) - ALLOWED_TRANSITIONS[S.STORED] - {S.STORED}:
        with pytest.raises(Exception, match="state transition not allowed"):
            raw.execute("UPDATE payments SET state = ? WHERE offline_id = ?", (target.value, pid))
    assert store.get(pid).state is S.STORED


def test_the_database_keeps_history_append_only(store, raw) -> None:
    (pid,) = fill(store, 1)
    store.claim("w", 1, 30, NOW)
    with pytest.raises(Exception, match="append-only"):
        raw.execute("UPDATE payment_history SET error_code = 'x'")
    with pytest.raises(Exception, match="append-only"):
        raw.execute("DELETE FROM payment_history")


def test_the_database_keeps_identity_and_amount_immutable_and_pending_rows_undeletable(store, raw) -> None:
    (pid,) = fill(store, 1)
    with pytest.raises(Exception, match="never change"):
        raw.execute("UPDATE payments SET amount = 1 WHERE offline_id = ?", (pid,))
    with pytest.raises(Exception, match="never change"):
        raw.execute("UPDATE payments SET idempotency_key = 'new' WHERE offline_id = ?", (pid,))
    with pytest.raises(Exception, match="only forwarded or declined"):
        raw.execute("DELETE FROM payments WHERE offline_id = ?", (pid,))
    assert store.get(pid).amount == 1000


def test_the_transition_table_matches_the_contract(store, raw) -> None:
    rows = set(raw.execute("SELECT from_state, to_state FROM allowed_transitions").fetchall())
    assert rows == {(a.value, b.value) for a, targets in ALLOWED_TRANSITIONS.items() for b in targets}
