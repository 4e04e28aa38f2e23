"""The plugin seen through the core's plugin manager, and the summary checked against a model."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_testkit import T0, make_store, new_payment

from offterm.core.contracts.storage import PENDING_STATES, PaymentState
from offterm.core.manager import BUNDLED_PLUGINS, create_plugin_manager
from offterm.core.registrations import ComponentContext
from offterm.plugins.storage.keys import FileKeyProvider, StaticKeyProvider
from offterm.plugins.storage.sqlcipher import SqlCipherStore

S = PaymentState


def test_the_core_finds_the_backend_and_the_key_providers_by_name(tmp_path: Path) -> None:
    pm = create_plugin_manager(
        autoload=False,
        env={},
        bundled=[b for b in BUNDLED_PLUGINS if b[0] in {"sqlcipher", "storage-keys"}],
    )
    backend = pm.storage_backend("sqlcipher")
    file_reg = pm.storage_key_provider("file")
    assert {pm.storage_key_provider(n).name for n in ("file", "env", "keyring")} == {"file", "env", "keyring"}

    def options(reg) -> dict:  # type: ignore[no-untyped-def]
        return {o.key: o.default for o in reg.options}

    store = backend.factory(ComponentContext("sqlcipher", options(backend), tmp_path))
    keys = file_reg.factory(ComponentContext("file", options(file_reg), tmp_path))
    assert isinstance(store, SqlCipherStore) and isinstance(keys, FileKeyProvider)
    store.open(keys)
    try:
        assert store.store(new_payment()).state is S.STORED
    finally:
        store.close()
    assert (tmp_path / "payments.db").exists() and (tmp_path / "storage.key").exists()


def test_storing_while_payments_are_being_forwarded_leaves_their_keys_alone(store) -> None:
    first = [store.store(new_payment(i)) for i in range(3)]
    claimed = store.claim("w", 3, 30, T0)
    more = [store.store(new_payment(10 + i)) for i in range(3)]
    for p in claimed:
        store.record_attempt(p.offline_id, "w", T0)
        store.complete(p.offline_id, "w", S.OUTCOME_UNKNOWN, T0, error_code="timeout")
    again = {p.offline_id: p.idempotency_key for p in store.claim("w", 10, 30, T0 + timedelta(seconds=1))}
    assert again == {p.offline_id: p.idempotency_key for p in first + more}


# -- the totals the database maintains match a recount, whatever happens -----------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("store"), st.sampled_from(["usd", "eur", "jpy"]), st.integers(1, 50_000)),
        st.tuples(st.just("claim"), st.integers(1, 4)),
        st.tuples(st.just("send"), st.integers(0, 10)),
        st.tuples(
            st.just("complete"),
            st.integers(0, 10),
            st.sampled_from([S.FORWARDED, S.DECLINED, S.NEEDS_ATTENTION, S.STORED, S.OUTCOME_UNKNOWN]),
        ),
        st.tuples(st.just("requeue"), st.integers(0, 10)),
        st.tuples(st.just("recover")),
        st.tuples(st.just("purge")),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_summary_always_equals_a_recount_of_the_rows(ops) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp), retention_days=1)
        store.open(StaticKeyProvider(os.urandom(32)))
        try:
            run(store, ops)
            rows = store.list_payments()
            pending = [p for p in rows if p.state in PENDING_STATES]
            amounts: Counter[str] = Counter()
            for p in pending:
                amounts[p.currency] += p.amount
            summary = store.summary()
            assert summary.pending_count == len(pending)
            assert summary.amounts_by_currency == dict(amounts)
            assert summary.needs_attention_count == sum(p.state is S.NEEDS_ATTENTION for p in rows)
            assert summary.oldest_stored_at == min((p.stored_at for p in pending), default=None)
        finally:
            store.close()


def run(store: SqlCipherStore, ops: list[tuple]) -> None:
    from offterm.core.errors import InvalidTransition, PaymentNotFound

    now = T0
    ids: list[str] = []
    for op in ops:
        now += timedelta(minutes=1)
        held = [p.offline_id for p in store.list_payments(states=[S.FORWARDING])]
        try:
            if op[0] == "store":
                ids.append(store.store(new_payment(len(ids), currency=op[1], amount=op[2])).offline_id)
            elif op[0] == "claim":
                store.claim("w", op[1], 90, now)
            elif op[0] == "send" and held:
                store.record_attempt(held[op[1] % len(held)], "w", now)
            elif op[0] == "complete" and held:
                store.complete(held[op[1] % len(held)], "w", op[2], now, error_code="e")
            elif op[0] == "requeue" and ids:
                store.requeue(ids[op[1] % len(ids)], now)
            elif op[0] == "recover":
                store.recover_expired_claims(now)
            elif op[0] == "purge":
                store.purge_expired(now + timedelta(days=2))
        except (InvalidTransition, PaymentNotFound):
            pass
