"""One connection to the PostgreSQL ledger, shared by threads behind a lock, and the URL without
its password for every message.

The URL holds a secret (``[ledger] url = "postgresql://user:password@host/db"``): what the store
says about itself (its ``location``, its errors, the logs) shows it with the password replaced by
``***``, and a server's error text that happens to contain the password is cut the same way. A
connection that breaks (the server restarted, the network dropped) is dropped and reopened by the
next call; the call that saw it break raises, never retries a write that may have committed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.rows import TupleRow

from caelum_mcp.core.errors import ConfigError

CONNECT_TIMEOUT_S = 10
_SECRET_PARAMS = ("password", "sslpassword")


def redacted(url: str) -> str:
    """``url`` with its password (in the authority or a query parameter) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":***"
        netloc = f"{user}@{host}"
    query = urlencode(
        [(k, "***" if k in _SECRET_PARAMS else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secrets_of(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [parts.password] if parts.password else []
    found += [v for k, v in parse_qsl(parts.query) if k in _SECRET_PARAMS and v]
    return found


class PgConnection:
    """A lazily (re)opened autocommit connection to ``url``; ``read_only`` for the dashboard's."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self._url = url
        self.location = redacted(url)
        self._secrets = _secrets_of(url)
        self._read_only = read_only
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._closed = False

    def _open(self) -> psycopg.Connection[TupleRow]:
        options = "-c default_transaction_read_only=on" if self._read_only else None
        return psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="caelum-mcp",
            options=options,
        )

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextmanager
    def use(self) -> Iterator[psycopg.Connection[TupleRow]]:
        """The connection, held for the block; psycopg's errors become a :class:`ConfigError`."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"cost ledger {self.location} is closed")
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = self._open()
                yield self._conn
            except psycopg.OperationalError as exc:
                self._drop()
                raise ConfigError(
                    f"cost ledger {self.location}: {self._clean(str(exc)).strip()}; check [ledger] url, that the "
                    "PostgreSQL server is up and reachable and accepts this user and database"
                ) from None
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    self._drop()
                raise ConfigError(
                    f"cost ledger {self.location}: {self._clean(str(exc)).strip()}; check that the user "
                    "may create and write tables in that database"
                ) from None

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass  # already gone: nothing left to release

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()
