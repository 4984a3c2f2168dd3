"""SQLite: registers' local databases and the demo. Writers are serialised by SQLite itself."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL, Connection, Engine

from replicator.backends.base import Backend, Capabilities, Row, TrackedTable
from replicator.errors import BusyError
from replicator.quarantine import REFUSED, WAITING
from replicator.values import Lenient, sqlite_adapter, zone

SQLITE_CONSTRAINT_FOREIGNKEY = 787
SQLITE_TOOBIG = 18
SQLITE_MISMATCH = 20
SQLITE_RANGE = 25
# Primary result codes that go away by themselves: BUSY, LOCKED, NOMEM, INTERRUPT, IOERR,
# FULL, CANTOPEN, PROTOCOL. The rest (ERROR: no such table or column; READONLY; CORRUPT...)
# need a person.
SQLITE_TRANSIENT = {5, 6, 7, 9, 10, 13, 14, 15}


def _file_id(path: str | None) -> tuple[int, int] | None:
    """The device and inode of a database file (None: no file there)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class SQLiteBackend(Backend):
    dialect = "sqlite"
    capabilities = Capabilities(max_bind_params=32766, bulk_copy=False, schemas=False)
    control_schema = None
    control_prefix = "replicator_"
    bisect_seconds = 5.0  # a register's write lock: sales wait meanwhile
    # Short write transactions on a register (see pause_after).
    write_hold_seconds = 0.08
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

        path = url.database if url.database and url.database != ":memory:" else None

        @event.listens_for(engine, "connect", insert=True)
        def _identify(_dbapi_conn: Any, record: Any) -> None:
            record.info["file"] = _file_id(path)

        @event.listens_for(engine, "checkout")
        def _same_file(_dbapi_conn: Any, record: Any, _proxy: Any) -> None:
            # A register's file restored from a backup (or replaced) while the service runs:
            # a pooled connection still reads the old file through its open handle. Such a
            # connection is dropped and a new one opens the file that is there now.
            if path is not None and record.info.get("file") != _file_id(path):
                raise sa.exc.DisconnectionError(f"{path} was replaced since it was opened")

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
        names = self.tracking_names(table, conn)
        creates = tuple(
            f"CREATE TRIGGER {names[t]} "
            for t in ("replace_insert_trigger", "replace_update_trigger")
        )
        if conn is None or not self.has_table(conn, table.name):
            # The replace triggers come from the live table's unique indexes: say so instead.
            drop = f"DROP TRIGGER IF EXISTS {names['replace_insert_trigger']}"
            note = _REPLACE_GENERIC.format(**names)
            return [note + s if s == drop else s for s in statements if not s.startswith(creates)]
        existing = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        skip = {
            f"ALTER TABLE {names['table']} ADD COLUMN {self.quote(c)}"
            for c in (table.version, table.origin)
            if c in existing
        }
        if not names["displaced_by_insert"]:  # no unique column set other than the key
            skip.update(creates)
        return [s for s in statements if not any(s.startswith(p) for p in skip)]

    def tracking_names(self, table: TrackedTable, conn: Connection | None) -> dict[str, str]:
        names = super().tracking_names(table, conn)
        # SQLite spells IS DISTINCT FROM as IS NOT.
        names["key_changed"] = names["key_changed"].replace(" IS DISTINCT FROM ", " IS NOT ")
        without_rowid = conn is not None and _without_rowid(conn, table.name)
        if not without_rowid:
            names["key_match_new"] = "rowid = NEW.rowid"  # the row itself, no key lookup
        names["replace_insert_trigger"] = names["insert_trigger"].replace(
            "replicator_ins_", "replicator_replace_ins_", 1
        )
        names["replace_update_trigger"] = names["update_trigger"].replace(
            "replicator_upd_", "replicator_replace_upd_", 1
        )
        sets = _displacing_sets(conn, table) if conn is not None else []
        names.update(_displaced_names(self.quote, table, sets, without_rowid, conn))
        return names

    def mark_origin(self, conn: Connection, origin: str | None) -> None:
        if self._tracked(conn):
            conn.exec_driver_sql("UPDATE replicator_session SET origin = ? WHERE id = 1", (origin,))

    def _tracked(self, conn: Connection) -> bool:
        """Whether this database has tracking installed (its triggers read the session)."""
        if not self._has_session:
            self._has_session = self.has_table(conn, "replicator_session")
        return self._has_session

    def table(self, conn: Connection, name: str) -> sa.Table:
        """Reflected, with dates and times read leniently: SQLite stores any text in a DATE
        column, and one value the driver cannot parse (a POS writing '04/03/2024') must hold
        back its own row only, not the whole table (see `Unreadable`)."""
        cached = name in self._tables
        table = super().table(conn, name)
        if not cached:
            for column in table.c:
                lenient = _lenient(column.type)
                if lenient is not None:
                    column.type = lenient
        return table

    def safe_upper_bound(self, conn: Connection, job: str) -> int:
        value = conn.exec_driver_sql("SELECT version FROM replicator_clock WHERE id = 1").scalar()
        return int(value or 0)

    def pause_after(self, held: float) -> float:
        """SQLite's busy handler (sqlite3_busy_timeout) sleeps 1, 2, 5, 10, 15, 20, 25, 25,
        25, 50, 50, then 100 ms between attempts: a sale that waited less than ~180 ms retries
        at least every 50 ms, so a 60 ms pause lets it in; after a longer hold, 110 ms."""
        return 0.06 if held < 0.17 else 0.11

    def is_transient(self, orig: BaseException) -> bool | None:
        code = getattr(orig, "sqlite_errorcode", None)
        if code is None:
            return None
        return code & 0xFF in SQLITE_TRANSIENT

    def row_error(self, exc: BaseException) -> str | None:
        """Sorted by SQLite's extended result codes, not by message text."""
        orig = getattr(exc, "orig", exc)
        code = getattr(orig, "sqlite_errorcode", None)
        if code == SQLITE_CONSTRAINT_FOREIGNKEY:
            return WAITING
        if isinstance(orig, sqlite3.IntegrityError | sqlite3.DataError):
            return REFUSED
        if code is not None and code & 0xFF in (SQLITE_TOOBIG, SQLITE_MISMATCH, SQLITE_RANGE):
            return REFUSED
        if isinstance(orig, sqlite3.ProgrammingError | sqlite3.InterfaceError) and code is None:
            return REFUSED  # a value the driver cannot bind (its type, its encoding)
        return super().row_error(exc)

    def insert_construct(self, table: sa.Table) -> Any:
        return sqlite.insert(table)

    def row_check(
        self,
        table: sa.Table,
        columns: Sequence[str],
        source_types: Sequence[sa.types.TypeEngine[Any]],
    ) -> Callable[[Row], None] | None:
        """SQLite keeps a decimal's text exactly in TEXT columns and does not round to a
        declared scale (NUMERIC is a float: `check` warns about it): nothing to refuse."""
        return None

    def row_adapter(
        self, table: sa.Table, columns: Sequence[str], source_timezone: str | None
    ) -> Callable[[Row], Row]:
        """Each value in the form its target column declares (docs/tracking.md, "Values
        written to a SQLite target"): an exact decimal into TEXT as its text at its own scale,
        a timestamp into TEXT as ISO-8601 (with the offset of this database's zone when
        aware), an aware timestamp into DATETIME/TIMESTAMP as local time of this database's
        zone. SQLite columns hold no zone, so the source's zone is not needed here."""
        return sqlite_adapter(table, columns, zone(self.timezone))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _without_rowid(conn: Connection, table: str) -> bool:
    sql = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).scalar()
    return bool(sql) and "WITHOUT ROWID" in str(sql).upper()


_REPLACE_GENERIC = """\
-- The replace triggers {replace_insert_trigger} and
-- {replace_update_trigger} are generated only against the live table,
-- from its primary key and unique indexes: they record the rows that INSERT OR REPLACE,
-- REPLACE INTO and UPDATE OR REPLACE displace. Print this script again once the database
-- can be reached (or run `replicator setup`) to get them.
"""


def _pk_columns(conn: Connection, table: str) -> list[str]:
    sql = "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk"
    return [name for (name,) in conn.exec_driver_sql(sql, (table,))]


def _displacing_sets(conn: Connection, table: TrackedTable) -> list[list[tuple[str, str]]]:
    """The unique column sets (primary key, unique indexes and constraints) through which a
    REPLACE can displace a row with another key than the new row's, as (column, collation)
    pairs. Indexes on expressions are left out; a partial index counts as if it were whole
    (too many tombstones are harmless: the reader skips keys that still exist)."""
    found: list[list[tuple[str, str]]] = []
    indexes = conn.exec_driver_sql(
        'SELECT name, origin FROM pragma_index_list(?) WHERE "unique"', (table.name,)
    ).all()
    # No index for the primary key: it is INTEGER PRIMARY KEY, the rowid (or there is none).
    pk = [] if any(origin == "pk" for _, origin in indexes) else _pk_columns(conn, table.name)
    if pk:
        found.append([(name, "BINARY") for name in pk])
    for index, _ in indexes:
        info = conn.exec_driver_sql(
            "SELECT name, coll FROM pragma_index_xinfo(?) WHERE key ORDER BY seqno", (index,)
        ).all()
        if info and all(name is not None for name, _ in info):
            found.append([(str(name), str(coll or "BINARY")) for name, coll in info])
    out: list[list[tuple[str, str]]] = []
    for columns in found:
        binary = {name for name, coll in columns if coll.upper() == "BINARY"}
        # Equal on such a set means the same key: the REPLACE gives that key back, and the
        # insert trigger stamps the new row.
        if set(table.key) <= binary or sorted(columns) in [sorted(c) for c in out]:
            continue
        out.append(columns)
    return out


def _displaced_names(
    q: Any,
    table: TrackedTable,
    sets: list[list[tuple[str, str]]],
    without_rowid: bool,
    conn: Connection | None,
) -> dict[str, str]:
    """Template names of the replace triggers: the condition on an existing row `displaced`
    that the new row (NEW) takes its place through one of `sets` and has another key."""
    names = {
        "displaced_key_columns": ", ".join(f"displaced.{q(k)}" for k in table.key),
        "displaced_by_insert": "",
        "displaced_by_update": "",
        "replace_update_columns": "",
    }
    if not sets:
        return names
    # NULLs never conflict in a unique index: NEW's values not NULL, and `=`, never `IS`.
    each = [
        "("
        + " AND ".join(
            [f"NEW.{q(c)} IS NOT NULL" for c, _ in columns]
            + [f"displaced.{q(c)} = NEW.{q(c)} COLLATE {_collation(q, k)}" for c, k in columns]
        )
        + ")"
        for columns in sets
    ]
    other_key = " AND ".join(f"displaced.{q(k)} IS NEW.{q(k)}" for k in table.key)
    by_insert = "(" + "\n            OR ".join(each) + f")\n       AND NOT ({other_key})"
    if without_rowid and conn is not None:
        same = " AND ".join(
            f"displaced.{q(c)} IS OLD.{q(c)}" for c in _pk_columns(conn, table.name)
        )
        itself = f"NOT ({same})"
    else:
        itself = "displaced.rowid IS NOT OLD.rowid"
    names["displaced_by_insert"] = by_insert
    names["displaced_by_update"] = f"{by_insert}\n       AND {itself}"  # not the row updated
    names["replace_update_columns"] = ", ".join(
        q(c) for c in dict.fromkeys(c for columns in sets for c, _ in columns)
    )
    return names


def _collation(q: Any, name: str) -> str:
    return name if name.isascii() and name.isidentifier() else str(q(name))


def _driver_type(kind: sa.types.TypeEngine[Any]) -> type[Any]:
    """The class the pysqlite dialect really processes results with for a generic type: a
    lenient type must derive from it, or the dialect swaps it back."""
    return type(kind.dialect_impl(sqlite.dialect()))


LenientDate: type[Any] = type("LenientDate", (Lenient, _driver_type(sa.Date())), {"cache_ok": True})
LenientDateTime: type[Any] = type(
    "LenientDateTime", (Lenient, _driver_type(sa.DateTime())), {"cache_ok": True}
)
LenientTime: type[Any] = type("LenientTime", (Lenient, _driver_type(sa.Time())), {"cache_ok": True})


def _lenient(kind: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any] | None:
    if isinstance(kind, Lenient):
        return None
    if isinstance(kind, sa.DateTime):
        return LenientDateTime()  # type: ignore[no-any-return]
    if isinstance(kind, sa.Date):
        return LenientDate()  # type: ignore[no-any-return]
    if isinstance(kind, sa.Time):
        return LenientTime()  # type: ignore[no-any-return]
    return None
