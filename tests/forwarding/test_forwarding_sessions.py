"""Connection tokens and sessions while forwarding: fresh, renewed on expiry, never kept; provider failures."""

from __future__ import annotations

import logging
from pathlib import Path

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
from offterm.core.errors import ConnectionTokenError
from offterm.sim.processor import start_simulator


def _decrypted_dump(path: Path, key_file: Path) -> bytes:
    """Every value of every table of the SQLCipher file, decrypted."""
    import sqlcipher3.dbapi2 as driver

    key = bytes.fromhex(key_file.read_text().strip())
    conn = driver.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA cipher_log_level = NONE")
        conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        chunks: list[bytes] = []
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert "payments" in tables
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                chunks += [v if isinstance(v, bytes) else str(v).encode() for v in row]
        return b"\n".join(chunks)
    finally:
        conn.close()


async def test_sessions_expire_mid_drain_and_are_renewed_from_fresh_tokens_never_kept(
    tmp_path, recorder, kit, caplog, capfd
):
    caplog.set_level(logging.DEBUG)
    data_dir = tmp_path / "pos"
    ids = populate(data_dir, [new_payment(i) for i in range(60)])
    sim = start_simulator(session_ttl=0.4)
    try:
        cfg = config(
            data_dir,
            sim.url,
            transport="observed",
            forwarding={"rate_limit": 30.0, "concurrency": 4},  # 15 payments/s: the drain outlives several sessions
            tokens={"providers": ["recording"], "recording": {"url": sim.backend_url}},
        )
        async with Terminal.from_config(cfg, plugin_manager=plugin_manager(recorder, kit), background=False) as t:
            assert await t.forward_now(timeout=60) == 0
        expired = [r for r in sim.requests() if r["status"] == 401]
        stored = read_store(data_dir)
        assert check_exactly_once(sim, stored) == {PaymentState.FORWARDED: 60}
    finally:
        sim.stop()
    assert sorted(forwarded_events(recorder)) == sorted(ids)
    recorder.assert_not_called("forwarding_failure")
    assert expired, "sessions did expire during the drain"
    [provider], [transport] = kit.providers, kit.transports
    assert len(provider.secrets) >= 3, f"a new session after each expiry ({len(provider.secrets)})"
    assert len(set(provider.secrets)) == len(provider.secrets), "every session from a fresh token"
    assert len(transport.session_secrets) == len(provider.secrets), "one token per session, each redeemed once"

    secrets = [s.encode() for s in provider.secrets + transport.session_secrets]
    db = data_dir / "payments.db"
    dump = _decrypted_dump(db, data_dir / "storage.key")
    assert b"offpi_" in dump, "the dump does read the payments"
    assert not [s for s in secrets if s in dump], "a token or session secret was written to the store"
    for f in data_dir.rglob("*"):
        if f.is_file():
            raw = f.read_bytes()
            assert not [s for s in secrets if s in raw], f"a secret is in {f.name}"
    out, err = capfd.readouterr()
    logged = (out + err + caplog.text).encode()
    assert b"processor_session_opened" in logged and b"payment_forwarded" in logged, "the logs were captured"
    assert not [s for s in secrets if s in logged], "a token or session secret was logged"


async def test_token_provider_failure_is_reported_and_leaves_payments_untouched(data_dir, sim, recorder):
    ids = populate(data_dir, [new_payment(i) for i in range(4)])
    sim.set_faults(error_rates={500: 1.0}, paths=("/backend/",))  # the integrator's backend is broken
    async with Terminal.from_config(
        config(data_dir, sim.url), plugin_manager=plugin_manager(recorder), background=False
    ) as terminal:
        assert await terminal.forward_now() == 4
        [failure] = recorder.getcalls("forwarding_failure")
        assert isinstance(failure.error, ConnectionTokenError)
        assert "HTTP 500" in failure.error.message
        recorder.assert_not_called("payment_intent_forwarded")
        for oid in ids:
            payment = (await terminal.list_stored_payments())[ids.index(oid)]
            assert payment.state is PaymentState.STORED and payment.attempts == 0
            assert [h.to_state for h in await terminal.payment_history(oid)] == [PaymentState.STORED]
        assert not [r for r in sim.requests() if r["path"].startswith(("/v1/", "/device/"))]

        sim.set_faults()  # the backend is fixed
        assert await terminal.forward_now() == 0
    assert check_exactly_once(sim, read_store(data_dir)) == {PaymentState.FORWARDED: 4}
    recorder.assert_called("forwarding_failure", times=1)
