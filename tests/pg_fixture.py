"""A real PostgreSQL server on loopback for the tests: initdb + pg_ctl into a temp dir.

`.ci/run` installs Debian's postgresql package when initdb is missing. initdb refuses to
run as root, so as root the server runs as the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest


def _find(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """A PostgreSQL server in a temp dir on a free loopback port, with an empty database
    ``optimlab``; :meth:`stop` (``pg_ctl stop -m fast``) and :meth:`start` again on the same port."""

    def __init__(self) -> None:
        initdb, self.pg_ctl = _find("initdb"), _find("pg_ctl")
        if not initdb or not self.pg_ctl:
            pytest.fail("PostgreSQL's initdb/pg_ctl not found: `bash .ci/run` installs them (apt-get install postgresql)")
        self.root = tempfile.mkdtemp(prefix="optimlab-pg-")
        self.data = os.path.join(self.root, "data")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/optimlab"
        self._run(initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()
        import psycopg2

        for _ in range(50):
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
                break
            except psycopg2.OperationalError:
                time.sleep(0.2)
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE optimlab")
        conn.close()

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.as_user, *cmd], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self._run(self.pg_ctl, "-D", self.data, "-l", os.path.join(self.root, "log"), "-w", "-t", "60",
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200 -c fsync=off", "start")  # fmt: skip

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", self.data, "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "-D", self.data, "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url():
    """URL of an empty database on a PostgreSQL server started for this test session."""
    server = PgServer()
    try:
        yield server.url
    finally:
        server.remove()


@pytest.fixture
def pg_server():
    """A PostgreSQL server of this test alone, to stop and start again (a storage outage)."""
    server = PgServer()
    try:
        yield server
    finally:
        server.remove()
