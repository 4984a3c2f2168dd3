"""Conditions a store meets that the sync core must survive: keys that are not integers,
rows parked in the quarantine, deletes the register still needs, a target table that refuses
everything, a busy PostgreSQL cluster, and a huge catalog arriving while the register sells."""

from __future__ import annotations

import hashlib
import itertools
import resource
import sqlite3
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from conftest import execute
from sqlalchemy.engine import make_url
from support import ITEM_DDL, ITEMS, Node, normalize, quarantined, rows, scalar, write_node

from replicator.backends import open_backend
from replicator.errors import PermanentError
from replicator.sync import JobResult, run_jobs


def run_once(node: Node, *groups: str) -> list[JobResult]:
    """One sync cycle that returns the results without raising their errors."""
    settings = node.settings
    return run_jobs(settings, settings.jobs(list(groups) or None), node.dbs)


def statuses(node: Node, db: str = "server") -> dict[tuple[str, str], int]:
    """(table, state) -> number of quarantined rows."""
    q = node.dbs[db].ct.quarantine.c
    with node.dbs[db].engine.connect() as conn:
        found = conn.execute(
            sa.select(q.table_name, q.status, sa.func.count()).group_by(q.table_name, q.status)
        ).all()
    return {(table, status): int(n) for table, status, n in found}


def sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def psql_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


# --- 1. A key deleted and inserted again is an update, whatever its type -------------------
PARENTS = """\
group: movimento
direction: register_to_server
tables:
  - source: parent
    key: [id]
"""


@pytest.mark.parametrize(
    ("key_type", "key", "other"),
    [
        ("numeric(10,0)", "1", "2"),
        ("numeric(10,2)", "1.50", "2.75"),
        ("varchar(20)", "'P-1'", "'P-2'"),
    ],
    ids=["numeric", "numeric-scale-2", "text"],
)
def test_key_deleted_and_inserted_again_keeps_the_targets_children(
    pg_database: Callable[[], str], tmp_path: Path, key_type: str, key: str, other: str
) -> None:
    """The register deletes a row and inserts it again under the same key (two
    transactions). On the server that is an update: the row is not deleted, so the server's
    own child rows (ON DELETE CASCADE) stay. A key really deleted still goes."""
    source, target = pg_database(), pg_database()
    parent = f"CREATE TABLE parent (id {key_type} PRIMARY KEY, name varchar(40))"
    execute(source, parent)
    execute(
        target,
        parent,
        f"CREATE TABLE child (id integer PRIMARY KEY, "
        f"parent_id {key_type} REFERENCES parent (id) ON DELETE CASCADE)",
    )
    node = Node(write_node(tmp_path, server=target, register=source, mappings={"m": PARENTS}))
    node.setup()
    execute(source, f"INSERT INTO parent VALUES ({key}, 'first'), ({other}, 'other')")
    node.sync()
    execute(target, f"INSERT INTO child VALUES (1, {key}), (2, {key}), (3, {other})")
    execute(source, f"DELETE FROM parent WHERE id = {key}")
    execute(source, f"INSERT INTO parent VALUES ({key}, 'second')")
    execute(source, f"DELETE FROM parent WHERE id = {other}")
    node.sync()
    assert rows(target, "parent") == rows(source, "parent")
    assert [r[1] for r in rows(target, "parent")] == ["second"]
    assert [r[0] for r in rows(target, "child")] == [1, 2], (
        "the children of the re-inserted parent must survive; those of the deleted one go"
    )
    assert quarantined(node) == []
    node.close()


# --- 2. Parked rows never wedge a job --------------------------------------------------------
def test_parked_rows_do_not_count_again_and_go_through_once_fixed(
    sqlite_database: Callable[[], str], pg_database: Callable[[], str], tmp_path: Path
) -> None:
    """150 rows the server refuses are parked; the next batch retries them with 60 new bad
    rows: only the 60 are new refusals, so the 100 good rows arrive and the job reports no
    error. Once the server is fixed, every parked row goes through."""
    source, target = sqlite_database(), pg_database()
    execute(source, ITEM_DDL)
    execute(
        target,
        "CREATE TABLE item (id integer PRIMARY KEY, name varchar(20), "
        "qty integer CONSTRAINT positive CHECK (qty >= 0))",
    )
    node = Node(write_node(tmp_path, server=target, register=source, mappings={"itens": ITEMS}))
    node.setup()
    execute(
        source,
        *[f"INSERT INTO item (id, name, qty) VALUES ({i}, 'bad', -1)" for i in range(1, 151)],
    )
    results = run_once(node)
    assert results[0].error is None
    assert len(quarantined(node)) == 150
    execute(
        source,
        *[f"INSERT INTO item (id, name, qty) VALUES ({i}, 'bad', -1)" for i in range(151, 211)],
        *[f"INSERT INTO item (id, name, qty) VALUES ({i}, 'good', 1)" for i in range(211, 311)],
    )
    results = run_once(node)
    assert results[0].error is None, results[0].error
    assert [r[0] for r in rows(target, "item")] == list(range(211, 311))
    assert statuses(node) == {("item", "refused"): 210}
    assert scalar(target, "SELECT count(*) FROM replicator.state WHERE last_error IS NOT NULL") == 0
    execute(target, "ALTER TABLE item DROP CONSTRAINT positive")
    results = run_once(node)
    assert results[0].error is None, results[0].error
    assert rows(target, "item") == rows(source, "item")
    assert len(rows(target, "item")) == 310
    assert quarantined(node) == []
    node.close()


# --- 3. Deletes the register still needs do not stop the catalog -----------------------------
CATALOG = """\
group: produtos
direction: server_to_register
tables:
  - source: product
    key: [product_id]
  - source: price
    key: [product_id]
    depends_on: [product]
"""


def test_deletes_of_products_the_register_sold_are_held_not_fatal(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """The server drops 250 products (and their prices) that sale items on the register
    still reference; in the same catalog round a price changes. The price reaches the
    register; the 250 deletes are held with their reason; nothing stops the group. Once the
    register no longer needs them, the held deletes go through."""
    server, register = pg_database(), sqlite_database()
    execute(
        server,
        "CREATE TABLE product (product_id integer PRIMARY KEY, name varchar(40))",
        "CREATE TABLE price (product_id integer PRIMARY KEY "
        "REFERENCES product (product_id) ON DELETE CASCADE, amount numeric(10,2))",
    )
    execute(
        register,
        "CREATE TABLE product (product_id integer PRIMARY KEY, name varchar(40))",
        "CREATE TABLE price (product_id integer PRIMARY KEY "
        "REFERENCES product (product_id), amount numeric(10,2))",
        "CREATE TABLE sale_item (id integer PRIMARY KEY, "
        "product_id integer NOT NULL REFERENCES product (product_id), qty integer)",
    )
    node = Node(write_node(tmp_path, server, register, {"produtos": CATALOG}))
    node.setup()
    execute(
        server,
        "INSERT INTO product SELECT g, 'product ' || g FROM generate_series(1, 300) g",
        "INSERT INTO price SELECT g, g + 0.5 FROM generate_series(1, 300) g",
    )
    node.sync()
    assert len(rows(register, "price")) == 300
    pos = sqlite3.connect(sqlite_path(register))
    pos.execute("PRAGMA foreign_keys = ON")
    pos.executemany(
        "INSERT INTO sale_item (id, product_id, qty) VALUES (?, ?, 1)",
        [(i, i) for i in range(1, 251)],
    )
    pos.commit()
    execute(server, "DELETE FROM product WHERE product_id <= 250")
    execute(server, "UPDATE price SET amount = 9.99 WHERE product_id = 300")
    results = run_once(node)
    assert results[0].error is None, results[0].error
    assert rows(register, "price", where="product_id = 300") == [(300, normalize(9.99))]
    assert len(rows(register, "price")) == 50, "the prices of the dropped products go"
    assert len(rows(register, "product")) == 300, "products still sold stay on the register"
    assert statuses(node, "caixa") == {("product", "refused"): 250}
    q = node.dbs["caixa"].ct.quarantine.c
    with node.dbs["caixa"].engine.connect() as conn:
        reasons = conn.execute(sa.select(q.reason).where(q.table_name == "product")).scalars()
        assert all("delete refused" in r and "FOREIGN KEY" in r.upper() for r in reasons)
    assert run_once(node)[0].error is None, "held deletes retried do not count again"
    assert statuses(node, "caixa") == {("product", "refused"): 250}
    pos.execute("DELETE FROM sale_item")
    pos.commit()
    pos.close()
    assert run_once(node)[0].error is None
    assert rows(register, "product") == rows(server, "product")
    assert rows(register, "price") == rows(server, "price")
    assert quarantined(node, "caixa") == []
    node.close()


# --- 4. A table that refuses everything stops alone --------------------------------------------
PAYMENTS_FIRST = """\
group: movimento
direction: register_to_server
tables:
  - source: payment
    key: [id]
  - source: sale
    key: [id]
"""


def test_a_table_refusing_every_row_stops_alone_and_whole(
    sqlite_database: Callable[[], str], any_database: Callable[[], str], tmp_path: Path
) -> None:
    """The server's payment table gained a NOT NULL column the mapping does not fill: all
    3,000 payments are refused. The sales of the same batch arrive; the job's error names
    payment; no payment was written or quarantined; once the server is fixed they arrive."""
    source, target = sqlite_database(), any_database()
    execute(
        source,
        "CREATE TABLE sale (id integer PRIMARY KEY, total numeric(12,2))",
        "CREATE TABLE payment (id integer PRIMARY KEY, sale_id integer, amount numeric(12,2))",
    )
    payment_target = (
        "CREATE TABLE payment (id integer PRIMARY KEY, sale_id integer, "
        "amount numeric(12,2), method varchar(10){})"
    )
    execute(
        target,
        "CREATE TABLE sale (id integer PRIMARY KEY, total numeric(12,2))",
        payment_target.format(" NOT NULL"),
    )
    node = Node(write_node(tmp_path, target, source, {"movimento": PAYMENTS_FIRST}))
    node.setup()
    series = "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 3000) "
    execute(
        source,
        series + "INSERT INTO sale (id, total) SELECT n, n * 1.5 FROM g",
        series + "INSERT INTO payment (id, sale_id, amount) SELECT n, n, n * 1.5 FROM g",
    )
    for _ in range(2):  # and again: the same, nothing half-applied meanwhile
        result = run_once(node)[0]
        assert rows(target, "sale") == rows(source, "sale")
        assert len(rows(target, "sale")) == 3000
        assert rows(target, "payment") == []
        assert isinstance(result.error, PermanentError), result.error
        assert "'payment'" in str(result.error) and "'sale'" not in str(result.error)
        assert result.tables["payment"].error and not result.tables["sale"].error
        assert quarantined(node) == []
        s = node.dbs["server"].ct.state.c
        with node.dbs["server"].engine.connect() as conn:
            errors = dict(conn.execute(sa.select(s.table_name, s.last_error)).all())
        assert errors["payment"] and "payment" in errors["payment"]
        assert errors["sale"] is None
    if target.startswith("sqlite"):
        execute(target, "DROP TABLE payment", payment_target.format(""))
    else:
        execute(target, "ALTER TABLE payment ALTER COLUMN method DROP NOT NULL")
    result = run_once(node)[0]
    assert result.error is None, result.error
    assert rows(target, "payment", ["id", "sale_id", "amount"]) == rows(source, "payment")
    assert rows(target, "sale") == rows(source, "sale")
    assert quarantined(node) == []
    node.close()


def test_a_stopped_table_reports_no_rows_it_did_not_write(
    sqlite_database: Callable[[], str], pg_database: Callable[[], str], tmp_path: Path
) -> None:
    """The first 999 payments fit the server's new CHECK, the other 2,001 do not: the table
    stops and its whole stream is rolled back, so neither the job's result nor the status
    counters may claim payments were applied or held."""
    source, target = sqlite_database(), pg_database()
    execute(
        source,
        "CREATE TABLE sale (id integer PRIMARY KEY, total numeric(12,2))",
        "CREATE TABLE payment (id integer PRIMARY KEY, sale_id integer, amount numeric(12,2))",
    )
    execute(
        target,
        "CREATE TABLE sale (id integer PRIMARY KEY, total numeric(12,2))",
        "CREATE TABLE payment (id integer PRIMARY KEY, sale_id integer, "
        "amount numeric(12,2) CHECK (amount < 1500))",
    )
    config = write_node(
        tmp_path, target, source, {"movimento": PAYMENTS_FIRST}, extra="[sync]\npage_rows = 500\n"
    )
    node = Node(config)
    node.setup()
    series = "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 3000) "
    execute(
        source,
        series + "INSERT INTO sale (id, total) SELECT n, n * 1.5 FROM g",
        series + "INSERT INTO payment (id, sale_id, amount) SELECT n, n, n * 1.5 FROM g",
    )
    result = run_once(node)[0]
    assert result.tables["payment"].error
    assert rows(target, "payment") == [] and quarantined(node) == []
    assert len(rows(target, "sale")) == 3000
    engine = sa.create_engine(target)
    with engine.connect() as conn:
        applied = dict(
            conn.execute(sa.text("SELECT table_name, rows_applied FROM replicator.state")).all()
        )
    engine.dispose()
    assert applied["sale"] == 3000
    payment = result.tables["payment"]
    assert (payment.upserts, payment.quarantined, applied["payment"]) == (0, 0, 0)
    node.close()


# --- 5. PostgreSQL's safe bound never goes backwards ------------------------------------------
def test_postgresql_safe_bound_never_goes_backwards(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    """Transaction ids are cluster-wide: another database of the server committing as fast as
    it can must never make this database's bound move back (positions would then be ahead
    of the bound, and a batch could be cut below what was already applied)."""
    source, target, elsewhere = pg_database(), pg_database(), pg_database()
    execute(source, ITEM_DDL)
    execute(target, ITEM_DDL)
    execute(elsewhere, "CREATE TABLE t (id bigserial PRIMARY KEY, v int)")
    node = Node(write_node(tmp_path, server=target, register=source, mappings={"itens": ITEMS}))
    node.setup()
    node.close()
    stop = threading.Event()
    commits = [0]

    def writer() -> None:
        with psycopg.connect(psql_url(elsewhere)) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO t (v) VALUES (1)")
                conn.commit()
                commits[0] += 1

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(3)]
    backend = open_backend(make_url(source), "n")
    bounds: list[int] = []
    try:
        for t in threads:
            t.start()
        while commits[0] < 100:
            time.sleep(0.01)
        for _ in range(3000):
            with backend.read_snapshot() as conn:
                bounds.append(backend.source_position(conn, "job").bound)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        backend.dispose()
    back = [(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(bounds)) if b < a]
    print(f"\n{len(bounds)} bounds over {commits[0]} commits elsewhere; backwards: {len(back)}")
    assert commits[0] > 1000, "the other database must be busy for the test to mean anything"
    assert back == [], f"the bound went backwards {len(back)} times, first {back[:3]}"


# --- 6. A huge catalog arrives while the register sells ------------------------------------------
BIG = 300_000
BIG_CATALOG = """\
group: produtos
direction: server_to_register
tables:
  - source: product
    key: [product_id]
"""


def _digest(url: str) -> tuple[int, str]:
    """Row count and a hash of every row, in key order, read in pages."""
    engine = sa.create_engine(url)
    h = hashlib.sha256()
    n = 0
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=10_000).execute(
                sa.text("SELECT product_id, name, price FROM product ORDER BY product_id")
            )
            for page in result.partitions():
                for product_id, name, price in page:
                    # SQLite's NUMERIC affinity keeps 1.00 as the integer 1: compare numbers
                    price = (
                        format(Decimal(str(price)).normalize(), "f") if price is not None else None
                    )
                    h.update(repr((product_id, name, price)).encode())
                    n += 1
    finally:
        engine.dispose()
    return n, h.hexdigest()


def test_huge_catalog_version_never_blocks_a_sale(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    """300,000 products exist on the server before setup, so setup stamps them all with one
    version. They go down to a SQLite register while the POS commits a sale every 50 ms
    with a 1 s busy timeout: no sale fails, and the register ends equal to the server."""
    server = pg_database()
    register = f"sqlite:///{tmp_path / 'register.db'}"
    ddl = "CREATE TABLE product (product_id integer PRIMARY KEY, name varchar(60), price {})"
    execute(
        server,
        ddl.format("numeric(10,2)"),
        f"INSERT INTO product SELECT g, 'product number ' || g || ' of the catalog', "
        f"(g % 10000) / 100.0 FROM generate_series(1, {BIG}) g",
    )
    execute(
        register,
        ddl.format("numeric(10,2)"),
        "CREATE TABLE sale (id integer PRIMARY KEY AUTOINCREMENT, at text NOT NULL)",
    )
    node = Node(write_node(tmp_path, server, register, {"produtos": BIG_CATALOG}))
    node.setup()
    assert scalar(server, "SELECT count(DISTINCT repl_version) FROM product") == 1
    stop = threading.Event()
    sales: list[float] = []
    failures: list[str] = []

    def pos() -> None:
        conn = sqlite3.connect(sqlite_path(register), timeout=1.0)
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    conn.execute("INSERT INTO sale (at) VALUES (datetime('now'))")
                    conn.commit()
                    sales.append(time.monotonic() - started)
                except sqlite3.OperationalError as exc:
                    failures.append(str(exc))
                    conn.rollback()
                time.sleep(0.05)
        finally:
            conn.close()

    thread = threading.Thread(target=pos, daemon=True)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    thread.start()
    started = time.monotonic()
    try:
        results = run_once(node)
    finally:
        stop.set()
        thread.join(10)
    seconds = time.monotonic() - started
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = results[0]
    print(
        f"\n{BIG} rows in {seconds:.1f}s, {result.batches} commits, longest write "
        f"{getattr(result, 'longest_write', 0) * 1000:.0f} ms; {len(sales)} sales, slowest "
        f"{max(sales, default=0) * 1000:.0f} ms, {len(failures)} failed; peak RSS "
        f"{rss_peak / 1024:.0f} MiB (before the sync {rss_before / 1024:.0f} MiB)"
    )
    assert result.error is None, result.error
    assert failures == [], f"{len(failures)} sales failed, first: {failures[0]}"
    assert len(sales) > 10
    assert _digest(register) == _digest(server)
    assert scalar(register, "SELECT count(*) FROM product") == BIG
    node.close()


# --- 7. Sales arrive whole while a large version is paged ---------------------------------------
def test_a_sale_larger_than_a_page_is_never_seen_half_applied(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    """One register transaction writes a sale of 300 items; pages are 20 rows and batches 50.
    The movement batch reads and writes it a page at a time, yet in ONE target transaction: a
    reader on the server polling all along sees the sale with 0 or all 300 items, never part."""
    import threading

    register, server = pg_database(), pg_database()
    ddl = (
        "CREATE TABLE sale (id integer PRIMARY KEY, total numeric(12,2))",
        "CREATE TABLE sale_item (sale_id integer REFERENCES sale (id), line integer, "
        "PRIMARY KEY (sale_id, line))",
    )
    execute(register, *ddl)
    execute(server, *ddl)
    group = (
        "group: movimento\ndirection: register_to_server\ntables:\n"
        "  - source: sale\n    key: [id]\n"
        "  - source: sale_item\n    key: [sale_id, line]\n    depends_on: [sale]\n"
    )
    node = Node(
        write_node(
            tmp_path,
            server,
            register,
            {"movimento": group},
            extra="[sync]\npage_rows = 20\nbatch_rows = 50\n",
        )
    )
    node.setup()
    execute(
        register,
        "INSERT INTO sale VALUES (1, 300)",
        "INSERT INTO sale_item SELECT 1, g FROM generate_series(1, 300) g",
    )
    seen: set[tuple[int, int]] = set()
    stop = threading.Event()

    def watch() -> None:
        engine = sa.create_engine(server)
        with engine.connect() as conn:
            while not stop.is_set():
                seen.add(
                    tuple(
                        conn.execute(
                            sa.text(
                                "SELECT (SELECT count(*) FROM sale), (SELECT count(*) FROM "
                                "sale_item)"
                            )
                        ).one()
                    )
                )
                conn.rollback()
        engine.dispose()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        results = node.sync()
    finally:
        stop.set()
        watcher.join()
    assert results[0].batches == 1, "one source transaction, one target transaction"
    assert seen <= {(0, 0), (1, 300)}, f"the server showed a partial sale: {sorted(seen)}"
    assert rows(server, "sale_item") == rows(register, "sale_item")
    node.close()


# --- 8. Atomic progress when the catalog reaches a register in many commits --------------------
def test_kill_9_in_the_middle_of_a_paged_version_resumes_from_its_position(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """One version (setup stamps 60,000 existing rows) goes to a SQLite register in short
    commits; the process is killed with SIGKILL between two of them. The next run goes on
    from the committed (version, key) position: every row arrives once, none is read twice."""
    import os
    import signal
    import subprocess
    import sys
    import time

    server, register = pg_database(), sqlite_database()
    ddl = "CREATE TABLE price (product_id integer PRIMARY KEY, value numeric(12,2))"
    execute(server, ddl, "INSERT INTO price SELECT g, g / 100.0 FROM generate_series(1, 60000) g")
    execute(register, ddl)
    group = (
        "group: cadastros\ndirection: server_to_register\ntables:\n"
        "  - source: price\n    key: [product_id]\n"
    )
    config = write_node(
        tmp_path, server, register, {"cadastros": group}, extra="[sync]\nbatch_rows = 500\n"
    )
    node = Node(config)
    node.setup()
    node.close()
    assert scalar(server, "SELECT count(DISTINCT repl_version) FROM price") == 1
    cmd = [sys.executable, "-m", "replicator.cli", "-c", str(config), "sync"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline and (scalar(register, "SELECT count(*) FROM price") or 0) < 5000
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = scalar(register, "SELECT count(*) FROM price")
    assert 0 < partial < 60000, "the kill should land mid-way"
    key = scalar(register, "SELECT row_key FROM replicator_state WHERE table_name = 'price'")
    assert key is not None, "the position is inside the version"
    assert int(key.strip("[]")) == partial, "the position matches what was committed"
    node = Node(config)
    results = node.sync()
    assert results[0].tables["price"].upserts == 60000 - partial, "nothing is read twice"
    assert rows(register, "price") == rows(server, "price")
    node.close()
