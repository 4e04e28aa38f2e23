"""The in-flight journal of online confirms: begin, end, resolve, list; durable, and without card data."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from storage_testkit import T0, new_payment, raw_connect

from offterm.core.contracts.storage import OnlineAttempt
from offterm.core.errors import InvalidRequest, InvalidTransition, PaymentNotFound

NOW = T0 + timedelta(hours=1)


def attempt(n: int, **changes) -> OnlineAttempt:
    base = OnlineAttempt(
        offline_id=f"offpi_online_{n}",
        idempotency_key=f"offterm-key-{n}",
        amount=1000 + n,
        currency="usd",
        owner="pos-1",
        started_at=NOW + timedelta(seconds=n),
    )
    return replace(base, **changes)


def test_begin_is_durable_and_a_second_begin_replaces_the_entry(open_store) -> None:
    store = open_store()
    store.begin_online(attempt(1))
    sent = NOW + timedelta(seconds=2)
    updated = attempt(1, intent_id="pi_1", steps_sent={"create_and_confirm": (sent, sent)})
    store.begin_online(updated)
    store.close()

    [entry] = open_store().online_attempts()
    assert entry == updated
    assert entry.resolution is None and entry.resolved_at is None


def test_end_deletes_the_entry_and_tolerates_a_missing_one(open_store) -> None:
    store = open_store()
    store.begin_online(attempt(1))
    store.begin_online(attempt(2))
    store.end_online("offpi_online_1")
    store.end_online("offpi_online_1")
    store.end_online("offpi_never")
    store.close()
    assert [a.offline_id for a in open_store().online_attempts()] == ["offpi_online_2"]


def test_resolve_keeps_the_entry_and_the_filters_tell_them_apart(open_store) -> None:
    store = open_store()
    for n in (3, 1, 2):
        store.begin_online(attempt(n))
    later = datetime.now(UTC).replace(microsecond=0)  # recent: opening the store purges old resolved entries
    resolved = store.resolve_online("offpi_online_1", "charged", later, intent_id="pi_1")
    assert (resolved.resolution, resolved.resolved_at, resolved.intent_id) == ("charged", later, "pi_1")
    store.resolve_online("offpi_online_3", "not_charged", later, error_code="no_intent")
    store.close()

    store = open_store()
    assert [a.offline_id for a in store.online_attempts()] == [f"offpi_online_{n}" for n in (1, 2, 3)], "oldest first"
    assert [a.offline_id for a in store.online_attempts(resolved=False)] == ["offpi_online_2"]
    done = store.online_attempts(resolved=True)
    assert [(a.offline_id, a.resolution, a.error_code) for a in done] == [
        ("offpi_online_1", "charged", None),
        ("offpi_online_3", "not_charged", "no_intent"),
    ]
    again = store.resolve_online("offpi_online_3", "declined", later, error_code="card_declined")
    assert again.resolution == "declined" and again.intent_id is None


def test_resolve_of_an_unknown_entry_is_payment_not_found(store) -> None:
    with pytest.raises(PaymentNotFound):
        store.resolve_online("offpi_never", "charged", NOW)


def test_a_resolved_entry_is_not_replaced_by_a_late_begin(store) -> None:
    store.begin_online(attempt(1))
    store.resolve_online("offpi_online_1", "charged", NOW, intent_id="pi_1")
    with pytest.raises(InvalidTransition, match="already resolved"):
        store.begin_online(attempt(1, intent_id="pi_other"))
    [entry] = store.online_attempts()
    assert entry.resolution == "charged" and entry.intent_id == "pi_1"


@pytest.mark.parametrize(
    "bad",
    [
        {"amount": 0},
        {"amount": True},
        {"currency": "dollars"},
        {"offline_id": ""},
        {"owner": ""},
        {"idempotency_key": ""},
        {"started_at": NOW.replace(tzinfo=None)},
        {"resolution": "charged"},
        {"steps_sent": {'bad"step': (NOW, NOW)}},
    ],
)
def test_a_malformed_attempt_is_refused_and_nothing_written(store, bad) -> None:
    with pytest.raises(InvalidRequest):
        store.begin_online(attempt(1, **bad))
    assert store.online_attempts() == []


def test_the_journal_holds_no_card_data_and_is_separate_from_payments(store, tmp_path, key) -> None:
    payment = new_payment()
    store.begin_online(attempt(1, offline_id=payment.offline_id, idempotency_key=payment.idempotency_key))
    assert store.summary().pending_count == 0 and store.list_payments() == [], "not a stored payment"
    # falling back offline: the payment is stored (with what was sent) and the entry ended
    store.store(payment)
    store.end_online(payment.offline_id)
    assert store.online_attempts() == []
    conn = raw_connect(tmp_path / "payments.db", key)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(online_attempts)")}
    finally:
        conn.close()
    assert not columns & {"card_data", "card_details", "key_serial"}


def test_resolved_entries_go_with_the_retention_unresolved_ones_stay(store) -> None:
    store.begin_online(attempt(1))
    store.begin_online(attempt(2))
    store.resolve_online("offpi_online_1", "charged", NOW)
    store.purge_expired(NOW + timedelta(days=store.config.retention_days - 1))
    assert len(store.online_attempts()) == 2
    store.purge_expired(NOW + timedelta(days=store.config.retention_days + 1))
    assert [a.offline_id for a in store.online_attempts()] == ["offpi_online_2"]
