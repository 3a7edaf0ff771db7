"""SQL read-model stores: SQLite by default, PostgreSQL when a URL says so; one interface.

Invariants:
- statements are written with `?` placeholders and run unchanged on both dialects (no `%` in SQL);
- `transaction()` is all-or-nothing; a projection writes its checkpoint inside it;
- a SQLite file this creates is 0600 (its directory, if made here, 0700) whatever the umask, and
  SQLite gives its `-wal` and `-shm` the database file's mode: read models hold names and numbers;
- a PostgreSQL URL may carry `?schema=NAME`: the schema is created if missing (which needs CREATE
  on the database; an existing one needs only its own privileges) and used as the search path, so
  test runs and tenants stay apart.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

Dialect = Literal["sqlite", "postgresql"]

SCHEMA_LOCK = 0x6469_7370
"""The PostgreSQL advisory lock that schema changes take ("disp"): `CREATE ... IF NOT EXISTS` run by
two processes at once fails in one of them (a duplicate catalog row)."""


class DatabaseUnavailable(Exception):
    pass


WAL_WAIT_S = 30.0


def _wal(lite: sqlite3.Connection) -> None:
    """Put the file in WAL mode. Connections opened at once on a fresh file (a service and a
    read-side worker starting together) race to convert it, and the loser is answered "database is
    locked" at once, its busy timeout not consulted: it tries again until WAL_WAIT_S."""
    deadline = time.monotonic() + WAL_WAIT_S
    while True:
        try:
            lite.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _split_schema(url: str) -> tuple[str, str | None]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    schema = query.pop("schema", [None])[0]
    rest = urlencode({k: v[0] for k, v in query.items()})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


def upsert_sql(table: str, columns: Sequence[str], key: Sequence[str], *, rows: int = 1) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    values = ", ".join([f"({marks(len(columns))})"] * rows)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values} "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


def marks(count: int) -> str:
    """`?, ?, ?` for an IN list of `count` values."""
    return ", ".join("?" * count)


class Connection:
    """A thin DB-API wrapper: one connection, used by one thread at a time."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect
        self._in_tx = False
        self._staged: set[str] = set()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.raw.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.dialect == "postgresql":
            with self.raw.cursor() as cur:
                cur.executemany(self._sql(sql), [tuple(r) for r in rows])
        else:
            self.raw.executemany(sql, [tuple(r) for r in rows])

    def upsert_many(
        self, table: str, columns: Sequence[str], key: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert or replace `rows` (unique by `key`) in one go: executemany on SQLite; on PostgreSQL
        a COPY into a per-connection staging table and one INSERT ... SELECT ... ON CONFLICT."""
        if not rows:
            return
        if self.dialect == "sqlite":
            self.raw.executemany(upsert_sql(table, columns, key), rows)
            return
        names = ", ".join(columns)
        stage = f"stage_{table}"
        if stage not in self._staged:
            self.raw.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS")
            self._staged.add(stage)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
        with self.raw.cursor() as cur:
            with cur.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(
                f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage} "
                f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
            )
            cur.execute(f"DELETE FROM {stage}")

    def forget_staging(self) -> None:
        """Staging tables copy a table's columns when made: make them again after a schema change."""
        for stage in self._staged:
            with suppress(Exception):
                self.raw.execute(f"DROP TABLE IF EXISTS {stage}")
        self._staged.clear()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self.execute(sql, params).fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row = self.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        if self.dialect == "sqlite":
            self.raw.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self.raw.execute("ROLLBACK")
                raise
            self.raw.execute("COMMIT")
        else:
            with self.raw.transaction():
                yield self

    def close(self) -> None:
        self.raw.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            self.dialect: Dialect = "sqlite"
            self.path = Path(url[len("sqlite:///") :])
            self.schema: str | None = None
            self._pg_url = ""
        elif url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            self._pg_url, self.schema = _split_schema(url)
            self.path = Path()
        else:
            raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://...")
        self._local = threading.local()

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        return cls(f"sqlite:///{path}")

    def connect(self) -> Connection:
        try:
            if self.dialect == "sqlite":
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                _create_private(self.path)
                lite = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                _wal(lite)
                lite.execute("PRAGMA synchronous=NORMAL")
                return Connection(lite, "sqlite")
            import psycopg

            raw = psycopg.connect(self._pg_url, autocommit=True, connect_timeout=5)
            if (
                self.schema
                and not raw.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone()
            ):
                # only when missing: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when
                # the schema exists, which a least-privileged user (docs/postgresql.md) does not have
                with raw.transaction():
                    raw.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                    raw.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            if self.schema:
                raw.execute(f'SET search_path TO "{self.schema}"')
            return Connection(raw, "postgresql")
        except (sqlite3.Error, OSError) as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg"):
                raise DatabaseUnavailable(str(exc)) from exc
            raise

    def thread_connection(self) -> Connection:
        """One connection per thread, reopened after it broke."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
        return conn

    def drop_thread_connection(self) -> None:
        conn: Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with suppress(Exception):
                conn.close()

    def ping(self) -> bool:
        try:
            conn = self.thread_connection()
            conn.one("SELECT 1")
            return True
        except Exception:
            self.drop_thread_connection()
            return False


def is_db_error(exc: BaseException) -> bool:
    return isinstance(exc, (sqlite3.Error, DatabaseUnavailable)) or type(exc).__module__.startswith("psycopg")


def _create_private(path: Path) -> None:
    """Create a new SQLite file 0600 (SQLite would make it 0644); never touch an existing one.

    Closing any descriptor of a file drops every POSIX lock this process holds on it, SQLite's
    included: an open-and-close on every connect let one connection's locks vanish under another's,
    which then deleted the `-wal` and `-shm` in use ("disk I/O error"). With O_EXCL the descriptor
    closed is of a file no connection of ours can have open yet."""
    if path.exists():
        return
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return
