"""SQL Server without a server: no SQL Server runs here, so these tests check what can be
checked offline: the control and tracking DDL, the GO batches of the printed script, the
upsert, delete, purge and read statements compiled for the mssql dialect, and the sorting of
driver errors by SQLSTATE and SQL Server's error numbers. Nothing here proves the backend
against a live server (docs/sqlserver.md)."""

from __future__ import annotations

import re

import pyodbc
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from replicator.backends import open_backend
from replicator.backends.base import Conflict, TrackedTable
from replicator.backends.mssql import (
    BOUND,
    RowVersion,
    SQLServerBackend,
    delete_keys,
    purge_statement,
    stage_table,
    upsert_statements,
)
from replicator.errors import PermanentError, TransientError
from replicator.quarantine import REFUSED, WAITING

URL_TEXT = "mssql+pyodbc://pos@sqlhost/loja?driver=ODBC+Driver+18+for+SQL+Server"


@pytest.fixture
def backend() -> SQLServerBackend:
    opened = open_backend(sa.engine.make_url(URL_TEXT), "caixa")  # no connection is made
    assert isinstance(opened, SQLServerBackend)
    return opened


def sql(backend: SQLServerBackend, stmt: object) -> str:
    compiled = stmt.compile(  # type: ignore[attr-defined]
        dialect=backend.engine.dialect, compile_kwargs={"render_postcompile": True}
    )
    return re.sub(r"\s+", " ", str(compiled))


def sale_table() -> sa.Table:
    return sa.Table(
        "venda",
        sa.MetaData(),
        sa.Column("loja", sa.Integer, primary_key=True),
        sa.Column("número", sa.Integer, primary_key=True),
        sa.Column("cliente", sa.Unicode(80)),
        sa.Column("total", sa.Numeric(12, 2)),
        sa.Column("alterado", sa.DateTime),
        sa.Column("repl_version", RowVersion()),
        sa.Column("repl_origin", sa.Unicode(200)),
    )


# --- DDL -------------------------------------------------------------------------------------
def test_control_ddl_is_tsql(backend: SQLServerBackend) -> None:
    ddl = backend.control_ddl()
    assert backend.prepare_ddl() == [
        "IF SCHEMA_ID(N'replicator') IS NULL EXEC(N'CREATE SCHEMA replicator')"
    ]
    creates = [s for s in ddl if "CREATE TABLE" in s]
    assert len(creates) == len(backend.ct.metadata.tables)
    assert all(s.startswith("IF OBJECT_ID(N'replicator.") for s in creates)
    assert not any("IF NOT EXISTS replicator" in s or "ON CONFLICT" in s for s in ddl)
    tomb = next(s for s in creates if "replicator.tombstone " in s)
    assert "stamp TIMESTAMP NOT NULL" in tomb or "stamp ROWVERSION NOT NULL" in tomb
    assert "id BIGINT NOT NULL IDENTITY" in tomb
    fence = next(s for s in creates if "replicator.fence " in s)
    assert "row_key VARCHAR(850) NOT NULL" in fence and "PRIMARY KEY NONCLUSTERED" in fence
    assert " TEXT" not in " ".join(creates), "TEXT is deprecated: NVARCHAR(max)"
    assert ddl[-1].startswith("IF NOT EXISTS (SELECT 1 FROM replicator.incarnation WHERE id = 1)")
    assert backend.database_ddl() == ["ALTER DATABASE CURRENT SET ALLOW_SNAPSHOT_ISOLATION ON"]


def test_tracking_template_fills_and_batches(backend: SQLServerBackend) -> None:
    table = TrackedTable("dbo.Preço", ("código", "loja"), "repl_version")
    ddl = backend.tracking_ddl(None, table)
    text = "\n".join(ddl)
    assert not re.search(r"\{[a-z_]+\}", text), "every placeholder is filled"
    assert "ALTER TABLE dbo.[Preço] ADD repl_version rowversion" in text
    assert "CREATE OR ALTER TRIGGER dbo.replicator_stamp_pre_o_" in text
    assert "AFTER INSERT, UPDATE" in text and "AFTER DELETE" in text
    assert "JSON_ARRAY(d.[código], d.loja NULL ON NULL)" in text
    assert "SESSION_CONTEXT(N'replicator_origin')" in text
    assert "t.[código] = i.[código] AND t.loja = i.loja" in text
    assert not any(s.rstrip().endswith(";") for s in ddl), "a batch ends with GO, not ;"
    script = backend.script(ddl)
    batches = [b for b in re.split(r"^GO$", script, flags=re.M) if b.strip()]
    assert script.count("\nGO\n") == len(ddl)
    trigger_batches = [b for b in batches if "CREATE OR ALTER TRIGGER" in b]
    assert len(trigger_batches) == 2
    for batch in trigger_batches:  # CREATE TRIGGER must open its batch
        body = "\n".join(ln for ln in batch.splitlines() if not ln.startswith("--")).strip()
        assert body.startswith("CREATE OR ALTER TRIGGER")
    assert "NOT TESTED AGAINST A LIVE SERVER" in script


# --- statements --------------------------------------------------------------------------------
def test_upsert_is_update_then_insert_that_skips_equal_rows(backend: SQLServerBackend) -> None:
    table = sale_table()
    columns = ["loja", "número", "cliente", "total"]
    stage = stage_table(table, columns)
    assert stage.name.startswith("#replicator_stage_")
    create = sql(backend, sa.schema.CreateTable(stage))
    assert "CREATE TABLE [#replicator_stage_" in create and "IDENTITY" not in create
    update, insert = (
        sql(backend, s)
        for s in upsert_statements(
            table, stage, columns, ["loja", "número"], Conflict("source_wins")
        )
    )
    assert update.startswith("UPDATE venda SET cliente=[#replicator_stage_")
    assert "FROM venda, [#replicator_stage_" in update
    # exact comparison: bytes, NULL-safe (no case-insensitive collation skips a change)
    assert "CAST(venda.cliente AS VARBINARY(max))" in update
    assert "INTERSECT" in update or "IS DISTINCT FROM" in update
    assert insert.startswith("INSERT INTO venda (loja, [número], cliente, total) SELECT")
    assert "WHERE NOT (EXISTS (SELECT * FROM venda WHERE venda.loja = [#replicator_stage_" in insert
    dated = [*columns, "alterado"]
    newer = [
        sql(backend, s)
        for s in upsert_statements(
            table,
            stage_table(table, dated),
            dated,
            ["loja", "número"],
            Conflict("newer_wins", "alterado"),
        )
    ]
    assert "venda.alterado IS NULL OR [#replicator_stage_" in newer[0]
    keep = upsert_statements(table, stage, columns, ["loja", "número"], Conflict("keep_target"))
    assert len(keep) == 1 and sql(backend, keep[0]).startswith("INSERT INTO venda")


def test_control_upserts_are_merges(backend: SQLServerBackend) -> None:
    ack = backend.ct.ack
    values = {"incarnation": "abc", "seq": 3, "confirmed": 10}
    stmt = (
        backend.insert_construct(ack)
        .values(job="j", **values)
        .on_conflict_do_update(index_elements=["job"], set_=values)
    )
    text = sql(backend, stmt)
    assert text.startswith(
        "MERGE INTO replicator.ack WITH (HOLDLOCK) AS tgt USING (VALUES (?, ?, ?, ?))"
    )
    assert "ON tgt.job = src.job" in text
    assert "WHEN MATCHED THEN UPDATE SET incarnation = src.incarnation, seq = src.seq" in text
    assert text.endswith(
        "WHEN NOT MATCHED THEN INSERT (job, incarnation, seq, confirmed) "
        "VALUES (src.job, src.incarnation, src.seq, src.confirmed);"
    )
    fence = backend.insert_construct(backend.ct.fence).on_conflict_do_nothing()
    text = sql(backend, fence.values(job="j", table_name="t", row_key="[1]", incarnation="x"))
    assert (
        "ON tgt.job = src.job AND tgt.table_name = src.table_name AND tgt.row_key = src.row_key"
        in text
    )
    assert "WHEN MATCHED" not in text
    plain = sql(backend, backend.insert_construct(ack).values(job="j", **values, at=None))
    assert plain.startswith("INSERT INTO replicator.ack")


def test_deletes_and_purge(backend: SQLServerBackend) -> None:
    table = sale_table()
    hard = sql(backend, delete_keys(table, ["loja", "número"], [(1, 10), (1, 11)], None))
    assert hard == (
        "DELETE FROM venda WHERE venda.loja = ? AND venda.[número] = ? "
        "OR venda.loja = ? AND venda.[número] = ?"
    )
    single = sql(backend, delete_keys(table, ["loja"], [(1,), (2,)], None))
    assert single == "DELETE FROM venda WHERE venda.loja IN (?, ?)"
    purge = sql(backend, purge_statement(backend.ct.tombstone, 99))
    assert "SELECT TOP 5000 replicator.tombstone.id" in purge


def test_read_positions_compile_without_row_values(backend: SQLServerBackend) -> None:
    """The core's `(version, key) > (v, k)` and `(k1, k2) IN (...)`: SQL Server has no row
    values, the backend spells them out; the version binds as binary(8)."""
    table = sale_table()
    v = table.c.repl_version
    after = sa.tuple_(v, table.c.loja, table.c["número"]) > sa.tuple_(
        sa.literal(7, type_=v.type), sa.literal(1), sa.literal(2)
    )
    stmt = sa.select(table.c.loja).where(after, v <= 99).order_by(v, table.c.loja)
    text = sql(backend, stmt)
    assert "(venda.repl_version > ? OR venda.repl_version = ? AND (venda.loja > ?" in text
    assert "(" + "venda.loja, venda.[número]" + ")" not in text
    compiled = stmt.compile(dialect=backend.engine.dialect)
    kinds = [p.type for p in compiled.binds.values()]
    processed = [
        k.process_bind_param(7, backend.engine.dialect) for k in kinds if isinstance(k, RowVersion)
    ]
    assert b"\x00\x00\x00\x00\x00\x00\x00\x07" in processed
    lookup = sa.tuple_(table.c.loja, table.c["número"]).in_([(1, 10), (2, 20)])
    text = sql(backend, sa.select(table.c.loja).where(lookup))
    assert (
        "(venda.loja = ? AND venda.[número] = ? OR venda.loja = ? AND venda.[número] = ?)" in text
    )
    assert RowVersion().process_result_value(b"\x00\x00\x00\x00\x00\x01\x00\x02", None) == 65538
    assert "MIN_ACTIVE_ROWVERSION()" in BOUND


# --- errors --------------------------------------------------------------------------------------
def error(state: str, number: int, text: str = "message") -> pyodbc.Error:
    return pyodbc.Error(
        state,
        f"[{state}] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]{text} ({number}) "
        "(SQLExecDirectW)",
    )


@pytest.mark.parametrize(
    ("state", "number", "transient", "row"),
    [
        ("40001", 1205, True, None),  # deadlock victim
        ("HY000", 1222, True, None),  # lock request time out
        ("HYT00", 0, True, None),  # query timeout
        ("08S01", 10054, True, None),  # connection reset
        ("42S02", 208, False, None),  # invalid object name
        ("42000", 229, False, None),  # permission denied
        ("28000", 18456, False, None),  # login failed
        ("23000", 547, False, WAITING),  # foreign key (or check) conflict
        ("23000", 2627, False, REFUSED),  # duplicate key
        ("23000", 515, False, REFUSED),  # NULL into NOT NULL
        ("22001", 2628, False, REFUSED),  # string or binary data would be truncated
        ("22003", 8115, False, REFUSED),  # arithmetic overflow
    ],
)
def test_errors_sorted_by_state_and_number(
    backend: SQLServerBackend, state: str, number: int, transient: bool, row: str | None
) -> None:
    exc = error(state, number, "whatever the words")
    assert backend.is_transient(exc) is transient
    assert backend.row_error(exc) == row
    wrapped = sa.exc.DBAPIError("stmt", None, exc)
    kind = TransientError if transient else PermanentError
    assert isinstance(backend.classify(wrapped), kind)


def test_messages_do_not_decide(backend: SQLServerBackend) -> None:
    """Sorted by codes: a message that says "deadlock" with a permanent number is permanent."""
    assert backend.is_transient(error("42S02", 208, "deadlock timeout connection")) is False
    assert backend.is_transient(error("40001", 1205, "invalid object")) is True


def test_url_and_password_stay_out_of_messages() -> None:
    url = URL.create(
        "mssql+pyodbc", "pos", "s3cret", "sqlhost", database="loja",
        query={"driver": "ODBC Driver 18 for SQL Server"},
    )  # fmt: skip
    backend = open_backend(url, "caixa")
    assert "s3cret" not in backend.display_url and "s3cret" not in repr(backend)
    message = str(backend.classify(sa.exc.DBAPIError("stmt", None, error("08001", 10061))))
    assert "s3cret" not in message and "sqlhost" in message
