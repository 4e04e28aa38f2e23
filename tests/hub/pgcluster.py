"""The hub tests' name for ``offterm.testing.pgcluster`` (the cluster helper is shipped: the benchmarks use it too)."""

from offterm.testing.pgcluster import HUB_KEY, INSTALL_HINT, Cluster, PostgresNotInstalled, find_bindir

__all__ = ["HUB_KEY", "INSTALL_HINT", "Cluster", "PostgresNotInstalled", "find_bindir"]
