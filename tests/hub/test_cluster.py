"""The throwaway cluster itself: a real server, reached over loopback with a password."""

from __future__ import annotations

import psycopg
import pytest
from pgcluster import Cluster


def test_cluster_is_a_real_server_needing_a_password(pg: Cluster, hub_db: str) -> None:
    with psycopg.connect(pg.url(database=hub_db).replace("+psycopg", "")) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and int(version[0]) >= 120000
        assert conn.execute("SELECT current_database()").fetchone() == (hub_db,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.url(password="wrong").replace("+psycopg", ""))


def test_missing_server_binaries_fail_with_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from pgcluster import PostgresNotInstalled, find_bindir

    monkeypatch.setenv("OFFTERM_PG_BINDIR", str(tmp_path))
    with pytest.raises(PostgresNotInstalled, match="apt-get install postgresql-15"):
        find_bindir()
