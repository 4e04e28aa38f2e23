"""A throwaway PostgreSQL cluster for the hub tests and benchmarks: Debian's real server, never a mock.

Shipped (``offterm.testing.pgcluster``) so ``bench/bench_hub.py`` and plugin authors' suites can start
one without path tricks; ``tests/hub/pgcluster.py`` re-exports it for the hub tests.

initdb refuses to run as root, so when the tests run as root (CI, containers) the cluster
belongs to an unprivileged user (``nobody``): its directory is created for that user and
``initdb`` / ``pg_ctl`` run through ``runuser``.  The server listens on 127.0.0.1 on a free
port (and on a unix socket inside its own directory); every login needs a password
(scram-sha-256), so lane roles are checked for real.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, pg_ctl, postgres) are not installed: the hub tests need a real "
    "server. Install Debian's package (apt-get install postgresql-15, listed in .ci/apt-packages.txt; "
    "bash .ci/run installs it when run as root), or set OFFTERM_PG_BINDIR to the directory holding initdb."
)

UNPRIVILEGED_USER = "nobody"


class PostgresNotInstalled(RuntimeError):
    pass


def find_bindir() -> Path:
    """Where initdb and pg_ctl live: $OFFTERM_PG_BINDIR, Debian's newest /usr/lib/postgresql/N/bin, or PATH."""
    given = os.environ.get("OFFTERM_PG_BINDIR")
    candidates: list[Path] = [Path(given)] if given else []
    debian = Path("/usr/lib/postgresql")
    if not given and debian.is_dir():
        versions = sorted((p for p in debian.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
        candidates += [v / "bin" for v in versions]
    on_path = None if given else shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PostgresNotInstalled(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One cluster: ``start``, ``stop(mode)``, ``url(user, password, database)``, ``dsn``, ``destroy``."""

    superuser = "offterm_admin"

    def __init__(self, root: Path | None = None) -> None:
        self.bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="offterm-pg-", dir=root))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = _free_port()
        self.password = secrets.token_hex(16)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", UNPRIVILEGED_USER, "--"]
        os.chmod(self.root, 0o700)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_user:
            os.chown(pwfile, pwd.getpwnam(UNPRIVILEGED_USER).pw_uid, -1)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            self.superuser,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-instructions",
        )
        pwfile.unlink()
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\nfsync = on\nsynchronous_commit = on\n"
                "max_connections = 100\nshared_buffers = 32MB\n"
            )
        self.running = False
        #: ``stop("immediate")`` calls so far (the fleet torture counts PostgreSQL's crashes)
        self.immediate_stops = 0

    def _run(self, tool: str, *args: str) -> None:
        command = [*self._as_user, str(self.bindir / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)  # noqa: S603 - PostgreSQL's own tools, our arguments
        if done.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}\n{log[-2000:]}")

    def start(self) -> None:
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.datadir), "-l", str(self.logfile))
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (clean) or ``immediate`` (as if the server crashed: crash recovery at the next start)."""
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.datadir))
        self.running = False
        if mode == "immediate":
            self.immediate_stops += 1

    def url(self, user: str | None = None, password: str | None = None, database: str = "postgres") -> str:
        user = user or self.superuser
        password = self.password if password is None else password
        return f"postgresql+psycopg://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """The superuser's libpq URL (for psycopg directly)."""
        return self.url(database=database).replace("+psycopg", "")

    def destroy(self) -> None:
        try:
            if self.running:
                self.stop("fast")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


#: the hub key every test hub is initialised with
HUB_KEY = bytes(range(32))
