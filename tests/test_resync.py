"""`replicator resync`: chunk checksums inside both databases find exactly the rows that
differ; the repair goes through the apply path; a dry run writes nothing anywhere."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import execute
from support import Node, rows, write_node

from replicator.resync import ResyncResult, run_resync, select_jobs
from replicator.resync_hash import FieldSpec, field_text

N = 100_000

SALES = """\
group: movimento
direction: register_to_server
tables:
  - source: sale
    key: [sale_id]
    target_key: [store_id, register_id, sale_id]
    columns:
      store_id: "{store_id}"
      register_id: "{register_id}"
      status: {from: status, map: {"O": open, "C": closed}}
    deletes: ignore
"""
REGISTER_SALE = (
    "CREATE TABLE sale (sale_id integer PRIMARY KEY, status varchar(1), total numeric(10,2), "
    "opened_at {ts}, note varchar(40))"
)
SERVER_SALE = (
    "CREATE TABLE sale (store_id integer, register_id integer, sale_id integer, "
    "status varchar(10), total numeric(10,2), opened_at {ts}, note varchar(40), "
    "PRIMARY KEY (store_id, register_id, sale_id))"
)

PRODUCTS = """\
group: produtos
direction: server_to_register
tables:
  - source: product
    key: [product_id]
    deletes: delete
"""
PRODUCT = (
    "CREATE TABLE product (product_id integer PRIMARY KEY, name varchar(40), "
    "price numeric(10,2), updated_at {ts}, active boolean)"
)


def _fill_sales(url: str, prefix: str = "") -> None:
    """N sales: every tenth has a NULL note; totals at scale 2; microsecond timestamps."""
    if url.startswith("sqlite"):
        execute(
            url,
            f"""WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {N})
            INSERT INTO sale SELECT {prefix}i, CASE WHEN i % 3 = 0 THEN 'C' ELSE 'O' END,
              (i % 1000) + 0.5, strftime('%Y-%m-%d %H:%M:%f', '2024-01-01', '+' || i || ' seconds')
              || '123', CASE WHEN i % 10 = 0 THEN NULL ELSE 'n' || i END FROM s""",
        )
    else:
        execute(
            url,
            f"""INSERT INTO sale SELECT {prefix}i, CASE WHEN i % 3 = 0 THEN 'C' ELSE 'O' END,
              (i % 1000) + 0.5,
              timestamp '2024-01-01' + make_interval(secs => i) + interval '0.000123 s',
              CASE WHEN i % 10 = 0 THEN NULL ELSE 'n' || i END
            FROM generate_series(1, {N}) AS i""",
        )


def _fill_server_sales(url: str, register_id: int) -> None:
    """The same N sales as the register would send, mapped (status as words)."""
    execute(
        url,
        f"""INSERT INTO sale SELECT 1, {register_id}, i,
          CASE WHEN i % 3 = 0 THEN 'closed' ELSE 'open' END, (i % 1000) + 0.5,
          timestamptz '2024-01-01 00:00:00+00' + make_interval(secs => i)
            + interval '0.000123 s',
          CASE WHEN i % 10 = 0 THEN NULL ELSE 'n' || i END
        FROM generate_series(1, {N}) AS i""",
    )


def _resync(node: Node, *targets: str, **kw: Any) -> ResyncResult:
    selection = select_jobs(node.settings, targets, kw.pop("register", None))
    return run_resync(node.settings, node.dbs, selection, **kw)


def _found(result: ResyncResult) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {"missing": set(), "extra": set(), "different": set()}
    for t in result.tables:
        for s in t.samples:
            out[s["kind"]].add(s["key"])
    return out


def _writes(node: Node) -> list[str]:
    """Every write statement that reaches any database of the node, from now on."""
    seen: list[str] = []
    verbs = ("INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "DROP", "TRUNCATE", "COPY")

    def listen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(verbs):
            seen.append(statement)

    for name in node.settings.config.databases:
        sa.event.listen(node.dbs[name].engine, "before_cursor_execute", listen)
    return seen


# --- register (SQLite) -> server (PostgreSQL), with another register on the same table ------
@pytest.mark.parametrize("register_kind", ["sqlite", "postgresql"])
def test_sales_register_to_server_finds_exactly_the_injected_differences(
    pg_database: Callable[[], str],
    sqlite_database: Callable[[], str],
    tmp_path: Path,
    register_kind: str,
) -> None:
    """A SQLite register (portable md5 row hashes) or a PostgreSQL one (`pg` row hashes; the
    constants of the target key hash like the server's integer columns)."""
    server = pg_database()
    register = sqlite_database() if register_kind == "sqlite" else pg_database()
    execute(
        register, REGISTER_SALE.format(ts="datetime" if register_kind == "sqlite" else "timestamp")
    )
    execute(server, SERVER_SALE.format(ts="timestamptz"))
    _fill_sales(register)
    _fill_server_sales(server, 3)
    _fill_server_sales(server, 9)  # another register's sales, same ids, same table
    node = Node(write_node(tmp_path, server, register, {"movimento": SALES}))
    node.setup()
    # What the register stores that equals the server only as a value: 10.5 (REAL) vs 10.50.
    execute(
        server,
        "DELETE FROM sale WHERE register_id = 3 AND sale_id IN (10, 50000, 99999)",  # missing
        "INSERT INTO sale VALUES (1, 3, 200001, 'open', 1, now(), 'x'),"
        " (1, 3, 0, 'open', 1, now(), 'y')",  # extra
        "UPDATE sale SET note = 'edited' WHERE register_id = 3 AND sale_id = 11",
        "UPDATE sale SET note = '' WHERE register_id = 3 AND sale_id = 20",  # NULL vs ''
        "UPDATE sale SET total = 12.51 WHERE register_id = 3 AND sale_id = 12",  # scale
        "UPDATE sale SET opened_at = opened_at + interval '1 microsecond' "
        "WHERE register_id = 3 AND sale_id = 13",  # timestamp precision
        "UPDATE sale SET status = 'O' WHERE register_id = 3 AND sale_id = 14",  # value map
        "UPDATE sale SET note = 'other register' WHERE register_id = 9 AND sale_id = 15",
    )
    writes = _writes(node)
    dry = _resync(node, dry_run=True, chunk_rows=20_000)
    assert writes == []  # --dry-run: not one write statement reached either database
    (t,) = dry.tables
    assert (t.rows, t.missing, t.extra, t.different) == (N, 3, 2, 5)
    assert _found(dry) == {
        "missing": {"[10]", "[50000]", "[99999]"},
        "extra": {"[1,3,200001]", "[1,3,0]"},
        "different": {f"[1,3,{i}]" for i in (11, 20, 12, 13, 14)},
    }
    assert dry.exit_code == 8
    assert t.fetched < N // 10  # only the differing chunks were downloaded

    fixed = _resync(node, dry_run=False, delete_extra=True, chunk_rows=20_000)
    (t,) = fixed.tables
    assert (t.repaired, t.deleted, t.held) == (8, 2, 0)
    again = _resync(node, dry_run=True, chunk_rows=20_000)
    assert again.differences == 0 and again.exit_code == 0
    # the other register's rows were never touched
    assert rows(server, "sale", ["note"], "register_id = 9 AND sale_id = 15") == [
        ("other register",)
    ]
    # the incremental watermark is still valid: a later change goes through once
    execute(register, "UPDATE sale SET note = 'after' WHERE sale_id = 7")
    node.sync("movimento")
    assert rows(server, "sale", ["note"], "register_id = 3 AND sale_id = 7") == [("after",)]
    node.close()


# --- server (PostgreSQL) -> register (SQLite) -------------------------------------------------
def test_catalog_server_to_register_repairs_and_deletes_extra(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    server, register = pg_database(), sqlite_database()
    execute(server, PRODUCT.format(ts="timestamptz"))
    execute(register, PRODUCT.format(ts="datetime"))
    execute(
        server,
        f"""INSERT INTO product SELECT i, 'p' || i, i % 100 + 0.25,
          timestamptz '2024-03-01 12:00:00+00' + make_interval(secs => i), i % 2 = 0
        FROM generate_series(1, {N}) AS i""",
    )
    execute(
        register,
        f"""WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {N})
        INSERT INTO product SELECT i, 'p' || i, i % 100 + 0.25,
          strftime('%Y-%m-%d %H:%M:%f', '2024-03-01 12:00:00', '+' || i || ' seconds'),
          i % 2 = 0 FROM s""",
    )
    node = Node(write_node(tmp_path, server, register, {"produtos": PRODUCTS}))
    node.setup()
    execute(
        register,
        "DELETE FROM product WHERE product_id IN (1, 77777)",
        "INSERT INTO product VALUES (300000, 'ghost', 1, '2024-01-01 00:00:00', 1)",
        "UPDATE product SET active = 1 - active WHERE product_id = 5",
        "UPDATE product SET name = NULL WHERE product_id = 6",
        "UPDATE product SET updated_at = '2024-03-01 12:00:07.000001' WHERE product_id = 7",
    )
    dry = _resync(node, dry_run=True)
    (t,) = dry.tables
    assert (t.missing, t.extra, t.different) == (2, 1, 3)
    assert t.fetched < N // 10  # PostgreSQL's SQL hash and SQLite's aggregate agree
    fixed = _resync(node, dry_run=False)  # deletes: delete -> the extra row goes
    (t,) = fixed.tables
    assert (t.repaired, t.deleted) == (5, 1)
    assert _resync(node, dry_run=True).differences == 0
    assert rows(server, "product") == rows(register, "product")
    node.close()


# --- PostgreSQL <-> PostgreSQL, while a writer keeps changing the source ------------------------
def test_resync_while_the_source_changes_converges_after_one_sync(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    server, register = pg_database(), pg_database()
    for url in (server, register):
        execute(url, PRODUCT.format(ts="timestamptz"))
    node = Node(write_node(tmp_path, server, register, {"produtos": PRODUCTS}))
    node.setup()
    execute(
        server,
        """INSERT INTO product SELECT i, 'p' || i, i % 100, now(), true
        FROM generate_series(1, 30000) AS i""",
    )
    node.sync("produtos")
    execute(register, "DELETE FROM product WHERE product_id % 1000 = 0")  # 30 lost rows
    stop = threading.Event()
    changes = [0]

    def writer() -> None:
        engine = sa.create_engine(server)
        n = 0
        with engine.connect() as conn:
            while not stop.is_set():
                n += 1
                with conn.begin():
                    conn.execute(
                        sa.text("UPDATE product SET name = :v WHERE product_id = :k"),
                        {"v": f"w{n}", "k": (n * 7919) % 30000 + 1},
                    )
                    conn.execute(
                        sa.text("INSERT INTO product VALUES (:k, 'new', 1, now(), true)"),
                        {"k": 100000 + n},
                    )
                    if n % 5 == 0:
                        conn.execute(
                            sa.text("DELETE FROM product WHERE product_id = :k"),
                            {"k": (n * 104729) % 30000 + 1},
                        )
                changes[0] = n
                time.sleep(0.002)
        engine.dispose()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = _resync(node, dry_run=False, chunk_rows=3000, leaf_rows=300)
        syncing = node.sync("produtos")  # a sync while the writer still writes
    finally:
        stop.set()
        thread.join()
    assert not result.errors and syncing
    assert result.tables[0].repaired >= 30
    assert changes[0] > 20
    node.sync("produtos")  # one incremental sync after the writer stopped
    assert rows(server, "product") == rows(register, "product")
    assert _resync(node, dry_run=True).differences == 0
    node.close()


# --- a column added to a mapping after data replicated ---------------------------------------
def test_a_column_added_to_the_mapping_is_found_and_filled_by_resync(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    from loguru import logger

    from replicator.check import run_check
    from replicator.status import collect

    server, register = pg_database(), sqlite_database()
    execute(server, PRODUCT.format(ts="timestamptz"))
    execute(register, PRODUCT.format(ts="datetime"))
    execute(
        server,
        "INSERT INTO product SELECT i, 'p' || i, i, now(), true FROM generate_series(1, 2000) i",
    )
    node = Node(
        write_node(tmp_path, server, register, {"produtos": PRODUCTS + "    exclude: [name]\n"})
    )
    node.setup()
    node.sync("produtos")
    assert rows(register, "product", ["name"], "product_id = 1") == [(None,)]
    node.close()
    node = Node(write_node(tmp_path, server, register, {"produtos": PRODUCTS}))
    hint = "replicator resync produtos.product --register caixa"

    def drift_warnings() -> list[str]:
        return [w for w in run_check(node.settings, node.dbs).warnings if "mapping changed" in w]

    def status_warning() -> str | None:
        (row,) = collect(node.settings, node.dbs, ["produtos"])
        return row.warning

    def synced() -> list[str]:
        seen: list[str] = []
        sink = logger.add(lambda m: seen.append(str(m)), level="WARNING")
        try:
            assert node.sync("produtos")[0].rows == 0  # incremental sync moves nothing
            execute(server, "UPDATE product SET price = 7 WHERE product_id = 2")
            assert node.sync("produtos")[0].rows == 1  # a commit keeps the old fingerprint
        finally:
            logger.remove(sink)
        return [m for m in seen if "mapping changed" in m]

    (warning,) = drift_warnings()
    assert "column name added" in warning and hint in warning
    assert "column name added" in (status_warning() or "")
    logged = synced()
    assert len(logged) == 2 and hint in logged[0]  # once per run
    assert len(drift_warnings()) == 1  # still there: the rows lack the column
    fixed = _resync(node, "produtos.product", dry_run=False, chunk_rows=500, leaf_rows=100)
    # every row but the one the sync just sent with the current mapping
    assert (fixed.tables[0].different, fixed.tables[0].repaired) == (1999, 1999)
    assert rows(register, "product", ["name"], "product_id = 1") == [("p1",)]
    assert drift_warnings() == [] and status_warning() is None and synced() == []
    # a register set up before the fingerprint table existed: no drift check, no failure
    execute(register, "DROP TABLE replicator_mapping_print")
    node.close()
    node = Node(write_node(tmp_path, server, register, {"produtos": PRODUCTS}))
    assert node.sync("produtos")[0].error is None
    report = run_check(node.settings, node.dbs)
    assert report.ok and any("run `replicator setup` once" in w for w in report.warnings)
    node.close()


# --- the command --------------------------------------------------------------------------------
def test_command_json_and_exit_codes(sqlite_database: Callable[[], str], tmp_path: Path) -> None:
    from replicator.cli import cli
    from replicator.resync import resync_command

    cli.add_command(resync_command)
    server, register = sqlite_database(), sqlite_database()
    for url in (server, register):
        execute(url, PRODUCT.format(ts="datetime"))
    execute(server, "INSERT INTO product VALUES (1, 'a', 1.5, '2024-01-01 00:00:00', 1)")
    config = write_node(tmp_path, server, register, {"produtos": PRODUCTS})
    node = Node(config)
    node.setup()
    node.close()
    run = CliRunner()
    res = run.invoke(cli, ["-c", str(config), "resync", "--dry-run", "--json"])
    assert res.exit_code == 8, res.output
    doc = json.loads(res.stdout)
    assert doc["differences"] == 1 and doc["tables"][0]["missing_on_target"] == 1
    res = run.invoke(cli, ["-c", str(config), "resync", "produtos"])
    assert res.exit_code == 0, res.output
    assert "resync" in res.stdout
    res = run.invoke(cli, ["-c", str(config), "resync", "--dry-run", "produtos.product"])
    assert res.exit_code == 0, res.output
    res = run.invoke(cli, ["-c", str(config), "resync", "produtos.nope"])
    assert res.exit_code == 2 and "no table 'nope'" in res.stderr
    res = run.invoke(cli, ["-c", str(config), "resync", "--register", "nope"])
    assert res.exit_code == 2


# --- the canonical field texts ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "a", "b", "same"),
    [
        (FieldSpec("dec", 2), 10.5, "10.50", True),
        (FieldSpec("dec", 2), "10.51", "10.50", False),
        (FieldSpec("text"), "", None, False),
        (
            FieldSpec("datetime", aware=True),
            "2024-01-01 10:00:00",
            "2024-01-01T10:00:00+00:00",
            True,
        ),
        (FieldSpec("datetime"), "2024-01-01 10:00:00.000001", "2024-01-01 10:00:00", False),
        (FieldSpec("bool"), 1, True, True),
    ],
    ids=["scale", "scale-differs", "null-vs-empty", "utc-instant", "microseconds", "bool"],
)
def test_field_texts(spec: FieldSpec, a: Any, b: Any, same: bool) -> None:
    assert (field_text(spec, a, "UTC") == field_text(spec, b, "UTC")) is same


# --- the canonical texts in PostgreSQL's SQL are the ones Python builds ------------------------
def test_postgresql_field_texts_and_md5_row_hashes_equal_pythons(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """What the SQLite aggregate and the judge compute in Python, PostgreSQL computes in SQL
    (cheap casts, not to_char): field by field and hash by hash, on awkward values."""
    from replicator.resync_hash import (
        MASK,
        field_specs,
        postgresql_fields,
        postgresql_row_hash,
        row_hasher,
    )

    server = pg_database()
    execute(
        server,
        "CREATE TABLE kinds (id integer PRIMARY KEY, d2 numeric(10,2), dn numeric, "
        "f float8, tz timestamptz, ts timestamp, dt date, tm time, b boolean, "
        "t varchar(20), by bytea, u uuid)",
        """INSERT INTO kinds VALUES
          (1, 10.5, 3.000, 0.1, '2024-01-01 10:00:00+00', '2024-01-01 10:00:00', '2024-02-29',
           '10:00:00', true, '', '\\x00ff', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'),
          (2, -0.001, -0.0, 2.5, '2024-01-01 10:00:00.000001+00', '0099-01-01 00:00:00.5',
           '0099-12-31', '23:59:59.999999', false, 'N', '\\x', null),
          (3, 12345678.99, 1e-20, 1e300, '1999-12-31 23:59:59.123450-03',
           '2024-06-01 12:00:00.1', '2024-01-01', '00:00:00.000010', null, 'a|b', null, null),
          (4, null, 123456789012345678901234567890.123456789, null, null, null, null, null,
           true, '3:é', null, null)""",
    )
    node = Node(write_node(tmp_path, server, sqlite_database(), {"produtos": PRODUCTS}))
    engine = node.dbs["server"].engine
    table = sa.Table("kinds", sa.MetaData(), autoload_with=engine)
    names = [c.name for c in table.c]
    specs = field_specs(table, names, "UTC")
    fields = postgresql_fields(specs, [table.c[n] for n in names], "UTC")
    sub = sa.select(*[f.label(f"f{i}") for i, f in enumerate(fields)]).subquery()
    hashed = postgresql_row_hash(specs, list(sub.c), "md5")
    with engine.connect() as conn:
        raw = conn.execute(sa.select(table).order_by(table.c.id)).all()
        texts = conn.execute(sa.select(*fields).order_by(table.c.id)).all()
        hashes = conn.execute(
            sa.select(*sub.c, hashed).order_by(sub.c.f0)  # f0: the id's text
        ).all()
    hasher = row_hasher(specs, "UTC")
    assert len(raw) == 4
    for row, sql in zip(raw, texts, strict=True):
        expected = [field_text(s, v, "UTC") for s, v in zip(specs, row, strict=True)]
        assert list(sql) == expected, (row, specs)
    by_id = {int(h[0]): int(h[-1]) & MASK for h in hashes}
    assert {int(r[0]): hasher(*r) for r in raw} == by_id
    node.close()


# --- PostgreSQL <-> PostgreSQL: the types' own hashes find what the portable md5 finds ---------
ITEMS_MAPPING = """\
group: artigos
direction: server_to_register
tables:
  - source: item
    key: [id]
"""
SERVER_ITEM = (
    "CREATE TABLE item (id integer PRIMARY KEY, price numeric(12,4), ratio float8, "
    "at timestamp, day date, flag boolean, note text, qty bigint)"
)
REGISTER_ITEM = (
    "CREATE TABLE item (id bigint PRIMARY KEY, price numeric(10,2), ratio float8, "
    "at timestamptz, day date, flag boolean, note varchar(40), qty integer)"
)


def test_postgresql_hash_finds_the_same_differences_as_md5(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    """Other types on each side (numeric(12,4) into numeric(10,2), a naive timestamp into a
    timestamptz, integer into bigint): equal rows are equal for both hashes without a single
    row downloaded, and both report exactly the injected differences."""
    server, register = pg_database(), pg_database()
    execute(server, SERVER_ITEM)
    execute(register, REGISTER_ITEM)
    n = 20_000
    execute(
        server,
        f"""INSERT INTO item SELECT i, i % 1000 + 0.25, i / 7.0,
          timestamp '2024-01-01' + make_interval(secs => i) + interval '0.000123 s',
          date '2024-01-01' + i % 300, i % 2 = 0,
          CASE WHEN i % 10 = 0 THEN NULL ELSE 'n' || i END, i * 3
        FROM generate_series(1, {n}) AS i""",
    )
    execute(
        register,
        f"""INSERT INTO item SELECT i, i % 1000 + 0.25, i / 7.0,
          timestamptz '2024-01-01 00:00:00+00' + make_interval(secs => i)
            + interval '0.000123 s',
          date '2024-01-01' + i % 300, i % 2 = 0,
          CASE WHEN i % 10 = 0 THEN NULL ELSE 'n' || i END, i * 3
        FROM generate_series(1, {n}) AS i""",
    )
    for url in (server, register):  # a zero and a NULL price, the same on both sides
        execute(
            url,
            "UPDATE item SET price = 0 WHERE id = 109",
            "UPDATE item SET price = NULL WHERE id = 110",
        )
    node = Node(write_node(tmp_path, server, register, {"artigos": ITEMS_MAPPING}))
    node.setup()
    for kind in ("pg", "md5"):
        same = _resync(node, dry_run=True, hash_kind=kind)
        (t,) = same.tables
        assert (t.rows, t.differences, t.fetched, t.hashes) == (n, 0, 0, 0), kind
    execute(
        register,
        "DELETE FROM item WHERE id IN (1, 9999, 20000)",  # missing
        "INSERT INTO item VALUES (30000, 1, 1, now(), now(), true, 'x', 1),"
        " (0, 1, 1, now(), now(), true, 'y', 1)",  # extra
        "UPDATE item SET note = '' WHERE id = 10",  # NULL vs ''
        "UPDATE item SET price = price + 0.01 WHERE id = 11",  # scale
        "UPDATE item SET at = at + interval '1 microsecond' WHERE id = 12",
        "UPDATE item SET flag = NOT flag WHERE id = 13",
        "UPDATE item SET ratio = ratio + 1e-9 WHERE id = 14",
        "UPDATE item SET qty = qty + 1 WHERE id = 15",
        "UPDATE item SET day = day + 1 WHERE id = 16",
        "UPDATE item SET note = 'n17 ' WHERE id = 17",  # a trailing space
        # values swapped between two rows of one bucket: a sum of record hashes per column
        # would not see it (nor a NULL and a zero swapped)
        "UPDATE item SET price = CASE id WHEN 101 THEN 102.25 ELSE 101.25 END "
        "WHERE id IN (101, 102)",
        "UPDATE item SET qty = CASE id WHEN 105 THEN 318 ELSE 315 END WHERE id IN (105, 106)",
        "UPDATE item SET price = CASE id WHEN 109 THEN NULL ELSE 0 END WHERE id IN (109, 110)",
    )
    found = {}
    for kind in ("pg", "md5"):
        dry = _resync(node, dry_run=True, hash_kind=kind, chunk_rows=2000)  # 50-row buckets
        (t,) = dry.tables
        assert (t.missing, t.extra, t.different) == (3, 2, 14), kind
        assert t.fetched <= 2 * 14, kind  # only the rows whose hashes differ
        found[kind] = _found(dry)
    assert (
        found["pg"]
        == found["md5"]
        == {
            "missing": {"[1]", "[9999]", "[20000]"},
            "extra": {"[30000]", "[0]"},
            "different": {f"[{i}]" for i in (*range(10, 18), 101, 102, 105, 106, 109, 110)},
        }
    )
    fixed = _resync(node, dry_run=False, delete_extra=True)
    assert fixed.tables[0].repaired == 17
    assert _resync(node, dry_run=True).differences == 0
    node.close()


# --- keys other than one integer column, and integer keys bunched at both ends -----------------
KEYS_MAPPING = """\
group: chaves
direction: server_to_register
tables:
  - source: code
    key: [code]
  - source: line
    key: [sale_id, line_no]
  - source: sparse
    key: [id]
"""
KEYS_DDL = (
    "CREATE TABLE code (code varchar(20) PRIMARY KEY, label varchar(20))",
    "CREATE TABLE line (sale_id integer, line_no integer, qty integer, "
    "PRIMARY KEY (sale_id, line_no))",
    "CREATE TABLE sparse (id bigint PRIMARY KEY, v integer)",
)


@pytest.mark.parametrize("register_kind", ["postgresql", "sqlite"])
def test_text_composite_and_bunched_keys_find_exactly_the_differences(
    pg_database: Callable[[], str],
    sqlite_database: Callable[[], str],
    tmp_path: Path,
    register_kind: str,
) -> None:
    """Text keys (mixed case: code point order on both sides), a composite key (buckets of
    numbered rows), and integer keys bunched at both ends of a 10**12 span (a bucket that
    differs and holds many rows is cut again, not compared row by row)."""
    server = pg_database()
    register = pg_database() if register_kind == "postgresql" else sqlite_database()
    fills = (
        "INSERT INTO code SELECT CASE WHEN i % 2 = 0 THEN 'K' ELSE 'k' END || i, 'l' || i "
        "FROM generate_series(1, 6000) AS i",
        "INSERT INTO line SELECT i / 4, i % 4, i FROM generate_series(1, 8000) AS i",
        "INSERT INTO sparse SELECT CASE WHEN i <= 3000 THEN i ELSE 1000000000000 + i END, i "
        "FROM generate_series(1, 6000) AS i",
    )
    execute(server, *KEYS_DDL, *fills)
    if register_kind == "postgresql":
        execute(register, *KEYS_DDL, *fills)
    else:
        execute(register, *KEYS_DDL)
        engine = sa.create_engine(server)
        with engine.connect() as conn:
            data = {t: conn.execute(sa.text(f"SELECT * FROM {t}")).all() for t in KEYS_TABLES}
        engine.dispose()
        target = sa.create_engine(register)
        with target.begin() as conn:
            for t, found in data.items():
                marks = ", ".join("?" * len(found[0]))
                conn.exec_driver_sql(f"INSERT INTO {t} VALUES ({marks})", [tuple(r) for r in found])
        target.dispose()
    node = Node(write_node(tmp_path, server, register, {"chaves": KEYS_MAPPING}))
    node.setup()
    execute(
        register,
        "DELETE FROM code WHERE code IN ('k1', 'K3000')",
        "INSERT INTO code VALUES ('a0', 'extra'), ('\u00e9', 'extra')",
        "UPDATE code SET label = 'changed' WHERE code = 'k4001'",
        "DELETE FROM line WHERE sale_id = 10 AND line_no = 2",
        "INSERT INTO line VALUES (5000, 1, 1)",
        "UPDATE line SET qty = -1 WHERE sale_id = 1500 AND line_no = 3",
        "DELETE FROM sparse WHERE id IN (2, 1000000005999)",
        "INSERT INTO sparse VALUES (500000000000, 1)",
        "UPDATE sparse SET v = -1 WHERE id IN (2999, 1000000003001)",
    )
    dry = _resync(node, dry_run=True, chunk_rows=2000, leaf_rows=50)
    by_table = {t.table: t for t in dry.tables}
    assert {k: (t.missing, t.extra, t.different) for k, t in by_table.items()} == {
        "code": (2, 2, 1),
        "line": (1, 1, 1),
        "sparse": (2, 1, 2),
    }
    samples = {t.table: {(s["kind"], s["key"]) for s in t.samples} for t in dry.tables}
    assert samples["code"] == {
        ("missing", '["k1"]'),
        ("missing", '["K3000"]'),
        ("extra", '["a0"]'),
        ("extra", json.dumps(["\u00e9"])),
        ("different", '["k4001"]'),
    }
    assert samples["sparse"] == {
        ("missing", "[2]"),
        ("missing", "[1000000005999]"),
        ("extra", "[500000000000]"),
        ("different", "[2999]"),
        ("different", "[1000000003001]"),
    }
    assert by_table["sparse"].hashes < 1000  # bunched keys: cut again, not 6,000 row hashes
    fixed = _resync(node, dry_run=False, delete_extra=True, chunk_rows=2000)
    assert not fixed.errors
    assert _resync(node, dry_run=True, chunk_rows=2000).differences == 0
    node.close()


KEYS_TABLES = ("code", "line", "sparse")


def test_the_sqlite_shortcuts_build_the_general_texts() -> None:
    """The fast per-value paths of the SQLite aggregate give exactly `field_text`'s pieces,
    on the values a register file holds and on the ones that need the general path."""
    from replicator.resync_hash import _piece, piece_maker

    values: list[Any] = [
        None, 0, 1, -1, 1.0, -0.0, 0.125, 10.5, 10.505, True, False, "10.50", "x", "", "N",
        "a|b", 12345678901234567890, float("nan"), 1e300,
        "2024-01-01 10:00:00", "2024-01-01T10:00:00.500", "2024-01-01 10:00:00.000001",
        "2024-02-30 10:00:00.10", "2024-02-29 23:59:59.999999", "0000-01-01 00:00:00",
        "2024-01-01 24:00:00", "2024-01-01 10:00:00+02:00", "2024-01-01", "not a date",
    ]  # fmt: skip
    specs = [
        FieldSpec("dec", 2), FieldSpec("dec", 0), FieldSpec("dec"), FieldSpec("int"),
        FieldSpec("text"), FieldSpec("bool"), FieldSpec("datetime"),
        FieldSpec("datetime", aware=True), FieldSpec("datetime", aware=True, target_zone="UTC"),
    ]  # fmt: skip
    for spec in specs:
        for zone in ("UTC", "America/Sao_Paulo"):
            make = piece_maker(spec, zone)
            for value in [*values, *values]:  # twice: the cached numbers too
                assert make(value) == _piece(spec, field_text(spec, value, zone)), (spec, value)


def test_postgresql_row_hash_has_no_structure_a_sum_would_cancel(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """PostgreSQL's hash-table hashes would miss these (`hash_record_extended`: bigint folded
    to 32 bits, numeric's weight mixed in by XOR, a record's hash linear in its fields):
    the `pg` row hash hashes the row's whole text, so none of them cancels in a bucket sum."""
    from replicator.resync_hash import MASK, field_specs, postgresql_fields, postgresql_row_hash

    server = pg_database()
    execute(
        server,
        "CREATE TABLE pairs (id integer, v bigint, p numeric, side integer)",
        # side 1: v of row 1 from 1 to 2**32 (the same 32-bit fold), p of both rows times
        # 10,000 (the same numeric digits, one weight more)
        "INSERT INTO pairs VALUES (1, 1, 150, 0), (2, 7, 3, 0), "
        "(1, 4294967296, 1500000, 1), (2, 7, 30000, 1)",
    )
    node = Node(write_node(tmp_path, server, sqlite_database(), {"produtos": PRODUCTS}))
    engine = node.dbs["server"].engine
    table = sa.Table("pairs", sa.MetaData(), autoload_with=engine)
    names = ["id", "v", "p"]
    specs = field_specs(table, names, "UTC")
    fields = postgresql_fields(specs, [table.c[n] for n in names], "UTC")
    hashed = postgresql_row_hash(specs, fields, "pg")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.side, hashed)).all()
    sums = [sum(int(h) for s, h in rows if s == side) & MASK for side in (0, 1)]
    assert sums[0] != sums[1]
    node.close()
