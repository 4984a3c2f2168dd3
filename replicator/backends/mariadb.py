"""MariaDB and MySQL registers through pyodbc and MariaDB Connector/ODBC (docs/mariadb.md).

Versions come from a one-row clock table bumped by the tracking triggers (sql/mariadb/
tracking.sql): InnoDB's row lock on it makes tracked writers take versions in commit order,
so the bound of a read is the clock value its snapshot sees, with nothing to wait for.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from importlib import resources
from typing import Any

import pyodbc
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import Cast

from replicator.backends.base import (
    PURGE_PAGE,
    Capabilities,
    Row,
    StagedTarget,
    TrackedTable,
    chunks,
    first_line,
)
from replicator.backends.odbc import braced, odbc_error, readable
from replicator.errors import BusyError, ConfigError, ReplicatorError
from replicator.quarantine import REFUSED, WAITING
from replicator.state import now
from replicator.values import local, zone

DEFAULT_DRIVER = "MariaDB Unicode"  # the name Debian's odbc-mariadb registers in odbcinst.ini
INSTALL = "apt install unixodbc odbc-mariadb"
# Every session: errors instead of silent truncation, an id 0 stays 0 in AUTO_INCREMENT
# columns, and no mode that changes how SQL is parsed (ANSI_QUOTES, PIPES_AS_CONCAT).
SQL_MODE = (
    "STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO"
)
ORIGIN_VARIABLE = "@replicator_origin"
LINK_TIMEOUT = 300  # seconds a read or write on the socket may wait (Connector/ODBC)
# seconds a connect may take, handshake included: pyodbc's login timeout does not reach
# Connector/ODBC, and READ_TIMEOUT does not cover the server's greeting, so a link that
# accepts and says nothing held `connect` (and the job) forever
CONNECT_TIMEOUT = 10
STAGE_ROWS = 1000  # rows per multi-row INSERT into a stage table
MAX_PARAMS = 65535  # placeholders per statement (MariaDB's prepared statements)

# MariaDB error numbers. Transient: lock wait timeout, deadlock, too many connections,
# shutdown in progress, connection killed, statement timeout, query interrupted, network and
# client-side connection failures (2002 can't connect ... 2055 lost connection).
# 1049 (unknown database) too, as for the other backends: a register's database is missing
# while it is restored from a backup (dropped, created again, loaded).
TRANSIENT_CODES = {
    1040, 1049, 1053, 1158, 1159, 1160, 1161, 1203, 1205, 1213, 1317, 1637, 1927, 1969, 2002,
    2003, 2005, 2006, 2013, 2055, 4031,
}  # fmt: skip
# Refused rows: data that this table will not take (duplicate, NULL into NOT NULL, too long,
# out of range, truncated or incorrect value, no default, check constraint, a parent row
# that is still referenced by a row of the target).
REFUSED_CODES = {
    1048, 1062, 1136, 1216, 1217, 1264, 1265, 1292, 1364, 1366, 1367, 1406, 1411, 1451, 1690,
    3819, 4025, 4078,
}  # fmt: skip
WAITING_CODES = {1452}  # a child row whose parent is missing (it may arrive later)
DISCONNECT_CODES = {1927, 2006, 2013, 2045, 2055, 4031}  # killed, gone, lost, idle timeout
PERMANENT_CODES = {1044, 1045, 1046, 1054, 1142, 1143, 1146, 1227, 1370}
DRIVER_REFUSED = {"HY105", "HY004", "HY090"}  # invalid parameter type, data type, length
TRANSIENT_STATES = {"40001", "HYT00", "HYT01"}
CONNECT_STATES = {"IM002", "IM003", "IM004"}  # driver manager: no such DSN/driver, can't load


def odbc_string(url: URL) -> str:
    """The ODBC connection string of a URL: `?odbc_connect=...` as given, `?dsn=NAME` for a
    data source of odbc.ini, otherwise `?driver=...` (default: MariaDB Unicode) with the
    URL's host, port, database and user. Other query keys pass on as ODBC options."""
    query = {k: str(v) for k, v in url.query.items()}
    lower = {k.lower(): k for k in query}
    parts: list[str] = []
    if "odbc_connect" in lower:
        parts.append(query.pop(lower["odbc_connect"]).strip().rstrip(";"))
    elif "dsn" in lower:
        parts.append(f"DSN={braced(query.pop(lower['dsn']))}")
    else:
        driver = query.pop(lower["driver"], DEFAULT_DRIVER) if "driver" in lower else DEFAULT_DRIVER
        parts.append(f"DRIVER={{{driver.replace('}', '}}')}}}")
        parts.append(f"SERVER={braced(url.host or '127.0.0.1')}")
        parts.append(f"PORT={int(url.port or 3306)}")
        parts.append("CHARSET=utf8mb4")
    if url.database:
        parts.append(f"DATABASE={braced(url.database)}")
    if url.username:
        parts.append(f"UID={braced(url.username)}")
    for key, value in query.items():
        if key.lower() != "driver":
            parts.append(f"{key}={braced(value)}")
    given = {p.split("=", 1)[0].strip().upper() for p in parts}
    if "OPTION" not in given:
        # FLAG_FOUND_ROWS: an UPDATE counts the rows it matched, not only those it changed
        # (SQLAlchemy and the core read rowcount so)
        parts.append("OPTION=2")
    for name in ("READ_TIMEOUT", "WRITE_TIMEOUT"):
        if name not in given:
            # a link that says nothing (a NAT that forgot us, a cable pulled) ends a statement
            # after this many seconds, as a lost connection (2013), instead of never
            parts.append(f"{name}={LINK_TIMEOUT}")
    if "CONN_TIMEOUT" not in given:
        parts.append(f"CONN_TIMEOUT={CONNECT_TIMEOUT}")
    if url.password:  # from password_env / password_file: never in a message or log
        parts.append(f"PWD={braced(str(url.password))}")
    return ";".join(parts)


def _driver_name(url: URL) -> str:
    query = {k.lower(): str(v) for k, v in url.query.items()}
    if "dsn" in query:
        return f"DSN {query['dsn']}"
    if "odbc_connect" in query:
        found = re.search(r"driver\s*=\s*\{?([^;}]*)", query["odbc_connect"], re.IGNORECASE)
        return found.group(1) if found else "(none named)"
    return query.get("driver", DEFAULT_DRIVER)


def _bindable(value: Any, utc: tzinfo) -> Any:
    """Connector/ODBC drops the fraction of a bound timestamp or time (pyodbc issue 1023 is
    the fast_executemany form of it): they are sent as ISO text, which MariaDB parses to
    the microsecond. An aware timestamp left here (control tables) is stored as UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = local(value, utc)
        return value.isoformat(sep=" ", timespec="microseconds")
    if isinstance(value, time):
        return value.replace(tzinfo=None).isoformat(timespec="microseconds")
    return value


def _read_time(raw: bytes | None) -> time | timedelta | None:
    """A TIME value from its text: Connector/ODBC's time struct has no fraction, its text
    has (`01:02:03.456789`). MariaDB's TIME is an interval (-838:59:59 to 838:59:59): one
    outside a day comes as a timedelta, which a `time` target refuses for that row alone."""
    if raw is None:
        return None
    text = raw.decode("ascii")
    sign = -1 if text.startswith("-") else 1
    hours, minutes, rest = text.lstrip("-").split(":")
    seconds, _, fraction = rest.partition(".")
    micro = int((fraction + "000000")[:6])
    if sign > 0 and int(hours) < 24:
        return time(int(hours), int(minutes), int(seconds), micro)
    span = timedelta(
        hours=int(hours), minutes=int(minutes), seconds=int(seconds), microseconds=micro
    )
    return sign * span


@compiles(Cast, "mariadb")
@compiles(Cast, "mysql")
def _exact_cast(element: Cast[Any], compiler: Any, **kw: Any) -> str:
    """`CAST(x AS DECIMAL)` without a precision is DECIMAL(10,0) here: text such as '10.50'
    becomes 11 and anything past ten digits is clipped, without an error in a SELECT. The core
    means an exact number (the closing's sums of a TEXT or FLOAT amount column): the widest
    decimal MariaDB has."""
    kind = element.type
    if isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float) and kind.precision is None:
        element = Cast(element.clause, sa.Numeric(65, 30))
    return str(compiler.visit_cast(element, **kw))


# what pyodbc binds through Connector/ODBC as it is (bool is an int)
_BINDABLE = (str, int, float, Decimal, bytes, bytearray, date, time, timedelta)


class MariaDBInsert(mysql.Insert):
    """MariaDB's INSERT with the ON CONFLICT forms the core uses for control tables."""

    inherit_cache = True

    def on_conflict_do_nothing(self, index_elements: Any = None, **_: Any) -> MariaDBInsert:
        first = next(iter(self.table.primary_key.columns))  # type: ignore[attr-defined]
        return self.on_duplicate_key_update({first.name: first})

    def on_conflict_do_update(
        self, index_elements: Any = None, set_: Any = None, where: Any = None, **_: Any
    ) -> MariaDBInsert:
        if where is not None:
            raise NotImplementedError("MariaDB's ON DUPLICATE KEY UPDATE takes no WHERE")
        return self.on_duplicate_key_update(dict(set_ or {}))


class MariaDBBackend(StagedTarget):
    dialect = "mariadb"
    capabilities = Capabilities(max_bind_params=32000, bulk_copy=False, schemas=False)
    control_schema = None
    control_prefix = "replicator_"
    bisect_seconds = 5.0
    # A write of the replicator on a register holds the clock row: tracked writes of a sale
    # wait for it. Short commits, a pause between them.
    write_hold_seconds = 0.2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock_table = f"{self.control_prefix}clock"
        # stage table -> target table, so that a message names the table a person knows
        self._stages: dict[str, str] = {}
        _fit_control_tables(self.ct.metadata)

    def pause_after(self, held: float) -> float:
        return 0.02

    # --- connections -----------------------------------------------------------------------
    def create_engine(self, url: URL) -> Engine:
        name = "mysql+pyodbc" if url.get_backend_name() == "mysql" else "mariadb+pyodbc"
        wait = max(1, -(-self.lock_timeout_ms // 1000))  # whole seconds, rounded up
        connect_string = odbc_string(url)

        def connect() -> Any:
            raw = pyodbc.connect(connect_string, timeout=10)
            raw.add_output_converter(pyodbc.SQL_TYPE_TIME, _read_time)
            raw.timeout = 600  # a statement that runs longer than 10 minutes is cut
            cur = raw.cursor()
            # lock_wait_timeout bounds a metadata lock wait too (default: a year): `setup`'s
            # ALTER TABLE behind an open sale fails soon instead of queueing every later
            # statement of the point of sale on that table behind it
            cur.execute(
                f"SET SESSION sql_mode = '{SQL_MODE}', innodb_lock_wait_timeout = {wait}, "
                f"lock_wait_timeout = {wait}"
            )
            # fewer gap locks on a register's tables while the replicator writes them
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cur.close()
            raw.commit()
            return raw

        engine = sa.create_engine(
            URL.create(name),
            creator=connect,
            pool_pre_ping=True,
            pool_size=self.pool_size,
            max_overflow=self.pool_size,
            pool_recycle=1800,
            pool_timeout=60,
        )
        utc = zone(None)

        @event.listens_for(engine, "handle_error")
        def _disconnect(context: Any) -> None:
            # pyodbc's connector hides the MySQL dialect's own test: a connection that is gone
            # (server restarted, link cut) is dropped from the pool, also at pre-ping
            orig = context.original_exception
            state, native, _ = odbc_error(orig)
            if native in DISCONNECT_CODES or state[:2] == "08":
                context.is_disconnect = True
            if isinstance(orig, pyodbc.Error):
                readable(orig, {f"`{k}`": f"`{v}`" for k, v in self._stages.items()})

        @event.listens_for(engine, "before_cursor_execute", retval=True)
        def _bind(
            _conn: Any, _cur: Any, stmt: str, params: Any, _ctx: Any, many: bool
        ) -> tuple[str, Any]:
            if many:
                return stmt, [tuple(_bindable(v, utc) for v in p) for p in params]
            if isinstance(params, tuple | list):
                return stmt, tuple(_bindable(v, utc) for v in params)
            return stmt, params

        return engine

    def classify(self, exc: BaseException) -> ReplicatorError:
        orig = getattr(exc, "orig", exc)
        state, native, function = odbc_error(orig)
        driver_missing = state in CONNECT_STATES or (
            state == "01000" and function == "SQLDriverConnect" and not native
        )
        if driver_missing:
            return ConfigError(
                f"{self.display_url}: the ODBC driver or data source "
                f"{_driver_name(self.url)!r} cannot be loaded ({first_line(exc)}); install it "
                f"with `{INSTALL}` and name the driver as /etc/odbcinst.ini registers it "
                f"(here: {', '.join(pyodbc.drivers()) or 'none'}), e.g. "
                "?driver=MariaDB+Unicode in the URL"
            )
        return super().classify(exc)

    def is_transient(self, orig: BaseException) -> bool | None:
        if not isinstance(orig, pyodbc.Error):
            return None
        state, native, _ = odbc_error(orig)
        if native in TRANSIENT_CODES:
            return True
        if native in PERMANENT_CODES or native in REFUSED_CODES or native in WAITING_CODES:
            return False
        if state[:2] == "08" or state in TRANSIENT_STATES:
            return True
        if state in CONNECT_STATES or state[:2] in {"42", "28", "21", "22", "23"}:
            return False
        return None

    def row_error(self, exc: BaseException) -> str | None:
        """Sorted by MariaDB's error number (SQLSTATE 23000 is both a missing parent and a
        duplicate), then by SQLSTATE class."""
        orig = getattr(exc, "orig", exc)
        if isinstance(orig, pyodbc.Error):
            state, native, _ = odbc_error(orig)
            if native in WAITING_CODES:
                return WAITING
            if native in REFUSED_CODES or state[:2] in {"21", "22", "23"}:
                return REFUSED
            if state in DRIVER_REFUSED:
                return REFUSED  # a value pyodbc cannot send (its type)
            return None
        if isinstance(orig, UnicodeError | ValueError | TypeError):
            return REFUSED
        return None

    # --- transactions ------------------------------------------------------------------------
    @contextmanager
    def read_snapshot(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            yield conn

    @contextmanager
    def write(self, job: str) -> Iterator[Connection]:
        """The job's lock is a named lock (GET_LOCK) of this session, released when the
        transaction ends, or by the server when the session dies."""
        with self.engine.connect() as conn:
            try:
                with conn.begin():
                    self.lock_job(conn, job)
                    yield conn
            finally:
                try:
                    conn.exec_driver_sql(
                        f"SELECT RELEASE_LOCK(?), {ORIGIN_VARIABLE} := NULL",
                        (self._lock_name(job),),
                    )
                    conn.rollback()
                except sa.exc.DBAPIError:
                    conn.invalidate()  # the session is gone: so is its lock

    def _lock_name(self, job: str) -> str:
        digest = hashlib.sha1(f"{self.url.database}:{job}".encode()).hexdigest()[:40]
        return f"replicator:{digest}"  # at most 64 characters

    def lock_job(self, conn: Connection, job: str) -> None:
        got = conn.exec_driver_sql("SELECT GET_LOCK(?, 0)", (self._lock_name(job),)).scalar()
        if got != 1:
            raise BusyError(f"job {job} is running in another service; skipped this turn")

    def mark_origin(self, conn: Connection, origin: str | None) -> None:
        conn.exec_driver_sql(f"SET {ORIGIN_VARIABLE} = ?", (origin,))

    def safe_upper_bound(self, conn: Connection, job: str) -> int:
        clock = self.quote(self.clock_table)
        value = conn.exec_driver_sql(f"SELECT version FROM {clock} WHERE id = 1").scalar()
        return int(value or 0)

    def write_ack(self, job: str, incarnation: str, seq: int, confirmed: int) -> int:
        a = self.ct.ack.c
        with self.source_write() as conn:
            values = {"incarnation": incarnation, "seq": seq, "confirmed": confirmed, "at": now()}
            conn.execute(
                mysql.insert(self.ct.ack).values(job=job, **values).on_duplicate_key_update(values)
            )
            floor = conn.execute(sa.select(sa.func.min(a.confirmed))).scalar()
            if not floor:
                return 0
            tomb = self.quote_table(self.ct.tombstone.fullname)
            purged = conn.exec_driver_sql(
                f"DELETE FROM {tomb} WHERE version < ? ORDER BY id LIMIT {PURGE_PAGE}",
                (int(floor),),
            )
            return int(purged.rowcount or 0)

    # --- setup ---------------------------------------------------------------------------
    def prepare_ddl(self) -> list[str]:
        clock = self.quote(self.clock_table)
        return [
            f"CREATE TABLE IF NOT EXISTS {clock} (id INT PRIMARY KEY CHECK (id = 1), "
            "version BIGINT NOT NULL) ENGINE=InnoDB",
            f"INSERT INTO {clock} (id, version) VALUES (1, 0) ON DUPLICATE KEY UPDATE id = id",
        ]

    def control_ddl(self) -> list[str]:
        ddl = super().control_ddl()
        last = ddl.pop()
        assert last.endswith("ON CONFLICT (id) DO NOTHING")
        return [
            *ddl,
            last.removesuffix("ON CONFLICT (id) DO NOTHING") + "ON DUPLICATE KEY UPDATE id = id",
        ]

    def tracking_ddl(self, conn: Connection | None, table: TrackedTable) -> list[str]:
        return [s.rstrip().removesuffix(";") for s in super().tracking_ddl(conn, table)]

    def tracking_names(self, table: TrackedTable, conn: Connection | None) -> dict[str, str]:
        names = super().tracking_names(table, conn)
        q = self.quote
        old = [f"OLD.{q(k)}" for k in table.key]
        new = [f"NEW.{q(k)}" for k in table.key]
        # binary: a key whose case or trailing spaces change is another key for the targets
        names["key_changed"] = " OR ".join(
            f"NOT (BINARY {o} <=> BINARY {n})" for o, n in zip(old, new, strict=True)
        )
        names["clock_table"] = q(self.clock_table)
        names["clock_version"] = q("version")
        names["tombstone_key"] = q("key")
        return names

    def script(self, statements: list[str]) -> str:
        """Runnable in the `mariadb` client: triggers between DELIMITER $$ lines."""
        header = resources.files("replicator.sql").joinpath(self.dialect, "script_header.sql")
        out = [header.read_text(encoding="utf-8").strip()]
        for stmt in statements:
            text = stmt.strip().removesuffix(";")
            if re.match(r"CREATE\s+(OR\s+REPLACE\s+)?TRIGGER\b", text, re.IGNORECASE):
                out.append(f"DELIMITER $$\n{text}$$\nDELIMITER ;")
            else:
                out.append(text + ";")
        return "\n\n".join(out) + "\n"

    # --- apply ---------------------------------------------------------------------------
    def insert_construct(self, table: sa.Table) -> Any:
        return MariaDBInsert(table)

    def row_adapter(
        self, table: sa.Table, columns: Sequence[str], source_timezone: str | None
    ) -> Callable[[Row], Row] | None:
        """DATETIME and TIMESTAMP hold no zone: an aware timestamp is written as local time
        of this database's zone; JSON documents as their text; values the driver has no
        binding for (uuids, network addresses, ranges) as their text."""
        target = zone(self.timezone)

        def convert(value: Any) -> Any:
            if isinstance(value, datetime):
                return local(value, target)
            if isinstance(value, dict | list):
                return json.dumps(value, ensure_ascii=False, default=str)
            if value is None or isinstance(value, _BINDABLE):
                return value
            return str(value)

        def adapt(row: Row) -> Row:
            return tuple(convert(v) for v in row)

        return adapt

    def row_check(
        self,
        table: sa.Table,
        columns: Sequence[str],
        source_types: Sequence[sa.types.TypeEngine[Any]],
    ) -> Callable[[Row], None] | None:
        """Besides decimals (the default check): MariaDB rounds fractional seconds to the
        column's precision without a word; a row that would lose some is refused."""
        decimals = super().row_check(table, columns, source_types)
        fsp = [
            (i, c, int(getattr(table.c[c].type, "fsp", None) or 0))
            for i, c in enumerate(columns)
            if isinstance(table.c[c].type, sa.DateTime | sa.Time)
        ]
        fsp = [(i, c, p) for i, c, p in fsp if p < 6]
        if not fsp and decimals is None:
            return None

        def check(row: Row) -> None:
            if decimals is not None:
                decimals(row)
            for i, name, places in fsp:
                value = row[i]
                micro = getattr(value, "microsecond", 0)
                if micro and micro % 10 ** (6 - places):
                    raise ValueError(
                        f"column {name!r}: {value} has fractional seconds that the target "
                        f"keeps only {places} digits of and would round; declare the column "
                        f"DATETIME(6) (or TIME(6)) or drop the fraction at the source"
                    )

        return check

    def stage(
        self, conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Row]
    ) -> sa.TableClause:
        """A temporary table shaped like the target's columns, holding `rows` (multi-row
        INSERTs: pyodbc's executemany is a round trip per row, and its fast_executemany sends
        decimals as floats and text in the wrong encoding through Connector/ODBC)."""
        digest = hashlib.sha1(f"{table.fullname}:{','.join(columns)}".encode()).hexdigest()
        bare = f"replicator_stage_{digest[:12]}"
        self._stages[bare] = table.name
        name = self.quote(bare)
        cols = ", ".join(self.quote(c) for c in columns)
        conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {name}")
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE {name} ENGINE=InnoDB AS "
            f"SELECT {cols} FROM {self.quote_table(table.fullname)} LIMIT 0"
        )
        per = max(1, min(STAGE_ROWS, MAX_PARAMS // max(1, len(columns))))
        one = "(" + ", ".join("?" * len(columns)) + ")"
        for part in chunks(rows, per):
            values = ", ".join([one] * len(part))
            params = tuple(v for row in part for v in row)
            conn.exec_driver_sql(f"INSERT INTO {name} ({cols}) VALUES {values}", params)
        return sa.table(bare, *[sa.column(c) for c in columns])

    def differs(self, a: Any, b: Any) -> sa.ColumnElement[bool]:
        """NULL-safe and exact: text compares by its bytes (the collation would take 'Jose'
        and 'JOSE', or 'a' and 'a ', as equal and skip the update)."""
        if isinstance(a.type, sa.String | sa.JSON | sa.types.NullType):
            a, b = sa.cast(a, sa.LargeBinary), sa.cast(b, sa.LargeBinary)
        same: sa.ColumnElement[bool] = a.op("<=>", is_comparison=True)(b)
        return sa.not_(same)


def _fit_control_tables(metadata: sa.MetaData) -> None:
    """The control tables as MariaDB can index them: canonical JSON keys (ASCII) in indexed
    TEXT columns become VARCHAR(1400) CHARACTER SET ascii (InnoDB keys are at most 3072
    bytes); timestamps keep microseconds."""
    for table in metadata.tables.values():
        indexed = {c.name for c in table.primary_key.columns}
        for index in table.indexes:
            indexed.update(c.name for c in index.columns)
        for constraint in table.constraints:
            if isinstance(constraint, sa.UniqueConstraint):
                indexed.update(c.name for c in constraint.columns)
        for column in table.columns:
            if isinstance(column.type, sa.Text) and column.name in indexed:
                column.type = mysql.VARCHAR(1400, charset="ascii", collation="ascii_bin")
            elif isinstance(column.type, sa.DateTime):
                column.type = mysql.DATETIME(timezone=True, fsp=6)
