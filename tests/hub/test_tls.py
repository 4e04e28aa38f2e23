"""TLS to the hub: a lane with ``sslmode = verify-full`` and the hub's CA connects, encrypted;
with another CA it is refused with a typed error that names the problem and never the password.

The session's cluster runs with ``ssl = on`` and a certificate for 127.0.0.1 signed by a CA made
for this session (``hubtls.make_hub_tls``): a real handshake, a real verification by libpq.
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from pgcluster import HUB_KEY

from offterm.core.contracts import HubUnavailable


def _ssl_of(hub, role: str) -> list[tuple[bool, str | None]]:
    """(ssl, protocol version) of every connection ``role`` holds, as the server sees them."""
    with psycopg.connect(hub.admin_url.replace("+psycopg", "")) as conn:
        return [
            (bool(r[0]), r[1])
            for r in conn.execute(
                "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = %s",
                (role,),
            )
        ]


def test_a_lane_with_verify_full_and_the_hubs_ca_connects_over_tls(hub, hub_tls) -> None:
    role = f"lane_tls_{hub.database}"
    url = hub.lane("lane_tls")
    from offterm.plugins.storage.postgres import PostgresReplicator

    replicator = PostgresReplicator(hub.options(url, admin_url="", sslmode="verify-full", sslrootcert=str(hub_tls.ca)))
    replicator.open(HUB_KEY)  # schema and key checked over the verified connection
    try:
        replicator.heartbeat(role, datetime.now(UTC), None)
        seen = _ssl_of(hub, role)  # the pooled connection is still open: the server says how it came in
        assert seen and all(ssl for ssl, _ in seen), seen
        assert all(version and version.startswith("TLS") for _, version in seen), seen
    finally:
        replicator.close()


def test_without_tls_the_same_lane_is_plain_so_the_check_above_means_something(hub) -> None:
    role = f"lane_plain_{hub.database}"
    replicator = hub.replicator(hub.lane("lane_plain"))  # the fixtures' sslmode = disable
    try:
        seen = _ssl_of(hub, role)
        assert seen and not any(ssl for ssl, _ in seen), seen
    finally:
        replicator.close()


@pytest.mark.parametrize("which", ["wrong_ca", "no_ca_file", "other_host"])
def test_a_lane_with_another_ca_is_refused_with_a_typed_error_naming_the_problem(hub, hub_tls, tmp_path, which) -> None:
    password = f"pw-lane_bad_{hub.database}"
    url = hub.lane("lane_bad")
    assert password in url  # the URL carries it: the error must not
    rootcert = {"wrong_ca": str(hub_tls.wrong_ca), "no_ca_file": str(tmp_path / "missing-ca.pem")}.get(which)
    if which == "other_host":  # the right CA, but the certificate does not name the host the lane asked for
        rootcert = str(hub_tls.ca)
        url = url.replace("@127.0.0.1:", "@hub.store.invalid:") + "?hostaddr=127.0.0.1"
    from offterm.plugins.storage.postgres import PostgresReplicator

    replicator = PostgresReplicator(hub.options(url, admin_url="", sslmode="verify-full", sslrootcert=rootcert))
    with pytest.raises(HubUnavailable) as caught:
        replicator.open(HUB_KEY)
    message = str(caught.value)
    assert caught.value.code == "hub_unavailable"
    if which == "wrong_ca":
        assert "certificate verify failed" in message, message
    elif which == "no_ca_file":
        assert "root certificate file" in message and "missing-ca.pem" in message, message
    else:
        assert 'does not match host name "hub.store.invalid"' in message, message
    assert password not in message and password not in repr(caught.value.details)
    assert caught.value.__cause__ is None  # raised "from None": the driver's error (with its DSN) is not chained
    replicator.close()
