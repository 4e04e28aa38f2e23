"""Storing, reading and summarising payments on a real SQLCipher file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from storage_testkit import T0, card_result, make_store, new_payment

from offterm.core.config import validate_options
from offterm.core.contracts.storage import PaymentState, PaymentStore, StoreSummary
from offterm.core.errors import InvalidRequest, PaymentNotFound, StorageError
from offterm.core.registrations import ComponentContext
from offterm.plugins.storage import sqlcipher


def test_store_returns_the_committed_payment_and_get_reads_it_back(store) -> None:
    p = new_payment(1)
    stored = store.store(p)
    assert stored.state is PaymentState.STORED
    assert stored.attempts == 0
    again = store.get(p.offline_id)
    assert again.offline_id == p.offline_id
    assert again.idempotency_key == p.idempotency_key
    assert again.amount == p.amount and again.currency == "usd"
    assert again.metadata == {"order": "A-1"}
    assert again.account_id == "acct_test" and again.livemode is False
    assert again.card is not None
    assert again.card.encrypted_card_data == p.card.encrypted_card_data
    assert again.card.key_serial == p.card.key_serial
    assert again.card_details == p.card.details
    assert again.stored_at == p.stored_at
    assert again.description == "payment 1"


def test_timestamps_are_timezone_aware_utc(store) -> None:
    local = datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    stored = store.store(new_payment(stored_at=local))
    got = store.get(stored.offline_id)
    assert got.stored_at == local
    assert got.stored_at.utcoffset() == timedelta(0)
    assert got.updated_at is not None and got.updated_at.tzinfo is not None


def test_naive_timestamps_are_refused(store) -> None:
    with pytest.raises(InvalidRequest, match="timezone-aware"):
        store.store(new_payment(stored_at=datetime(2026, 3, 1, 12, 0)))


def test_storing_the_same_offline_id_twice_returns_the_first_record_unchanged(store) -> None:
    p = new_payment(1)
    first = store.store(p)
    second = store.store(new_payment(2, offline_id=p.offline_id, amount=999_999))
    assert second.amount == first.amount
    assert second.idempotency_key == p.idempotency_key
    assert store.summary().pending_count == 1


class Refused(Exception):
    pass


def test_check_sees_the_summary_inside_the_transaction_and_a_refusal_stores_nothing(store) -> None:
    store.store(new_payment(1, amount=500))
    seen: list[StoreSummary] = []

    def refuse_over_one(summary: StoreSummary) -> None:
        seen.append(summary)
        if summary.pending_count >= 1:
            raise Refused("over the limit")

    with pytest.raises(Refused):
        store.store(new_payment(2), check=refuse_over_one)
    assert seen[0].pending_count == 1 and seen[0].amounts_by_currency == {"usd": 500}
    assert store.summary().pending_count == 1, "the refused payment was not written"
    assert store.store(new_payment(3), check=lambda summary: None).state is PaymentState.STORED
    assert store.summary().pending_count == 2


def test_a_refusing_check_does_not_hide_a_payment_already_stored(store) -> None:
    """A retried store of a payment that made it the first time returns it, whatever the limits say now."""
    p = new_payment(1)
    first = store.store(p)

    def refuse(summary: StoreSummary) -> None:
        raise Refused("full")

    assert store.store(p, check=refuse).offline_id == first.offline_id


def test_an_idempotency_key_cannot_belong_to_two_payments(store) -> None:
    p = store.store(new_payment(1))
    with pytest.raises(InvalidRequest, match="idempotency key"):
        store.store(new_payment(2, idempotency_key=p.idempotency_key))
    assert store.summary().pending_count == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("amount", 0, "amount"),
        ("amount", True, "amount"),
        ("currency", "dollars", "currency"),
        ("offline_id", "", "offline_id"),
        ("account_id", "", "account_id"),
    ],
)
def test_invalid_payments_are_refused_with_a_typed_error(store, field, value, message) -> None:
    import dataclasses

    bad = dataclasses.replace(new_payment(), **{field: value})
    with pytest.raises(InvalidRequest, match=message):
        store.store(bad)
    assert store.summary().pending_count == 0


def test_a_full_card_number_in_last4_is_refused(store) -> None:
    import dataclasses

    card = card_result()
    leaky = dataclasses.replace(card, details=dataclasses.replace(card.details, last4="4242424242424242"))
    with pytest.raises(InvalidRequest, match="last4"):
        store.store(new_payment(card=leaky))


def test_get_unknown_raises_payment_not_found(store) -> None:
    with pytest.raises(PaymentNotFound):
        store.get("offpi_missing")
    with pytest.raises(PaymentNotFound):
        store.history("offpi_missing")


def test_list_is_oldest_first_and_filters_by_state(store) -> None:
    ids = [store.store(new_payment(i, stored_at=T0 - timedelta(minutes=i))).offline_id for i in range(5)]
    listed = [p.offline_id for p in store.list_payments()]
    assert listed == list(reversed(ids))
    assert [p.offline_id for p in store.list_payments(limit=2)] == listed[:2]
    assert store.list_payments(states=[PaymentState.FORWARDED]) == []
    assert len(store.list_payments(states={PaymentState.STORED})) == 5


def test_summary_counts_amounts_by_currency_oldest_and_attention(store) -> None:
    assert store.summary() == StoreSummary(0, {}, None, 0)
    store.store(new_payment(1, amount=500, currency="usd", stored_at=T0 + timedelta(minutes=5)))
    store.store(new_payment(2, amount=700, currency="usd", stored_at=T0))
    store.store(new_payment(3, amount=900, currency="EUR", stored_at=T0 + timedelta(minutes=1)))
    summary = store.summary()
    assert summary.pending_count == 3
    assert summary.amounts_by_currency == {"usd": 1200, "eur": 900}
    assert summary.oldest_stored_at == T0
    assert summary.needs_attention_count == 0

    now = T0 + timedelta(hours=1)
    claimed = store.claim("w", 1, 30, now)
    assert claimed[0].amount == 700
    summary = store.summary()
    assert summary.pending_count == 3, "a payment being forwarded is still pending"
    assert summary.oldest_stored_at == T0
    store.complete(claimed[0].offline_id, "w", PaymentState.NEEDS_ATTENTION, now, error_code="x")
    summary = store.summary()
    assert summary.pending_count == 2
    assert summary.amounts_by_currency == {"usd": 500, "eur": 900}
    assert summary.needs_attention_count == 1
    assert summary.oldest_stored_at == T0 + timedelta(minutes=1)


def test_meta_is_a_small_persistent_key_value_area(tmp_path: Path, open_store, keys) -> None:
    store = open_store()
    assert store.get_meta("last_account") is None
    store.set_meta("last_account", '{"id": "acct_1"}')
    store.set_meta("last_account", '{"id": "acct_2"}')
    store.close()
    again = open_store()
    assert again.get_meta("last_account") == '{"id": "acct_2"}'


def test_payments_survive_close_and_reopen(open_store) -> None:
    store = open_store()
    ids = {store.store(new_payment(i)).offline_id for i in range(3)}
    store.close()
    again = open_store()
    assert {p.offline_id for p in again.list_payments()} == ids


def test_a_closed_store_refuses_calls(open_store) -> None:
    store = open_store()
    store.close()
    with pytest.raises(StorageError, match="not open"):
        store.summary()


def test_the_plugin_registers_the_backend_with_its_options(tmp_path: Path) -> None:
    regs = list(sqlcipher.offterm_storage_backends())
    assert [r.name for r in regs] == ["sqlcipher"]
    keys = {o.key: o.default for o in regs[0].options}
    assert keys["path"] == "" and keys["allow_weak_durability"] is False
    assert {"busy_timeout_ms", "retention_days"} <= set(keys)
    options = validate_options("storage.sqlcipher", regs[0].options, {"path": "sub/pay.db"}, env={})
    store = regs[0].factory(ComponentContext("sqlcipher", options, tmp_path))
    assert isinstance(store, PaymentStore)
    assert store.path == (tmp_path / "sub" / "pay.db").resolve()


def test_default_path_is_payments_db_in_the_data_dir(tmp_path: Path) -> None:
    assert make_store(tmp_path).path == (tmp_path / "payments.db").resolve()


def test_bad_options_raise_config_errors(tmp_path: Path) -> None:
    from offterm.core.errors import ConfigError

    with pytest.raises(ConfigError, match="busy_timeout_ms"):
        make_store(tmp_path, busy_timeout_ms=-1)
    with pytest.raises(ConfigError, match="retention_days"):
        make_store(tmp_path, retention_days="30")
    with pytest.raises(ConfigError, match="synchronous"):
        make_store(tmp_path, synchronous="fast")


def test_stored_payment_repr_hides_card_data_and_key(store) -> None:
    stored = store.store(new_payment())
    text = repr(stored)
    assert stored.idempotency_key not in text
    assert stored.card is not None and stored.card.key_serial not in text


def test_created_utc_now_is_used_for_updated_at(store) -> None:
    before = datetime.now(UTC)
    stored = store.store(new_payment())
    assert stored.updated_at is not None and stored.updated_at >= before - timedelta(seconds=1)
