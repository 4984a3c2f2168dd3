"""Firebird 3+: registers' local databases. Versions come from a generator (not transactional);
readers stay below every transaction still in flight (sql/firebird/tracking.sql).

The bound, and why it is safe (docs/firebird.md has the long form):
  1. The first tracked write of a transaction W records `floor` = the generator's value + 1
     in REPLICATOR_INFLIGHT through an autonomous transaction, committed before W takes any
     version; every version W takes afterwards is >= floor.
  2. A reader reads the generator (G) in a transaction of its own, then starts its SNAPSHOT
     transaction, and reads min(floor) of the REPLICATOR_INFLIGHT rows in that snapshot.
     bound = min(G, min(floor) - 1).
  3. A version v <= G was taken before G was read, so W's row was committed before the
     snapshot started: the reader sees it unless W's commit deleted it (then W's rows are in
     the snapshot) or the purge did (only rows of transactions that ended: rolled back or
     died, whose changes never become visible). So v is either visible or above the bound.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from loguru import logger
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy_firebird.types import FBTEXT, FBVARCHAR

from replicator.backends.base import PURGE_PAGE, Backend, Capabilities, Row, TrackedTable
from replicator.backends.firebird_sql import (
    SCRIPT_HEADER,
    FBUpsert,
    FirebirdCompiler,
    UTCDateTime,
    guard,
    is_ddl,
    is_psql,
    json_text,
    split_script,
    template,
)
from replicator.errors import BusyError, PermanentError, ReplicatorError
from replicator.position import Blocker
from replicator.quarantine import REFUSED, WAITING
from replicator.values import local, scale_check, zone

# Firebird status codes (gds codes, ISC_* in iberror.h) that say something about a row's data.
ISC_ARITH_EXCEPT = 335544321  # arithmetic exception, numeric overflow, or string truncation
ISC_TRANSLITERATION_FAILED = 335544565  # a character the column's character set cannot hold
ISC_STRING_TRUNCATION = 335544914
ISC_NUMERIC_OUT_OF_RANGE = 335544916
ISC_CONVERT_ERROR = 335544334  # conversion error from string
ISC_NOT_VALID = 335544347  # validation error for column (NOT NULL, domain)
ISC_CHECK_CONSTRAINT = 335544558
ISC_UNIQUE_KEY_VIOLATION = 335544665
ISC_NO_DUP = 335544349  # attempt to store duplicate value in a unique index
ISC_FOREIGN_KEY = 335544466
ISC_RELATION_UNKNOWN = 335544580  # Table unknown
ROW_CODES = {
    ISC_ARITH_EXCEPT,
    ISC_TRANSLITERATION_FAILED,
    ISC_STRING_TRUNCATION,
    ISC_NUMERIC_OUT_OF_RANGE,
    ISC_CONVERT_ERROR,
    ISC_NOT_VALID,
    ISC_CHECK_CONSTRAINT,
    ISC_UNIQUE_KEY_VIOLATION,
    ISC_NO_DUP,
}
# Codes that go away by themselves: lock conflict / deadlock / update conflict, lock time-out,
# network and connection failures, shutdown, too many connections.
ISC_LOCK_CONFLICT = 335544345
ISC_DEADLOCK = 335544336
ISC_UPDATE_CONFLICT = 335544451
ISC_LOCK_TIMEOUT = 335544510
TRANSIENT_CODES = {
    ISC_LOCK_CONFLICT,
    ISC_DEADLOCK,
    ISC_UPDATE_CONFLICT,
    ISC_LOCK_TIMEOUT,
    335544721,  # network_error: unable to complete network request
    335544421,  # connect_reject: connection rejected by remote interface (link cut mid-attach)
    335544726,  # net_read_err
    335544727,  # net_write_err
    335544741,  # lost connection to database server
    335544856,  # att_shutdown: connection shutdown
    335544528,  # shutdown: database shut down
    335544648,  # conn_lost
    335545106,  # error during attachment / connection rejected by remote interface
    335544375,  # unavailable database
}
BUSY_CODES = {ISC_LOCK_CONFLICT, ISC_DEADLOCK, ISC_UPDATE_CONFLICT, ISC_LOCK_TIMEOUT}

# Single-byte character sets a column may hold, and Python's codec of the same table: a value
# with a character outside it is refused with the character named (the server would say only
# "Cannot transliterate character between character sets"). UTF8, NONE and OCTETS hold all.
CHARSET_CODECS = {
    **{f"WIN{n}": f"cp{n}" for n in range(1250, 1259)},
    **{f"ISO8859_{n}": f"iso8859_{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 15)},
    "DOS850": "cp850",
    "DOS437": "cp437",
    "ASCII": "ascii",
}
SEQUENCE = "REPLICATOR_VERSION"
INFLIGHT = "REPLICATOR_INFLIGHT"
BLOCKER_SECONDS = 60
MIN_PAGE_SIZE = 8192  # the control tables' unique keys (see _adapt_control_tables)
# Rows per EXECUTE BLOCK of upserts, and the size of its text (Firebird 3: 64 KB at most).
BLOCK_ROWS = 1000
BLOCK_TEXT = 60_000  # bytes
BLOCK_PARAMS = 200  # values passed as parameters (long text, bytes) in one block
# Firebird keeps a timestamp to 1/10000 s: 100 microseconds.
TIME_QUANTUM_US = 100


def _codes(exc: BaseException) -> set[int]:
    """The gds codes of a driver error (wrapped by SQLAlchemy or not). The driver's errors
    answer None for any attribute they lack, so `getattr(exc, "orig", exc)` cannot be used."""
    orig = exc.orig if isinstance(exc, sa_exc.StatementError) and exc.orig is not None else exc
    return {int(c) for c in getattr(orig, "gds_codes", None) or ()}


class FirebirdBackend(Backend):
    dialect = "firebird"
    # Firebird 3: 64 KB of statement text; keys per IN lookup stay well below it.
    capabilities = Capabilities(max_bind_params=1000, bulk_copy=False, schemas=False)
    control_schema = None
    control_prefix = "replicator_"
    bisect_seconds = 5.0  # a register: keep the target's lock short
    # A catalog going down commits about every half second: the rows it writes stay locked
    # that long at most (a sale updating one of them waits on the lock, not on the batch).
    write_hold_seconds = 0.5
    blocker_seconds: float = BLOCKER_SECONDS

    def pause_after(self, held: float) -> float:
        """Firebird wakes a writer waiting on a row lock when the holder commits: a short
        breath is enough for a sale to take it."""
        return 0.02

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bounds: dict[str, int] = {}
        self._charset: str | None = None
        self._adapt_control_tables()

    # --- connection ------------------------------------------------------------------------
    def create_engine(self, url: URL) -> Engine:
        if url.drivername == "firebird":
            url = url.set(drivername="firebird+firebird")
        # The server converts between the database's character set (WIN1252...) and UTF8:
        # a character the column cannot hold fails for its row, never turns into '?'. A
        # database of character set NONE holds the application's bytes unconverted: its URL
        # names the application's set (?charset=WIN1252), in which they are read and written.
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "UTF8"})
        engine = sa.create_engine(
            url,
            query_cache_size=0,  # see FirebirdCompiler
            pool_size=self.pool_size,
            max_overflow=self.pool_size,
            pool_recycle=1800,
        )
        engine.dialect.statement_compiler = FirebirdCompiler
        seconds = max(1, round(self.lock_timeout_ms / 1000))

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            from firebird.driver import Isolation, tpb

            # Writes wait for a lock at most `seconds`; read committed like a POS client.
            dbapi_conn.main_transaction.default_tpb = tpb(
                Isolation.READ_COMMITTED_RECORD_VERSION, lock_timeout=seconds
            )

        @event.listens_for(engine, "checkout")
        def _ping(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
            # a pooled connection whose attachment is gone (server restarted, database
            # restored from a backup, attachment killed) is replaced before use
            try:
                cur = dbapi_conn.cursor()
                cur.execute("SELECT 1 FROM RDB$DATABASE")
                cur.fetchall()
                cur.close()
                dbapi_conn.rollback()
            except Exception as exc:  # the driver's errors have no common base worth naming
                raise sa.exc.DisconnectionError(str(exc).splitlines()[0]) from exc

        return engine

    def _adapt_control_tables(self) -> None:
        """Firebird cannot index BLOB columns and limits index keys to a quarter of a page:
        key columns of the control tables become VARCHARs (the canonical JSON key is ASCII) that
        fit an 8 KB page together; text is UTF8 whatever the database's character set (a
        reason names a character a WIN1252 column cannot hold); aware timestamps are UTC."""
        for table in self.ct.metadata.sorted_tables:
            indexed = {c.name for c in table.primary_key.columns}
            for constraint in table.constraints:
                if isinstance(constraint, sa.UniqueConstraint):
                    indexed.update(c.name for c in constraint.columns)
            for column in table.c:
                kind = column.type
                if isinstance(kind, sa.DateTime) and kind.timezone:
                    column.type = UTCDateTime()
                elif column.name == "row_key" and column.name in indexed:
                    column.type = FBVARCHAR(length=1000, charset="ASCII")
                elif column.name in ("job", "table_name") and column.name in indexed:
                    # index keys of an 8 KB page (docs/firebird.md); lease: alone in its key
                    length = 63 if len(indexed) > 1 else 200
                    column.type = FBVARCHAR(length=length, charset="UTF8")
                elif isinstance(kind, sa.Text):
                    column.type = FBTEXT(charset="UTF8")  # any text, whatever the database's
                elif isinstance(kind, sa.String):
                    column.type = FBVARCHAR(length=kind.length, charset="UTF8")

    def exists(self) -> bool:
        return True

    def ping(self, conn: Connection) -> None:
        conn.exec_driver_sql("SELECT 1 FROM RDB$DATABASE").all()

    @contextmanager
    def setup_connection(self) -> Iterator[Connection]:
        """Firebird uses a new table, column or trigger only once its DDL is committed: setup
        commits each statement (each one is idempotent, so running setup again completes it)."""
        with self.engine.connect() as conn:
            found = conn.exec_driver_sql(
                "SELECT MON$PAGE_SIZE, MON$SQL_DIALECT FROM MON$DATABASE"
            ).one()
            page, sql_dialect = int(found[0] or 0), int(found[1] or 3)
            conn.rollback()
            if sql_dialect < 3:
                raise PermanentError(
                    f"{self.display_url}: the database is SQL dialect {sql_dialect}; change "
                    "tracking needs dialect 3 (64-bit versions: dialect 1 has no BIGINT and cuts "
                    "generator values to 32 bits); back it up, then move it to dialect 3 with "
                    "`gfix -sql_dialect 3` (check first that the application writes no "
                    "double-quoted string literals), then run setup again"
                )
            if page < MIN_PAGE_SIZE:
                raise PermanentError(
                    f"{self.display_url}: the database's page size is {page} bytes; the "
                    f"replicator's control tables need at least {MIN_PAGE_SIZE} (their unique "
                    "keys do not fit a smaller page); back it up and restore it with "
                    f"`gbak -c -page_size {MIN_PAGE_SIZE}`, then run setup again"
                )

            def _commit(
                conn: Connection, cursor: Any, stmt: str, _params: Any, _ctx: Any, _many: bool
            ) -> None:
                if is_ddl(stmt):  # DML and queries stay in the transaction
                    raw = conn.connection.dbapi_connection
                    assert raw is not None
                    cursor.close()
                    raw.commit()

            event.listen(conn, "after_cursor_execute", _commit)
            try:
                yield conn
                conn.commit()
            finally:
                event.remove(conn, "after_cursor_execute", _commit)

    # --- reading: the snapshot and its bound -----------------------------------------------
    @contextmanager
    def read_snapshot(self) -> Iterator[Connection]:
        from firebird.driver import Isolation, TraAccessMode, tpb

        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            self._purge_inflight(conn)
            generator = int(
                conn.exec_driver_sql(f"SELECT GEN_ID({SEQUENCE}, 0) FROM RDB$DATABASE").scalar()
                or 0
            )
            conn.commit()  # the generator is read before the snapshot starts (see above)
            manager = raw.main_transaction
            previous = manager.default_tpb
            manager.default_tpb = tpb(Isolation.SNAPSHOT, access_mode=TraAccessMode.READ)
            conn.info["replicator_generator"] = generator
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.info.pop("replicator_generator", None)
                manager.default_tpb = previous

    def _purge_inflight(self, conn: Connection) -> None:
        """Delete the in-flight rows of transactions that ended without committing (rolled
        back, connection lost). Rows are read first, then the monitoring snapshot (taken at
        its first use, so after them): a transaction missing there has ended."""
        try:
            rows = conn.exec_driver_sql(f"SELECT TX FROM {INFLIGHT}").all()
            if rows:
                privileged = conn.exec_driver_sql(
                    "SELECT CURRENT_USER = 'SYSDBA' OR CURRENT_ROLE = 'RDB$ADMIN' "
                    "OR CURRENT_USER = TRIM(MON$OWNER) FROM MON$DATABASE"
                ).scalar()
                if privileged:  # sees every attachment's transactions
                    active = {
                        int(t)
                        for (t,) in conn.exec_driver_sql(
                            "SELECT MON$TRANSACTION_ID FROM MON$TRANSACTIONS"
                        )
                    }
                    ended = [int(t) for (t,) in rows if int(t) not in active]
                else:  # only its own attachments: below the oldest active transaction
                    oldest = int(
                        conn.exec_driver_sql("SELECT MON$OLDEST_ACTIVE FROM MON$DATABASE").scalar()
                        or 0
                    )
                    ended = [int(t) for (t,) in rows if int(t) < oldest]
                for start in range(0, len(ended), 500):
                    part = ended[start : start + 500]
                    conn.exec_driver_sql(
                        f"DELETE FROM {INFLIGHT} WHERE TX IN ({', '.join('?' * len(part))})",
                        tuple(part),
                    )
            conn.commit()
        except sa_exc.DBAPIError as exc:
            conn.rollback()  # a purge that loses a race is done by the next read
            if ISC_RELATION_UNKNOWN in _codes(exc):
                raise PermanentError(
                    f"{self.display_url}: change tracking is not installed ({INFLIGHT} is "
                    "missing); run `replicator setup`"
                ) from None
            if not _codes(exc) & TRANSIENT_CODES:
                raise
            logger.debug("in-flight purge skipped: {}", str(exc).splitlines()[0])

    def safe_upper_bound(self, conn: Connection, job: str) -> int:
        generator = conn.info.get("replicator_generator")
        if generator is None:  # not in read_snapshot: the generator of this snapshot's time
            generator = int(
                conn.exec_driver_sql(f"SELECT GEN_ID({SEQUENCE}, 0) FROM RDB$DATABASE").scalar()
                or 0
            )
        floor = conn.exec_driver_sql(f"SELECT MIN(FLOOR_VERSION) FROM {INFLIGHT}").scalar()
        bound = int(generator) if floor is None else min(int(generator), int(floor) - 1)
        value = max(bound, self._bounds.get(job, 0))
        self._bounds[job] = value
        return value

    def forget_bound(self) -> None:
        self._bounds.clear()

    def blocker(self, conn: Connection) -> Blocker | None:
        old = conn.exec_driver_sql(
            f"SELECT FIRST 1 TX, DATEDIFF(SECOND FROM STARTED_AT TO CURRENT_TIMESTAMP) "
            f"FROM {INFLIGHT} WHERE DATEDIFF(SECOND FROM STARTED_AT TO CURRENT_TIMESTAMP) > ? "
            "ORDER BY FLOOR_VERSION",
            (int(self.blocker_seconds),),
        ).first()
        if old is None:  # the monitoring tables are read only when there is one to name
            return None
        row = conn.exec_driver_sql(
            "SELECT CAST(? AS BIGINT), CAST(? AS INTEGER), a.MON$ATTACHMENT_ID, "
            "TRIM(a.MON$USER), a.MON$REMOTE_PROCESS FROM RDB$DATABASE "
            "LEFT JOIN MON$TRANSACTIONS t ON t.MON$TRANSACTION_ID = ? "
            "LEFT JOIN MON$ATTACHMENTS a ON a.MON$ATTACHMENT_ID = t.MON$ATTACHMENT_ID",
            (int(old[0]), int(old[1] or 0), int(old[0])),
        ).first()
        if row is None:
            return None
        tx, age, attachment, user, process = row
        who = (
            f"attachment {attachment} (user {user}, {process or 'unknown process'})"
            if attachment is not None
            else "an attachment this user cannot see in MON$ATTACHMENTS"
        )
        fix = (
            f"DELETE FROM MON$ATTACHMENTS WHERE MON$ATTACHMENT_ID = {attachment}"
            if attachment is not None
            else "connect as SYSDBA and look it up in MON$TRANSACTIONS"
        )
        return Blocker(
            int(attachment if attachment is not None else tx),
            f"transaction {tx} of {who} open for {int(age or 0)}s holds replication of this "
            f"database back; end it, e.g. {fix}",
        )

    def stream(
        self, conn: Connection, stmt: Any, page_rows: int, as_text: bool = False
    ) -> Iterator[Sequence[Row]]:
        result = conn.execute(stmt)
        try:
            while page := result.fetchmany(page_rows):
                yield [tuple(r) for r in page]
        finally:
            result.close()

    # --- writing ---------------------------------------------------------------------------
    def lock_job(self, conn: Connection, job: str) -> None:
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(
                    "UPDATE OR INSERT INTO REPLICATOR_JOBLOCK (JOB, LOCKED_AT) "
                    "VALUES (?, CURRENT_TIMESTAMP) MATCHING (JOB)",
                    (job,),
                )
        except sa_exc.DBAPIError as exc:
            if _codes(exc) & (BUSY_CODES | {ISC_NO_DUP, ISC_UNIQUE_KEY_VIOLATION}):
                raise BusyError(
                    f"job {job} is running in another service; skipped this turn"
                ) from None
            raise

    def mark_origin(self, conn: Connection, origin: str | None) -> None:
        # USER_TRANSACTION: the variable ends with the transaction, and no other
        # connection ever sees it.
        conn.exec_driver_sql(
            "SELECT RDB$SET_CONTEXT('USER_TRANSACTION', 'REPLICATOR_ORIGIN', "
            "CAST(? AS VARCHAR(200))) FROM RDB$DATABASE",
            (origin,),
        ).all()

    def insert_construct(self, table: sa.Table) -> Any:
        return FBUpsert(table)

    def write_rows(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        build: Any,
    ) -> None:
        """Many rows per round trip. Firebird 3 has no batch API: an executemany is one
        network round trip (and one MERGE) per row, and firebird-driver packs each parameter
        in Python (most of the time of a catalog going down). Here the MERGE is a sub-procedure
        of an EXECUTE BLOCK, called once per row with the row's values written as SQL
        literals (exact: see _literal; any other value is passed as a parameter): a block of
        rows is one statement, one round trip, applied or refused whole (a statement is
        atomic; the caller bisects to the refused row)."""
        stmt = build(self.insert_construct(table))
        compiled = stmt.compile(dialect=conn.dialect, column_keys=list(columns))
        merge = str(compiled)
        if list(compiled.positiontup or []) != list(columns) or merge.count("?") != len(columns):
            super().write_rows(conn, table, columns, rows, build)  # a shape not written here
            return
        types = conn.dialect.type_compiler_instance
        kinds = [types.process(table.c[c].type) for c in columns]
        processors = [table.c[c].type._cached_bind_processor(conn.dialect) for c in columns]
        converting = [(i, f) for i, f in enumerate(processors) if f is not None]
        # a literal only of the column's own kind of value (else the driver's conversion of
        # a parameter decides, as before: True into a SMALLINT, text into a number...)
        families = [_literal_family(table.c[c].type) for c in columns]
        body = merge
        for i in range(len(columns)):
            body = body.replace("?", f":p{i}", 1)
        procedure = (
            f"DECLARE PROCEDURE repl_up ({', '.join(f'p{i} {k}' for i, k in enumerate(kinds))})"
            f"\nAS\nBEGIN\n{body};\nEND\n"
        )
        fixed = len(procedure.encode("utf-8")) + 40
        heads: list[str] = []
        calls: list[str] = []
        params: list[Any] = []
        size = fixed

        def flush() -> None:
            head = f" ({', '.join(heads)})" if heads else ""
            block = f"EXECUTE BLOCK{head}\nAS\n{procedure}BEGIN\n" + "\n".join(calls) + "\nEND"
            conn.exec_driver_sql(block, tuple(params))

        for row in rows:
            values = list(row)
            for i, f in converting:
                values[i] = f(values[i])
            texts = [
                _literal(v) if isinstance(v, family) else None
                for v, family in zip(values, families, strict=True)
            ]
            passed = [i for i, t in enumerate(texts) if t is None]
            grows = sum(len(t.encode("utf-8")) + 2 for t in texts if t is not None)
            grows += sum(len(kinds[i]) + 20 for i in passed) + 40
            if calls and (
                size + grows > BLOCK_TEXT
                or len(calls) >= BLOCK_ROWS
                or len(params) + len(passed) > BLOCK_PARAMS
            ):
                flush()
                heads, calls, params, size = [], [], [], fixed
            for i in passed:  # a value not written as a literal: a parameter of the block
                name = f"a{len(params)}"
                heads.append(f"{name} {kinds[i]} = ?")
                params.append(values[i])
                texts[i] = ":" + name
            calls.append(f"EXECUTE PROCEDURE repl_up({', '.join(str(t) for t in texts)});")
            size += grows
        if calls:
            flush()

    def purge_tombstones(self, conn: Connection, floor: int) -> int:
        done = conn.exec_driver_sql(
            f"DELETE FROM {self.quote_table(self.ct.tombstone.fullname)} "
            f"WHERE {self.quote('version')} < ? ROWS {PURGE_PAGE}",
            (floor,),
        )
        return int(done.rowcount or 0)

    # --- values ----------------------------------------------------------------------------
    def row_adapter(
        self, table: sa.Table, columns: Sequence[str], source_timezone: str | None
    ) -> Callable[[Row], Row] | None:
        """Firebird 3 timestamps have no zone: an aware timestamp is stored as local time of
        this database's zone (`timezone`, default UTC)."""
        positions = [i for i, c in enumerate(columns) if isinstance(table.c[c].type, sa.DateTime)]
        if not positions:
            return None
        here = zone(self.timezone)

        def adapt(row: Row) -> Row:
            values = list(row)
            for i in positions:
                if isinstance(values[i], datetime):
                    values[i] = local(values[i], here)
            return tuple(values)

        return adapt

    def row_check(
        self,
        table: sa.Table,
        columns: Sequence[str],
        source_types: Sequence[sa.types.TypeEngine[Any]],
    ) -> Callable[[Row], None] | None:
        """Besides decimals (scale_check): Firebird keeps timestamps and times to 1/10000 s
        and would cut a value with more microseconds without a word; such a row is refused
        (quarantined with the column and the value) instead of changed."""
        decimals = scale_check(table, columns, source_types)
        timed = [
            (i, name)
            for i, name in enumerate(columns)
            if isinstance(table.c[name].type, sa.DateTime | sa.Time)
        ]
        texts = [
            (i, name, charset, codec)
            for i, name in enumerate(columns)
            for charset in [_charset(table.c[name].type, self._database_charset())]
            if (codec := CHARSET_CODECS.get(charset)) is not None
        ]
        if not timed and not texts:
            return decimals

        def check(row: Row) -> None:
            if decimals is not None:
                decimals(row)
            for i, name in timed:
                value = row[i]
                if isinstance(value, datetime | time) and value.microsecond % TIME_QUANTUM_US:
                    raise ValueError(
                        f"column {name!r}: {value.isoformat()} has microseconds; Firebird keeps "
                        "1/10000 s and would change it; round the value at the source to 100 µs"
                    )
            for i, name, charset, codec in texts:
                value = row[i]
                if not isinstance(value, str):
                    continue
                try:
                    value.encode(codec)
                except UnicodeEncodeError as exc:
                    bad = value[exc.start]
                    raise ValueError(
                        f"column {name!r}: the character {bad!r} (U+{ord(bad):04X}) at position "
                        f"{exc.start + 1} cannot be stored in {charset}, the column's character "
                        "set; correct the value at the source or change the column's character "
                        "set"
                    ) from None

        return check

    def _database_charset(self) -> str:
        """The database's default character set (columns declared without one use it)."""
        if self._charset is None:
            with self.engine.connect() as conn:
                found = conn.exec_driver_sql(
                    "SELECT TRIM(RDB$CHARACTER_SET_NAME) FROM RDB$DATABASE"
                ).scalar()
            self._charset = str(found or "NONE").upper()
        return self._charset

    # --- errors ----------------------------------------------------------------------------
    def classify(self, exc: BaseException) -> ReplicatorError:
        """As the base does, with the whole of Firebird's message: its first line is often
        only "unsuccessful metadata update" or "Dynamic SQL Error", the cause comes after."""
        result = super().classify(exc)
        orig = exc.orig if isinstance(exc, sa_exc.StatementError) else None
        lines = [ln.lstrip("-").strip() for ln in str(orig or "").strip().splitlines()]
        if len(lines) > 1 and lines[0] in str(result):
            text = str(result).replace(lines[0], "; ".join(ln for ln in lines if ln), 1)
            return type(result)(text)
        return result

    def is_transient(self, orig: BaseException) -> bool | None:
        codes = _codes(orig)
        if not codes:
            return None
        return bool(codes & TRANSIENT_CODES)

    def row_error(self, exc: BaseException) -> str | None:
        """Sorted by Firebird's status codes (gds codes), not by message text."""
        codes = _codes(exc)
        if ISC_FOREIGN_KEY in codes:
            return WAITING
        if codes & ROW_CODES:
            return REFUSED
        if codes:
            return None
        return super().row_error(exc)

    # --- setup -----------------------------------------------------------------------------
    def prepare_ddl(self) -> list[str]:
        return split_script(template("database.sql"))

    def control_ddl(self) -> list[str]:
        dialect = self.engine.dialect
        if dialect.server_version_info is None:  # not connected yet: ask the server
            try:
                with self.engine.connect():
                    pass
            except sa_exc.DBAPIError:
                dialect.server_version_info = (3, 0)  # unreachable: the oldest we support
        ddl = []
        for t in self.ct.metadata.sorted_tables:
            create = str(sa.schema.CreateTable(t).compile(self.engine)).strip()
            ddl.append(guard("RDB$RELATIONS", "RDB$RELATION_NAME", t.name, create))
            for i in t.indexes:
                index = str(sa.schema.CreateIndex(i).compile(self.engine)).strip()
                ddl.append(guard("RDB$INDICES", "RDB$INDEX_NAME", str(i.name), index))
        inc = self.quote_table(self.ct.incarnation.fullname)
        ddl.append(
            f"INSERT INTO {inc} (id, incarnation, created_at, reason) "
            f"SELECT 1, '{uuid.uuid4().hex}', CURRENT_TIMESTAMP, 'created by replicator setup' "
            f"FROM RDB$DATABASE WHERE NOT EXISTS (SELECT 1 FROM {inc} WHERE id = 1)"
        )
        return ddl

    def tracking_ddl(self, conn: Connection | None, table: TrackedTable) -> list[str]:
        names = self.tracking_names(table, conn)
        statements = split_script(template("tracking.sql").format(**names))
        if conn is None or not self.has_table(conn, table.name):
            return statements
        existing = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        skip = {
            f"ALTER TABLE {names['table']} ADD {self.quote(c)} "
            for c in (table.version, table.origin)
            if c in existing
        }
        index = self.engine.dialect.denormalize_name(names["version_index_name"])
        if conn.exec_driver_sql(
            "SELECT 1 FROM RDB$INDICES WHERE RDB$INDEX_NAME = ?", (index,)
        ).first():
            skip.add(f"CREATE INDEX {names['version_index']} ")
        return [s for s in statements if not any(s.startswith(p) for p in skip)]

    def tracking_names(self, table: TrackedTable, conn: Connection | None) -> dict[str, str]:
        """Firebird 3 names have at most 31 characters: trigger and index names are a prefix
        and a hash of the full table name."""
        names = super().tracking_names(table, conn)
        q = self.quote
        digest = names["version_index"].strip('"')[-12:-4]  # repl_<slug>_<digest>_idx
        names["version_index_name"] = f"rpl_idx_{digest}"
        names["version_index"] = q(f"rpl_idx_{digest}")
        names["stamp_trigger"] = q(f"rpl_stamp_{digest}")
        names["tombstone_trigger"] = q(f"rpl_del_{digest}")
        tomb = self.ct.tombstone.c
        names["tomb_columns"] = ", ".join(
            q(c.name) for c in (tomb.table_name, tomb.key, tomb.version, tomb.origin)
        )
        old = [f"OLD.{q(k)}" for k in table.key]
        names["old_key_json"] = (
            "'[' || " + " || ',' || ".join(json_text(o) for o in old) + " || ']'"
        )
        return names

    def script(self, statements: list[str]) -> str:
        """The statements as an isql script: PSQL bodies between SET TERM, each statement
        committed like `setup` does. isql commits DDL by itself (AUTODDL) but not an EXECUTE
        BLOCK (its CREATE TABLE through EXECUTE STATEMENT) nor DML: without the COMMITs the
        next DDL, run in isql's DDL transaction, deadlocks on the uncommitted metadata."""
        out = [SCRIPT_HEADER]
        for stmt in statements:
            text = stmt.strip().rstrip(";")
            if is_psql(text):
                out.append(f"SET TERM ^ ;\n{text}^\nSET TERM ; ^\nCOMMIT;")
            else:
                out.append(text + ";\nCOMMIT;")
        return "\n\n".join(out) + "\n"


def _literal_family(kind: sa.types.TypeEngine[Any]) -> tuple[type, ...]:
    """The Python values written as literals into a column of this type."""
    if isinstance(kind, sa.Boolean | sa.LargeBinary | sa.types.NullType):
        return ()
    if isinstance(kind, sa.Integer):
        return (int,)
    if isinstance(kind, sa.Float):
        return (int, float)
    if isinstance(kind, sa.Numeric):
        return (int, Decimal)
    if isinstance(kind, sa.String):  # VARCHAR, CHAR, BLOB SUB_TYPE TEXT
        return (str,)
    if isinstance(kind, sa.DateTime):
        return (datetime,)
    if isinstance(kind, sa.Date):
        return (date,)
    if isinstance(kind, sa.Time):
        return (time,)
    return ()


def _literal(value: Any) -> str | None:
    """A value as a Firebird SQL literal that reads back exactly the same, or None when it is
    better passed as a parameter (bytes, long or unusual text, aware or odd timestamps). The
    sub-procedure's parameter (the column's type) converts the literal as it would the
    parameter: text is transliterated to the column's character set, decimals are exact."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return None  # as a parameter: the driver's conversion (into a SMALLINT...)
    if isinstance(value, int):
        return str(value) if -(2**63) <= value < 2**63 else None
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        text = format(value, "f")
        if sum(c.isdigit() for c in text) > 18:  # Firebird 3 reads such a literal as a double
            text = format(value.normalize(), "f")
        return text if sum(c.isdigit() for c in text) <= 18 else None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        text = repr(value)  # the shortest text that reads back as the same double
        return text if "e" in text else text + "e0"  # with an exponent: a DOUBLE literal
    if isinstance(value, str):
        if len(value) > LITERAL_TEXT or _CONTROL.search(value):  # newlines, tabs: parameters
            return None
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, datetime):
        if value.tzinfo is not None or value.microsecond % TIME_QUANTUM_US:
            return None
        return f"TIMESTAMP '{value.year:04d}-{value:%m-%d %H:%M:%S}.{value.microsecond // 100:04d}'"
    if isinstance(value, date):
        return f"DATE '{value.year:04d}-{value:%m-%d}'"
    if isinstance(value, time):
        if value.tzinfo is not None or value.microsecond % TIME_QUANTUM_US:
            return None
        return f"TIME '{value:%H:%M:%S}.{value.microsecond // 100:04d}'"
    return None


LITERAL_TEXT = 2000  # characters: longer text goes as a parameter
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _charset(kind: sa.types.TypeEngine[Any], default: str) -> str:
    """The character set of a reflected text column (its own, else the database's)."""
    if not isinstance(kind, sa.String):
        return ""
    own = getattr(kind, "charset", None)
    return str(own).strip().upper() if own else default


__all__ = ["FirebirdBackend"]
