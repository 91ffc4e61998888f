"""Find or start the PostgreSQL the ledger tests run against, the way tests/redis_server.py does for Redis.

Which server (first match wins):

1. ``CASCADE_TEST_POSTGRES_URL`` if set (an admin URL: the tests create and drop their own database on it).
2. ``postgresql://postgres@127.0.0.1:5432/postgres`` if it answers.
3. Otherwise a private server: ``initdb`` into a temporary folder (as the ``postgres`` user when run as
   root), started on a free 127.0.0.1 port and stopped at the end. Debian's ``postgresql`` package is
   installed with apt-get when no ``initdb`` is found (root only).

Each test session gets a database of its own (``cascade_test_<pid>_<random>``), dropped when it ends.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests import debian

ENV_URL = "CASCADE_TEST_POSTGRES_URL"
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _connect(url: str, timeout: int = 2):
    import psycopg

    return psycopg.connect(url, connect_timeout=timeout, autocommit=True)


def answers(url: str) -> bool:
    """True if a PostgreSQL at `url` accepts a connection."""
    try:
        _connect(url).close()
        return True
    except Exception:       # psycopg.OperationalError and friends: not there
        return False


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name`."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def find_admin_url() -> str | None:
    """The URL of a server to create the test database on, or None when a private one must be started."""
    given = os.environ.get(ENV_URL, "").strip()
    if given:
        return given
    return LOCAL_URL if answers(LOCAL_URL) else None


def _initdb() -> str | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)),
                                           None)
    if found or not debian.install("postgresql"):
        return found
    return next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None)


class PrivatePostgres:
    """A throwaway PostgreSQL on a free port (trust auth, 127.0.0.1 only)."""

    def __init__(self) -> None:
        initdb = _initdb()
        if initdb is None:
            raise RuntimeError(f"no PostgreSQL for the tests: none answers at 127.0.0.1:5432, no initdb, and it "
                               f"cannot be installed here; set {ENV_URL}")
        self.bin = Path(initdb).parent
        self.dir = Path(tempfile.mkdtemp(prefix="cascade-test-pg-"))
        from tests.redis_server import _free_port

        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if as_postgres:
            shutil.chown(self.dir, "postgres")
        self._run = lambda *args: subprocess.run([*as_postgres, *map(str, args)], check=True, capture_output=True)
        self._run(self.bin / "initdb", "-D", self.dir / "data", "-U", "postgres", "--auth=trust")
        self.start()
        atexit.register(self.stop)

    def start(self) -> None:
        """Start the server (again, after `shutdown`) on its port and folder; wait until it answers."""
        self._run(self.bin / "pg_ctl", "-D", self.dir / "data", "-l", self.dir / "log", "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")

    def shutdown(self) -> None:
        """Stop the server as a restart does (its data kept): clients are disconnected."""
        self._run(self.bin / "pg_ctl", "-D", self.dir / "data", "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        """Stop the server and remove its folder (safe to call twice)."""
        if self.dir.exists():
            subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"),
                            "-m", "immediate", "stop"] if os.geteuid() == 0 else
                           [str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"],
                           capture_output=True)
            shutil.rmtree(self.dir, ignore_errors=True)


class TestDatabase:
    """A database of this session's own on a found or started server; dropped by `drop`."""

    def __init__(self) -> None:
        self.server: PrivatePostgres | None = None
        admin = find_admin_url()
        if admin is None:
            self.server = PrivatePostgres()
            admin = self.server.url
        self.admin = admin
        self.name = f"cascade_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with _connect(admin) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = with_database(admin, self.name)

    def drop(self) -> None:
        """Drop the database (and stop a private server)."""
        deadline = time.monotonic() + 10
        while True:
            try:
                with _connect(self.admin) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        if self.server is not None:
            self.server.stop()
