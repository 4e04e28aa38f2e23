"""What the forwarder must remember because the processor forgets: steps sent, intent ids, key generations.

Also the claims of issue #12: ``ignore_backoff`` and recovery of a gone owner's claims.  Real
SQLCipher files; "durably" means read back after the store was closed and opened again.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from storage_testkit import T0, new_payment

from offterm.core.contracts.storage import NewPayment, PaymentState
from offterm.core.errors import InvalidRequest, InvalidTransition, PaymentNotFound

S = PaymentState
NOW = T0 + timedelta(hours=1)


def claimed(store, owner: str = "w", lease: float = 30) -> str:
    pid = store.store(new_payment()).offline_id
    [payment] = store.claim(owner, 1, lease, NOW)
    assert payment.offline_id == pid
    return pid


def test_a_new_payment_starts_at_generation_zero_with_no_steps(store) -> None:
    stored = store.store(new_payment())
    assert stored.key_generation == 0 and stored.steps_sent == {} and stored.first_request_at is None
    again = store.get(stored.offline_id)
    assert again.key_generation == 0 and again.steps_sent == {}


def test_steps_sent_before_falling_back_offline_are_stored_with_the_payment(open_store, tmp_path) -> None:
    first, last = NOW - timedelta(seconds=9), NOW - timedelta(seconds=2)
    payment = new_payment()
    payment = NewPayment(**{**payment.__dict__, "steps_sent": {"create_and_confirm": (first, last)}})
    store = open_store()
    assert store.store(payment).steps_sent == {"create_and_confirm": (first, last)}
    store.close()
    reopened = open_store().get(payment.offline_id)
    assert reopened.steps_sent == {"create_and_confirm": (first, last)}
    assert reopened.first_request_at == first


def test_record_attempt_records_steps_durably_keeping_first_and_moving_last(open_store) -> None:
    store = open_store()
    pid = claimed(store)
    t1, t2, t3 = NOW + timedelta(seconds=1), NOW + timedelta(seconds=2), NOW + timedelta(seconds=3)
    one = store.record_attempt(pid, "w", t1, ["payment_method", "create_and_confirm"])
    assert one.attempts == 1
    assert one.steps_sent == {"payment_method": (t1, t1), "create_and_confirm": (t1, t1)}
    two = store.record_attempt(pid, "w", t2, ("create_and_confirm",))
    assert two.steps_sent == {"payment_method": (t1, t1), "create_and_confirm": (t1, t2)}
    three = store.record_attempt(pid, "w", t3, ["confirm", "confirm"])
    assert three.attempts == 3
    assert three.steps_sent == {"payment_method": (t1, t1), "create_and_confirm": (t1, t2), "confirm": (t3, t3)}
    assert three.first_request_at == t1
    store.close()

    reopened = open_store().get(pid)
    assert reopened.steps_sent == three.steps_sent
    assert reopened.attempts == 3 and reopened.state is S.FORWARDING


def test_record_attempt_without_steps_leaves_them_alone(store) -> None:
    pid = claimed(store)
    store.record_attempt(pid, "w", NOW, ["confirm"])
    assert store.record_attempt(pid, "w", NOW + timedelta(seconds=1)).steps_sent == {"confirm": (NOW, NOW)}


def test_record_attempt_with_steps_still_needs_the_claim_and_writes_nothing_without_it(store) -> None:
    pid = claimed(store)
    with pytest.raises(InvalidTransition, match="another forwarder"):
        store.record_attempt(pid, "intruder", NOW, ["confirm"])
    with pytest.raises(InvalidTransition, match="expired"):
        store.record_attempt(pid, "w", NOW + timedelta(seconds=31), ["confirm"])
    after = store.get(pid)
    assert after.steps_sent == {} and after.attempts == 0


@pytest.mark.parametrize("steps", ["confirm", ['co"nfirm'], [""], [3], ["x" * 65]])
def test_bad_step_names_are_refused_before_any_write(store, steps) -> None:
    pid = claimed(store)
    with pytest.raises(InvalidRequest):
        store.record_attempt(pid, "w", NOW, steps)
    assert store.get(pid).attempts == 0


def test_record_intent_is_durable_changes_no_state_and_needs_the_claim(open_store) -> None:
    store = open_store()
    pid = claimed(store)
    with pytest.raises(InvalidTransition, match="another forwarder"):
        store.record_intent(pid, "intruder", "pi_1", NOW)
    with pytest.raises(PaymentNotFound):
        store.record_intent("offpi_nope", "w", "pi_1", NOW)
    with pytest.raises(InvalidRequest):
        store.record_intent(pid, "w", "", NOW)
    updated = store.record_intent(pid, "w", "pi_1", NOW)
    assert updated.intent_id == "pi_1" and updated.state is S.FORWARDING and updated.attempts == 0
    store.close()
    store = open_store()
    assert store.get(pid).intent_id == "pi_1"
    assert [h.to_state for h in store.history(pid)] == [S.STORED, S.FORWARDING], "no transition recorded"

    store.release("w", NOW)
    with pytest.raises(InvalidTransition, match="not claimed"):
        store.record_intent(pid, "w", "pi_2", NOW)
    assert store.get(pid).intent_id == "pi_1"


def test_start_key_generation_counts_clears_steps_and_sets_the_intent(open_store) -> None:
    store = open_store()
    pid = claimed(store)
    store.record_attempt(pid, "w", NOW, ["create_and_confirm"])
    store.record_intent(pid, "w", "pi_old", NOW)

    first = store.start_key_generation(pid, "w", NOW + timedelta(seconds=1), "pi_found")
    assert (first.key_generation, first.steps_sent, first.intent_id) == (1, {}, "pi_found")
    assert first.attempts == 1 and first.state is S.FORWARDING, "attempts and claim are unchanged"
    assert first.first_request_at is None

    second = store.start_key_generation(pid, "w", NOW + timedelta(seconds=2), None)
    assert (second.key_generation, second.steps_sent, second.intent_id) == (2, {}, None)
    later = NOW + timedelta(seconds=3)
    assert store.record_attempt(pid, "w", later, ["confirm"]).steps_sent == {"confirm": (later, later)}
    store.close()

    reopened = open_store().get(pid)
    assert reopened.key_generation == 2 and reopened.intent_id is None
    assert reopened.steps_sent == {"confirm": (later, later)}
    assert reopened.idempotency_key == first.idempotency_key, "the stored key itself never changes"


def test_start_key_generation_needs_the_claim(store) -> None:
    pid = store.store(new_payment()).offline_id
    with pytest.raises(InvalidTransition, match="not claimed"):
        store.start_key_generation(pid, "w", NOW, None)
    store.claim("w", 1, 30, NOW)
    with pytest.raises(InvalidTransition, match="another forwarder"):
        store.start_key_generation(pid, "intruder", NOW, "pi_1")
    with pytest.raises(PaymentNotFound):
        store.start_key_generation("offpi_nope", "w", NOW, None)
    assert store.get(pid).key_generation == 0


def test_the_key_generation_survives_outcome_unknown_and_a_new_claim(store) -> None:
    pid = claimed(store)
    store.record_attempt(pid, "w", NOW, ["create_and_confirm"])
    store.start_key_generation(pid, "w", NOW, None)
    store.record_attempt(pid, "w", NOW, ["create_and_confirm"])
    unknown = store.complete(pid, "w", S.OUTCOME_UNKNOWN, NOW, intent_id="pi_7", error_code="timeout")
    assert unknown.intent_id == "pi_7", "complete sets the intent id for outcome_unknown too"
    [again] = store.claim("w2", 1, 30, NOW)
    assert again.key_generation == 1 and again.steps_sent == {"create_and_confirm": (NOW, NOW)}
    assert again.intent_id == "pi_7"


def test_ignore_backoff_claims_a_payment_whose_next_attempt_is_in_the_future(store) -> None:
    pid = claimed(store)
    store.record_attempt(pid, "w", NOW)
    store.complete(pid, "w", S.OUTCOME_UNKNOWN, NOW, error_code="network", next_attempt_at=NOW + timedelta(hours=1))
    assert store.claim("w", 5, 30, NOW) == [], "without it the backoff holds"
    [again] = store.claim("w", 5, 30, NOW, ignore_backoff=True)
    assert again.offline_id == pid and again.state is S.FORWARDING
    assert store.get(pid).state is S.FORWARDING


def test_ignore_backoff_still_takes_only_claimable_payments_oldest_first(store) -> None:
    ids = [store.store(new_payment(i)).offline_id for i in range(3)]
    store.claim("other", 1, 30, NOW)  # ids[0] is held
    got = store.claim("w", 5, 30, NOW, ignore_backoff=True)
    assert [p.offline_id for p in got] == ids[1:]
    with pytest.raises(InvalidRequest):
        store.claim("w", 5, 30, NOW, ignore_backoff="yes")


def test_a_gone_owners_claims_are_recovered_at_once_and_a_live_owners_kept(store) -> None:
    sent, unsent, live = (store.store(new_payment(i)).offline_id for i in range(3))
    store.claim("dead-pos", 2, 120, NOW)
    store.claim("live-pos", 1, 120, NOW)
    store.record_attempt(sent, "dead-pos", NOW)
    store.record_attempt(live, "live-pos", NOW)
    asked: list[str] = []

    def owner_gone(owner: str) -> bool:
        asked.append(owner)
        return owner == "dead-pos"

    soon = NOW + timedelta(seconds=5)
    assert store.recover_expired_claims(soon) == 0, "without owner_gone the leases hold"
    assert store.recover_expired_claims(soon, owner_gone) == 2
    assert sorted(asked) == ["dead-pos", "live-pos"], "asked once per distinct owner"
    assert store.get(sent).state is S.OUTCOME_UNKNOWN, "a request had gone out"
    assert store.get(unsent).state is S.STORED
    assert store.get(live).state is S.FORWARDING, "a live owner's unexpired claim is untouched"
    assert store.history(sent)[-1].error_code == "claim_owner_gone"
    with pytest.raises(InvalidTransition):
        store.record_attempt(unsent, "dead-pos", soon)
    assert store.record_attempt(live, "live-pos", soon).attempts == 2


def test_expired_claims_and_gone_owners_are_recovered_together(store) -> None:
    expired, gone = (store.store(new_payment(i)).offline_id for i in range(2))
    store.claim("slow", 1, 10, NOW)
    store.claim("dead", 1, 120, NOW)
    asked: list[str] = []
    later = NOW + timedelta(seconds=11)
    assert store.recover_expired_claims(later, lambda o: asked.append(o) or True) == 2
    assert asked == ["dead"], "only owners of current (unexpired) claims are asked"
    assert store.get(expired).state is S.STORED and store.get(gone).state is S.STORED
    assert store.history(expired)[-1].error_code == "claim_expired"
    assert store.history(gone)[-1].error_code == "claim_owner_gone"


def test_an_owner_gone_check_that_raises_recovers_nothing(store) -> None:
    expired = store.store(new_payment()).offline_id
    store.claim("slow", 1, 10, NOW)
    store.store(new_payment(1))
    store.claim("other", 1, 120, NOW)

    def broken(owner: str) -> bool:
        raise RuntimeError("cannot tell")

    with pytest.raises(RuntimeError):
        store.recover_expired_claims(NOW + timedelta(seconds=11), broken)
    assert store.get(expired).state is S.FORWARDING
    assert store.recover_expired_claims(NOW + timedelta(seconds=11)) == 1
