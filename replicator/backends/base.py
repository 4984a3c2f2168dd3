"""The backend interface and a default implementation in SQLAlchemy Core.

A dialect module overrides only what differs (alembic's ddl/impl.py pattern). Implementations
must be idempotent: applying the same rows or deletes twice leaves the target unchanged.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine

from replicator.errors import BusyError, PermanentError, ReplicatorError, TransientError
from replicator.position import Blocker, SourcePosition
from replicator.quarantine import REFUSED, WAITING
from replicator.state import ControlTables, control_tables, now
from replicator.values import scale_check, zone_adapter

Row = tuple[Any, ...]
PURGE_PAGE = 5000  # tombstones purged per batch at most
# Keys per `(k1, k2) IN (...)` lookup: PostgreSQL's planner recurses over such a list and
# fails with "stack depth limit exceeded" past about 8,000 tuples of three columns.
IN_KEYS = 1000


def key_chunk(max_bind_params: int, width: int) -> int:
    """How many keys of `width` columns one IN lookup takes."""
    return max(1, min(IN_KEYS, max_bind_params // max(1, width) - 1))


ORIGIN_COLUMN = "repl_origin"


@dataclass(frozen=True)
class Capabilities:
    max_bind_params: int
    bulk_copy: bool
    schemas: bool


@dataclass(frozen=True)
class Conflict:
    """How an incoming row meets an existing target row with the same key."""

    rule: str  # source_wins | keep_target | newer_wins
    column: str | None = None


@dataclass(frozen=True)
class TrackedTable:
    name: str
    key: Sequence[str]
    version: str
    origin: str = ORIGIN_COLUMN


class Backend:
    dialect: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities(999, False, False)
    control_schema: ClassVar[str | None] = None
    control_prefix: ClassVar[str] = "replicator_"
    # How long a batch may spend isolating refused rows while holding the target's lock.
    bisect_seconds: ClassVar[float] = 30.0
    # Whether all rows of one version were written by one source transaction (PostgreSQL's
    # transaction ids), so that a batch ending between versions never splits a transaction.
    versions_are_transactions: ClassVar[bool] = False
    # As a target that is split into short commits (a register receiving the catalog): the
    # longest a write transaction should hold the database, and the pause after it, so that
    # a sale waiting in the busy handler gets in (None: no limit, no pause).
    write_hold_seconds: ClassVar[float | None] = None

    def pause_after(self, held: float) -> float:
        """Seconds to leave the database free after a write transaction that held it for
        `held` seconds, so that a writer waiting for it gets in."""
        return 0.0

    def __init__(
        self,
        url: URL,
        node: str,
        lock_timeout_ms: int = 2000,
        timezone: str | None = None,
        pool_size: int = 5,
    ) -> None:
        self.url = url
        self.node = node
        self.lock_timeout_ms = lock_timeout_ms
        self.pool_size = pool_size  # connections kept open (the service's workers share them)
        # The zone of this database's naive timestamps (config `timezone`); None: not known,
        # naive values are passed on as they are (UTC for our PostgreSQL sessions).
        self.timezone = timezone
        self.engine = self.create_engine(url)
        self.ct: ControlTables = control_tables(self.control_schema, self.control_prefix)
        self._tables: dict[str, sa.Table] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.display_url}>"

    @property
    def display_url(self) -> str:
        """The URL for messages: no password, no query string (where secrets may hide)."""
        return self.url.set(query={}).render_as_string(hide_password=True)

    def create_engine(self, url: URL) -> Engine:
        return sa.create_engine(url)

    def exists(self) -> bool:
        """Whether connecting would find the database (rather than create it)."""
        return True

    def dispose(self) -> None:
        self.engine.dispose()

    def ping(self, conn: Connection) -> None:
        """The smallest query this database answers (a reachability check)."""
        conn.execute(sa.text("SELECT 1"))

    # --- catalog -------------------------------------------------------------------------
    def table(self, conn: Connection, name: str) -> sa.Table:
        """The reflected table (cached); `schema.table` names a schema."""
        if name not in self._tables:
            schema, _, bare = name.rpartition(".")
            self._tables[name] = sa.Table(
                bare, sa.MetaData(), schema=schema or None, autoload_with=conn
            )
        return self._tables[name]

    def has_table(self, conn: Connection, name: str) -> bool:
        schema, _, bare = name.rpartition(".")
        return sa.inspect(conn).has_table(bare, schema=schema or None)

    def forget_tables(self, names: Iterable[str] | None = None) -> None:
        """Reflect these tables (all: None) again at their next use."""
        if names is None:
            self._tables.clear()
        for name in names or ():
            self._tables.pop(name, None)

    # --- transactions --------------------------------------------------------------------
    @contextmanager
    def read_snapshot(self) -> Iterator[Connection]:
        """One consistent snapshot of the source for a whole batch, kept short."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self, job: str) -> Iterator[Connection]:
        """A target transaction that holds the job's lock; commits on success."""
        with self.engine.connect() as conn, conn.begin():
            self.lock_job(conn, job)
            yield conn

    def lock_job(self, conn: Connection, job: str) -> None:
        """Take the per-job lock for this transaction, or raise BusyError."""

    def stream(
        self, conn: Connection, stmt: Any, page_rows: int, as_text: bool = False
    ) -> Iterator[Sequence[Row]]:
        """Pages of a query's rows, fetched page by page from the server.

        `as_text`: a backend may return values of rich types (numbers, timestamps...) as the
        text the target parses anyway; only used when the target is the same kind of database.
        """
        result = conn.execute(
            stmt, execution_options={"stream_results": True, "yield_per": page_rows}
        )
        try:
            yield from result.partitions()
        finally:
            result.close()  # also when the reader stops early (its server cursor goes)

    def mark_origin(self, conn: Connection, origin: str | None) -> None:
        """Tell this database's triggers who is writing (None: the application)."""
        raise NotImplementedError

    def safe_upper_bound(self, conn: Connection, job: str) -> int:
        """The highest version all of whose writers have ended, read in `conn`'s snapshot
        (for `job`: a bound may be kept per job, never across jobs, whose snapshots are
        taken at other times by other threads)."""
        raise NotImplementedError

    # --- the source position: bound, identity, acknowledgements ------------------------------
    def source_position(self, conn: Connection, job: str) -> SourcePosition:
        """What this database says about itself in `conn`'s read snapshot."""
        bound = self.safe_upper_bound(conn, job)
        inc = self.ct.incarnation.c
        incarnation = conn.execute(sa.select(inc.incarnation).where(inc.id == 1)).scalar()
        a = self.ct.ack.c
        ack = conn.execute(sa.select(a.seq).where(a.job == job)).scalar()
        return SourcePosition(
            bound=bound,
            incarnation=incarnation,
            ack_seq=int(ack) if ack is not None else None,
            blocker=self.blocker(conn),
        )

    def forget_bound(self) -> None:
        """The database is another incarnation: an earlier bound no longer holds."""

    def blocker(self, conn: Connection) -> Blocker | None:
        """The oldest open writing transaction that holds the bound back, when it is old."""
        return None

    @contextmanager
    def source_write(self) -> Iterator[Connection]:
        """A short write transaction on this database as a source (acks, incarnation)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def write_ack(self, job: str, incarnation: str, seq: int, confirmed: int) -> int:
        """Tell this source that `job` is applying batch `seq` and has applied every tombstone
        below `confirmed`; purge the tombstones that every job has applied. Returns the
        number of tombstones purged."""
        a = self.ct.ack.c
        with self.source_write() as conn:
            values = {"incarnation": incarnation, "seq": seq, "confirmed": confirmed, "at": now()}
            # one statement, so two services acknowledging a job's first batch never collide
            conn.execute(
                self.insert_construct(self.ct.ack)
                .values(job=job, **values)
                .on_conflict_do_update(index_elements=["job"], set_=values)
            )
            floor = conn.execute(sa.select(sa.func.min(a.confirmed))).scalar()
            if not floor:
                return 0
            return self.purge_tombstones(conn, int(floor))

    def purge_tombstones(self, conn: Connection, floor: int) -> int:
        """Delete up to PURGE_PAGE tombstones below version `floor` (a page at a time: on a
        register this runs under its write lock); the number deleted."""
        t = self.ct.tombstone.c
        page = sa.select(t.id).where(t.version < floor).limit(PURGE_PAGE).scalar_subquery()
        return int(conn.execute(sa.delete(self.ct.tombstone).where(t.id.in_(page))).rowcount or 0)

    def renew_identity(self, conn: Connection, reason: str) -> None:
        """Setup --new-identity: this database starts a history of its own."""
        self._set_incarnation(conn, uuid.uuid4().hex, reason)

    def new_incarnation(self, reason: str) -> str:
        """Give this database a new identity (its history diverged from what targets saw)."""
        ident = uuid.uuid4().hex
        with self.source_write() as conn:
            self._set_incarnation(conn, ident, reason)
        return ident

    def ensure_incarnation(self, conn: Connection) -> None:
        """Setup: create this database's identity once."""
        inc = self.ct.incarnation.c
        if conn.execute(sa.select(inc.incarnation).where(inc.id == 1)).first() is None:
            self._set_incarnation(conn, uuid.uuid4().hex, "created by replicator setup")

    def _set_incarnation(self, conn: Connection, ident: str, reason: str) -> None:
        inc = self.ct.incarnation.c
        values = {"incarnation": ident, "created_at": now(), "reason": reason}
        done = conn.execute(sa.update(self.ct.incarnation).where(inc.id == 1).values(**values))
        if done.rowcount == 0:
            conn.execute(sa.insert(self.ct.incarnation).values(id=1, **values))

    # --- setup ---------------------------------------------------------------------------
    def control_ddl(self) -> list[str]:
        ddl = [
            str(sa.schema.CreateTable(t, if_not_exists=True).compile(self.engine))
            for t in self.ct.metadata.sorted_tables
        ]
        ddl += [
            str(sa.schema.CreateIndex(i, if_not_exists=True).compile(self.engine))
            for t in self.ct.metadata.sorted_tables
            for i in t.indexes
        ]
        # this database's identity (setup itself creates it the same way, once)
        ddl.append(
            f"INSERT INTO {self.quote_table(self.ct.incarnation.fullname)} "
            "(id, incarnation, created_at, reason) "
            f"VALUES (1, '{uuid.uuid4().hex}', CURRENT_TIMESTAMP, 'created by replicator setup') "
            "ON CONFLICT (id) DO NOTHING"
        )
        return ddl

    def tracking_ddl(self, conn: Connection | None, table: TrackedTable) -> list[str]:
        """The statements that track changes of one table, from sql/<dialect>/tracking.sql."""
        text = resources.files("replicator.sql").joinpath(self.dialect, "tracking.sql")
        template = text.read_text(encoding="utf-8")
        names = self.tracking_names(table, conn)
        return [chunk.format(**names) for chunk in split_sql(template)]

    def tracking_names(self, table: TrackedTable, conn: Connection | None) -> dict[str, str]:
        """Quoted names for the template. Object names carry a hash of the full table name,
        so tables whose names differ only past the length limit or in case never share."""
        q = self.quote
        digest = hashlib.sha1(table.name.encode()).hexdigest()[:8]
        slug = re.sub(r"[^a-z0-9_]", "_", table.name.rpartition(".")[2].lower())[:24]
        slug = f"{slug}_{digest}"
        old = [f"OLD.{q(k)}" for k in table.key]
        new = [f"NEW.{q(k)}" for k in table.key]
        names = {
            "table": self.quote_table(table.name),
            "table_name_literal": "'" + table.name.replace("'", "''") + "'",
            "version": q(table.version),
            "origin": q(table.origin),
            "key_columns": ", ".join(q(k) for k in table.key),
            "old_key_columns": ", ".join(old),
            "key_match_new": " AND ".join(
                f"{q(k)} IS {n}" for k, n in zip(table.key, new, strict=True)
            ),
            "key_changed": " OR ".join(
                f"{o} IS DISTINCT FROM {n}" for o, n in zip(old, new, strict=True)
            ),
            "version_index": q(f"repl_{slug}_idx"),
            "tombstone_table": self.quote_table(self.ct.tombstone.fullname),
            "stamp_function": f"{self.quote(self.control_schema or '')}.{q('stamp_' + slug)}",
            "tombstone_function": f"{self.quote(self.control_schema or '')}."
            f"{q('tombstone_' + slug)}",
            "stamp_trigger": q(f"replicator_stamp_{slug}"),
            "insert_trigger": q(f"replicator_ins_{slug}"),
            "update_trigger": q(f"replicator_upd_{slug}"),
            "rekey_trigger": q(f"replicator_rekey_{slug}"),
            "tombstone_trigger": q(f"replicator_del_{slug}"),
        }
        # The dollar quote around function bodies ({dollar}...{dollar}): one that occurs in
        # no filled name (a table may be called `x$body$y`); the template's own text never
        # contains `$repl_`.
        for attempt in itertools.count():
            tag = hashlib.sha1(f"{table.name}:{attempt}".encode()).hexdigest()[:8]
            dollar = f"$repl_{tag}$"
            if not any(dollar in value for value in names.values()):
                return {**names, "dollar": dollar}
        raise AssertionError("unreachable")

    def script(self, statements: list[str]) -> str:
        """`setup --print`: the statements as a script for this database's own client
        (a dialect may add delimiters around routine bodies, or batch separators)."""
        out = []
        for stmt in statements:
            text = stmt.strip()
            out.append(text if text.endswith(";") else text + ";")
        return "\n\n".join(out) + "\n"

    @contextmanager
    def setup_connection(self) -> Iterator[Connection]:
        """The connection `setup` installs on: one transaction, committed at the end. A
        database that uses new objects only once their DDL is committed (Firebird) overrides
        it to commit each statement."""
        with self.engine.begin() as conn:
            yield conn

    def prepare_ddl(self) -> list[str]:
        """Database-wide objects installed before the control tables, in one transaction."""
        return []

    def database_ddl(self) -> list[str]:
        """Database-wide settings that must run outside a transaction."""
        return []

    def quote(self, name: str) -> str:
        return str(self.engine.dialect.identifier_preparer.quote(name))

    def quote_table(self, name: str) -> str:
        schema, _, bare = name.rpartition(".")
        return f"{self.quote(schema)}.{self.quote(bare)}" if schema else self.quote(bare)

    # --- apply ---------------------------------------------------------------------------
    def row_adapter(
        self, table: sa.Table, columns: Sequence[str], source_timezone: str | None
    ) -> Callable[[Row], Row] | None:
        """How rows (values in `columns` order) must change to be written to `table`, built
        once per table and batch from the target's column types; None: write them as they are.

        Default (PostgreSQL targets): a naive timestamp bound for a column with a time zone
        is local time of the source (`source_timezone`), so it gets that zone; naive values
        for `timestamp without time zone` columns stay naive."""
        return zone_adapter(table, columns, source_timezone)

    def row_check(
        self,
        table: sa.Table,
        columns: Sequence[str],
        source_types: Sequence[sa.types.TypeEngine[Any]],
    ) -> Callable[[Row], None] | None:
        """A check that raises ValueError for a row this target would store other than it
        was sent (a decimal rounded to the column's scale); None: nothing to check."""
        return scale_check(table, columns, source_types)

    def upsert(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        key: Sequence[str],
        rows: Sequence[Row],
        conflict: Conflict,
    ) -> list[Row]:
        """Insert or update `rows`; return the keys of rows kept back by the conflict rule.

        Rows equal to the target are not written again, so a repeated batch changes nothing
        and fires no trigger.
        """
        if not rows:
            return []
        kept = (
            self.conflicting_keys(conn, table, columns, key, rows)
            if conflict.rule == "keep_target"
            else []
        )
        self.write_rows(
            conn,
            table,
            columns,
            rows,
            lambda insert: self.upsert_statement(insert, table, columns, key, conflict),
        )
        return kept

    def upsert_statement(
        self,
        insert: Any,
        table: sa.Table,
        columns: Sequence[str],
        key: Sequence[str],
        conflict: Conflict,
    ) -> Any:
        """INSERT .. ON CONFLICT that skips rows equal to the target (no useless writes)."""
        excluded = insert.excluded
        others = [c for c in columns if c not in key]
        if conflict.rule == "keep_target" or not others:
            return insert.on_conflict_do_nothing(index_elements=list(key))
        changed = sa.or_(
            *[comparable(table.c[c]).is_distinct_from(comparable(excluded[c])) for c in others]
        )
        if conflict.rule == "newer_wins" and conflict.column:
            col = conflict.column
            changed = sa.and_(changed, sa.or_(table.c[col].is_(None), excluded[col] > table.c[col]))
        return insert.on_conflict_do_update(
            index_elements=list(key), set_={c: excluded[c] for c in others}, where=changed
        )

    def write_rows(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        build: Any,
    ) -> None:
        """Default: one executemany of the built statement (drivers batch it)."""
        stmt = build(self.insert_construct(table))
        conn.execute(stmt, [dict(zip(columns, row, strict=True)) for row in rows])

    def insert_construct(self, table: sa.Table) -> Any:
        raise NotImplementedError

    def conflicting_keys(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        key: Sequence[str],
        rows: Sequence[Row],
    ) -> list[Row]:
        """Keys of `rows` that exist in the target with other values."""
        index = [columns.index(k) for k in key]
        out = []
        for chunk in chunks(rows, key_chunk(self.capabilities.max_bind_params, len(columns))):
            wanted = {tuple(r[i] for i in index): r for r in chunk}
            cond = sa.tuple_(*[table.c[k] for k in key]).in_(list(wanted))
            stmt = sa.select(*[table.c[c] for c in columns]).where(cond)
            for existing in conn.execute(stmt):
                k = tuple(existing[i] for i in index)
                if tuple(existing) != tuple(wanted.get(k, existing)):
                    out.append(k)
        return out

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
        where = sa.and_(*[table.c[k] == sa.bindparam(f"k_{i}") for i, k in enumerate(key)])
        params = [{f"k_{i}": v for i, v in enumerate(k)} for k in keys]
        conn.execute(delete_statement(table, where, soft_column), params)
        return len(keys)

    # --- errors --------------------------------------------------------------------------
    def classify(self, exc: BaseException) -> ReplicatorError:
        """Sort a driver error into transient (retry later) or permanent (stop, report)."""
        if isinstance(exc, ReplicatorError):
            return exc
        if getattr(getattr(exc, "orig", None), "sqlstate", None) == "42501":
            return PermanentError(
                f"{self.display_url}: {first_line(exc)}; the replicator's role lacks a "
                "privilege: run `replicator check` to see the GRANTs it needs"
            )
        if isinstance(exc, UnicodeError | ValueError | TypeError):
            return PermanentError(f"{self.display_url}: bad value: {exc}")
        transient = self.is_transient(getattr(exc, "orig", exc))
        if transient is not None:
            kind = TransientError if transient else PermanentError
            return kind(f"{self.display_url}: {first_line(exc)}")
        if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
            return TransientError(f"{self.display_url}: {first_line(exc)}")
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return TransientError(f"{self.display_url}: connection lost: {first_line(exc)}")
        return PermanentError(f"{self.display_url}: {first_line(exc)}")

    def is_transient(self, orig: BaseException) -> bool | None:
        """Whether a driver error goes away by itself (True: retry with backoff), will not
        (False: a schema, privilege or data problem to fix), or None: unknown (the class of
        the error decides). Sorted by the driver's codes, never by message text."""
        return None

    def row_error(self, exc: BaseException) -> str | None:
        """The quarantine state for a failure caused by the data of some row, or None for a
        failure of the database itself (connection, lock, missing table: the batch stops).
        Sorted by SQLSTATE: 23503 (foreign key) is `waiting` (a parent is missing), classes
        21, 22 and 23 are `refused`; values the driver cannot send are `refused`."""
        orig = getattr(exc, "orig", exc)
        state = getattr(orig, "sqlstate", None) or ""
        if state == "23503":
            return WAITING
        if state[:2] in {"21", "22", "23"}:
            return REFUSED
        if isinstance(orig, UnicodeError | ValueError | TypeError):
            return REFUSED
        return None


class StagedTarget(Backend):
    """A target whose own upsert would touch equal rows (MariaDB's ON DUPLICATE KEY UPDATE
    fires the insert trigger for every row; SQL Server has no skipping MERGE): rows go into a
    stage table (`stage`), then one UPDATE of the rows that differ (`differs`, exact) and one
    INSERT of the missing ones, so a repeated batch touches nothing. Deletes go by lists of
    keys (`key_match`)."""

    def stage(
        self, conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Row]
    ) -> sa.TableClause:
        """A temporary table with `columns` of `table`, holding `rows`."""
        raise NotImplementedError

    def differs(self, a: Any, b: Any) -> sa.ColumnElement[bool]:
        """NULL-safe and exact: the target's value `a` is not the staged value `b`."""
        return comparable(a).is_distinct_from(comparable(b))  # type: ignore[no-any-return]

    def key_match(
        self, table: sa.Table, key: Sequence[str], keys: Sequence[Row]
    ) -> sa.ColumnElement[bool]:
        """The rows of `table` whose `key` is one of `keys` (default: a row-value IN)."""
        if len(key) == 1:
            return table.c[key[0]].in_([k[0] for k in keys])
        return sa.tuple_(*[table.c[k] for k in key]).in_([tuple(k) for k in keys])

    def upsert(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        key: Sequence[str],
        rows: Sequence[Row],
        conflict: Conflict,
    ) -> list[Row]:
        if not rows:
            return []
        kept = (
            self.conflicting_keys(conn, table, columns, key, rows)
            if conflict.rule == "keep_target"
            else []
        )
        stage = self.stage(conn, table, columns, rows)
        for stmt in update_then_insert(table, stage, columns, key, conflict, self.differs):
            conn.execute(stmt)
        return kept

    def delete(
        self,
        conn: Connection,
        table: sa.Table,
        key: Sequence[str],
        keys: Sequence[Row],
        soft_column: str | None,
    ) -> int:
        done = 0
        for part in chunks(keys, key_chunk(self.capabilities.max_bind_params, len(key))):
            where = self.key_match(table, key, part)
            done += int(conn.execute(delete_statement(table, where, soft_column)).rowcount or 0)
        return done


def update_then_insert(
    table: sa.Table,
    stage: sa.TableClause,
    columns: Sequence[str],
    key: Sequence[str],
    conflict: Conflict,
    differs: Callable[[Any, Any], sa.ColumnElement[bool]],
) -> list[Any]:
    """From a stage: UPDATE of the rows that differ (by the conflict rule), then INSERT of
    the missing ones."""
    match = sa.and_(*[table.c[k] == stage.c[k] for k in key])
    out: list[Any] = []
    others = [c for c in columns if c not in key]
    if others and conflict.rule != "keep_target":
        changed = sa.or_(*[differs(table.c[c], stage.c[c]) for c in others])
        if conflict.rule == "newer_wins" and conflict.column:
            col = conflict.column
            changed = sa.and_(changed, sa.or_(table.c[col].is_(None), stage.c[col] > table.c[col]))
        out.append(
            sa.update(table).where(match, changed).values({table.c[c]: stage.c[c] for c in others})
        )
    missing = sa.select(*[stage.c[c] for c in columns]).where(
        ~sa.exists().where(match).correlate(stage)
    )
    out.append(sa.insert(table).from_select(list(columns), missing))
    return out


def comparable(col: Any) -> Any:
    """Columns whose type has no equality (json, unknown types) compare as text."""
    kind = col.type
    if isinstance(kind, sa.types.NullType) or (
        isinstance(kind, sa.JSON) and type(kind).__name__ != "JSONB"
    ):
        return sa.cast(col, sa.Text)
    return col


def delete_statement(
    table: sa.Table, where: sa.ColumnElement[bool], soft_column: str | None
) -> Any:
    """DELETE the matching rows, or mark them in the soft-delete column."""
    if soft_column:
        return (
            sa.update(table)
            .where(where, table.c[soft_column].is_distinct_from(sa.true()))
            .values({soft_column: sa.true()})
        )
    return sa.delete(table).where(where)


def first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


def split_sql(script: str) -> list[str]:
    """Statements of a template: chunks separated by blank lines, comment-only chunks out."""
    out = []
    for chunk in re.split(r"\n\s*\n", script):
        body = "\n".join(ln for ln in chunk.splitlines() if not ln.lstrip().startswith("--"))
        if body.strip():
            out.append(
                body.strip().rstrip(";") if not body.strip().endswith("END;") else body.strip()
            )
    return out


def chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


__all__ = [
    "Backend",
    "BusyError",
    "Capabilities",
    "Conflict",
    "Row",
    "StagedTarget",
    "TrackedTable",
]
