"""A real PostgreSQL server for the ledger's tests, started in a temporary folder.

``postgres_server`` (session-scoped: one server a test worker) runs ``initdb`` (trust
authentication, a test user) into a fresh folder and starts ``postgres`` on a free loopback port,
listening on 127.0.0.1 only, its socket in that folder; the server is stopped and the folder removed
when the session ends. ``postgres_url`` gives each test a database of its own on it.

PostgreSQL refuses to run as root: under root (CI containers) the server runs as ``nobody`` through
``setpriv``, in a folder that user owns. Where the binaries are missing the tests that need them
are skipped, saying what to install. Import the fixtures into a test module to use them::

    from fakes.postgres import postgres_server, postgres_url  # noqa: F401 - fixtures
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "caelum_test"
INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, postgres) were not found: install them "
    "(Debian/Ubuntu: apt-get install postgresql) to run the PostgreSQL ledger tests"
)
START_TIMEOUT_S = 60


def find_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``: on the PATH, or Debian's newest version."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0
    )
    for folder in reversed(versions):
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server: ``url(database)`` names a database on it."""

    port: int
    folder: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a fixed-shape name made here, never input
        return self.url(name)


def _as_server_user(*folders: Path) -> list[str]:
    """The command prefix that runs a program as a user PostgreSQL accepts (not root), who is
    given ``folders``."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing: cannot start PostgreSQL as another user")
    nobody = pwd.getpwnam("nobody")
    for folder in folders:
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    return [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--"]


def _clean_env(folder: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", "HOME": str(folder), "TZ": "UTC"}


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a server in a new temporary folder; stop it and remove the folder afterwards."""
    binaries = find_binaries()
    if binaries is None:
        pytest.skip(INSTALL_HINT)
    try:
        import psycopg  # noqa: F401 - the ledger's PostgreSQL driver
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'caelum-mcp[postgres]' to run the PostgreSQL ledger tests")
    folder = Path(tempfile.mkdtemp(prefix="caelum-pg-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        data, sockets, log = folder / "data", folder / "sock", folder / "server.log"
        sockets.mkdir()
        prefix = _as_server_user(folder, sockets)
        env = _clean_env(folder)
        init = subprocess.run(
            [*prefix, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "-E", "UTF8",
             "--locale=C", "--no-sync"],
            env=env, capture_output=True, timeout=120, check=False, cwd=folder,
        )  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*prefix, str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                 "-k", str(sockets), "-c", "fsync=off", "-c", "max_connections=60", "-c", "shared_buffers=16MB"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=folder,
            )  # fmt: skip
        server = PostgresServer(port=port, folder=folder)
        _wait_until_ready(server, proc, log)
        yield server
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: ends the sessions, then stops
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_ready(server: PostgresServer, proc: subprocess.Popen[bytes], log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with psycopg.connect(server.url(), connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"postgres did not accept connections: {log.read_text(errors='replace')[-2000:]}"
                ) from exc
            time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A database of this test's own on the session's server."""
    return postgres_server.create_database()
