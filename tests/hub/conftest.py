"""Fixtures of the hub tests: one real PostgreSQL cluster per session, a fresh database per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import psycopg
import pytest
from hubtls import HubTls, make_hub_tls
from pgcluster import enable_tls

from offterm.testing.pgcluster import HUB_KEY, Cluster, PostgresNotInstalled

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def hub_tls(tmp_path_factory: pytest.TempPathFactory) -> HubTls:
    """A throwaway CA and the server certificate it signed (127.0.0.1, localhost), and an unrelated CA."""
    return make_hub_tls(tmp_path_factory.mktemp("hub-tls"))


@pytest.fixture(scope="session")
def pg_cluster(hub_tls: HubTls) -> Iterator[Cluster]:
    """Started once, with ``ssl = on``; stopped (``pg_ctl stop -m fast``) and removed at the end of the session.

    Missing binaries FAIL the tests with how to install them: .ci/run installs them, so a
    missing server is a broken environment, not a reason to skip.
    """
    try:
        cluster = Cluster()
    except PostgresNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    enable_tls(cluster, hub_tls.server_cert, hub_tls.server_key)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg(pg_cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, running (a test that stopped it gets it started again afterwards)."""
    if not pg_cluster.running:
        pg_cluster.start()
    yield pg_cluster
    if not pg_cluster.running:
        pg_cluster.start()


@pytest.fixture
def hub_db(pg: Cluster) -> str:
    """A fresh, empty database for one test; its name."""
    name = f"hub_{next(_numbers)}"
    with psycopg.connect(pg.url().replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


@pytest.fixture
def hub(pg: Cluster, hub_db: str):
    """A hub database initialised with ``HUB_KEY``, and a maker of lane roles: ``hub.lane(name)`` -> url."""
    from offterm.plugins.storage.postgres import PostgresReplicator

    class Hub:
        admin_url = pg.url(database=hub_db)
        database = hub_db
        cluster = pg

        def options(self, url: str = "", **more):
            base = {
                "url": url,
                "password": "",
                "admin_url": self.admin_url,
                "sslmode": "disable",
                "sslrootcert": "",
                "sslcert": "",
                "sslkey": "",
                "connect_timeout": 2,
                "statement_timeout": 5.0,
            }
            return {**base, **more}

        def admin(self) -> PostgresReplicator:
            return PostgresReplicator(self.options())

        def lane(self, name: str) -> str:
            """Create lane role ``<name>_<db>`` and return its URL (roles are cluster-wide)."""
            role = f"{name}_{hub_db}"
            self.admin().add_lane(role, "pw-" + role)
            return pg.url(user=role, password="pw-" + role, database=hub_db)

        def replicator(self, url: str, key: bytes = HUB_KEY) -> PostgresReplicator:
            r = PostgresReplicator(self.options(url, admin_url=""))
            r.open(key)
            return r

    h = Hub()
    h.admin().initialise(HUB_KEY)
    return h
