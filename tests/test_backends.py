"""The core promises over every kind of register (SQLite, PostgreSQL, MariaDB, Firebird) with
a PostgreSQL server: one suite, parametrised by `register_database` (ids: the kind).

Schemas are SQLAlchemy metadata created on each side, rows are written through SQLAlchemy by
the application's own connections, and each test ends with both sides compared value by value
(exact decimals, microsecond timestamps, bytes, long text, accents)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support import Node, moved, quarantined, scalar
from support_backends import (
    ExactDecimal,
    Store,
    backup,
    blob,
    connect,
    count,
    create,
    engine,
    ids,
    insert,
    key,
    long_text,
    make_store,
    reflect,
    restore,
    rows,
    timestamp,
)

ITEMS = """\
group: itens
direction: {direction}
tables:
  - source: item
    key: [id]
"""
UP, DOWN = "register_to_server", "server_to_register"
# Timestamps in the core tests sit on whole hundreds of microseconds: Firebird's TIMESTAMP
# keeps 1/10,000 s (test_backend_types.py covers full microseconds where a kind has them).
T0 = datetime(2026, 12, 1, 8, 30, 15, 123400)
LONG = ("Pão de queijo, açúcar, ação, nº 1ª, coração: " * 300)[:10_000]
NAMES = ["José da Conceição", "Açúcar cristal 1 kg", "Pão francês", "Nº 5 ª ç ã õ é", "x"]


def item_table(md: sa.MetaData, check: bool = False) -> sa.Table:
    """The table of most tests. `check`: qty must not be negative (a target that refuses)."""
    extra = [sa.CheckConstraint("qty >= 0", name="qty_not_negative")] if check else []
    return sa.Table(
        "item",
        md,
        key("id"),
        sa.Column("name", sa.String(80)),
        sa.Column("qty", sa.Integer),
        sa.Column("price", sa.Numeric(12, 2)),
        sa.Column("at", timestamp()),
        *extra,
    )


def item(i: int, **changes: Any) -> dict[str, Any]:
    row = {
        "id": i,
        "name": NAMES[i % len(NAMES)],
        "qty": i,
        "price": Decimal(i * 37 % 100000) / 100,
        "at": T0 + timedelta(days=i, microseconds=100 * i),
    }
    return {**row, **changes}


@pytest.fixture
def store(
    register_database: Callable[[], str], pg_database: Callable[[], str], tmp_path: Path
) -> Iterator[Store]:
    with make_store(register_database, pg_database, tmp_path) as made:
        yield made


def ends(store: Store, direction: str) -> tuple[str, str]:
    """(source, target) of a direction."""
    return (store.register, store.server) if direction == UP else (store.server, store.register)


def with_items(store: Store, direction: str, sync: str = "", check: str = "") -> Node:
    """Both sides get `item` (`check`: the side whose table refuses negative quantities);
    returns the node, set up."""
    for side, url in (("register", store.register), ("server", store.server)):
        md = sa.MetaData()
        item_table(md, check=check == side)
        create(url, md)
    return store.node({"itens": ITEMS.format(direction=direction)}, sync=sync)


# --- round trips ---------------------------------------------------------------------------
SALES = """\
group: movimento
direction: register_to_server
tables:
  - source: sale
    key: [sale_id]
  - source: sale_item
    key: [sale_id, line]
    depends_on: [sale]
"""
CATALOG = """\
group: cadastros
direction: server_to_register
tables:
  - source: product
    key: [product_id]
  - source: price
    key: [product_id, store]
    depends_on: [product]
"""


def sales_metadata() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "sale",
        md,
        key("sale_id"),
        sa.Column("sold_at", timestamp()),
        sa.Column("customer", sa.String(80)),
        sa.Column("total", sa.Numeric(12, 2)),
        sa.Column("note", long_text()),
    )
    sa.Table(
        "sale_item",
        md,
        sa.Column("sale_id", sa.Integer, sa.ForeignKey("sale.sale_id"), primary_key=True),
        key("line"),
        sa.Column("product", sa.String(80)),
        sa.Column("qty", sa.Numeric(12, 3)),
        sa.Column("amount", sa.Numeric(12, 2)),
    )
    return md


def catalog_metadata() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "product",
        md,
        key("product_id"),
        sa.Column("name", sa.String(80)),
        sa.Column("description", long_text()),
        sa.Column("image", blob()),
        sa.Column("changed_at", timestamp()),
    )
    sa.Table(
        "price",
        md,
        sa.Column("product_id", sa.Integer, sa.ForeignKey("product.product_id"), primary_key=True),
        key("store"),
        sa.Column("price", sa.Numeric(12, 2)),
        sa.Column("cost", ExactDecimal(18, 4)),
    )
    return md


def sale(i: int, note: str | None = None) -> dict[str, Any]:
    return {
        "sale_id": i,
        "sold_at": T0 + timedelta(minutes=i, microseconds=100 * i),
        "customer": NAMES[i % len(NAMES)],
        "total": Decimal("9999999999.99") if i == 1 else Decimal(i * 1001) / 100,
        "note": note if note is not None else (LONG if i % 3 == 0 else None),
    }


def sale_items(i: int, lines: int = 2) -> list[dict[str, Any]]:
    return [
        {
            "sale_id": i,
            "line": n,
            "product": NAMES[n % len(NAMES)],
            "qty": Decimal("1.250") * n,
            "amount": Decimal("-0.01") if n == 9 else Decimal(n * 199) / 100,
        }
        for n in range(1, lines + 1)
    ]


def same(store: Store, *tables: str | sa.Table) -> None:
    for table in tables:
        assert rows(store.register, table) == rows(store.server, table), table


def test_round_trip_sales_to_the_server(store: Store) -> None:
    """Sales with their items go up: inserts, updates (to NULL too), deletes, a key deleted
    and written again; both sides equal after each sync, and a sync with nothing new moves
    nothing."""
    for url in (store.register, store.server):
        create(url, sales_metadata())
    node = store.node({"movimento": SALES})
    insert(store.register, "sale", [sale(i) for i in range(1, 21)])
    insert(store.register, "sale_item", [r for i in range(1, 21) for r in sale_items(i, 3)])
    assert moved(node.sync()) == 20 + 60
    same(store, "sale", "sale_item")
    assert rows(store.server, "sale")[0][3] == Decimal("9999999999.99")
    with connect(store.register) as conn:
        s, si = reflect(conn, "sale"), reflect(conn, "sale_item")
        conn.execute(s.update().where(s.c.sale_id <= 5).values(customer=None, note="ç" * 500))
        conn.execute(si.update().where(si.c.sale_id == 6).values(amount=Decimal("-0.01")))
        conn.execute(si.delete().where(si.c.sale_id >= 18))
        conn.execute(s.delete().where(s.c.sale_id >= 18))
        conn.execute(s.insert(), [sale(19, note="de novo"), sale(21)])
        conn.execute(si.insert(), sale_items(19, 1) + sale_items(21, 9))
    node.sync()
    same(store, "sale", "sale_item")
    assert [r[0] for r in rows(store.server, "sale")] == [*range(1, 18), 19, 21]
    assert rows(store.server, "sale", where="sale_id = 1")[0][4] == "ç" * 500
    assert moved(node.sync()) == 0
    node.close()


def test_round_trip_catalog_to_the_register(store: Store) -> None:
    """Products (long text, blobs) and prices (exact decimals) go down to the register."""
    md = catalog_metadata()
    for url in (store.register, store.server):
        create(url, md)
    node = store.node({"cadastros": CATALOG})
    image = bytes(range(256)) * 64  # 16 KB, every byte value
    products = [
        {
            "product_id": i,
            "name": NAMES[i % len(NAMES)],
            "description": LONG if i % 2 else "curta",
            "image": image if i % 3 else b"\x00",
            "changed_at": T0 + timedelta(hours=i),
        }
        for i in range(1, 16)
    ]
    prices = [
        {
            "product_id": i,
            "store": s,
            "price": Decimal(i * 123) / 100,
            "cost": Decimal("12345678901234.5678") if i == 1 else Decimal(i) / 10000,
        }
        for i in range(1, 16)
        for s in (1, 2)
    ]
    insert(store.server, "product", products)
    insert(store.server, "price", prices)
    assert moved(node.sync()) == 15 + 30
    same(store, "product", md.tables["price"])
    assert rows(store.register, md.tables["price"])[0][3] == Decimal("12345678901234.5678")
    with connect(store.server) as conn:
        p, pr = reflect(conn, "product"), reflect(conn, "price")
        conn.execute(p.update().where(p.c.product_id <= 4).values(image=None, name="Café ☕"))
        conn.execute(pr.update().where(pr.c.store == 2).values(price=Decimal("0.01")))
        conn.execute(pr.delete().where(pr.c.product_id == 15))
        conn.execute(p.delete().where(p.c.product_id == 15))
    node.sync()
    same(store, "product", md.tables["price"])
    assert len(rows(store.register, "price")) == 28
    assert moved(node.sync()) == 0
    node.close()


# --- no duplicates, no echo ------------------------------------------------------------------
def reset_positions(backend: Any, job: str) -> None:
    """Move a job's positions back to the start: the next sync reads every change again."""
    st = backend.ct.state
    with backend.engine.begin() as conn:
        conn.execute(
            st.update()
            .where(st.c.job == job)
            .values(version=0, row_key=None, tomb_version=0, tomb_id=0)
        )


def last_batch(backend: Any) -> Any:
    st = backend.ct.state
    with backend.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.max(st.c.last_batch_at))).scalar()


def test_the_same_batch_twice_changes_nothing_on_the_server(store: Store) -> None:
    node = with_items(store, UP)
    insert(store.register, "item", [item(i) for i in range(1, 31)])
    node.sync()
    before = rows(store.server, "item")
    # the server is PostgreSQL: xmin tells whether a row was written again
    xmins = scalar(store.server, "SELECT string_agg(xmin::text, ',' ORDER BY id) FROM item")
    reset_positions(node.dbs["server"], node.settings.jobs()[0].name)
    assert moved(node.sync()) == 30, "the same changes are read and applied again"
    assert rows(store.server, "item") == before
    assert scalar(store.server, "SELECT string_agg(xmin::text, ',' ORDER BY id) FROM item") == (
        xmins
    ), "re-applying equal rows must not rewrite them"
    stamp = last_batch(node.dbs["server"])
    assert moved(node.sync()) == 0
    assert last_batch(node.dbs["server"]) == stamp, "a sync with nothing new writes nothing"
    node.close()


def test_the_same_batch_twice_changes_nothing_on_the_register(store: Store) -> None:
    """The catalog applied again on the register: equal rows are not written again (the
    register tracks the table, as the source of movement: a rewrite would stamp them)."""
    for url in (store.register, store.server):
        md = sa.MetaData()
        item_table(md)
        create(url, md)
    node = store.node(
        {
            "down": ITEMS.format(direction=DOWN),
            "up": ITEMS.format(direction=UP).replace("itens", "up"),
        }
    )
    insert(store.server, "item", [item(i) for i in range(1, 31)])
    node.sync("itens")
    before = rows(store.register, "item")
    stamps = rows_with_versions(store.register)
    down = next(j.name for j in node.settings.jobs() if j.group == "itens")
    reset_positions(node.dbs["caixa"], down)
    assert moved(node.sync("itens")) == 30, "the same changes are read and applied again"
    assert rows(store.register, "item") == before == rows(store.server, "item")
    assert rows_with_versions(store.register) == stamps, "equal rows must not be rewritten"
    stamp = last_batch(node.dbs["caixa"])
    assert moved(node.sync("itens")) == 0
    assert last_batch(node.dbs["caixa"]) == stamp, "a sync with nothing new writes nothing"
    assert moved(node.sync("up")) == 0, "the catalog's rows are not sent back"
    node.close()


def rows_with_versions(url: str) -> list[tuple[Any, Any]]:
    with connect(url) as conn:
        t = reflect(conn, "item")
        return [
            tuple(r) for r in conn.execute(sa.select(t.c.id, t.c.repl_version).order_by(t.c.id))
        ]


BOTH_WAYS = {
    "cadastros": """\
        group: cadastros
        direction: server_to_register
        tables:
          - source: customer
            key: [id]
        """,
    "movimento": """\
        group: movimento
        direction: register_to_server
        tables:
          - source: customer
            key: [id]
        """,
}


def test_no_echo_both_ways(store: Store) -> None:
    """Customers travel both ways: a row never bounces back to where it came from."""
    for url in (store.register, store.server):
        md = sa.MetaData()
        sa.Table(
            "customer",
            md,
            sa.Column("id", sa.String(36), primary_key=True),
            sa.Column("name", sa.String(80)),
        )
        create(url, md)
    node = store.node(BOTH_WAYS)
    insert(store.register, "customer", [{"id": "c-reg", "name": "José da Silva"}])
    insert(store.server, "customer", [{"id": "c-srv", "name": "Maria da Conceição"}])
    assert moved(node.sync("movimento")) == 1
    assert moved(node.sync("cadastros")) == 1, "only c-srv goes down, not c-reg back"
    same(store, "customer")
    for _ in range(2):
        assert moved(node.sync("movimento", "cadastros")) == 0
    with connect(store.server) as conn:
        c = reflect(conn, "customer")
        conn.execute(c.update().where(c.c.id == "c-reg").values(name="José S. ç"))
    assert moved(node.sync("movimento")) == 0
    assert moved(node.sync("cadastros")) == 1
    assert moved(node.sync("movimento", "cadastros")) == 0
    same(store, "customer")
    with connect(store.register) as conn:
        c = reflect(conn, "customer")
        conn.execute(c.delete().where(c.c.id == "c-srv"))
    node.sync("movimento", "cadastros")
    assert (
        rows(store.server, "customer")
        == rows(store.register, "customer")
        == [("c-reg", "José S. ç")]
    )
    assert moved(node.sync("movimento", "cadastros")) == 0
    node.close()


# --- no loss -------------------------------------------------------------------------------
# Kinds whose tracked writers take turns by design: the version comes from a clock row that
# a writing transaction holds until it ends (sql/mariadb/tracking.sql), so versions are taken
# in commit order and a later version cannot commit first.
SERIALISED_WRITERS = {"mariadb"}


def test_out_of_order_commit_is_not_lost(store: Store) -> None:
    """A takes a version and stays open; B takes a later one and commits; a sync runs; A
    commits; the next sync delivers A. Where writers take turns, B waits for A instead: the
    sync in between sees neither, and both arrive after."""
    if store.kind == "sqlite":
        pytest.skip("not applicable: SQLite has a single writer, B would wait for A")
    serialised = store.kind in SERIALISED_WRITERS
    node = with_items(store, UP)
    eng = engine(store.register)
    a = eng.connect()
    a_tx = a.begin()
    t = reflect(a, "item")
    a.execute(t.insert(), [item(1, name="slow A")])
    a_version = a.execute(sa.select(t.c.repl_version).where(t.c.id == 1)).scalar()
    failure: list[BaseException] = []

    def b() -> None:
        try:
            with eng.begin() as conn:
                if store.kind == "mariadb":  # wait for A longer than the sync in between
                    conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 60")
                conn.execute(t.insert(), [item(2, name="fast B")])
        except BaseException as exc:  # reported below, in the test's thread
            failure.append(exc)

    writer = threading.Thread(target=b)
    writer.start()
    writer.join(1 if serialised else 15)
    try:
        assert not failure, failure
        if serialised:
            assert writer.is_alive(), "B must wait for A (the clock row)"
        else:
            assert not writer.is_alive(), "B waited for A: writers of this kind take turns"
        node.sync()
        assert 1 not in ids(store.server, "item"), "A is not committed yet"
        a_tx.commit()
        writer.join(30)
        assert not writer.is_alive() and not failure, failure
    finally:
        if a_tx.is_active:
            a_tx.rollback()
        a.close()
        writer.join()
    with connect(store.register) as conn:
        i = reflect(conn, "item")
        b_version = conn.execute(sa.select(i.c.repl_version).where(i.c.id == 2)).scalar()
    eng.dispose()
    assert a_version is not None and b_version is not None
    assert a_version < b_version, "the test needs A's version below B's"
    node.sync()
    assert ids(store.server, "item") == [1, 2]
    same(store, "item")
    node.close()


def test_ties_across_pages_lose_nothing(store: Store) -> None:
    """40 rows that existed before setup share one version; pages of 5 and batches of 7 read
    them, then a 30-row transaction and single-row ones: nothing is dropped, and no batch
    splits a source transaction (the first carries whole ones, however large)."""
    for url in (store.register, store.server):
        md = sa.MetaData()
        item_table(md)
        create(url, md)
    insert(store.register, "item", [item(i) for i in range(1, 41)])
    node = store.node({"itens": ITEMS.format(direction=UP)}, sync="page_rows = 5\nbatch_rows = 7")
    assert count(store.register, "item", "repl_version", distinct=True) == 1, (
        "setup stamps the existing rows with one version"
    )
    insert(store.register, "item", [item(i) for i in range(100, 130)])
    for i in range(200, 205):
        insert(store.register, "item", [item(i)])
    node.sync(max_batches=1)
    first = set(ids(store.server, "item"))
    assert set(range(1, 41)) <= first, "the first batch carries the setup's version whole"
    for transaction in [set(range(100, 130)), *({i} for i in range(200, 205))]:
        assert transaction <= first or not transaction & first, "a transaction was split"
    node.sync()
    assert count(store.server, "item") == 75
    same(store, "item")
    node.close()


def test_paging_inside_one_big_version_to_the_register(store: Store) -> None:
    """2,000 catalog rows in one server transaction (one version) reach the register in
    commits of 200, positions inside the version; an interrupted run (max_batches) leaves an
    exact prefix in key order and the next run completes it."""
    node = with_items(store, DOWN, sync="page_rows = 200\nbatch_rows = 200")
    with connect(store.server) as conn:
        conn.execute(reflect(conn, "item").insert(), [item(i) for i in range(1, 2001)])
    node.sync(max_batches=2)
    partial = count(store.register, "item")
    assert 0 < partial < 2000, "two short commits hold part of the version"
    got = rows(store.register, "item")
    assert got == rows(store.server, "item")[: len(got)], "a prefix in key order, exact"
    node.sync()
    assert count(store.register, "item") == 2000
    same(store, "item")
    assert moved(node.sync()) == 0
    node.close()


@pytest.mark.parametrize("direction", [UP, DOWN], ids=["up", "down"])
def test_deletes_and_key_changes_travel_as_tombstones(store: Store, direction: str) -> None:
    """Deletes, a key deleted and written again, a key changed (the old key is a delete):
    the target follows; once applied, the source purges its tombstones."""
    source, target = ends(store, direction)
    node = with_items(store, direction)
    insert(source, "item", [item(i) for i in range(1, 11)])
    node.sync()
    with connect(source) as conn:
        t = reflect(conn, "item")
        conn.execute(t.delete().where(t.c.id.in_([2, 3, 4])))
        conn.execute(t.delete().where(t.c.id == 5))
        conn.execute(t.insert(), [item(5, name="de volta", price=Decimal("0.10"))])
        conn.execute(t.update().where(t.c.id == 6).values(qty=None))
        conn.execute(t.update().where(t.c.id == 8).values(id=80))
    node.sync()
    assert ids(target, "item") == [1, 5, 6, 7, 9, 10, 80]
    same(store, "item")
    source_db = "caixa" if direction == UP else "server"
    tombstones = node.dbs[source_db].ct.tombstone
    with connect(source) as conn:
        t = reflect(conn, "item")
        conn.execute(t.update().where(t.c.id == 7).values(qty=0))
    node.sync()  # the next batch tells the source the deletes were applied
    with node.dbs[source_db].engine.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(tombstones)).scalar()
    assert left == 0, "tombstones every target applied are purged"
    same(store, "item")
    assert moved(node.sync()) == 0
    node.close()


# --- a database's history is its own ----------------------------------------------------------
MOVEMENT = """\
group: movimento
direction: register_to_server
tables:
  - source: sale
    key: [sale_id]
    target_key: [register_id, sale_id]
    columns:
      register_id: "{register_id}"
    deletes: ignore
  - source: sale_item
    key: [sale_id, line]
    target_key: [register_id, sale_id, line]
    columns:
      register_id: "{register_id}"
    depends_on: [sale]
    deletes: ignore
"""


def movement_metadata(server: bool) -> sa.MetaData:
    md = sa.MetaData()

    def reg() -> list[sa.Column[Any]]:
        return [key("register_id")] if server else []

    sa.Table(
        "sale",
        md,
        *reg(),
        key("sale_id"),
        sa.Column("total", sa.Numeric(12, 2)),
        sa.Column("sold_at", timestamp()),
    )
    parent = (
        [sa.ForeignKeyConstraint(["register_id", "sale_id"], ["sale.register_id", "sale.sale_id"])]
        if server
        else [sa.ForeignKeyConstraint(["sale_id"], ["sale.sale_id"])]
    )
    sa.Table(
        "sale_item",
        md,
        *reg(),
        key("sale_id"),
        key("line"),
        sa.Column("product", sa.String(80)),
        *parent,
    )
    return md


def sell(url: str, first: int, n: int, tag: str, lines: int = 1) -> None:
    with connect(url) as conn:
        conn.execute(
            reflect(conn, "sale").insert(),
            [
                {"sale_id": i, "total": Decimal(f"{i}.{len(tag):02d}"), "sold_at": T0}
                for i in range(first, first + n)
            ],
        )
        conn.execute(
            reflect(conn, "sale_item").insert(),
            [
                {"sale_id": i, "line": line, "product": tag}
                for i in range(first, first + n)
                for line in range(1, lines + 1)
            ],
        )


def held(node: Node) -> list[tuple[str, str, str]]:
    backend = node.dbs["server"]
    q = backend.ct.quarantine.c
    with backend.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.select(q.table_name, q.row_key, q.status)))


def test_register_restored_from_a_backup_loses_and_duplicates_nothing(store: Store) -> None:
    """Backup at 5 sales; 5 more reach the server; the register is restored from the backup
    and sells 8, reusing ids 6..10. The server keeps every archived sale as it was (the
    re-entered ids are held as conflicts, never a second copy), and ids 11..13 arrive."""
    create(store.register, movement_metadata(server=False))
    create(store.server, movement_metadata(server=True))
    node = store.node({"movimento": MOVEMENT})
    sell(store.register, 1, 5, "antes do backup")
    node.sync()
    node.close()
    saved = backup(store.register)
    sell(store.register, 6, 5, "dia perdido")
    node = store.node({"movimento": MOVEMENT}, setup=False)
    node.sync()
    node.close()
    archived = rows(store.server, "sale")
    archived_items = rows(store.server, "sale_item")
    assert len(archived) == 10
    restore(store.register, saved)
    sell(store.register, 6, 8, "após restauração", lines=2)
    node = store.node({"movimento": MOVEMENT}, setup=False)
    node.sync()
    now = rows(store.server, "sale")
    assert now[:10] == archived, "no archived sale is overwritten"
    assert [r[1] for r in now] == list(range(1, 14)), "every id once: new ones arrive"
    items = rows(store.server, "sale_item")
    assert [r for r in items if r[1] <= 10] == archived_items, "items stay with their sale"
    assert {r[3] for r in items if r[1] > 10} == {"após restauração"}
    assert len([r for r in items if r[1] > 10]) == 6
    conflicts = [h for h in held(node) if h[2] == "conflict"]
    assert ("sale", "[3,6]", "conflict") in conflicts
    assert ("sale_item", "[3,6,2]", "conflict") in conflicts, "never under the archived sale"
    assert len(conflicts) == 5 + 10, "the 5 re-entered sales and their items wait"
    sell(store.register, 14, 1, "dia seguinte")
    node.sync()
    assert [r[1] for r in rows(store.server, "sale")] == list(range(1, 15))
    assert moved(node.sync()) == 0
    node.close()


# --- a bad row never holds back good rows ------------------------------------------------------
@pytest.mark.parametrize("direction", [UP, DOWN], ids=["up", "down"])
def test_a_bad_row_is_quarantined_and_the_rest_applied(store: Store, direction: str) -> None:
    """The target refuses one row (a CHECK constraint): it is held with the reason, the other
    19 are applied; corrected at the source, it goes through and leaves the quarantine."""
    source, target = ends(store, direction)
    target_db = "server" if direction == UP else "caixa"
    node = with_items(store, direction, check="server" if direction == UP else "register")
    insert(source, "item", [item(i, qty=-5 if i == 7 else i) for i in range(1, 21)])
    results = node.sync()
    assert results[0].tables["item"].quarantined == 1
    assert ids(target, "item") == [i for i in range(1, 21) if i != 7]
    assert quarantined(node, target_db) == [("item", "[7]")]
    q = node.dbs[target_db].ct.quarantine
    with node.dbs[target_db].engine.connect() as conn:
        reason = conn.execute(sa.select(q.c.reason)).scalar()
    assert "qty_not_negative" in str(reason).lower(), reason
    with connect(source) as conn:
        t = reflect(conn, "item")
        conn.execute(t.update().where(t.c.id == 7).values(qty=7))
    node.sync()
    assert quarantined(node, target_db) == []
    same(store, "item")
    node.close()
