"""PostgreSQL: the server (and registers that run it). Versions are transaction ids."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg.types.string import TextLoader
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Connection, Engine

from replicator.backends.base import Backend, Capabilities, Row, delete_statement
from replicator.errors import BusyError, PermanentError
from replicator.position import Blocker, SourcePosition

_cursor_ids = itertools.count(1)
# Types whose text form is the same on every PostgreSQL session of ours (UTC, ISO dates;
# not money, whose text depends on lc_monetary).
TEXT_TYPES = (
    "numeric",
    "float4",
    "float8",
    "timestamptz",
    "timestamp",
    "date",
    "time",
    "timetz",
    "interval",
    "uuid",
    "json",
    "jsonb",
    "inet",
    "cidr",
)

# Every setting that changes the text form of a value, pinned in every session: values travel
# PostgreSQL to PostgreSQL as text (see `stream`), so a database or role whose own DateStyle
# is 'SQL, DMY' (01/02/2024), IntervalStyle 'sql_standard' or extra_float_digits 0 would
# otherwise change or round them on the way. lc_monetary (money) cannot be set by every role.
SESSION_SETTINGS = {
    "TimeZone": "UTC",  # naive timestamps from SQLite registers mean UTC
    "DateStyle": "ISO,YMD",  # no space: libpq splits `options` at spaces
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",  # shortest exact form of float4/float8
    "bytea_output": "hex",
    "client_encoding": "UTF8",
}


def _pin_session(dbapi_connection: Any, connection_record: Any) -> None:
    """Pin the settings again with SET, for the case a pooler dropped the startup options."""
    names = list(SESSION_SETTINGS)
    values = [SESSION_SETTINGS[n] for n in names]
    with dbapi_connection.cursor() as cur:
        cur.execute(
            "SELECT set_config(n, v, false) FROM unnest(%s::text[], %s::text[]) AS s(n, v)",
            (names, values),
        )
    dbapi_connection.commit()  # a SET in a rolled-back transaction is undone


def _ping(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection that no longer answers (server restarted, link cut) is replaced
    before use."""
    try:
        if dbapi_connection.autocommit:
            dbapi_connection.execute("SELECT 1")
        elif dbapi_connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            # one round trip (outside a transaction there is no BEGIN and no ROLLBACK)
            dbapi_connection.autocommit = True
            try:
                dbapi_connection.execute("SELECT 1")
            finally:
                dbapi_connection.autocommit = False
        else:
            dbapi_connection.execute("SELECT 1")
            dbapi_connection.rollback()
    except psycopg.Error as exc:
        raise sa.exc.DisconnectionError(str(exc)) from exc


SAFE_BOUND = """
WITH snap AS (SELECT pg_current_snapshot() AS s),
elsewhere AS (
    SELECT backend_xid::text::bigint AS xid FROM pg_stat_activity
     WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database()
    UNION ALL
    SELECT transaction::text::bigint FROM pg_prepared_xacts
     WHERE database <> current_database()
)
SELECT coalesce(
    (SELECT min(x::text::bigint) FROM snap, pg_snapshot_xip(snap.s) AS x
      WHERE (x::text::bigint & 4294967295) NOT IN (SELECT xid FROM elsewhere)),
    (SELECT pg_snapshot_xmax(s)::text::bigint FROM snap)
) - 1
"""


# SQLSTATEs that go away by themselves: connection exceptions, insufficient resources,
# operator intervention (shutdown, restart, statement timeout), lock not available,
# serialization failure and deadlock. Anything else (undefined column, privilege...) is fixed
# by a person.
TRANSIENT_CLASSES = {"08", "53", "57", "58"}
TRANSIENT_STATES = {"55P03", "55006", "40001", "40P01", "25P03"}

# The oldest writing transaction of this database, when it is older than BLOCKER_SECONDS.
BLOCKER_SECONDS = 60
BLOCKER = """
SELECT pid, application_name, usename, extract(epoch FROM now() - xact_start) AS age, state
  FROM pg_stat_activity
 WHERE datname = current_database() AND backend_xid IS NOT NULL
   AND pid <> pg_backend_pid() AND now() - xact_start > make_interval(secs => %(age)s)
 ORDER BY xact_start LIMIT 1
"""


# What `source_position` reads, in one statement (the same queries as SAFE_BOUND and BLOCKER).
POSITION = (
    "WITH blocking AS ("
    + BLOCKER.strip()
    + ")\nSELECT pg_is_in_recovery(), ("
    + SAFE_BOUND.strip()
    + "), (SELECT incarnation FROM {incarnation} WHERE id = 1), "
    "(SELECT seq FROM {ack} WHERE job = %(job)s), "
    "b.pid, b.application_name, b.usename, b.age, b.state "
    "FROM (SELECT 1) AS one LEFT JOIN blocking AS b ON true"
)


class PostgreSQLBackend(Backend):
    dialect = "postgresql"
    versions_are_transactions = True
    blocker_seconds: float = BLOCKER_SECONDS  # age of a transaction worth a warning
    capabilities = Capabilities(max_bind_params=32767, bulk_copy=True, schemas=True)
    control_schema = "replicator"
    control_prefix = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bounds: dict[str, int] = {}  # per job: the highest bound it has read
        # per target table: pages left before a direct COPY is tried again (see write_rows)
        self._direct_wait: dict[str, int] = {}

    def create_engine(self, url: URL) -> Engine:
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        pinned = " ".join(
            f"-c {name}={value}"
            for name, value in SESSION_SETTINGS.items()
            if name != "client_encoding"  # a connection parameter of its own
        )
        engine = sa.create_engine(
            url,
            # the liveness check is a checkout listener (below), not pool_pre_ping: the
            # service's stall guard sees a connection from its checkout on, so a check that
            # waits on a link that says nothing can be cut like any other wait
            pool_pre_ping=False,
            pool_size=self.pool_size,
            max_overflow=self.pool_size,
            pool_recycle=1800,  # a service runs for months: connections are renewed
            pool_timeout=60,
            connect_args={
                # a dead link (a NAT that forgot us, a cable pulled mid-query) is noticed in
                # about a minute, not after the kernel's two hours
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
                "tcp_user_timeout": 60000,
                # no server-side prepared statements: their generic plans turn key lookups
                # (`row_key IN (...)`) into scans of a whole table
                "prepare_threshold": None,
                "application_name": "replicator",
                "connect_timeout": 10,
                "client_encoding": "UTF8",
                # Pinned at startup, over any ALTER DATABASE / ALTER ROLE ... SET, and kept
                # by RESET ALL. Bounded waits: the replicator never queues behind a sale long.
                "options": f"{pinned} -c lock_timeout={self.lock_timeout_ms} "
                "-c statement_timeout=600000",
            },
        )
        event.listen(engine, "connect", _pin_session)
        event.listen(engine, "checkout", _ping)
        return engine

    def refuse_standby(self, conn: Connection) -> None:
        """Raise PermanentError if this database is a hot standby: its snapshots follow the
        primary's replay, so it cannot tell which transactions have ended (no safe bound)."""
        if conn.exec_driver_sql("SELECT pg_is_in_recovery()").scalar():
            raise PermanentError(
                f"{self.display_url} is a hot standby (pg_is_in_recovery()): it cannot give a "
                "safe read bound; point the job at the primary"
            )

    @contextmanager
    def read_snapshot(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                yield conn

    def lock_job(self, conn: Connection, job: str) -> None:
        got = conn.execute(
            sa.text("SELECT pg_try_advisory_xact_lock(hashtextextended(:job, 0))"),
            {"job": f"replicator:{job}"},
        ).scalar()
        if not got:
            raise BusyError(f"job {job} is running in another service; skipped this turn")

    def stream(
        self, conn: Connection, stmt: Any, page_rows: int, as_text: bool = False
    ) -> Iterator[Sequence[Row]]:
        if not as_text:
            yield from super().stream(conn, stmt, page_rows)
            return
        # PostgreSQL to PostgreSQL: numbers, timestamps, uuids, json stay in their text form
        # from the source's output to the target's COPY input, never parsed into Python.
        compiled = stmt.compile(
            dialect=self.engine.dialect, compile_kwargs={"render_postcompile": True}
        )
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor(name=f"replicator_read_{next(_cursor_ids)}") as cur:
            for name in TEXT_TYPES:
                cur.adapters.register_loader(name, TextLoader)
            cur.execute(str(compiled), compiled.params)
            while page := cur.fetchmany(page_rows):
                yield page

    def is_transient(self, orig: BaseException) -> bool | None:
        state = getattr(orig, "sqlstate", None)
        if state is None:
            # no SQLSTATE: the client side failed (refused, reset, timed out, server gone)
            return True if isinstance(orig, psycopg.OperationalError) else None
        return state[:2] in TRANSIENT_CLASSES or state in TRANSIENT_STATES

    def mark_origin(self, conn: Connection, origin: str | None) -> None:
        conn.execute(
            sa.text("SELECT set_config('replicator.origin', :o, true)"), {"o": origin or ""}
        )

    def safe_upper_bound(self, conn: Connection, job: str) -> int:
        # Every transaction id below the snapshot's horizon has ended: rows stamped with it
        # are final. A transaction of this database that took an older id and is still open
        # holds the bound back (so its late commit is never skipped). Transaction ids are
        # cluster-wide, so open transactions of *other* databases are left out: an id in the
        # snapshot that is seen running in another database was there at snapshot time too
        # (ids never move), so skipping it is safe; one that cannot be placed (ended since,
        # or hidden without pg_read_all_stats) counts, so the bound only errs low.
        # The bound can come out lower than an earlier one (a transaction of another database
        # that ends between the snapshot and the read of pg_stat_activity is counted as
        # running here): an earlier bound stays safe, so it never goes backwards.
        # Kept per job: a job's snapshots follow each other, while another job's snapshot (in
        # another worker thread) may be older than a bound read a moment ago.
        value = max(int(conn.exec_driver_sql(SAFE_BOUND).scalar() or 0), self._bounds.get(job, 0))
        self._bounds[job] = value
        return value

    def forget_bound(self) -> None:
        self._bounds.clear()

    def source_position(self, conn: Connection, job: str) -> SourcePosition:
        """The standby check, the safe bound, the identity, the job's acknowledgement and the
        oldest blocking transaction, in one round trip (five queries were most of an idle
        cycle's source side)."""
        row = conn.exec_driver_sql(
            POSITION.format(
                incarnation=self.quote_table(self.ct.incarnation.fullname),
                ack=self.quote_table(self.ct.ack.fullname),
            ),
            {"job": job, "age": self.blocker_seconds},
        ).one()
        standby, bound, incarnation, ack, *blocking = row
        if standby:
            self.refuse_standby(conn)
        value = max(int(bound or 0), self._bounds.get(job, 0))
        self._bounds[job] = value
        return SourcePosition(
            bound=value,
            incarnation=incarnation,
            ack_seq=int(ack) if ack is not None else None,
            blocker=self._blocker(blocking) if blocking[0] is not None else None,
        )

    def blocker(self, conn: Connection) -> Blocker | None:
        row = conn.exec_driver_sql(BLOCKER, {"age": self.blocker_seconds}).first()
        return self._blocker(tuple(row)) if row is not None else None

    def _blocker(self, row: Sequence[Any]) -> Blocker:
        pid, app, user, age, state = row
        return Blocker(
            int(pid),
            f"transaction of pid {pid} ({app or 'no application_name'}, user {user}, {state}) "
            f"open for {int(age)}s holds replication of this database back; end it, e.g. "
            f"SELECT pg_terminate_backend({pid})",
        )

    def prepare_ddl(self) -> list[str]:
        return [f"CREATE SCHEMA IF NOT EXISTS {self.quote(self.control_schema or '')}"]

    def insert_construct(self, table: sa.Table) -> Any:
        return postgresql.insert(table)

    # --- bulk path: COPY into a temporary table, then one set-based statement ----------
    def stage(
        self, conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Row]
    ) -> sa.TableClause:
        """COPY rows into a temporary table shaped like the target's columns.

        One stage per target table and column list, emptied and reused within the transaction
        (a new table per attempt would hold a lock slot each until commit)."""
        name = _stage_name(table, columns)
        self._copy_rows(conn, table, columns, rows, name)
        return sa.table(name, *[sa.column(c) for c in columns])

    def _copy_rows(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        stage: str | None,
    ) -> None:
        """COPY rows into the (emptied) stage `stage`, or into `table` itself (None)."""
        raw = conn.connection.driver_connection
        assert raw is not None
        as_json = [i for i, c in enumerate(columns) if isinstance(table.c[c].type, sa.JSON)]
        into = (
            sql.Identifier(stage)
            if stage
            else sql.Identifier(*([table.schema] if table.schema else []), table.name)
        )
        try:
            with raw.cursor() as cur:
                if stage:
                    _empty_stage(cur, stage, table, columns)
                cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
                with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(into, cols)) as copy:
                    for row in rows:
                        copy.write_row(_json_values(row, as_json) if as_json else row)
        except psycopg.Error as exc:  # raw cursor: give it SQLAlchemy's shape like the rest
            raise _wrapped(f"COPY {stage or table.name}", exc, raw) from exc

    def copy_through(
        self,
        conn: Connection,
        source: Connection,
        select: Any,
        table: sa.Table,
        columns: Sequence[str],
        build: Any | None,
        beat: Callable[[], None] | None = None,
    ) -> int:
        """PostgreSQL to PostgreSQL: the rows of `select`, run in the source connection
        `source` (another PostgreSQL database), travel as COPY blocks from its
        `COPY (SELECT ...) TO STDOUT` into this database's `COPY ... FROM STDIN`, never decoded.

        `build` None: straight into `table` (every key must be new: a duplicate fails the
        COPY with 23505, and the caller's savepoint undoes it); else into the stage, then the
        statement `build` makes of an INSERT from the stage (the upsert). `beat` is called at
        every megabyte (a stream of one huge version is progress too). The number of rows."""
        compiled = select.compile(
            dialect=self.engine.dialect, compile_kwargs={"render_postcompile": True}
        )
        params = compiled.params
        # binary when every column has the very type of its target column (faster to write
        # and to parse); text otherwise, which the target parses into its own types
        dialect = self.engine.dialect
        binary = all(
            str(c.type.compile(dialect=dialect)) == str(table.c[name].type.compile(dialect=dialect))
            for c, name in zip(select.selected_columns, columns, strict=True)
        )
        form = sql.SQL(" (FORMAT binary)" if binary else "")
        query = f"COPY ({compiled}) TO STDOUT{' (FORMAT binary)' if binary else ''}"
        if not params:  # no client-side merge: the dialect's escaped %% would stay doubled
            query = query.replace("%%", "%")
        src = source.connection.driver_connection
        raw = conn.connection.driver_connection
        assert src is not None and raw is not None
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        name = _stage_name(table, columns) if build is not None else None
        into_name = (
            sql.Identifier(name)
            if name is not None
            else sql.Identifier(*([table.schema] if table.schema else []), table.name)
        )
        try:
            with raw.cursor() as cur:
                if name is not None:
                    _empty_stage(cur, name, table, columns)
                with src.cursor() as scur, scur.copy(query, params or None) as out:
                    try:
                        with cur.copy(
                            sql.SQL("COPY {} ({}) FROM STDIN{}").format(into_name, cols, form)
                        ) as into:
                            _pipe(out, into, beat)
                    except psycopg.Error:
                        # read the source to its end rather than cancel it: a cancel would
                        # abort the batch's read snapshot, which the caller goes on using
                        for _ in out:
                            pass
                        raise
                count = max(0, int(cur.rowcount))
        except psycopg.Error as exc:
            raise _wrapped(f"COPY {name or table.name}", exc, raw) from exc
        if build is not None:
            staged = sa.table(str(name), *[sa.column(c) for c in columns])
            insert = self.insert_construct(table).from_select(
                list(columns), sa.select(*[staged.c[c] for c in columns])
            )
            conn.execute(build(insert))
        return count

    def write_rows(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        build: Any,
    ) -> None:
        """Rows go straight into the table by COPY (one write) while their keys are new;
        when that COPY meets an existing key (or any refusal: the upsert decides, an existing
        equal row is no error there), DirectRefused asks the caller to roll its savepoint back
        and write the same rows again (apply's bisection does): they, and the table's next
        DIRECT_WAIT pages, go through the stage and the upsert `build` makes.

        No savepoint of its own: a transaction of 50 pages would hold 100 subtransactions,
        past the 64 that PostgreSQL tracks cheaply (every snapshot then reads pg_subtrans)."""
        wait = self._direct_wait.get(table.fullname, 0)
        if wait:
            self._direct_wait[table.fullname] = wait - 1
        else:
            try:
                self._copy_rows(conn, table, columns, rows, None)
                return
            except sa_exc.DBAPIError as exc:
                if self.row_error(exc) is None:
                    raise
                self._direct_wait[table.fullname] = DIRECT_WAIT
                raise DirectRefused(str(exc)) from exc
        staged = self.stage(conn, table, columns, rows)
        insert = self.insert_construct(table).from_select(
            list(columns), sa.select(*[staged.c[c] for c in columns])
        )
        conn.execute(build(insert))

    def delete(
        self,
        conn: Connection,
        table: sa.Table,
        key: Sequence[str],
        keys: Sequence[Row],
        soft_column: str | None,
    ) -> int:
        if not keys:
            return 0
        staged = self.stage(conn, table, key, keys)
        match = sa.and_(*[table.c[k] == staged.c[k] for k in key])
        return int(conn.execute(delete_statement(table, match, soft_column)).rowcount or 0)


COPY_BUFFER = 1 << 20


class DirectRefused(Exception):
    """A direct COPY of rows into their table was refused: roll back, write them again."""

    try_again = True  # read by apply's bisection


# pages (or, for COPY streams, batches) through the stage after a direct COPY met an
# existing key, before a direct COPY is tried again
DIRECT_WAIT = 16


def _pipe(out: Any, into: Any, beat: Callable[[], None] | None) -> None:
    """COPY data from a COPY TO into a COPY FROM, gathered into writes of about 1 MB (the
    source sends a message per row), `beat` called after each."""
    buffer = bytearray()
    for block in out:
        buffer += block
        if len(buffer) >= COPY_BUFFER:
            into.write(buffer)
            buffer = bytearray()
            if beat is not None:
                beat()
    if buffer:
        into.write(buffer)


def _stage_name(table: sa.Table, columns: Sequence[str]) -> str:
    digest = hashlib.sha1(f"{table.fullname}:{','.join(columns)}".encode()).hexdigest()
    return f"replicator_stage_{digest[:12]}"


def _empty_stage(cur: Any, name: str, table: sa.Table, columns: Sequence[str]) -> None:
    """The stage for these columns of `table`, created once per transaction, emptied."""
    target = sql.Identifier(*([table.schema] if table.schema else []), table.name)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    cur.execute(
        sql.SQL(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {} ON COMMIT DROP AS "
            "SELECT {} FROM {} WITH NO DATA"
        ).format(sql.Identifier(name), cols, target)
    )
    cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(name)))


def _wrapped(what: str, exc: psycopg.Error, raw: Any) -> sa_exc.StatementError:
    """A driver error of a raw cursor in SQLAlchemy's shape, like every other error."""
    return sa_exc.DBAPIError.instance(
        what, None, exc, psycopg.Error, connection_invalidated=raw.closed
    )


def _json_values(row: Row, positions: list[int]) -> Row:
    """Python dicts and lists for json/jsonb columns travel as JSON."""
    values = list(row)
    for i in positions:
        if values[i] is not None and not isinstance(values[i], str):
            values[i] = Jsonb(values[i])
    return tuple(values)
