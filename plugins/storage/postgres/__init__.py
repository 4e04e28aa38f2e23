"""The bundled replicator: a store hub on PostgreSQL (docs/fleet.md).

Selected with ``[hub] replicator = "postgres"``; options in ``[replicator.postgres]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from offterm.core.hookspecs import hookimpl
from offterm.core.registrations import ComponentContext, OptionSpec, ReplicatorRegistration

if TYPE_CHECKING:
    from .replicator import PostgresReplicator

__all__ = ["PostgresReplicator", "check_lane", "offterm_replicators"]


def __getattr__(name: str) -> Any:
    # SQLAlchemy and psycopg load only when a hub is used: listing plugins stays cheap
    if name in ("PostgresReplicator", "check_lane"):
        from . import replicator

        return getattr(replicator, name)
    raise AttributeError(name)


def build_replicator(ctx: ComponentContext) -> PostgresReplicator:
    from .replicator import PostgresReplicator

    return PostgresReplicator(dict(ctx.options))


@hookimpl
def offterm_replicators() -> Iterator[ReplicatorRegistration]:
    yield ReplicatorRegistration(
        name="postgres",
        factory=build_replicator,
        description="Replicate to a store hub on PostgreSQL (SQLAlchemy + psycopg 3), row-level security per lane.",
        options=(
            OptionSpec(
                "url",
                str,
                "",
                "The lane's connection: postgresql://LANE_ROLE@host:5432/database (the role is the lane's name).",
                secret=True,
            ),
            OptionSpec("password", str, "", "The lane role's password (never logged).", secret=True),
            OptionSpec(
                "admin_url",
                str,
                "",
                "An administrator's URL for `offterm hub init`, `hub add-lane` and a store-wide `hub status`.",
                secret=True,
            ),
            OptionSpec(
                "sslmode",
                str,
                "prefer",
                "libpq sslmode: disable, allow, prefer, require, verify-ca, verify-full (use verify-full on a LAN).",
            ),
            OptionSpec("sslrootcert", str, "", "CA certificate file that signed the hub's certificate."),
            OptionSpec("sslcert", str, "", "Client certificate file (certificate authentication), optional."),
            OptionSpec("sslkey", str, "", "Client key file for sslcert, optional."),
            OptionSpec(
                "connect_timeout", int, 2, "Seconds to wait for a connection to the hub.", minimum=1, maximum=60
            ),
            OptionSpec(
                "statement_timeout",
                (int, float),
                5.0,
                "Seconds a statement on the hub may take before it fails (the lane catches up later); also how long "
                "the hub keeps a transaction open while its client says nothing (a lane cut off mid-batch).",
                minimum=0.1,
                maximum=600,
            ),
        ),
    )
