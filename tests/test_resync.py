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
def test_sales_register_to_server_finds_exactly_the_injected_differences(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    server, register = pg_database(), sqlite_database()
    execute(register, REGISTER_SALE.format(ts="datetime"))
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
