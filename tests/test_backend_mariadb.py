"""MariaDB registers (pyodbc + Connector/ODBC) against a PostgreSQL server: tracking, no echo,
out-of-order commits, exact values, quoting, error sorting, the job lock, the printed script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from datetime import time as clock
from decimal import Decimal
from pathlib import Path

import pyodbc
import pytest
import sqlalchemy as sa
from conftest import execute
from proxy import Proxy
from support import ITEM_DDL, ITEMS, Node, moved, quarantined, rows, scalar, write_node

from replicator.backends import open_backend
from replicator.backends.mariadb import MariaDBBackend, odbc_string
from replicator.backends.odbc import odbc_error
from replicator.errors import BusyError, ConfigError, PermanentError, TransientError
from replicator.quarantine import REFUSED, WAITING
from replicator.tracking import setup_script

Factory = Callable[[], str]


def raw(url: str) -> pyodbc.Connection:
    """A connection of the point-of-sale application (no replicator involved)."""
    return pyodbc.connect(odbc_string(sa.engine.make_url(url)), timeout=5)


@pytest.fixture
def pair(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path
) -> Iterator[tuple[Node, str, str]]:
    """A MariaDB register with `item`, a PostgreSQL server with the same table."""
    register, server = mariadb_database(), pg_database()
    execute(register, ITEM_DDL)
    execute(server, ITEM_DDL)
    node = Node(write_node(tmp_path, server=server, register=register, mappings={"itens": ITEMS}))
    node.setup()
    yield node, register, server
    node.close()


# --- connection strings (no server needed) ---------------------------------------------------
def test_connection_string_forms() -> None:
    url = sa.engine.make_url
    assert odbc_string(url("mariadb+pyodbc://pos@10.0.0.5:3307/loja")) == (
        "DRIVER={MariaDB Unicode};SERVER=10.0.0.5;PORT=3307;CHARSET=utf8mb4;DATABASE=loja;UID=pos;"
        "OPTION=2;READ_TIMEOUT=300;WRITE_TIMEOUT=300;CONN_TIMEOUT=10"
    )
    assert odbc_string(url("mariadb://pos@h/loja?driver=MariaDB+ODBC+3.1+Driver")).startswith(
        "DRIVER={MariaDB ODBC 3.1 Driver};SERVER=h;PORT=3306"
    )
    assert (
        odbc_string(url("mariadb://pos@/?dsn=caixa3"))
        == "DSN=caixa3;UID=pos;OPTION=2;READ_TIMEOUT=300;WRITE_TIMEOUT=300;CONN_TIMEOUT=10"
    )
    given = url("mysql+pyodbc://pos:p;w}@/?odbc_connect=DRIVER%3D%7BX%7D%3BSERVER%3Dh")
    assert odbc_string(given) == (
        "DRIVER={X};SERVER=h;UID=pos;OPTION=2;READ_TIMEOUT=300;WRITE_TIMEOUT=300;CONN_TIMEOUT=10;"
        "PWD={p;w}}}"
    )


def test_missing_driver_names_the_package(mariadb_database: Factory) -> None:
    url = sa.engine.make_url(mariadb_database()).update_query_dict({"driver": "No Such Driver"})
    backend = open_backend(url, "caixa")
    with pytest.raises(sa.exc.DBAPIError) as caught:
        backend.engine.connect()
    error = backend.classify(caught.value)
    assert isinstance(error, ConfigError)
    assert "apt install unixodbc odbc-mariadb" in str(error) and "MariaDB Unicode" in str(error)
    dsn = open_backend(sa.engine.make_url("mariadb://pos@/?dsn=nowhere"), "caixa")
    with pytest.raises(sa.exc.DBAPIError) as caught:
        dsn.engine.connect()
    assert isinstance(dsn.classify(caught.value), ConfigError)


# --- both directions, no echo, tombstones, rekeys ----------------------------------------------
BOTH_WAYS = {
    "down": """\
        group: cadastros
        direction: server_to_register
        tables:
          - source: customer
            key: [id]
        """,
    "up": """\
        group: movimento
        direction: register_to_server
        tables:
          - source: customer
            key: [id]
        """,
}


def test_both_ways_without_echo(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path
) -> None:
    register, server = mariadb_database(), pg_database()
    for url in (register, server):
        execute(url, "CREATE TABLE customer (id varchar(36) PRIMARY KEY, name varchar(80))")
    node = Node(write_node(tmp_path, server, register, BOTH_WAYS))
    node.setup()
    execute(register, "INSERT INTO customer (id, name) VALUES ('c-reg', 'José da Silva')")
    execute(server, "INSERT INTO customer (id, name) VALUES ('c-srv', 'Maria')")
    assert moved(node.sync("movimento")) == 1
    assert moved(node.sync("cadastros")) == 1  # c-srv down, c-reg not back
    assert scalar(register, "SELECT repl_origin FROM customer WHERE id = 'c-srv'") == "server"
    for _ in range(2):
        assert moved(node.sync("movimento", "cadastros")) == 0
    # a change of case only is a change (the collation would call them equal)
    execute(server, "UPDATE customer SET name = 'JOSÉ DA SILVA' WHERE id = 'c-reg'")
    assert moved(node.sync("cadastros")) == 1
    assert moved(node.sync("movimento", "cadastros")) == 0
    assert rows(server, "customer") == rows(register, "customer")
    # deletes and a key changed by the application travel as tombstones
    execute(register, "DELETE FROM customer WHERE id = 'c-srv'")
    execute(register, "UPDATE customer SET id = 'c-new' WHERE id = 'c-reg'")
    node.sync("movimento")
    assert rows(server, "customer") == [("c-new", "JOSÉ DA SILVA")]
    execute(server, "DELETE FROM customer WHERE id = 'c-new'")
    node.sync("cadastros")
    assert rows(register, "customer") == []
    assert moved(node.sync("movimento", "cadastros")) == 0
    node.close()


def test_same_batch_twice_touches_nothing(pair: tuple[Node, str, str], tmp_path: Path) -> None:
    """Server -> register twice from the start: equal rows are not written, so no trigger
    fires: versions and the clock stay where they are."""
    node, register, server = pair
    node.close()
    down = Node(
        write_node(
            tmp_path / "down",
            server=server,
            register=register,
            mappings={"itens": ITEMS.replace("register_to_server", "server_to_register")},
        )
    )
    down.setup()
    execute(server, "INSERT INTO item SELECT g, 'n' || g, g FROM generate_series(1, 300) g")
    assert moved(down.sync()) == 300
    stamps = rows(register, "item", ["id", "repl_version", "repl_origin"])
    clock = scalar(register, "SELECT version FROM replicator_clock")
    execute(register, "UPDATE replicator_state SET version = 0, row_key = NULL")
    down.sync()  # the same 300 rows again
    assert rows(register, "item", ["id", "repl_version", "repl_origin"]) == stamps
    assert scalar(register, "SELECT version FROM replicator_clock") == clock
    assert rows(register, "item") == rows(server, "item")
    down.close()


# --- 1. No loss: out-of-order commits ----------------------------------------------------------
def test_open_transaction_is_not_overtaken(pair: tuple[Node, str, str]) -> None:
    """A takes a version and stays open; B writes later. B cannot take a version while A
    holds the clock row, so nothing B commits can be read past A's; a sync in between moves
    nothing of A's, and after A commits both arrive."""
    node, register, server = pair
    a = raw(register)
    a.execute("INSERT INTO item (id, name, qty) VALUES (1, 'slow A', 1)")  # open
    b_done = threading.Event()

    def b() -> None:
        conn = raw(register)
        conn.execute("INSERT INTO item (id, name, qty) VALUES (2, 'fast B', 1)")
        conn.commit()
        conn.close()
        b_done.set()

    thread = threading.Thread(target=b)
    thread.start()
    time.sleep(0.5)
    assert not b_done.is_set(), "B must wait for A's clock row: versions in commit order"
    node.sync()
    assert rows(server, "item") == []
    a.commit()
    a.close()
    thread.join(10)
    assert b_done.is_set()
    node.sync()
    assert [r[0] for r in rows(server, "item")] == [1, 2]
    versions = dict(rows(register, "item", ["id", "repl_version"]))
    assert versions[1] < versions[2]


def test_committed_rows_are_read_while_a_sale_is_open(pair: tuple[Node, str, str]) -> None:
    """The bound is the clock in the read snapshot: what committed before the open sale
    goes now, the open sale later; the reader never waits for it."""
    node, register, server = pair
    execute(register, "INSERT INTO item (id, name, qty) VALUES (1, 'done', 1)")
    sale = raw(register)
    sale.execute("INSERT INTO item (id, name, qty) VALUES (2, 'open', 1)")
    started = time.monotonic()
    node.sync()
    assert time.monotonic() - started < 5
    assert [r[0] for r in rows(server, "item")] == [1]
    sale.rollback()  # a rolled-back sale leaves no hole that matters
    sale.close()
    execute(register, "INSERT INTO item (id, name, qty) VALUES (3, 'after', 1)")
    node.sync()
    assert [r[0] for r in rows(server, "item")] == [1, 3]


# --- exact values both ways ------------------------------------------------------------------
VALUES_UP = """\
group: valores
direction: register_to_server
tables:
  - source: reading
    key: [at]
"""
VALUES_DOWN = VALUES_UP.replace("register_to_server", "server_to_register").replace(
    "valores", "valores_down"
)
STAMPS = [datetime(2024, 3, 1, 10, 0, 0, n) for n in (1, 2, 999_999, 123_456, 500_000)]


@pytest.mark.parametrize("direction", ["up", "down"])
def test_microseconds_and_decimals_exact_end_to_end(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path, direction: str
) -> None:
    """Timestamp keys that differ only in microseconds, read and written in pages of 2 (so
    positions carry them), times of day to the microsecond, exact 20-digit decimals and
    accented text, both ways. Connector/ODBC drops the fraction of a bound timestamp or time
    (the backend binds them as text) and of a TIME it reads (the backend reads its text)."""
    register, server = mariadb_database(), pg_database()
    execute(
        register,
        "CREATE TABLE reading (at datetime(6) PRIMARY KEY, amount decimal(20,6), "
        "note varchar(40), hora time(6))",
    )
    execute(
        server,
        "CREATE TABLE reading (at timestamp(6) PRIMARY KEY, amount numeric(20,6), "
        "note varchar(40), hora time(6))",
    )
    up = direction == "up"
    mappings = {"v": VALUES_UP if up else VALUES_DOWN}
    source, target = (register, server) if up else (server, register)
    for i, at in enumerate(STAMPS):
        execute(
            source,
            "INSERT INTO reading (at, amount, note, hora) VALUES (:at, :amount, :note, :hora)",
            # as text: the tests' own plain pyodbc engine would drop the fraction
            params={
                "at": str(at),
                "amount": f"12345678901234.12345{i}",
                "note": "Preço ç",
                "hora": str(at.time()),
            },
        )
    node = Node(write_node(tmp_path, server, register, mappings, extra="[sync]\npage_rows = 2\n"))
    node.setup()  # the rows there before share one version: pages end inside it, by key
    assert moved(node.sync()) == len(STAMPS)
    cols = ["at", "amount", "note"]
    got = rows(target, "reading", cols)
    assert got == rows(source, "reading", cols)
    assert sorted(r[0].replace(tzinfo=None) for r in got) == sorted(STAMPS)
    assert {r[1] for r in got} == {Decimal(f"12345678901234.12345{i}") for i in range(5)}
    # TIME read as text on both sides (the tests' plain pyodbc engine drops its fraction)
    times = sorted(at.time() for at in STAMPS)
    for url in (register, server):
        assert sorted(clock.fromisoformat(t) for t in texts(url, "reading", "hora")) == times
    # updates and deletes by a key with microseconds
    execute(source, f"UPDATE reading SET note = 'editado' WHERE at = '{STAMPS[2]}'")
    execute(source, f"DELETE FROM reading WHERE at = '{STAMPS[3]}'")
    node.sync()
    node.sync()  # a PostgreSQL source may hold a just-committed change for the next turn
    assert rows(target, "reading", cols) == rows(source, "reading", cols)
    assert len(rows(target, "reading")) == 4
    node.close()


def texts(url: str, table: str, column: str) -> list[str]:
    """A column's values as the database's own text, sorted."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            cast = "CHAR" if engine.dialect.name in ("mysql", "mariadb") else "text"
            sql = f"SELECT CAST({column} AS {cast}) FROM {table}"
            return sorted(str(v) for (v,) in conn.exec_driver_sql(sql))
    finally:
        engine.dispose()


def test_fast_executemany_is_wrong_through_connector_odbc(mariadb_database: Factory) -> None:
    """Why the backend never turns fast_executemany on: through Connector/ODBC it sends
    decimals as floats and text in the wrong encoding (and, like every bound timestamp, drops
    microseconds, pyodbc issue 1023). If this test fails, the driver got fixed."""
    url = mariadb_database()
    execute(url, "CREATE TABLE t (id int PRIMARY KEY, d decimal(20,6), s varchar(20))")
    conn = raw(url)
    cur = conn.cursor()
    cur.fast_executemany = True
    cur.executemany("INSERT INTO t VALUES (?, ?, ?)", [(1, Decimal("12345678901234.123456"), "ç")])
    conn.commit()
    d, s = cur.execute("SELECT d, s FROM t").fetchone()
    conn.close()
    assert (d, s) != (Decimal("12345678901234.123456"), "ç")


def test_fractional_seconds_a_target_would_round_are_refused(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path
) -> None:
    register, server = mariadb_database(), pg_database()
    execute(register, "CREATE TABLE reading (id int PRIMARY KEY, at datetime)")
    execute(server, "CREATE TABLE reading (id int PRIMARY KEY, at timestamp)")
    mapping = VALUES_DOWN.replace("key: [at]", "key: [id]")
    node = Node(write_node(tmp_path, server, register, {"v": mapping}))
    node.setup()
    execute(
        server,
        "INSERT INTO reading VALUES (1, '2024-03-01 10:00:00'), (2, '2024-03-01 10:00:00.25')",
    )
    node.sync()
    assert rows(register, "reading") == [(1, datetime(2024, 3, 1, 10, 0, tzinfo=UTC))]
    assert quarantined(node, "caixa") == [("reading", "[2]")]
    node.close()


# --- names that need quoting -----------------------------------------------------------------
def test_reserved_and_accented_names(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path
) -> None:
    register, server = mariadb_database(), pg_database()
    mapping = """\
        group: pedidos
        direction: register_to_server
        tables:
          - source: order
            key: [key]
          - source: Preço
            key: [código]
        """
    execute(register, "CREATE TABLE `order` (`key` int PRIMARY KEY, `desc` varchar(20))")
    execute(register, "CREATE TABLE `Preço` (`código` varchar(10) PRIMARY KEY, valor decimal(9,2))")
    execute(server, 'CREATE TABLE "order" ("key" int PRIMARY KEY, "desc" varchar(20))')
    execute(server, 'CREATE TABLE "Preço" ("código" varchar(10) PRIMARY KEY, valor numeric(9,2))')
    node = Node(write_node(tmp_path, server, register, {"pedidos": mapping}))
    node.setup()
    execute(
        register,
        "INSERT INTO `order` (`key`, `desc`) VALUES (1, 'um'), (2, 'dois')",
        "INSERT INTO `Preço` (`código`, valor) VALUES ('pão', 1.25), ('café', 3.10)",
        "DELETE FROM `order` WHERE `key` = 2",
        "UPDATE `Preço` SET `código` = 'Café' WHERE `código` = 'café'",
    )
    node.sync()
    assert rows(server, "order") == [(1, "um")]
    assert rows(server, "Preço") == sorted(
        [("pão", Decimal("1.25")), ("Café", Decimal("3.1"))], key=repr
    )
    node.close()


# --- fail loud: bad rows, error sorting ----------------------------------------------------------
def test_bad_row_quarantined_on_a_mariadb_target(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path
) -> None:
    register, server = mariadb_database(), pg_database()
    execute(server, "CREATE TABLE item (id integer PRIMARY KEY, name varchar(200), qty integer)")
    execute(
        register,
        "CREATE TABLE item (id integer PRIMARY KEY, name varchar(20), "
        "qty integer CHECK (qty >= 0))",
    )
    mapping = ITEMS.replace("register_to_server", "server_to_register")
    node = Node(write_node(tmp_path, server, register, {"itens": mapping}))
    node.setup()
    execute(
        server,
        "INSERT INTO item SELECT g, 'ok', g FROM generate_series(1, 50) g",
        "UPDATE item SET qty = -5 WHERE id = 7",
        "UPDATE item SET name = repeat('x', 30) WHERE id = 9",
    )
    node.sync()
    assert quarantined(node, "caixa") == [("item", "[7]"), ("item", "[9]")]
    assert len(rows(register, "item")) == 48
    node.close()


def test_driver_errors_sorted_by_code(mariadb_database: Factory) -> None:
    url = mariadb_database()
    execute(
        url,
        "CREATE TABLE parent (id int PRIMARY KEY)",
        "CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id))",
        "INSERT INTO parent VALUES (1)",
        "INSERT INTO child VALUES (1, 1)",
    )
    backend = open_backend(sa.engine.make_url(url), "caixa", lock_timeout_ms=1000)
    assert isinstance(backend, MariaDBBackend)

    def error_of(*statements: str) -> sa.exc.DBAPIError:
        with pytest.raises(sa.exc.DBAPIError) as caught, backend.engine.begin() as conn:
            for stmt in statements:
                conn.exec_driver_sql(stmt)
        return caught.value

    orphan = error_of("INSERT INTO child VALUES (2, 99)")
    assert odbc_error(orphan.orig or orphan)[1] == 1452 and backend.row_error(orphan) == WAITING
    duplicate = error_of("INSERT INTO parent VALUES (1)")
    assert backend.row_error(duplicate) == REFUSED
    assert isinstance(backend.classify(duplicate), PermanentError)
    referenced = error_of("DELETE FROM parent WHERE id = 1")
    assert backend.row_error(referenced) == REFUSED
    missing = error_of("SELECT * FROM nosuch")
    assert backend.row_error(missing) is None
    assert isinstance(backend.classify(missing), PermanentError)
    holder = raw(url)
    holder.execute("UPDATE parent SET id = id WHERE id = 1")  # holds the row lock
    try:
        timeout = error_of("UPDATE parent SET id = id WHERE id = 1")
    finally:
        holder.rollback()
        holder.close()
    assert odbc_error(timeout.orig or timeout)[1] == 1205
    assert backend.row_error(timeout) is None
    assert isinstance(backend.classify(timeout), TransientError)
    down = open_backend(sa.engine.make_url(url).set(port=1), "caixa")
    with pytest.raises(sa.exc.DBAPIError) as caught:
        down.engine.connect()
    assert isinstance(down.classify(caught.value), TransientError)
    backend.dispose()


def test_job_lock_makes_services_take_turns(pair: tuple[Node, str, str], tmp_path: Path) -> None:
    node, register, server = pair
    node.close()
    down = Node(
        write_node(
            tmp_path / "down",
            server=server,
            register=register,
            mappings={"itens": ITEMS.replace("register_to_server", "server_to_register")},
        )
    )
    down.setup()
    execute(server, "INSERT INTO item VALUES (1, 'n', 1)")
    backend = down.dbs["caixa"]
    job = down.settings.jobs()[0].name
    with backend.write(job):
        other = open_backend(backend.url, "caixa")
        with pytest.raises(BusyError), other.write(job):
            pass
        other.dispose()
        results = down.sync()
    assert results[0].skipped and "another service" in results[0].skipped
    assert rows(register, "item") == []
    down.sync()
    assert rows(register, "item") == rows(server, "item")
    down.close()


# --- the script a DBA runs ---------------------------------------------------------------------
def test_printed_script_runs_in_the_mariadb_client(
    mariadb_database: Factory, tmp_path: Path
) -> None:
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is None:
        pytest.skip("no mariadb client")
    url = mariadb_database()
    execute(url, ITEM_DDL)
    execute(url, "INSERT INTO item (id, name, qty) VALUES (1, 'before', 1)")
    node = Node(write_node(tmp_path, f"sqlite:///{tmp_path / 's.db'}", url, {"itens": ITEMS}))
    backend = node.dbs["caixa"]
    text = backend.script(setup_script(node.settings, node.dbs, "caixa"))
    assert "DELIMITER $$" in text and "TRIGGER" in text
    database = sa.engine.make_url(url).database or ""
    run = subprocess.run(
        [client, "-h127.0.0.1", "-uroot", database], input=text.encode(), capture_output=True
    )
    assert run.returncode == 0, run.stderr.decode()
    execute(url, "INSERT INTO item (id, name, qty) VALUES (2, 'after', 2)")
    stamped = rows(url, "item", ["id", "repl_version"])
    assert all(v is not None for _, v in stamped) and stamped[0][1] < stamped[1][1]
    assert scalar(url, "SELECT count(*) FROM replicator_incarnation") == 1
    node.close()


def test_generic_script_without_a_database() -> None:
    backend = open_backend(sa.engine.make_url("mariadb://pos@nowhere.invalid/loja"), "caixa")
    from replicator.backends.base import TrackedTable

    ddl = backend.tracking_ddl(None, TrackedTable("Preço", ("código",), "repl_version"))
    assert any("BEFORE INSERT ON `Preço`" in s for s in ddl)
    assert any("JSON_ARRAY(OLD.`código`)" in s for s in ddl)
    assert not any(s.rstrip().endswith(";") for s in ddl)
    control = backend.control_ddl()
    assert control[-1].endswith("ON DUPLICATE KEY UPDATE id = id")
    assert any("VARCHAR(1400) CHARACTER SET ascii COLLATE ascii_bin" in s for s in control)


def test_data_source_of_odbc_ini_through_the_cli(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path
) -> None:
    """A register named by its ODBC data source (`?dsn=`), in a real `replicator` process
    whose odbc.ini is the one written here (ODBCINI)."""
    register, server = mariadb_database(), pg_database()
    execute(register, ITEM_DDL)
    execute(server, ITEM_DDL)
    ini = tmp_path / "odbc.ini"
    ini.write_text("[caixa_teste]\nDriver=MariaDB Unicode\nServer=127.0.0.1\nPort=3306\n")
    database = sa.engine.make_url(register).database
    config = write_node(
        tmp_path, server, f"mariadb+pyodbc://root@/{database}?dsn=caixa_teste", {"itens": ITEMS}
    )
    execute(register, "INSERT INTO item (id, name, qty) VALUES (1, 'pão', 2)")
    env = {**os.environ, "ODBCINI": str(ini)}
    base = [sys.executable, "-m", "replicator.cli", "-c", str(config)]
    for args in (["setup"], ["sync"]):
        run = subprocess.run(base + args, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
    assert rows(server, "item") == [(1, "pão", 2)]
    bad = {**env, "ODBCINI": str(tmp_path / "missing.ini")}
    run = subprocess.run([*base, "sync"], env=bad, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "apt install unixodbc odbc-mariadb" in run.stdout + run.stderr


def test_replace_into_and_multi_row_writes_are_tracked(pair: tuple[Node, str, str]) -> None:
    """REPLACE INTO deletes and inserts (both triggers fire); one statement writing many rows
    stamps each of them."""
    node, register, server = pair
    execute(
        register, "INSERT INTO item (id, name, qty) VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)"
    )
    node.sync()
    execute(
        register,
        "REPLACE INTO item (id, name, qty) VALUES (2, 'b2', 20)",
        "UPDATE item SET qty = qty * 10 WHERE id IN (1, 3)",
    )
    node.sync()
    assert rows(server, "item") == [(1, "a", 10), (2, "b2", 20), (3, "c", 30)]
    assert rows(server, "item") == rows(register, "item")


def test_network_cut_is_transient_and_sync_resumes(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path
) -> None:
    """The register behind a TCP proxy: cut, the sync fails as transient (the sale goes on
    at the register); back, the next sync delivers everything."""
    register, server = mariadb_database(), pg_database()
    execute(register, ITEM_DDL)
    execute(server, ITEM_DDL)
    proxy = Proxy(sa.engine.make_url(register).port or 3306)
    behind = sa.engine.make_url(register).set(port=proxy.port).render_as_string(False)
    node = Node(write_node(tmp_path, server, behind, {"itens": ITEMS}))
    node.setup()
    execute(register, "INSERT INTO item (id, name, qty) VALUES (1, 'a', 1)")
    node.sync()
    proxy.cut()
    execute(register, "INSERT INTO item (id, name, qty) VALUES (2, 'during the cut', 1)")
    with pytest.raises(TransientError):
        node.sync()
    proxy.restore()
    node.sync()
    assert [r[0] for r in rows(server, "item")] == [1, 2]
    node.close()
    proxy.close()


def test_kill_9_mid_catalog_sync_resumes_without_loss(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path
) -> None:
    """A real `replicator sync` writing the catalog into a MariaDB register, killed with
    SIGKILL between or inside its short commits, then run again: rows and watermark were
    committed together, so nothing is lost and nothing is applied twice."""
    register, server = mariadb_database(), pg_database()
    execute(register, ITEM_DDL)
    execute(server, ITEM_DDL)
    mapping = ITEMS.replace("register_to_server", "server_to_register")
    config = write_node(tmp_path, server, register, {"itens": mapping})
    node = Node(config)
    node.setup()
    node.close()
    execute(server, "INSERT INTO item SELECT g, 'n' || g, g FROM generate_series(1, 60000) g")
    cmd = [sys.executable, "-m", "replicator.cli", "-c", str(config), "sync"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (scalar(register, "SELECT count(*) FROM item") or 0):
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    partial = scalar(register, "SELECT count(*) FROM item")
    assert 0 < partial < 60000, "the kill should land mid-way"
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    assert rows(register, "item") == rows(server, "item")
    assert scalar(register, "SELECT count(*) FROM replicator_state") == 1


def test_a_sale_never_waits_long_for_the_catalog(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path
) -> None:
    """Customers go both ways, so the register tracks them and the replicator's catalog
    writes hold the clock row: they come in short commits, and a sale (a tracked write)
    that arrives meanwhile gets in between them."""
    register, server = mariadb_database(), pg_database()
    for url in (register, server):
        execute(url, "CREATE TABLE customer (id int PRIMARY KEY, name varchar(80))")
    execute(register, ITEM_DDL)
    mappings = {
        **BOTH_WAYS,
        "up": BOTH_WAYS["up"].rstrip() + "\n          - source: item\n            key: [id]\n",
    }
    execute(server, ITEM_DDL)
    node = Node(write_node(tmp_path, server, register, mappings))
    node.setup()
    execute(
        server, "INSERT INTO customer SELECT g, 'cliente ' || g FROM generate_series(1, 25000) g"
    )
    waits: list[float] = []
    done = threading.Event()

    def sell() -> None:
        conn = raw(register)
        n = 0
        while not done.is_set():
            n += 1
            started = time.monotonic()
            conn.execute("INSERT INTO item (id, name, qty) VALUES (?, 'venda', 1)", n)
            conn.commit()
            waits.append(time.monotonic() - started)
            time.sleep(0.01)
        conn.close()

    seller = threading.Thread(target=sell)
    seller.start()
    try:
        results = node.sync("cadastros")
    finally:
        done.set()
        seller.join(10)
    assert results[0].batches > 3, "the catalog came in several short commits"
    assert len(waits) > 10 and max(waits) < 1.0, f"a sale waited {max(waits):.2f}s"
    assert len(rows(register, "customer")) == 25000
    node.sync("movimento")
    assert len(rows(server, "item")) == len(waits)
    node.close()


def test_server_types_without_a_mariadb_binding_arrive_as_text(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path
) -> None:
    """uuid, jsonb and inet from the server into CHAR/JSON/VARCHAR columns of the register."""
    register, server = mariadb_database(), pg_database()
    execute(
        server,
        "CREATE TABLE device (id uuid PRIMARY KEY, config jsonb, address inet, active boolean)",
    )
    execute(
        register,
        "CREATE TABLE device (id char(36) PRIMARY KEY, config json, address varchar(45), "
        "active boolean)",
    )
    mapping = ITEMS.replace("register_to_server", "server_to_register").replace("item", "device")
    node = Node(write_node(tmp_path, server, register, {"d": mapping}))
    node.setup()
    execute(
        server,
        "INSERT INTO device VALUES ('6f1c2a5e-1d2b-4c3a-9e8f-0a1b2c3d4e5f', "
        """'{"impressora": "balcão", "vias": 2}', '192.168.0.10', true)""",
    )
    node.sync()
    assert quarantined(node, "caixa") == []
    got = rows(register, "device")
    assert got[0][0] == "6f1c2a5e-1d2b-4c3a-9e8f-0a1b2c3d4e5f"
    assert json.loads(got[0][1]) == {"impressora": "balcão", "vias": 2}
    assert got[0][2:] == ("192.168.0.10", 1)
    node.close()


def test_a_value_the_driver_cannot_send_is_refused_for_its_row(mariadb_database: Factory) -> None:
    """pyodbc's own refusal (message, SQLSTATE HY105) is read by its code like the server's."""
    url = mariadb_database()
    execute(url, "CREATE TABLE t (id int PRIMARY KEY, v varchar(20))")
    backend = open_backend(sa.engine.make_url(url), "caixa")
    with pytest.raises(sa.exc.DBAPIError) as caught, backend.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (?, ?)", (1, object()))
    assert odbc_error(caught.value.orig or caught.value)[0] == "HY105"
    assert backend.row_error(caught.value) == REFUSED
    backend.dispose()


# --- found by trying it as a store would (hostile schemas) -----------------------------------
def test_application_insert_without_a_column_list_still_works(
    pair: tuple[Node, str, str],
) -> None:
    """A POS that writes `INSERT INTO item VALUES (...)` (no column list) or reads `SELECT *`
    into a fixed record keeps working after setup: the tracking columns are INVISIBLE."""
    node, register, server = pair
    app = raw(register)
    try:
        app.execute("INSERT INTO item VALUES (1, 'pão', 2)")
        app.commit()
        assert [tuple(r) for r in app.execute("SELECT * FROM item")] == [(1, "pão", 2)]
    finally:
        app.close()
    assert moved(node.sync()) == 1
    assert rows(server, "item") == [(1, "pão", 2)]


def test_setup_run_again_never_leaves_a_table_untracked(pair: tuple[Node, str, str]) -> None:
    """`setup` run again while the store sells (a table added to a group): between any two of
    its statements an update and a delete of the application are still tracked (DROP TRIGGER
    then CREATE TRIGGER left a moment without the trigger: such a change was never sent)."""
    from replicator.backends.base import TrackedTable

    node, register, server = pair
    execute(register, "INSERT INTO item (id, name, qty) VALUES (1, 'a', 0)")
    backend = node.dbs["caixa"]
    app = raw(register)
    last = scalar(register, "SELECT repl_version FROM item WHERE id = 1")
    ddl = backend.tracking_ddl(None, TrackedTable("item", ("id",), "repl_version"))
    try:
        for n, stmt in enumerate(ddl):
            with backend.engine.begin() as conn:
                conn.exec_driver_sql(stmt)
            app.execute("UPDATE item SET qty = qty + 1 WHERE id = 1")
            app.execute("INSERT INTO item (id, name, qty) VALUES (?, 'gone', 0)", 100 + n)
            app.execute("DELETE FROM item WHERE id = ?", 100 + n)
            app.commit()
            version = scalar(register, "SELECT repl_version FROM item WHERE id = 1")
            assert version > last, f"an update after {stmt.splitlines()[0]!r} was not tracked"
            last = version
            tombs = scalar(
                register, f"SELECT count(*) FROM replicator_tombstone WHERE `key` = '[{100 + n}]'"
            )
            assert tombs == 1, f"a delete after {stmt.splitlines()[0]!r} was not tracked"
    finally:
        app.close()
    node.sync()
    assert rows(server, "item") == [(1, "a", len(ddl))]


def test_refused_row_message_names_the_table_not_the_stage(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path
) -> None:
    """A latin1 table on the register refuses a name it cannot hold: the held row's reason
    names that table and column, without pyodbc's tuple or the stage table's name."""
    register, server = mariadb_database(), pg_database()
    execute(
        register,
        "CREATE TABLE item (id integer PRIMARY KEY, name varchar(20), qty integer) "
        "CHARACTER SET latin1",
    )
    execute(server, ITEM_DDL)
    down = ITEMS.replace("register_to_server", "server_to_register")
    node = Node(write_node(tmp_path, server, register, {"itens": down}))
    node.setup()
    execute(server, "INSERT INTO item VALUES (1, 'José', 1), (2, 'Łódź', 2)")
    node.sync()
    assert rows(register, "item") == [(1, "José", 1)]
    reason = scalar(register, "SELECT reason FROM replicator_quarantine")
    assert "replicator_stage" not in reason and "`item`.`name`" in reason, reason
    assert reason.endswith("(1366) (SQLSTATE 22007)") and "('" not in reason, reason
    assert "[ma-" not in reason and "SQLExecDirect" not in reason, reason
    node.close()


def test_a_database_that_does_not_exist_is_transient(mariadb_database: Factory) -> None:
    """As on PostgreSQL (exit 4): a register's database is missing while a backup is
    restored into it; the service retries it soon, it does not wait as NEEDS ATTENTION."""
    url = sa.engine.make_url(mariadb_database()).set(database="repl_mdb_nosuch_db")
    backend = open_backend(url, "caixa")
    with pytest.raises(sa.exc.DBAPIError) as caught:
        backend.engine.connect()
    error = backend.classify(caught.value)
    assert isinstance(error, TransientError) and error.exit_code == 4, error
    assert "Unknown database 'repl_mdb_nosuch_db' (1049) (SQLSTATE 42000)" in str(error)
    backend.dispose()


def test_cast_to_an_exact_number_keeps_cents(mariadb_database: Factory) -> None:
    """The closing sums a TEXT (or FLOAT) amount column as CAST(... AS DECIMAL): MariaDB takes
    that as DECIMAL(10,0), so '10.50' counted as 11 and 12345678901.99 as 9999999999."""
    url = mariadb_database()
    execute(url, "CREATE TABLE sale (id int PRIMARY KEY, total text, price double)")
    execute(url, "INSERT INTO sale VALUES (1, '10.50', 0.1), (2, '12345678901.99', 0.2)")
    backend = open_backend(sa.engine.make_url(url), "caixa")
    with backend.engine.connect() as conn:
        sale = backend.table(conn, "sale")
        total = sa.func.sum(sa.cast(sale.c.total, sa.Numeric()))
        price = sa.func.sum(sa.func.round(sa.cast(sale.c.price, sa.Numeric()), 2))
        got = conn.execute(sa.select(total, price)).one()
    assert Decimal(got[0]) == Decimal("12345678912.49") and Decimal(got[1]) == Decimal("0.3")
    backend.dispose()


def test_setup_behind_an_open_sale_gives_up_soon(pair: tuple[Node, str, str]) -> None:
    """`setup` (ALTER TABLE) behind a sale that is still open waits for its metadata lock at
    most the lock timeout, then fails as transient: waiting a year (MariaDB's default) would
    queue every later statement of the point of sale on that table behind it."""
    from replicator.tracking import install

    node, register, _server = pair
    failures: list[BaseException] = []

    def setup() -> None:
        try:
            install(node.settings, node.dbs, ["caixa"])
        except Exception as exc:
            failures.append(exc)

    sale = raw(register)
    worker = threading.Thread(target=setup, daemon=True)
    try:
        sale.execute("SELECT * FROM item").fetchall()  # a transaction that read it: open
        worker.start()
        worker.join(20)
        waited_on = worker.is_alive()
    finally:
        sale.rollback()
        sale.close()
        worker.join(60)
    assert not waited_on, "setup still waits for the open sale's metadata lock"
    assert len(failures) == 1 and isinstance(failures[0], TransientError), failures


def test_connect_to_a_link_that_says_nothing_ends(mariadb_database: Factory) -> None:
    """A link that accepts and then says nothing (a register's database behind a dead NAT):
    connecting fails as transient within the connect timeout. READ_TIMEOUT does not cover the
    server's greeting and pyodbc's login timeout does not reach the driver: the connect, and
    the service's job with it, waited forever (seen: 23 minutes, health still "ok")."""
    url = sa.engine.make_url(mariadb_database())
    with Proxy(url.port or 3306) as proxy:
        backend = open_backend(url.set(port=proxy.port), "caixa")
        proxy.stall()
        failures: list[BaseException] = []

        def connect() -> None:
            try:
                backend.engine.connect().close()
            except sa.exc.DBAPIError as exc:
                failures.append(backend.classify(exc))

        worker = threading.Thread(target=connect, daemon=True)
        worker.start()
        worker.join(30)
        still = worker.is_alive()
        proxy.restore()
    assert not still, "connect still waits on a silent link"
    assert len(failures) == 1 and isinstance(failures[0], TransientError), failures
    backend.dispose()


def test_wrong_driver_is_a_config_error_in_every_command(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path
) -> None:
    """A driver name that /etc/odbcinst.ini does not know: check, status, setup and sync all
    say so as a configuration error naming the package, never as a server that does not
    answer (which the service would retry for ever)."""
    register, server = mariadb_database(), pg_database()
    url = sa.engine.make_url(register).update_query_dict({"driver": "MariaDB Nowhere"})
    config = write_node(
        tmp_path, server, url.render_as_string(hide_password=False), {"itens": ITEMS}
    )
    base = [sys.executable, "-m", "replicator.cli", "-c", str(config)]
    for command in ("check", "status", "setup", "sync"):
        run = subprocess.run([*base, command], capture_output=True, text=True, timeout=120)
        said = run.stdout + run.stderr
        # check reports it among its problems (exit 3); the others stop on it (exit 2)
        assert run.returncode == (3 if command == "check" else 2), f"{command}: {said}"
        assert "apt install unixodbc odbc-mariadb" in said, f"{command}: {said}"
        assert "check that the server runs" not in said, f"{command}: {said}"


def test_register_datetimes_are_local_time_of_the_node_zone(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path
) -> None:
    """A POS writes its wall clock into DATETIME: with `[node] timezone` São Paulo, a sale at
    22:30 on the register is 01:30 UTC of the next day in the server's timestamptz column
    (not 22:30 UTC, which would put evening sales three hours early in the closing)."""
    register, server = mariadb_database(), pg_database()
    execute(register, "CREATE TABLE sale (id integer PRIMARY KEY, sold_at datetime(6))")
    execute(server, "CREATE TABLE sale (id integer PRIMARY KEY, sold_at timestamptz)")
    mapping = "group: vendas\ndirection: register_to_server\ntables:\n  - source: sale\n"
    config = write_node(tmp_path, server, register, {"vendas": mapping + "    key: [id]\n"})
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace("store_id = 1\n", 'store_id = 1\ntimezone = "America/Sao_Paulo"\n', 1),
        encoding="utf-8",
    )
    node = Node(config)
    try:
        node.setup()
        execute(register, "INSERT INTO sale (id, sold_at) VALUES (1, '2026-12-02 22:30:00.25')")
        node.sync("vendas")
    finally:
        node.close()
    [(sold_at,)] = [(r[1],) for r in rows(server, "sale")]
    assert sold_at == datetime(2026, 12, 3, 1, 30, 0, 250000, tzinfo=UTC)


def test_boolean_and_tinyint_1_are_the_same_kind_for_check_and_sync(
    mariadb_database: Factory, pg_database: Factory, tmp_path: Path
) -> None:
    """MariaDB's BOOLEAN is TINYINT(1): `check` accepts it against a PostgreSQL boolean
    (both ways) and sync moves the flags."""
    register, server = mariadb_database(), pg_database()
    execute(register, "CREATE TABLE produto (id integer PRIMARY KEY, ativo BOOLEAN)")
    execute(register, "CREATE TABLE venda (id integer PRIMARY KEY, paga tinyint(1))")
    execute(server, "CREATE TABLE produto (id integer PRIMARY KEY, ativo boolean)")
    execute(server, "CREATE TABLE venda (id integer PRIMARY KEY, paga boolean)")
    down = "group: cadastros\ndirection: server_to_register\ntables:\n  - source: produto\n"
    up = "group: movimento\ndirection: register_to_server\ntables:\n  - source: venda\n"
    config = write_node(
        tmp_path,
        server,
        register,
        {"cadastros": down + "    key: [id]\n", "movimento": up + "    key: [id]\n"},
    )
    base = [sys.executable, "-m", "replicator.cli", "-c", str(config)]
    for command in ("setup", "check"):
        run = subprocess.run([*base, command], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "ativo" not in run.stdout + run.stderr and "paga" not in run.stdout + run.stderr
    execute(server, "INSERT INTO produto VALUES (1, true), (2, false)")
    execute(register, "INSERT INTO venda (id, paga) VALUES (1, 1), (2, 0)")
    run = subprocess.run([*base, "sync"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert rows(register, "produto") == [(1, 1), (2, 0)]
    assert rows(server, "venda") == [(1, True), (2, False)]
