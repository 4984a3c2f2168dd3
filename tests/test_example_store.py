"""The example store: generated DDL is current, the schemas create and seed on real databases,
and the shipped mapping files name only tables and columns that exist."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, create_engine, event, func, select, text
from sqlalchemy.engine import Connection

from replicator.demo import store
from replicator.mapping import (
    FromColumn,
    MappingFile,
    NewerWins,
    SoftDelete,
    TableMapping,
    load_mappings,
    source_column_of,
)

ROOT = Path(__file__).parent.parent
SQL_DIR = ROOT / "sql" / "example"
MAPPINGS = ROOT / "mappings"
REPLICATION_COLUMNS = {"repl_version", "repl_origin"}


def sqlite_engine(path: Path) -> Engine:
    """A SQLite file database that enforces foreign keys."""
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _fk_on(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA foreign_keys = ON")

    return engine


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[dict[str, Engine]]:
    """server.db (seeded catalog) and two registers, register1.db / register2.db (seeded sales)."""
    made = {
        "server": sqlite_engine(tmp_path / "server.db"),
        "register1": sqlite_engine(tmp_path / "register1.db"),
        "register2": sqlite_engine(tmp_path / "register2.db"),
    }
    store.server_metadata().create_all(made["server"])
    with made["server"].begin() as conn:
        store.seed_server(conn)
    for register_id in (1, 2):
        engine = made[f"register{register_id}"]
        store.register_metadata().create_all(engine)
        with engine.begin() as conn:
            store.seed_register(conn, register_id)
    yield made
    for engine in made.values():
        engine.dispose()


def count(conn: Connection, table: str) -> int:
    return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def rows(conn: Connection, metadata: MetaData, table: str) -> list[dict[str, Any]]:
    t = metadata.tables[table]
    result = conn.execute(select(t).order_by(*t.primary_key.columns)).mappings()
    return [dict(r) for r in result]


def assert_sales_add_up(conn: Connection, metadata: MetaData, key: list[str]) -> None:
    """Every sale's items and payments add up to its total, to the cent."""
    items: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
    paid: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
    for item in rows(conn, metadata, "sale_item"):
        items[tuple(item[c] for c in key)] += item["total"]
        assert item["total"] == (item["quantity"] * item["unit_price"]).quantize(store.CENT)
    for payment in rows(conn, metadata, "payment"):
        paid[tuple(payment[c] for c in key)] += payment["amount"]
        assert payment["amount"] > 0
    sales = rows(conn, metadata, "sale")
    assert sales
    for sale in sales:
        sale_key = tuple(sale[c] for c in key)
        assert isinstance(sale["total"], Decimal)
        assert sale["total"] == sale["total"].quantize(store.CENT)
        assert items[sale_key] == sale["total"], sale
        assert paid[sale_key] == sale["total"], sale
    assert set(items) == set(paid) == {tuple(s[c] for c in key) for s in sales}


# --------------------------------------------------------------------------------------------
# generated DDL


@pytest.mark.parametrize("name", sorted(store.ddl_files()))
def test_generated_sql_is_current(name: str) -> None:
    path = SQL_DIR / name
    assert path.exists(), f"{path} is missing; run python -m replicator.demo.store"
    assert path.read_text(encoding="utf-8") == store.ddl_files()[name], (
        f"{path} is out of date; run python -m replicator.demo.store"
    )


def test_ddl_is_in_dependency_order_and_complete() -> None:
    for build in (store.register_metadata, store.server_metadata):
        metadata = build()
        sql = store.ddl(metadata, "postgresql")
        assert sql.startswith("-- ") and "python -m replicator.demo.store" in sql
        positions = {t: sql.index(f"CREATE TABLE {t} (") for t in metadata.tables}
        for table in metadata.tables.values():
            for fk in table.foreign_keys:
                assert positions[fk.column.table.name] < positions[table.name]
        assert sql.count(");\n") == len(metadata.tables)
        assert "repl_" not in sql
    with pytest.raises(ValueError, match="unknown dialect"):
        store.ddl(store.server_metadata(), "oracle")


def test_metadata_is_fresh_each_call() -> None:
    assert store.server_metadata() is not store.server_metadata()
    assert store.register_metadata().tables.keys() == {
        "product", "price", "customer", "employee", "user_login",
        "sale", "sale_item", "payment", "cash_closing",
    }  # fmt: skip
    assert store.server_metadata().tables.keys() == store.register_metadata().tables.keys()


@pytest.mark.parametrize("side", ["server", "register"])
def test_sqlite_sql_file_runs(side: str, tmp_path: Path) -> None:
    """A DBA can build the schema from the .sql file alone, and it matches the metadata."""
    db = sqlite3.connect(tmp_path / "x.db")
    try:
        db.executescript((SQL_DIR / f"{side}.sqlite.sql").read_text(encoding="utf-8"))
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()
    metadata = store.server_metadata() if side == "server" else store.register_metadata()
    assert tables == set(metadata.tables)


# --------------------------------------------------------------------------------------------
# seeding


def test_seed_counts_and_totals(engines: dict[str, Engine]) -> None:
    server_md, register_md = store.server_metadata(), store.register_metadata()
    with engines["server"].connect() as conn:
        assert count(conn, "product") == store.DEFAULT_PRODUCTS
        assert count(conn, "price") == 2 * store.DEFAULT_PRODUCTS  # stores 1 and 2
        assert {r["store_id"] for r in rows(conn, server_md, "price")} == {1, 2}
        assert count(conn, "customer") == 6
        assert count(conn, "employee") == 5
        assert count(conn, "user_login") == 5
        assert count(conn, "sale") == 0
        products = rows(conn, server_md, "product")
        names = [p["name"] for p in products]
        assert "Pão francês" in names and "Açúcar cristal 1kg" in names
        assert any(ord(ch) > 0xFFFF for name in names for ch in name)  # an emoji survives
        assert all(p["price"] == p["price"].quantize(store.CENT) for p in products)
        assert len({p["sku"] for p in products}) == len(products)
        for price in rows(conn, server_md, "price"):
            assert price["price"] == store.store_price(price["store_id"], price["product_id"])

    for register_id in (1, 2):
        with engines[f"register{register_id}"].connect() as conn:
            assert count(conn, "sale") == 5
            assert 5 <= count(conn, "sale_item") <= 20
            assert 5 <= count(conn, "payment") <= 10
            assert count(conn, "cash_closing") == 1
            assert count(conn, "customer") == 1  # registered at the checkout
            assert count(conn, "product") == 0  # the catalog arrives by replication
            assert_sales_add_up(conn, register_md, ["sale_id"])

            items = rows(conn, register_md, "sale_item")
            assert all(1 <= i["product_id"] <= store.DEFAULT_PRODUCTS for i in items)
            counts: dict[int, int] = defaultdict(int)
            for item in items:
                counts[item["sale_id"]] += 1
            assert all(1 <= n <= 4 for n in counts.values())
            paid: dict[int, int] = defaultdict(int)
            for payment in rows(conn, register_md, "payment"):
                paid[payment["sale_id"]] += 1
            assert all(1 <= n <= 2 for n in paid.values())

            sales = rows(conn, register_md, "sale")
            assert {s["status"] for s in sales} == {"C", "X"}
            assert {s["employee_id"] for s in sales} <= set(store.CASHIERS)
            closing = rows(conn, register_md, "cash_closing")[0]
            closed = [s for s in sales if s["status"] == "C"]
            assert closing["sales_count"] == len(closed)
            assert closing["sales_total"] == sum(s["total"] for s in closed)
            assert closing["business_date"] == store.DEFAULT_START.date()
            closed_ids = {s["sale_id"] for s in closed}
            cash = [
                p["amount"]
                for p in rows(conn, register_md, "payment")
                if p["method"] == store.CASH and p["sale_id"] in closed_ids
            ]
            assert closing["cash_total"] == sum(cash, Decimal("0.00"))


def test_seed_is_deterministic(engines: dict[str, Engine], tmp_path: Path) -> None:
    register_md = store.register_metadata()
    again = sqlite_engine(tmp_path / "again.db")
    try:
        register_md.create_all(again)
        with again.begin() as conn:
            store.seed_register(conn, 1)
        for table in ("sale", "sale_item", "payment", "cash_closing", "customer"):
            with engines["register1"].connect() as a, again.connect() as b:
                assert rows(a, register_md, table) == rows(b, register_md, table)
        with engines["register1"].connect() as a, engines["register2"].connect() as b:
            assert rows(a, register_md, "sale") != rows(b, register_md, "sale")
    finally:
        again.dispose()


def test_seed_register_continues_ids(engines: dict[str, Engine]) -> None:
    register_md = store.register_metadata()
    next_day = store.DEFAULT_START + timedelta(days=1)
    with engines["register1"].begin() as conn:
        store.seed_register(conn, 1, sales=7, start=next_day)
    with engines["register1"].connect() as conn:
        sales = rows(conn, register_md, "sale")
        assert [s["sale_id"] for s in sales] == list(range(1, 13))
        closings = rows(conn, register_md, "cash_closing")
        assert [c["closing_id"] for c in closings] == [1, 2]
        assert closings[1]["business_date"] == next_day.date()
        assert count(conn, "customer") == 2
        assert_sales_add_up(conn, register_md, ["sale_id"])


def test_seed_register_refuses_naive_start(engines: dict[str, Engine]) -> None:
    with engines["register1"].begin() as conn, pytest.raises(ValueError, match="timezone"):
        store.seed_register(conn, 1, start=datetime(2024, 3, 16, 8, 0))


# --------------------------------------------------------------------------------------------
# mapping files against the schema


def sides(mapping: MappingFile) -> tuple[MetaData, MetaData]:
    """(source metadata, target metadata) for the mapping's direction."""
    if mapping.direction == "server_to_register":
        return store.server_metadata(), store.register_metadata()
    return store.register_metadata(), store.server_metadata()


def mapping_problems(mapping: MappingFile) -> list[str]:
    src_md, tgt_md = sides(mapping)
    problems: list[str] = []
    applied: set[str] = set()
    group_targets = {t.target_table for t in mapping.tables}

    def need(metadata: MetaData, table: str, columns: list[str], what: str) -> None:
        have = set(metadata.tables[table].columns.keys())
        for col in columns:
            if col not in REPLICATION_COLUMNS and col not in have:
                problems.append(f"{mapping.group}.{table}: {what} column {col!r} does not exist")

    for tm in mapping.tables:
        if tm.source not in src_md.tables:
            problems.append(f"{mapping.group}: source table {tm.source!r} does not exist")
            continue
        if tm.target_table not in tgt_md.tables:
            problems.append(f"{mapping.group}: target table {tm.target_table!r} does not exist")
            continue
        src, tgt = tm.source, tm.target_table
        sourced = [c for c in map(source_column_of, tm.columns.values()) if c is not None]
        need(src_md, src, tm.key, "key")
        need(tgt_md, tgt, tm.resolved_target_key(), "target_key")
        need(tgt_md, tgt, list(tm.columns), "mapped target")
        need(src_md, src, sourced, "mapped source")
        need(src_md, src, tm.exclude, "excluded")
        need(src_md, src, list(tm.where), "where")
        if isinstance(tm.deletes, SoftDelete):
            need(tgt_md, tgt, [tm.deletes.soft], "soft-delete")
        if isinstance(tm.conflict, NewerWins):
            need(src_md, src, [tm.conflict.newer_wins], "newer_wins")
            need(tgt_md, tgt, [tm.conflict.newer_wins], "newer_wins")
        if tm.closing is not None:
            c = tm.closing
            own = [*c.sums, *([c.by] if c.by else []), *c.show]
            for md, table in ((src_md, src), (tgt_md, tgt)):
                need(md, table, own, "closing")
            if c.changed:
                need(src_md, src, [c.changed], "closing changed")
            if c.date:  # on this table, or on the one it takes its day from (`via`)
                dated = tm if c.via is None else mapping.table(c.via)
                need(src_md, dated.source, [c.date, *c.where], "closing date")
                need(tgt_md, dated.target_table, [c.date], "closing date")

        # what a row written to the target will carry, and what the target cannot do without
        copied = copied_columns(tm, src_md.tables[src].columns.keys())
        if tm.copy_other_columns:
            need(tgt_md, tgt, copied, "copied")
        written = set(tm.columns) | (set(copied) if tm.copy_other_columns else set())
        target = tgt_md.tables[tgt]
        if set(tm.resolved_target_key()) != set(target.primary_key.columns.keys()):
            problems.append(f"{mapping.group}.{tgt}: target_key is not the target primary key")
        for col in target.columns:
            if not col.nullable and col.server_default is None and col.name not in written:
                problems.append(f"{mapping.group}.{tgt}: NOT NULL column {col.name!r} unfed")
        # foreign keys between tables of the group: the referenced table is applied first
        for fk in target.foreign_keys:
            parent = fk.column.table.name
            if parent in group_targets and parent not in applied:
                problems.append(f"{mapping.group}.{tgt}: references {parent!r} declared later")
        applied.add(tgt)
    return problems


def copied_columns(tm: TableMapping, source_columns: Any) -> list[str]:
    named = set(tm.columns) | {c for c in map(source_column_of, tm.columns.values()) if c}
    return [c for c in source_columns if c not in named and c not in tm.exclude]


def test_mapping_files_load() -> None:
    mappings = load_mappings(MAPPINGS)
    assert set(mappings) == {"cadastros", "produtos", "movimento"}
    assert mappings["cadastros"].description == "catalog: server -> registers"
    assert [t.label for t in mappings["cadastros"].tables] == [
        "employee", "user_login", "product", "price", "customer",
    ]  # fmt: skip
    assert [t.label for t in mappings["produtos"].tables] == ["product", "price"]
    assert [t.label for t in mappings["movimento"].tables] == [
        "customer", "sale", "sale_item", "payment", "cash_closing",
    ]  # fmt: skip
    for group in ("cadastros", "produtos"):
        assert mappings[group].direction == "server_to_register"
        assert mappings[group].table("price").where == {"store_id": "{store_id}"}
    movimento = mappings["movimento"]
    assert movimento.direction == "register_to_server"
    assert movimento.table("customer").conflict == "source_wins"
    sale = movimento.table("sale")
    assert sale.resolved_target_key() == ["store_id", "register_id", "sale_id"]
    assert sale.deletes == "ignore"
    status = sale.columns["status"]
    assert isinstance(status, FromColumn)
    assert status.map == {"O": "open", "C": "closed", "X": "cancelled"}


@pytest.mark.parametrize("group", ["cadastros", "produtos", "movimento"])
def test_mapping_matches_schema(group: str) -> None:
    mapping = load_mappings(MAPPINGS)[group]
    assert mapping_problems(mapping) == []


def test_schema_check_catches_a_wrong_column() -> None:
    """The check above is not vacuous."""
    mapping = load_mappings(MAPPINGS)["movimento"]
    sale = mapping.table("sale")
    broken_sale = sale.model_copy(update={"columns": {**sale.columns, "totl": "total"}})
    tables = [broken_sale if t.label == "sale" else t for t in mapping.tables]
    problems = mapping_problems(mapping.model_copy(update={"tables": tables}))
    assert problems == [
        "movimento.sale: mapped target column 'totl' does not exist",
        "movimento.sale: NOT NULL column 'total' unfed",
    ]


# --------------------------------------------------------------------------------------------
# the mappings applied by hand (a full copy, no change tracking) fit the data


# --------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.mark.postgres
def test_postgresql_sql_files_and_seed(pg_database: Callable[[], str]) -> None:
    """The .postgresql.sql files run as they are; seeds keep time zones and exact cents."""
    url = pg_database()
    setup = create_engine(url)
    try:
        with setup.begin() as conn:
            for side in ("server", "register"):
                conn.exec_driver_sql(f"CREATE SCHEMA {side}")
                conn.exec_driver_sql(f"SET LOCAL search_path TO {side}")
                conn.exec_driver_sql((SQL_DIR / f"{side}.postgresql.sql").read_text("utf-8"))
    finally:
        setup.dispose()

    server = create_engine(url, connect_args={"options": "-c search_path=server"})
    register = create_engine(url, connect_args={"options": "-c search_path=register"})
    try:
        with server.begin() as conn:
            store.seed_server(conn)
        with register.begin() as conn:
            store.seed_register(conn, 3, sales=20)
        register_md = store.register_metadata()
        with register.connect() as conn:
            conn.exec_driver_sql("SET TIME ZONE 'UTC'")
            assert_sales_add_up(conn, register_md, ["sale_id"])
            sales = rows(conn, register_md, "sale")
            assert len(sales) == 20
            first = sales[0]["opened_at"]
            assert first.utcoffset() is not None
            assert store.DEFAULT_START <= first < store.DEFAULT_START + store.BUSINESS_HOURS
            assert (
                conn.execute(
                    select(func.count()).select_from(register_md.tables["sale_item"])
                ).scalar_one()
                >= 20
            )
        with server.connect() as conn:
            names = [p["name"] for p in rows(conn, store.server_metadata(), "product")]
            assert "Picolé de açaí 🍧" in names
    finally:
        server.dispose()
        register.dispose()
