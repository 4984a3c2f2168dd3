"""SQLite: registers' local databases and the demo. Writers are serialised by SQLite itself."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL, Connection, Engine

from replicator.backends.base import Backend, Capabilities, Row, TrackedTable
from replicator.errors import BusyError


class SQLiteBackend(Backend):
    dialect = "sqlite"
    capabilities = Capabilities(max_bind_params=32766, bulk_copy=False, schemas=False)
    control_schema = None
    control_prefix = "replicator_"
    bisect_seconds = 5.0  # a register's write lock: sales wait meanwhile
    _has_session = False

    def create_engine(self, url: URL) -> Engine:
        busy = self.lock_timeout_ms
        engine = sa.create_engine(url, connect_args={"timeout": busy / 1000})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            # Text that is not valid UTF-8 is read (not an error for the whole table) and then
            # refused by the target for that row alone, which quarantines it with its reason.
            dbapi_conn.text_factory = _text
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(busy)}")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))

        return engine

    @contextmanager
    def write(self, job: str) -> Iterator[Connection]:
        # BEGIN IMMEDIATE takes SQLite's single write lock up front: it is the job lock.
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
            try:
                tx = conn.begin()
            except sa.exc.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise BusyError(
                        f"{self.display_url}: the database is locked by another writer; "
                        "will try again"
                    ) from None
                raise
            with tx:
                yield conn

    def exists(self) -> bool:
        name = self.url.database
        return not name or name == ":memory:" or Path(name).exists()

    def prepare_ddl(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS replicator_clock ("
            "id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
            "INSERT OR IGNORE INTO replicator_clock VALUES (1, 0)",
            "CREATE TABLE IF NOT EXISTS replicator_session ("
            "id INTEGER PRIMARY KEY CHECK (id = 1), origin TEXT)",
            "INSERT OR IGNORE INTO replicator_session VALUES (1, NULL)",
        ]

    def database_ddl(self) -> list[str]:
        """Run outside a transaction: WAL lets the replicator read while the register sells."""
        return ["PRAGMA journal_mode = WAL"]

    def tracking_ddl(self, conn: Connection | None, table: TrackedTable) -> list[str]:
        statements = super().tracking_ddl(conn, table)
        if conn is None or not self.has_table(conn, table.name):
            return statements
        existing = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        names = self.tracking_names(table, conn)
        skip = {
            f"ALTER TABLE {names['table']} ADD COLUMN {self.quote(c)}"
            for c in (table.version, table.origin)
            if c in existing
        }
        return [s for s in statements if not any(s.startswith(p) for p in skip)]

    def tracking_names(self, table: TrackedTable, conn: Connection | None) -> dict[str, str]:
        names = super().tracking_names(table, conn)
        # SQLite spells IS DISTINCT FROM as IS NOT.
        names["key_changed"] = names["key_changed"].replace(" IS DISTINCT FROM ", " IS NOT ")
        if not (conn is not None and _without_rowid(conn, table.name)):
            names["key_match_new"] = "rowid = NEW.rowid"  # the row itself, no key lookup
        return names

    def mark_origin(self, conn: Connection, origin: str | None) -> None:
        if self._tracked(conn):
            conn.exec_driver_sql("UPDATE replicator_session SET origin = ? WHERE id = 1", (origin,))

    def _tracked(self, conn: Connection) -> bool:
        """Whether this database has tracking installed (its triggers read the session)."""
        if not self._has_session:
            self._has_session = self.has_table(conn, "replicator_session")
        return self._has_session

    def safe_upper_bound(self, conn: Connection) -> int:
        value = conn.exec_driver_sql("SELECT version FROM replicator_clock WHERE id = 1").scalar()
        return int(value or 0)

    def insert_construct(self, table: sa.Table) -> Any:
        return sqlite.insert(table)

    def write_rows(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        build: Any,
    ) -> None:
        super().write_rows(conn, table, columns, [adapt_row(r) for r in rows], build)

    def delete(
        self,
        conn: Connection,
        table: sa.Table,
        key: Sequence[str],
        keys: Sequence[Row],
        soft_column: str | None,
    ) -> int:
        return super().delete(conn, table, key, [adapt_row(k) for k in keys], soft_column)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


_PLAIN = (str, int, float, bytes, Decimal, date, type(None))  # datetime is a date


def adapt_row(row: Row) -> Row:
    """Values SQLite can store: aware timestamps as UTC (read back as UTC), uuid, time and
    other objects as text, dicts and lists as JSON text."""
    if all(isinstance(v, _PLAIN) and not _aware(v) for v in row):
        return row
    return tuple(_adapt(v) for v in row)


def _aware(value: object) -> bool:
    return isinstance(value, datetime) and value.tzinfo is not None


def _adapt(value: Any) -> Any:
    if _aware(value):
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, time):
        return value.isoformat()
    return str(value)


def _without_rowid(conn: Connection, table: str) -> bool:
    sql = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).scalar()
    return bool(sql) and "WITHOUT ROWID" in str(sql).upper()
