"""SQL Server through pyodbc and Microsoft's ODBC Driver 18 (docs/sqlserver.md).

NOT TESTED AGAINST A LIVE SERVER: the statements are built and compiled for the mssql dialect
and checked by tests/test_backend_mssql.py without a server.

Versions are `rowversion` values, stamped by SQL Server itself on every insert and update; the
safe bound of a read is MIN_ACTIVE_ROWVERSION() - 1, read just before the read's SNAPSHOT
transaction starts. The replicator's writes are marked in SESSION_CONTEXT for the triggers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import mssql
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, Tuple

from replicator.backends.base import (
    PURGE_PAGE,
    Capabilities,
    Conflict,
    Row,
    StagedTarget,
    TrackedTable,
    chunks,
    delete_statement,
    update_then_insert,
)
from replicator.backends.odbc import odbc_error
from replicator.errors import BusyError
from replicator.quarantine import REFUSED, WAITING

MAX_PARAMS = 2100  # parameters per statement (SQL Server's limit)
STAGE_ROWS = 1000  # rows per INSERT ... VALUES (SQL Server's limit)

# SQL Server error numbers. Transient: deadlock victim, lock request timeout, snapshot update
# conflict, client timeout (-2), connection failures, and Azure SQL's throttling/failover.
TRANSIENT_CODES = {
    -2, 233, 1205, 1222, 3960, 10053, 10054, 10060, 10061, 10928, 10929, 40143, 40197,
    40501, 40613, 49918, 49919, 49920,
}  # fmt: skip
# 547 is a FOREIGN KEY and a CHECK conflict alike (one number): held as waiting, retried,
# the reason says which.
WAITING_CODES = {547}
REFUSED_CODES = {
    241, 242, 245, 515, 2601, 2627, 2628, 8114, 8115, 8152, 220, 232, 244, 248, 517, 8116,
}  # fmt: skip
PERMANENT_CODES = {207, 208, 229, 230, 262, 297, 916, 4060, 18456}
TRANSIENT_STATES = {"40001", "HYT00", "HYT01"}


class RowVersion(sa.types.TypeDecorator[int]):
    """A rowversion read and compared as the integer it is (8 bytes, big-endian): bound as
    binary(8), so `version > ?` uses the index on the column."""

    impl = mssql.ROWVERSION
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return None if value is None else int(value).to_bytes(8, "big", signed=False)

    def process_result_value(self, value: Any, dialect: Any) -> int | None:
        return None if value is None else int.from_bytes(bytes(value), "big")


class MergeInsert(sa.Insert):
    """INSERT with the ON CONFLICT forms the core uses, as a MERGE (single-row VALUES)."""

    inherit_cache = False
    _merge_keys: tuple[str, ...] | None = None
    _merge_update: tuple[str, ...] = ()

    def on_conflict_do_nothing(self, index_elements: Any = None, **_: Any) -> MergeInsert:
        return self._merge(index_elements, ())

    def on_conflict_do_update(
        self, index_elements: Any = None, set_: Any = None, where: Any = None, **_: Any
    ) -> MergeInsert:
        if where is not None:
            raise NotImplementedError("MERGE ... WHEN MATCHED AND ... is not built here")
        return self._merge(index_elements, tuple(str(k) for k in (set_ or {})))

    def _merge(self, index_elements: Any, update: tuple[str, ...]) -> MergeInsert:
        keys = tuple(
            str(getattr(k, "name", k))
            for k in (index_elements or [c.name for c in self.table.primary_key.columns])  # type: ignore[attr-defined]
        )
        out = self._generate()
        out._merge_keys = keys
        out._merge_update = update
        return out


_INSERT = re.compile(
    r"^INSERT INTO (?P<table>.+?) \((?P<cols>.+?)\) VALUES \((?P<vals>.+)\)$", re.S
)


@compiles(MergeInsert, "mssql")
def _compile_merge(element: MergeInsert, compiler: Any, **kw: Any) -> str:
    text = str(compiler.visit_insert(element, **kw))
    if element._merge_keys is None:
        return text
    found = _INSERT.match(text)  # the compiler's own INSERT, one row of VALUES
    if found is None:
        raise NotImplementedError(f"cannot turn into a MERGE: {text}")
    q = compiler.preparer.quote
    cols = found["cols"]
    names = [c.strip() for c in cols.split(",")]
    on = " AND ".join(f"tgt.{q(k)} = src.{q(k)}" for k in element._merge_keys)
    merge = (
        f"MERGE INTO {found['table']} WITH (HOLDLOCK) AS tgt "
        f"USING (VALUES ({found['vals']})) AS src ({cols}) ON {on}"
    )
    if element._merge_update:
        sets = ", ".join(f"{q(c)} = src.{q(c)}" for c in element._merge_update)
        merge += f" WHEN MATCHED THEN UPDATE SET {sets}"
    values = ", ".join(f"src.{n}" for n in names)
    return f"{merge} WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values});"


_ORDER = {operators.gt, operators.ge, operators.lt, operators.le}


@compiles(BinaryExpression, "mssql")
def _compile_binary(element: BinaryExpression[Any], compiler: Any, **kw: Any) -> str:
    """SQL Server has no row values: `(a, b) > (x, y)` is spelled `a > x OR (a = x AND b > y)`
    and `(a, b) IN ((x, y), ...)` as `(a = x AND b = y) OR ...`, so the core's position and key
    lookups compile unchanged. (The engine runs without a statement cache: the IN form binds
    the values of each statement.)"""
    left, right, op = element.left, element.right, element.operator
    if isinstance(left, Tuple) and isinstance(right, Tuple) and op in _ORDER:
        return str(
            compiler.process(_row_compare(list(left.clauses), list(right.clauses), op), **kw)
        )
    if (
        isinstance(left, Tuple)
        and isinstance(right, BindParameter)
        and op
        in (
            operators.in_op,
            operators.not_in_op,
        )
    ):
        cols = list(left.clauses)
        found = sa.or_(
            sa.false(),
            *[
                sa.and_(*[c == sa.literal(v, c.type) for c, v in zip(cols, row, strict=True)])
                for row in right.value or []
            ],
        )
        expr = found if op is operators.in_op else sa.not_(found)
        return str(compiler.process(sa.Grouping(expr), **kw))
    return str(compiler.visit_binary(element, **kw))


def _row_compare(left: list[Any], right: list[Any], op: Any) -> sa.ColumnElement[bool]:
    strict = {operators.ge: operators.gt, operators.le: operators.lt}.get(op, op)
    head, rest = left[0], right[0]
    if len(left) == 1:
        return sa.Grouping(op(head, rest))
    return sa.Grouping(
        sa.or_(strict(head, rest), sa.and_(head == rest, _row_compare(left[1:], right[1:], op)))
    )


class SQLServerBackend(StagedTarget):
    dialect = "mssql"
    capabilities = Capabilities(max_bind_params=2000, bulk_copy=False, schemas=True)
    control_schema = "replicator"
    control_prefix = ""
    write_hold_seconds = 0.2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _fit_control_tables(self.ct.metadata)
        # a tombstone's version is the rowversion its own row got (see tracking.sql)
        self.ct.tombstone.append_column(sa.Column("stamp", mssql.ROWVERSION, nullable=False))

    def pause_after(self, held: float) -> float:
        return 0.02

    def create_engine(self, url: URL) -> Engine:
        if url.drivername == "mssql":
            url = url.set(drivername="mssql+pyodbc")
        engine = sa.create_engine(
            url,
            query_cache_size=0,  # row-value IN is compiled with its values (see above)
            pool_pre_ping=True,
            pool_size=self.pool_size,
            max_overflow=self.pool_size,
            pool_recycle=1800,
            pool_timeout=60,
        )
        lock_ms = int(self.lock_timeout_ms)

        @event.listens_for(engine, "connect")
        def _pin(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # bounded lock waits; dates parsed one way; errors instead of truncation; an
            # error never aborts the whole transaction (savepoints isolate bad rows)
            cur.execute(
                f"SET LOCK_TIMEOUT {lock_ms}; SET DATEFORMAT ymd; SET ANSI_WARNINGS ON; "
                "SET ARITHABORT ON; SET XACT_ABORT OFF; SET NOCOUNT OFF"
            )
            cur.close()
            dbapi_conn.commit()

        return engine

    # --- errors ----------------------------------------------------------------------------
    def is_transient(self, orig: BaseException) -> bool | None:
        state, native, _ = odbc_error(orig)
        if not state:
            return None
        if native in TRANSIENT_CODES:
            return True
        if native in PERMANENT_CODES | REFUSED_CODES | WAITING_CODES:
            return False
        if state[:2] == "08" or state in TRANSIENT_STATES:
            return True
        if state[:2] in {"IM", "42", "28", "21", "22", "23"}:
            return False
        return None

    def row_error(self, exc: BaseException) -> str | None:
        orig = getattr(exc, "orig", exc)
        state, native, _ = odbc_error(orig)
        if native in WAITING_CODES:
            return WAITING
        if native in REFUSED_CODES or (state and state[:2] in {"21", "22", "23"}):
            return REFUSED
        if isinstance(orig, UnicodeError | ValueError | TypeError):
            return REFUSED
        return None

    # --- transactions ------------------------------------------------------------------------
    @contextmanager
    def read_snapshot(self) -> Iterator[Connection]:
        """The bound first, then the SNAPSHOT transaction: every row below the bound was
        committed before the snapshot began, so the snapshot holds it."""
        with self.engine.connect() as conn:
            bound = conn.exec_driver_sql(BOUND).scalar()
            conn.commit()
            snap = conn.execution_options(isolation_level="SNAPSHOT")
            with snap.begin():
                snap.info["replicator_bound"] = int(bound or 0)
                yield snap

    def safe_upper_bound(self, conn: Connection, job: str) -> int:
        bound = conn.info.get("replicator_bound")
        return int(bound) if bound is not None else int(conn.exec_driver_sql(BOUND).scalar() or 0)

    @contextmanager
    def write(self, job: str) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            try:
                with conn.begin():
                    self.lock_job(conn, job)
                    yield conn
            finally:
                try:
                    self.mark_origin(conn, None)  # session context outlives transactions
                    conn.commit()
                except sa.exc.DBAPIError:
                    conn.invalidate()

    def lock_job(self, conn: Connection, job: str) -> None:
        """sp_getapplock owned by the transaction: released at commit or rollback."""
        digest = hashlib.sha1(job.encode()).hexdigest()
        got = conn.exec_driver_sql(
            "SET NOCOUNT ON; DECLARE @r int; EXEC @r = sp_getapplock @Resource = ?, "
            "@LockMode = 'Exclusive', @LockOwner = 'Transaction', @LockTimeout = 0; SELECT @r",
            (f"replicator:{digest}",),
        ).scalar()
        if got is None or int(got) < 0:
            raise BusyError(f"job {job} is running in another service; skipped this turn")

    def mark_origin(self, conn: Connection, origin: str | None) -> None:
        conn.exec_driver_sql(
            "EXEC sp_set_session_context @key = N'replicator_origin', @value = ?", (origin,)
        )

    def purge_tombstones(self, conn: Connection, floor: int) -> int:
        return int(conn.execute(purge_statement(self.ct.tombstone, floor)).rowcount or 0)

    # --- catalog -----------------------------------------------------------------------------
    def table(self, conn: Connection, name: str) -> sa.Table:
        """Reflected, with rowversion columns read as integers (the version column)."""
        cached = name in self._tables
        table = super().table(conn, name)
        if not cached:
            for column in table.c:
                if isinstance(column.type, mssql.TIMESTAMP):
                    column.type = RowVersion()
        return table

    # --- setup ---------------------------------------------------------------------------
    def prepare_ddl(self) -> list[str]:
        schema = (self.control_schema or "").replace("'", "''")
        return [
            f"IF SCHEMA_ID(N'{schema}') IS NULL "
            f"EXEC(N'CREATE SCHEMA {self.quote(self.control_schema or '')}')"
        ]

    def database_ddl(self) -> list[str]:
        """The reader's SNAPSHOT transactions need snapshot isolation allowed."""
        return ["ALTER DATABASE CURRENT SET ALLOW_SNAPSHOT_ISOLATION ON"]

    def control_ddl(self) -> list[str]:
        """SQL Server has no CREATE TABLE IF NOT EXISTS: each statement checks first."""
        ddl = []
        for t in self.ct.metadata.sorted_tables:
            create = str(sa.schema.CreateTable(t).compile(dialect=self.engine.dialect)).strip()
            ddl.append(f"IF OBJECT_ID({_literal(t.fullname)}, N'U') IS NULL\n{create}")
        for t in self.ct.metadata.sorted_tables:
            for i in t.indexes:
                create = str(sa.schema.CreateIndex(i).compile(dialect=self.engine.dialect))
                ddl.append(
                    f"IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = "
                    f"{_literal(str(i.name))} AND object_id = OBJECT_ID({_literal(t.fullname)}))"
                    f"\n{create.strip()}"
                )
        inc = self.quote_table(self.ct.incarnation.fullname)
        ddl.append(
            f"IF NOT EXISTS (SELECT 1 FROM {inc} WHERE id = 1)\n"
            f"INSERT INTO {inc} (id, incarnation, created_at, reason) VALUES "
            "(1, LOWER(REPLACE(CONVERT(nvarchar(36), NEWID()), '-', '')), SYSDATETIMEOFFSET(), "
            "N'created by replicator setup')"
        )
        return ddl

    def tracking_ddl(self, conn: Connection | None, table: TrackedTable) -> list[str]:
        return [s.rstrip().removesuffix(";") for s in super().tracking_ddl(conn, table)]

    def tracking_names(self, table: TrackedTable, conn: Connection | None) -> dict[str, str]:
        names = super().tracking_names(table, conn)
        q = self.quote
        schema = table.name.rpartition(".")[0]

        def scoped(name: str) -> str:  # triggers live in their table's schema
            return f"{q(schema)}.{q(name)}" if schema else q(name)

        slug = names["stamp_trigger"].strip("[]").removeprefix("replicator_stamp_")
        names.update(
            {
                "table_literal": _literal(self.quote_table(table.name)),
                "table_name_literal": _literal(table.name),
                "version_literal": _literal(table.version),
                "origin_literal": _literal(table.origin),
                "index_literal": _literal(f"repl_{slug}_idx"),
                "stamp_trigger": scoped(f"replicator_stamp_{slug}"),
                "tombstone_trigger": scoped(f"replicator_del_{slug}"),
                "deleted_key_columns": ", ".join(f"d.{q(k)}" for k in table.key),
                "key_match_inserted": " AND ".join(f"t.{q(k)} = i.{q(k)}" for k in table.key),
                "key_match_deleted": " AND ".join(f"i.{q(k)} = d.{q(k)}" for k in table.key),
            }
        )
        return names

    def script(self, statements: list[str]) -> str:
        """For sqlcmd or SSMS: every statement in its own batch (CREATE TRIGGER must be the
        first statement of a batch)."""
        path = resources.files("replicator.sql").joinpath(self.dialect, "script_header.sql")
        header = path.read_text(encoding="utf-8").strip()
        return (
            "\n".join([header, *[f"{s.strip().removesuffix(';')};\nGO" for s in statements]]) + "\n"
        )

    # --- apply ---------------------------------------------------------------------------
    def insert_construct(self, table: sa.Table) -> Any:
        return MergeInsert(table)

    def stage(
        self, conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Row]
    ) -> sa.Table:
        stage = stage_table(table, columns)
        name = self.quote(stage.name)
        conn.exec_driver_sql(f"IF OBJECT_ID(N'tempdb..{stage.name}') IS NOT NULL DROP TABLE {name}")
        conn.execute(sa.schema.CreateTable(stage))
        per = max(1, min(STAGE_ROWS, MAX_PARAMS // max(1, len(columns)) - 1))
        for part in chunks(rows, per):
            conn.execute(
                sa.insert(stage).values([dict(zip(columns, r, strict=True)) for r in part])
            )
        return stage

    def differs(self, a: Any, b: Any) -> sa.ColumnElement[bool]:
        return _differs(a, b)

    def key_match(
        self, table: sa.Table, key: Sequence[str], keys: Sequence[Row]
    ) -> sa.ColumnElement[bool]:
        return _key_match(table, key, keys)


BOUND = "SELECT CAST(MIN_ACTIVE_ROWVERSION() AS bigint) - 1"


def _literal(text: str) -> str:
    return "N'" + text.replace("'", "''") + "'"


def stage_table(table: sa.Table, columns: Sequence[str]) -> sa.Table:
    """A #temporary table with the target's column types (no identity, no constraints)."""
    digest = hashlib.sha1(f"{table.fullname}:{','.join(columns)}".encode()).hexdigest()[:12]
    return sa.Table(
        f"#replicator_stage_{digest}",
        sa.MetaData(),
        *[sa.Column(c, _plain(table.c[c].type)) for c in columns],
    )


def _plain(kind: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    if isinstance(kind, RowVersion | mssql.TIMESTAMP):
        return sa.LargeBinary(8)
    return kind


def upsert_statements(
    table: sa.Table,
    stage: sa.Table,
    columns: Sequence[str],
    key: Sequence[str],
    conflict: Conflict,
) -> list[Any]:
    """The statements of SQL Server's upsert from a stage (see StagedTarget)."""
    return update_then_insert(table, stage, columns, key, conflict, _differs)


def _differs(a: Any, b: Any) -> sa.ColumnElement[bool]:
    """NULL-safe and exact: text compares by its bytes, not by a case-insensitive collation."""
    if isinstance(a.type, sa.String | sa.JSON | sa.types.NullType):
        raw = mssql.VARBINARY("max")  # type: ignore[no-untyped-call]
        a, b = sa.cast(a, raw), sa.cast(b, raw)
    differs: sa.ColumnElement[bool] = a.is_distinct_from(b)
    return differs


def _key_match(table: sa.Table, key: Sequence[str], keys: Sequence[Row]) -> sa.ColumnElement[bool]:
    """SQL Server has no row-value IN: (k1 = ? AND k2 = ?) OR ... for composite keys."""
    if len(key) == 1:
        return table.c[key[0]].in_([k[0] for k in keys])
    return sa.or_(*[sa.and_(*[table.c[c] == v for c, v in zip(key, k, strict=True)]) for k in keys])


def delete_keys(
    table: sa.Table, key: Sequence[str], keys: Sequence[Row], soft_column: str | None
) -> Any:
    """The DELETE (or soft delete) of one list of keys."""
    return delete_statement(table, _key_match(table, key, keys), soft_column)


def purge_statement(tombstone: sa.Table, floor: int) -> Any:
    """DELETE TOP (n) of the acknowledged tombstones."""
    t = tombstone.c
    page = sa.select(t.id).where(t.version < floor).order_by(t.id).limit(PURGE_PAGE)
    return sa.delete(tombstone).where(t.id.in_(page.scalar_subquery()))


def _fit_control_tables(metadata: sa.MetaData) -> None:
    """Indexed TEXT columns (canonical JSON keys, ASCII) as VARCHAR(850), other text as
    NVARCHAR, and primary keys over them NONCLUSTERED (1,700 bytes of key instead of 900)."""
    for table in metadata.tables.values():
        indexed = {c.name for c in table.primary_key.columns}
        for index in table.indexes:
            indexed.update(c.name for c in index.columns)
        for constraint in table.constraints:
            if isinstance(constraint, sa.UniqueConstraint):
                indexed.update(c.name for c in constraint.columns)
        wide = False
        for column in table.columns:
            if isinstance(column.type, sa.Text) and column.name in indexed:
                column.type = sa.String(850)  # canonical JSON is ASCII
                wide = wide or column.primary_key
            elif isinstance(column.type, sa.Text):
                column.type = sa.UnicodeText()  # NVARCHAR(max), not the deprecated TEXT
            elif isinstance(column.type, sa.String) and not isinstance(column.type, sa.Unicode):
                column.type = sa.Unicode(column.type.length)
        if wide:
            table.primary_key.dialect_options["mssql"]["clustered"] = False
