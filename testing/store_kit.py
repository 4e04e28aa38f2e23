"""A conformance kit for storage backends: subclass ``StoreConformance`` as a ``Test*`` class.

::

    from pathlib import Path

    from offterm.testing import StoreConformance


    class TestAcmeStore(StoreConformance):
        shared_between_instances = True  # two instances on one directory share one ledger

        def open_store(self, directory: Path, *, create: bool = True) -> PaymentStore:
            store = AcmeStore(directory / "payments.acme")
            store.open(StaticKeyProvider(b"k" * 32), create=create)
            return store

pytest collects every ``test_*`` method of the subclass: durability, one claim at a
time, leases, transitions, attempts and steps, intents and key generations, the
summary, requeue, history, the in-flight journal and the key/value area.  Each test
gets a fresh, empty directory; the kit closes every store it opened.

Hooks a subclass may override: ``open_store`` (required; it passes ``create`` on to
``open``), ``reopen`` (default: close, then ``open_store`` on the same directory; a store
whose data lives in the object reopens that object), ``shared_between_instances`` (opt-in: the cross-instance claim
test), ``new_payment`` (the payments the kit stores).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pytest

from offterm.core.contracts.readers import CardDetails, CardResult
from offterm.core.contracts.storage import (
    ALLOWED_TRANSITIONS,
    CLAIMABLE_STATES,
    NewPayment,
    OnlineAttempt,
    PaymentState,
    PaymentStore,
    StoreSummary,
)
from offterm.core.errors import InvalidRequest, InvalidTransition, PaymentNotFound, StoreNotFound
from offterm.core.models import CaptureMethod, ReadMethod

__all__ = ["KIT_T0", "StoreConformance"]

S = PaymentState
#: The kit's clock: every ``now`` it passes is relative to this (``stored_at`` of payment i is T0 + i s).
KIT_T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return KIT_T0 + timedelta(seconds=seconds)


class _Stores:
    """Opens stores for one test and closes them all at its end."""

    def __init__(self, kit: StoreConformance, directory: Path) -> None:
        self.kit, self.directory, self.opened = kit, directory, list[PaymentStore]()

    def open(self) -> PaymentStore:
        store = self.kit.open_store(self.directory)
        self.opened.append(store)
        return store

    def reopen(self, store: PaymentStore) -> PaymentStore:
        again = self.kit.reopen(store, self.directory)
        self.opened.append(again)
        return again

    def close_all(self) -> None:
        for store in reversed(self.opened):
            store.close()


class StoreConformance:
    """The storage contract (``offterm.core.contracts.storage``) as tests.  Not collected itself."""

    #: Opt in when two store instances opened on one directory share their payments (as two
    #: processes on one SQLCipher file do): the kit then checks that claims exclude each other
    #: across instances, and that a write is visible to the other instance once it returned.
    shared_between_instances: ClassVar[bool] = False

    # -- hooks for the subclass ---------------------------------------------------------

    def open_store(self, directory: Path, *, create: bool = True) -> PaymentStore:
        """Return an opened store whose data lives in ``directory`` (empty the first time).

        ``create`` goes to ``PaymentStore.open``: with False, a store that does not exist yet must
        raise ``StoreNotFound`` and write nothing.
        """
        raise NotImplementedError("a StoreConformance subclass implements open_store(directory)")

    def reopen(self, store: PaymentStore, directory: Path) -> PaymentStore:
        """Close ``store`` and return a store opened on the same data (what a restart does)."""
        store.close()
        return self.open_store(directory)

    def new_payment(self, i: int = 0, *, amount: int | None = None, currency: str = "usd") -> NewPayment:
        """Payment number ``i``: stored_at T0 + i seconds, a unique offline id and idempotency key."""
        details = CardDetails(
            brand="visa",
            last4="4242",
            exp_month=12,
            exp_year=2031,
            read_method=ReadMethod.CONTACT_EMV,
            cardholder_name="JANE DOE",
            pin_verified=True,
            issuer_country="US",
            networks=("visa",),
        )
        return NewPayment(
            offline_id=f"offpi_kit_{i}_{uuid.uuid4().hex[:12]}",
            idempotency_key=f"offterm-kit-{uuid.uuid4().hex}",
            amount=amount if amount is not None else 1000 + i,
            currency=currency,
            capture_method=CaptureMethod.AUTOMATIC,
            metadata={"order": f"A-{i}"},
            account_id="acct_kit",
            livemode=False,
            stored_at=_at(i),
            card=CardResult(details=details, encrypted_card_data=b"sealed-by-the-reader-" + bytes([i % 256]) * 8),
            description=f"payment {i}",
        )

    # -- fixtures -------------------------------------------------------------------------

    @pytest.fixture
    def stores(self, tmp_path: Path) -> Iterator[_Stores]:
        helper = _Stores(self, tmp_path / "store")
        helper.directory.mkdir(mode=0o700)
        try:
            yield helper
        finally:
            helper.close_all()

    @pytest.fixture
    def store(self, stores: _Stores) -> PaymentStore:
        return stores.open()

    def _fill(self, store: PaymentStore, n: int) -> list[str]:
        return [store.store(self.new_payment(i)).offline_id for i in range(n)]

    def _claimed(self, store: PaymentStore, owner: str = "w", lease: float = 30, now: float = 0) -> str:
        pid = store.store(self.new_payment(0)).offline_id
        [claimed] = store.claim(owner, 1, lease, _at(now))
        assert claimed.offline_id == pid
        return pid

    def _needs_attention(self, store: PaymentStore) -> str:
        pid = self._claimed(store)
        store.complete(pid, "w", S.NEEDS_ATTENTION, _at(1), error_code="gave_up", next_attempt_at=_at(3600))
        return pid

    # -- the ledger: durability -------------------------------------------------------------

    def test_store_returns_the_payment_and_get_reads_it_back(self, store: PaymentStore) -> None:
        new = self.new_payment(1)
        stored = store.store(new)
        assert (stored.offline_id, stored.state, stored.attempts) == (new.offline_id, S.STORED, 0)
        got = store.get(new.offline_id)
        assert got.idempotency_key == new.idempotency_key
        assert (got.amount, got.currency, got.metadata, got.account_id) == (1001, "usd", {"order": "A-1"}, "acct_kit")
        assert got.stored_at == new.stored_at and got.card == new.card and got.key_generation == 0
        assert got.card_details is not None and got.card_details.last4 == "4242"

    def test_open_without_create_finds_no_store_and_writes_nothing(self, stores: _Stores) -> None:
        typo = stores.directory / "typo"
        with pytest.raises(StoreNotFound):
            stores.opened.append(self.open_store(typo, create=False))
        assert not typo.exists(), "open(create=False) made the directory of a store that does not exist"
        with pytest.raises(StoreNotFound):
            stores.opened.append(self.open_store(stores.directory, create=False))
        assert list(stores.directory.iterdir()) == [], "open(create=False) wrote files for a missing store"
        store = stores.open()  # nothing was left half-made: the store is created as usual
        assert store.summary().pending_count == 0 and store.list_payments() == []

    def test_payments_meta_and_journal_survive_a_reopen(self, stores: _Stores) -> None:
        store = stores.open()
        stored = [store.store(self.new_payment(i)) for i in range(3)]
        store.set_meta("last_account", "acct_kit")
        store.begin_online(self._attempt(9))
        again = stores.reopen(store)
        assert [(p.offline_id, p.idempotency_key, p.amount) for p in again.list_payments()] == [
            (p.offline_id, p.idempotency_key, p.amount) for p in stored
        ]
        assert again.get_meta("last_account") == "acct_kit"
        assert [a.offline_id for a in again.online_attempts()] == ["offpi_online_9"]

    def test_claim_bookkeeping_survives_a_reopen(self, stores: _Stores) -> None:
        store = stores.open()
        pid = self._claimed(store)
        store.record_attempt(pid, "w", _at(1), ["payment_method"])
        store.record_intent(pid, "w", "pi_kit", _at(2))
        again = stores.reopen(store)
        got = again.get(pid)
        assert (got.state, got.attempts, got.intent_id) == (S.FORWARDING, 1, "pi_kit")
        assert got.steps_sent == {"payment_method": (_at(1), _at(1))}
        assert again.recover_expired_claims(_at(3600)) == 1
        assert again.get(pid).state is S.OUTCOME_UNKNOWN, "a sent claim comes back as outcome_unknown"

    def test_storing_an_offline_id_twice_returns_the_first_record(self, store: PaymentStore) -> None:
        first = self.new_payment(1)
        store.store(first)
        again = store.store(NewPayment(**{**first.__dict__, "amount": 9999, "idempotency_key": "offterm-other"}))
        assert again.amount == first.amount and again.idempotency_key == first.idempotency_key
        assert len(store.list_payments()) == 1

    def test_an_idempotency_key_cannot_belong_to_two_payments(self, store: PaymentStore) -> None:
        first = store.store(self.new_payment(1))
        with pytest.raises(InvalidRequest):
            store.store(NewPayment(**{**self.new_payment(2).__dict__, "idempotency_key": first.idempotency_key}))
        assert len(store.list_payments()) == 1

    def test_check_sees_the_summary_and_a_refusal_stores_nothing(self, store: PaymentStore) -> None:
        store.store(self.new_payment(1))
        seen: list[StoreSummary] = []

        def refuse(summary: StoreSummary) -> None:
            seen.append(summary)
            raise RuntimeError("over the limit")

        with pytest.raises(RuntimeError, match="over the limit"):
            store.store(self.new_payment(2), refuse)
        assert seen[0].pending_count == 1 and seen[0].amounts_by_currency == {"usd": 1001}
        assert store.summary().pending_count == 1

    def test_unknown_payments_are_payment_not_found(self, store: PaymentStore) -> None:
        for call in (store.get, store.history, lambda i: store.requeue(i, _at(0))):
            with pytest.raises(PaymentNotFound):
                call("offpi_nope")

    def test_list_is_oldest_first_filters_by_state_and_limits(self, store: PaymentStore) -> None:
        late = store.store(self.new_payment(5)).offline_id
        early = store.store(self.new_payment(1)).offline_id
        assert [p.offline_id for p in store.list_payments()] == [early, late]
        store.claim("w", 1, 30, _at(10))
        assert [p.offline_id for p in store.list_payments([S.FORWARDING])] == [early]
        assert [p.offline_id for p in store.list_payments([S.STORED])] == [late]
        assert store.list_payments([]) == [] and len(store.list_payments(limit=1)) == 1
        with pytest.raises(InvalidRequest):
            store.list_payments(limit=-1)

    # -- the ledger: summary, history, requeue, meta ------------------------------------------

    def test_summary_counts_pending_amounts_by_currency_oldest_and_attention(self, store: PaymentStore) -> None:
        assert store.summary() == StoreSummary(0, {}, None, 0)
        ids = [store.store(self.new_payment(i, amount=100 * (i + 1), currency=c)).offline_id
               for i, c in enumerate(("usd", "eur", "usd", "usd", "usd"))]  # fmt: skip
        store.claim("w", 1, 30, _at(10))  # forwarding still counts as pending
        [second] = store.claim("w2", 1, 30, _at(10))
        store.complete(second.offline_id, "w2", S.NEEDS_ATTENTION, _at(11), error_code="gave_up")
        [third] = store.claim("w2", 1, 30, _at(10))
        store.complete(third.offline_id, "w2", S.FORWARDED, _at(11))
        [fourth] = store.claim("w2", 1, 30, _at(10))
        store.record_attempt(fourth.offline_id, "w2", _at(11))
        store.complete(fourth.offline_id, "w2", S.OUTCOME_UNKNOWN, _at(12))
        summary = store.summary()
        assert summary.pending_count == 3  # stored, forwarding, outcome_unknown
        assert summary.amounts_by_currency == {"usd": 100 + 400 + 500}
        assert summary.oldest_stored_at == self.new_payment(0).stored_at
        assert summary.needs_attention_count == 1
        assert {p.offline_id for p in store.list_payments([S.NEEDS_ATTENTION])} == {ids[1]}

    def test_history_records_every_transition_with_attempt_and_code(self, store: PaymentStore) -> None:
        pid = self._claimed(store)
        store.record_attempt(pid, "w", _at(1))
        store.complete(pid, "w", S.OUTCOME_UNKNOWN, _at(2), error_code="timeout")
        store.claim("w", 1, 30, _at(3))
        store.record_attempt(pid, "w", _at(4))
        store.complete(pid, "w", S.FORWARDED, _at(5), intent_id="pi_1")
        steps = [(h.from_state, h.to_state, h.attempt, h.error_code) for h in store.history(pid)]
        assert steps == [
            (None, S.STORED, 0, None),
            (S.STORED, S.FORWARDING, 0, None),
            (S.FORWARDING, S.OUTCOME_UNKNOWN, 1, "timeout"),
            (S.OUTCOME_UNKNOWN, S.FORWARDING, 1, None),
            (S.FORWARDING, S.FORWARDED, 2, None),
        ]
        assert store.history(pid)[-1].at == _at(5)

    def test_requeue_puts_needs_attention_back_in_the_queue(self, store: PaymentStore) -> None:
        pid = self._needs_attention(store)
        requeued = store.requeue(pid, _at(5), reason="card issuer confirmed by phone")
        assert requeued.state is S.STORED and requeued.next_attempt_at is None
        assert requeued.last_error_code == "requeued"
        assert requeued.last_error_message == "card issuer confirmed by phone"
        last = store.history(pid)[-1]
        assert (last.from_state, last.to_state, last.error_code, last.at) == (
            S.NEEDS_ATTENTION, S.STORED, "requeued", _at(5)
        )  # fmt: skip
        assert [p.offline_id for p in store.claim("w", 5, 30, _at(6))] == [pid], "claimable at once, backoff gone"
        assert store.summary().needs_attention_count == 0

    @pytest.mark.parametrize("state", [S.STORED, S.FORWARDING, S.FORWARDED])
    def test_requeue_of_any_other_state_is_an_invalid_transition(self, store: PaymentStore, state: S) -> None:
        pid = store.store(self.new_payment(0)).offline_id
        if state is not S.STORED:
            store.claim("w", 1, 30, _at(0))
        if state is S.FORWARDED:
            store.complete(pid, "w", S.FORWARDED, _at(1))
        with pytest.raises(InvalidTransition):
            store.requeue(pid, _at(2))
        assert store.get(pid).state is state

    def test_meta_is_a_small_key_value_area(self, store: PaymentStore) -> None:
        assert store.get_meta("reader") is None
        store.set_meta("reader", "one")
        store.set_meta("reader", "two")
        assert store.get_meta("reader") == "two"
        with pytest.raises(InvalidRequest):
            store.set_meta("", "x")

    def test_naive_datetimes_are_refused(self, store: PaymentStore) -> None:
        store.store(self.new_payment(0))
        with pytest.raises(InvalidRequest):
            store.claim("w", 1, 30, datetime(2026, 3, 1, 12, 0))  # noqa: DTZ001 - naive on purpose

    # -- the claim queue ------------------------------------------------------------------------

    def test_claim_takes_the_oldest_due_payments(self, store: PaymentStore) -> None:
        ids = self._fill(store, 4)
        first = store.claim("a", 2, 30, _at(10))
        assert [p.offline_id for p in first] == ids[:2] and {p.state for p in first} == {S.FORWARDING}
        assert [p.offline_id for p in store.claim("b", 5, 30, _at(10))] == ids[2:]
        assert store.claim("c", 5, 30, _at(10)) == []

    def test_claim_respects_next_attempt_at_unless_told_to_ignore_it(self, store: PaymentStore) -> None:
        pid = self._claimed(store)
        store.complete(pid, "w", S.STORED, _at(1), next_attempt_at=_at(100))
        assert store.claim("w", 1, 30, _at(99)) == []
        assert [p.offline_id for p in store.claim("w", 1, 30, _at(99), ignore_backoff=True)] == [pid]

    @pytest.mark.parametrize("args", [("", 1, 30.0), ("w", 0, 30.0), ("w", True, 30.0), ("w", 1, 0.0), ("w", 1, -1.0)])
    def test_claim_refuses_bad_arguments_and_claims_nothing(
        self, store: PaymentStore, args: tuple[str, int, float]
    ) -> None:
        store.store(self.new_payment(0))
        with pytest.raises(InvalidRequest):
            store.claim(*args, _at(0))
        assert store.summary().pending_count == 1 and store.list_payments([S.FORWARDING]) == []

    def test_one_claim_at_a_time_between_owners(self, store: PaymentStore) -> None:
        self._fill(store, 3)
        a = {p.offline_id for p in store.claim("a", 2, 30, _at(10))}
        b = {p.offline_id for p in store.claim("b", 5, 30, _at(10))}
        assert len(a) == 2 and len(b) == 1 and not a & b
        pid = next(iter(a))
        calls: tuple[Callable[[], object], ...] = (
            lambda: store.record_attempt(pid, "b", _at(11)),
            lambda: store.record_intent(pid, "b", "pi_x", _at(11)),
            lambda: store.start_key_generation(pid, "b", _at(11), None),
            lambda: store.complete(pid, "b", S.FORWARDED, _at(11)),
        )
        for call in calls:
            with pytest.raises(InvalidTransition):
                call()
        got = store.get(pid)
        assert (got.state, got.attempts, got.intent_id, got.key_generation) == (S.FORWARDING, 0, None, 0)
        assert store.release("b", _at(12)) == 1 and store.get(pid).state is S.FORWARDING, "a's claims stay"

    def test_one_claim_at_a_time_across_two_store_instances(self, stores: _Stores) -> None:
        if not self.shared_between_instances:
            pytest.skip("this backend's instances do not share data (shared_between_instances = False)")
        one, two = stores.open(), stores.open()
        ids = self._fill(one, 4)
        assert [p.offline_id for p in two.list_payments()] == ids, "a stored payment is visible once store returned"
        a = {p.offline_id for p in one.claim("a", 3, 30, _at(10))}
        b = {p.offline_id for p in two.claim("b", 3, 30, _at(10))}
        assert len(a) == 3 and len(b) == 1 and not a & b
        with pytest.raises(InvalidTransition):
            two.record_attempt(next(iter(a)), "b", _at(11))

    def test_record_attempt_counts_renews_the_lease_and_refuses_an_expired_one(self, store: PaymentStore) -> None:
        pid = self._claimed(store, lease=10)
        assert store.record_attempt(pid, "w", _at(8)).attempts == 1  # lease now runs to 18
        assert store.recover_expired_claims(_at(12)) == 0, "the renewed lease has not expired"
        with pytest.raises(InvalidTransition):
            store.record_attempt(pid, "w", _at(18))
        assert store.get(pid).attempts == 1

    def test_record_attempt_records_steps_keeping_the_first_time(self, store: PaymentStore) -> None:
        pid = self._claimed(store)
        store.record_attempt(pid, "w", _at(1), ["payment_method", "create_and_confirm"])
        got = store.record_attempt(pid, "w", _at(2), ["create_and_confirm"])
        assert got.steps_sent == {"payment_method": (_at(1), _at(1)), "create_and_confirm": (_at(1), _at(2))}
        assert got.first_request_at == _at(1)
        assert store.record_attempt(pid, "w", _at(3)).steps_sent == got.steps_sent
        with pytest.raises(InvalidRequest):
            store.record_attempt(pid, "w", _at(4), "confirm")  # a string is not a collection of names
        assert store.get(pid).attempts == 3

    def test_record_intent_and_key_generations_need_the_claim(self, store: PaymentStore) -> None:
        pid = self._claimed(store)
        store.record_attempt(pid, "w", _at(1), ["confirm"])
        got = store.record_intent(pid, "w", "pi_kit", _at(2))
        assert (got.intent_id, got.state) == ("pi_kit", S.FORWARDING)
        got = store.start_key_generation(pid, "w", _at(3), None)
        assert (got.key_generation, got.steps_sent, got.intent_id, got.attempts) == (1, {}, None, 1)
        got = store.start_key_generation(pid, "w", _at(4), "pi_found")
        assert (got.key_generation, got.intent_id) == (2, "pi_found")
        got = store.start_key_generation(pid, "w", _at(4), None, generation=7)  # a period of the exchange
        assert (got.key_generation, got.steps_sent) == (7, {})
        got = store.start_key_generation(pid, "w", _at(4), "pi_found", generation=3)  # never backwards
        assert (got.key_generation, got.intent_id) == (8, "pi_found")
        with pytest.raises(InvalidRequest):
            store.start_key_generation(pid, "w", _at(4), None, generation=-1)
        store.release("w", _at(5))
        with pytest.raises(InvalidTransition):
            store.record_intent(pid, "w", "pi_late", _at(6))
        with pytest.raises(InvalidTransition):
            store.start_key_generation(pid, "w", _at(6), None)
        with pytest.raises(PaymentNotFound):
            store.record_intent("offpi_nope", "w", "pi_x", _at(6))
        assert store.get(pid).key_generation == 8 and store.get(pid).intent_id == "pi_found"

    @pytest.mark.parametrize("target", sorted(ALLOWED_TRANSITIONS[S.FORWARDING]))
    def test_every_allowed_completion_works(self, store: PaymentStore, target: S) -> None:
        pid = self._claimed(store)
        store.record_attempt(pid, "w", _at(1))
        done = store.complete(pid, "w", target, _at(2), intent_id="pi_k", error_code="code", decline_code=None)
        assert (done.state, done.intent_id, done.last_error_code) == (target, "pi_k", "code")
        assert store.history(pid)[-1].to_state is target
        if target in (S.FORWARDED, S.DECLINED):
            assert done.card is None and done.card_details is not None and done.card_details.last4 == "4242"

    @pytest.mark.parametrize("target", sorted(set(S) - ALLOWED_TRANSITIONS[S.FORWARDING]))
    def test_a_completion_outside_the_allowed_transitions_is_refused(self, store: PaymentStore, target: S) -> None:
        pid = self._claimed(store)
        with pytest.raises(InvalidTransition):
            store.complete(pid, "w", target, _at(1))
        assert store.get(pid).state is S.FORWARDING

    def test_outcome_unknown_needs_a_request_sent_and_final_states_are_final(self, store: PaymentStore) -> None:
        pid = self._claimed(store)
        with pytest.raises(InvalidTransition):
            store.complete(pid, "w", S.OUTCOME_UNKNOWN, _at(1))
        store.complete(pid, "w", S.DECLINED, _at(1), decline_code="insufficient_funds")
        assert store.get(pid).decline_code == "insufficient_funds"
        assert store.claim("w", 5, 30, _at(2)) == []
        with pytest.raises(InvalidTransition):
            store.complete(pid, "w", S.FORWARDED, _at(3))
        assert not ALLOWED_TRANSITIONS[S.DECLINED] and all(s in ALLOWED_TRANSITIONS for s in CLAIMABLE_STATES)

    def test_release_gives_claims_back_unsent_to_their_state_and_sent_to_outcome_unknown(
        self, store: PaymentStore
    ) -> None:
        ids = self._fill(store, 3)
        store.claim("w", 3, 30, _at(10))
        store.record_attempt(ids[0], "w", _at(11))
        assert store.release("w", _at(12)) == 3
        states = [store.get(i).state for i in ids]
        assert states == [S.OUTCOME_UNKNOWN, S.STORED, S.STORED]
        assert store.history(ids[1])[-1].error_code == "claim_released"

    def test_expired_leases_are_recovered_sent_or_not(self, store: PaymentStore) -> None:
        ids = self._fill(store, 2)
        store.claim("crashed", 2, 10, _at(10))
        store.record_attempt(ids[0], "crashed", _at(11))  # lease now to 21
        assert store.recover_expired_claims(_at(19)) == 0
        assert store.recover_expired_claims(_at(20)) == 1
        assert store.get(ids[1]).state is S.STORED
        assert store.recover_expired_claims(_at(21)) == 1
        assert store.get(ids[0]).state is S.OUTCOME_UNKNOWN
        assert store.history(ids[0])[-1].error_code == "claim_expired"
        # an unsent re-claim of an unknown outcome stays unknown when it expires
        store.claim("again", 1, 10, _at(30))
        assert store.recover_expired_claims(_at(40)) == 1 and store.get(ids[0]).state is S.OUTCOME_UNKNOWN

    def test_owner_gone_recovers_a_dead_owners_claims_at_once(self, store: PaymentStore) -> None:
        ids = self._fill(store, 3)
        store.claim("dead", 2, 600, _at(10))
        store.claim("alive", 1, 600, _at(10))
        asked: list[str] = []

        def owner_gone(owner: str) -> bool:
            asked.append(owner)
            return owner == "dead"

        assert store.recover_expired_claims(_at(11), owner_gone) == 2
        assert sorted(asked) == ["alive", "dead"], "asked once per owner of a current claim"
        assert [store.get(i).state for i in ids] == [S.STORED, S.STORED, S.FORWARDING]
        assert store.history(ids[0])[-1].error_code == "claim_owner_gone"

    def test_an_owner_gone_check_that_raises_recovers_nothing(self, store: PaymentStore) -> None:
        self._fill(store, 1)
        store.claim("w", 1, 10, _at(10))

        def broken(owner: str) -> bool:
            raise RuntimeError("cannot tell")

        with pytest.raises(RuntimeError, match="cannot tell"):
            store.recover_expired_claims(_at(11), broken)  # the lease is current: the owner is asked
        assert store.list_payments([S.FORWARDING]) != []

    # -- the in-flight journal --------------------------------------------------------------------

    @staticmethod
    def _attempt(n: int, **changes: object) -> OnlineAttempt:
        fields: dict[str, object] = {
            "offline_id": f"offpi_online_{n}",
            "idempotency_key": f"offterm-online-{n}",
            "amount": 500 + n,
            "currency": "usd",
            "owner": "pos-1",
            "started_at": _at(n),
        }
        fields.update(changes)
        return OnlineAttempt(**fields)  # type: ignore[arg-type]

    def test_begin_replaces_an_unresolved_entry_and_end_removes_it(self, store: PaymentStore) -> None:
        store.begin_online(self._attempt(1))
        store.begin_online(self._attempt(1, intent_id="pi_1", steps_sent={"confirm": (_at(2), _at(2))}))
        [entry] = store.online_attempts()
        assert (entry.intent_id, entry.steps_sent, entry.resolution) == ("pi_1", {"confirm": (_at(2), _at(2))}, None)
        store.end_online("offpi_online_1")
        store.end_online("offpi_online_1")  # no entry: no error
        assert store.online_attempts() == []

    def test_resolve_keeps_the_entry_and_the_filters_tell_them_apart(self, store: PaymentStore) -> None:
        for n in (2, 1, 3):
            store.begin_online(self._attempt(n, intent_id=f"pi_{n}"))
        resolved = store.resolve_online("offpi_online_2", "charged", _at(9), error_code=None)
        assert (resolved.resolution, resolved.resolved_at, resolved.intent_id) == ("charged", _at(9), "pi_2")
        again = store.resolve_online("offpi_online_2", "not_charged", _at(10), intent_id="pi_other")
        assert (again.resolution, again.intent_id) == ("not_charged", "pi_other")
        assert [a.offline_id for a in store.online_attempts()] == [f"offpi_online_{n}" for n in (1, 2, 3)]
        assert [a.offline_id for a in store.online_attempts(resolved=True)] == ["offpi_online_2"]
        assert [a.offline_id for a in store.online_attempts(resolved=False)] == ["offpi_online_1", "offpi_online_3"]
        with pytest.raises(InvalidTransition):
            store.begin_online(self._attempt(2))
        assert store.online_attempts(resolved=True)[0].resolution == "not_charged"
        with pytest.raises(PaymentNotFound):
            store.resolve_online("offpi_nope", "charged", _at(11))

    @pytest.mark.parametrize(
        "changes", [{"resolution": "charged"}, {"amount": 0}, {"offline_id": ""}, {"currency": "dollars"}]
    )
    def test_a_malformed_journal_entry_is_refused_and_nothing_written(
        self, store: PaymentStore, changes: dict[str, object]
    ) -> None:
        with pytest.raises(InvalidRequest):
            store.begin_online(self._attempt(1, **changes))
        assert store.online_attempts() == []
