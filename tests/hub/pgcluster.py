"""The hub tests' name for ``offterm.testing.pgcluster`` (the cluster helper is shipped: the benchmarks use it too),
and ``enable_tls``, which turns ``ssl = on`` in a cluster not started yet."""

from __future__ import annotations

import os
import pwd

from offterm.testing.pgcluster import (
    HUB_KEY,
    INSTALL_HINT,
    UNPRIVILEGED_USER,
    Cluster,
    PostgresNotInstalled,
    find_bindir,
)

__all__ = ["HUB_KEY", "INSTALL_HINT", "Cluster", "PostgresNotInstalled", "enable_tls", "find_bindir"]


def enable_tls(cluster: Cluster, cert: bytes, key: bytes) -> None:
    """Serve TLS with ``cert`` / ``key`` (PEM) from the next start; plain TCP stays allowed (``host`` lines).

    The files live in the cluster's own directory, owned by the server's user; the key is private
    to it (the server refuses a key others can read).
    """
    cert_file, key_file = cluster.root / "server.crt", cluster.root / "server.key"
    cert_file.write_bytes(cert)
    key_file.write_bytes(key)
    os.chmod(key_file, 0o600)
    if os.geteuid() == 0:  # the cluster then belongs to the unprivileged user (see Cluster)
        user = pwd.getpwnam(UNPRIVILEGED_USER)
        for path in (cert_file, key_file):
            os.chown(path, user.pw_uid, user.pw_gid)
    with (cluster.datadir / "postgresql.conf").open("a") as conf:
        conf.write(f"ssl = on\nssl_cert_file = '{cert_file}'\nssl_key_file = '{key_file}'\n")
