"""The promises of DESIGN.md section 2, each with a test that fails without it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from conftest import execute
from support import ITEM_DDL, ITEMS, Node, moved, quarantined, rows, scalar, write_node

from replicator.errors import PermanentError


def psql_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def pg_pair(pg_database: Callable[[], str], tmp_path: Path) -> tuple[Node, str, str]:
    source, target = pg_database(), pg_database()
    execute(source, ITEM_DDL)
    execute(target, ITEM_DDL)
    node = Node(write_node(tmp_path, server=target, register=source, mappings={"itens": ITEMS}))
    node.setup()
    yield node, source, target
    node.close()


# --- 1. No loss -------------------------------------------------------------------------
def test_out_of_order_commit_is_not_lost(pg_pair: tuple[Node, str, str]) -> None:
    """A takes a version and stays open; B takes a higher one and commits; sync; A commits."""
    node, source, target = pg_pair
    a = psycopg.connect(psql_url(source))
    a.execute(
        "INSERT INTO item (id, name, qty) VALUES (1, 'slow A', 1)"
    )  # A's xid is taken, not committed
    with psycopg.connect(psql_url(source)) as b:
        b.execute("INSERT INTO item (id, name, qty) VALUES (2, 'fast B', 1)")
    b_xid = scalar(source, "SELECT repl_version FROM item WHERE id = 2")
    a_xid = a.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]  # type: ignore[index]
    assert a_xid < b_xid, "the test needs A's version below B's"
    node.sync()
    assert rows(target, "item") == [], "B must wait while the older A is open"
    a.commit()
    a.close()
    node.sync()
    assert rows(target, "item") == rows(source, "item")
    assert [r[0] for r in rows(target, "item")] == [1, 2]


def test_rolled_back_transaction_leaves_a_harmless_hole(pg_pair: tuple[Node, str, str]) -> None:
    node, source, target = pg_pair
    with psycopg.connect(psql_url(source)) as c:
        c.execute("INSERT INTO item (id, name, qty) VALUES (1, 'before', 1)")
    hole = psycopg.connect(psql_url(source))
    hole.execute("INSERT INTO item (id, name, qty) VALUES (2, 'rolled back', 1)")
    with psycopg.connect(psql_url(source)) as c:
        c.execute("INSERT INTO item (id, name, qty) VALUES (3, 'after', 1)")
    node.sync()
    assert [r[0] for r in rows(target, "item")] == [1]
    hole.rollback()
    hole.close()
    node.sync()
    assert [r[0] for r in rows(target, "item")] == [1, 3]
    assert rows(target, "item") == rows(source, "item")


def test_ties_across_pages_and_batches_lose_nothing(
    pg_pair: tuple[Node, str, str], tmp_path: Path
) -> None:
    """2,500 rows share one version (one transaction); pages and batches are 100 rows."""
    node, source, target = pg_pair
    node.close()
    config = write_node(
        tmp_path,
        server=target,
        register=source,
        mappings={"itens": ITEMS},
        extra="[sync]\npage_rows = 100\nbatch_rows = 100\n",
    )
    node = Node(config)
    execute(source, "INSERT INTO item SELECT g, 'tie ' || g, g FROM generate_series(1, 2500) g")
    for start in range(3000, 3500, 50):  # and 10 more transactions of 50 rows
        execute(
            source,
            f"INSERT INTO item SELECT g, 'x', 1 FROM generate_series({start}, {start + 49}) g",
        )
    assert scalar(source, "SELECT count(DISTINCT repl_version) FROM item") == 11
    results = node.sync()
    assert results[0].batches >= 6, "500 rows in 50-row transactions need several batches"
    assert rows(target, "item") == rows(source, "item")
    assert len(rows(target, "item")) == 3000
    node.close()


@pytest.mark.parametrize("direction", ["register_to_server", "server_to_register"])
def test_sqlite_bounded_batches_lose_nothing(
    sqlite_database: Callable[[], str], tmp_path: Path, direction: str
) -> None:
    """Movement from a SQLite register keeps its transactions whole: everything committed
    goes in one target transaction, read a page at a time. The catalog to a register is cut
    into commits of at most batch_rows rows, whatever the versions."""
    source, target = sqlite_database(), sqlite_database()
    execute(source, ITEM_DDL)
    execute(target, ITEM_DDL)
    down = direction == "server_to_register"
    config = write_node(
        tmp_path,
        server=source if down else target,
        register=target if down else source,
        mappings={"itens": ITEMS.replace("register_to_server", direction)},
        extra="[sync]\npage_rows = 7\nbatch_rows = 10\n",
    )
    node = Node(config)
    node.setup()
    execute(
        source,
        *[f"INSERT INTO item (id, name, qty) VALUES ({i}, 'n{i}', {i})" for i in range(1, 96)],
    )
    execute(
        source,
        "UPDATE item SET qty = qty + 1 WHERE id % 3 = 0",
        "DELETE FROM item WHERE id % 10 = 0",
    )
    results = node.sync()
    if down:
        assert results[0].batches >= 8, "95 changes in commits of at most 10"
    else:
        assert results[0].batches == 1, "a register's transactions are never split"
    assert rows(target, "item") == rows(source, "item")
    node.close()


# --- 2. No duplicates, no echo ------------------------------------------------------------
def test_same_batch_twice_changes_nothing(pg_pair: tuple[Node, str, str]) -> None:
    node, source, target = pg_pair
    execute(source, "INSERT INTO item SELECT g, 'n', g FROM generate_series(1, 200) g")
    node.sync()
    before = rows(target, "item")
    ctid = scalar(target, "SELECT string_agg(ctid::text, ',' ORDER BY id) FROM item")
    job = node.settings.jobs()[0].name
    execute(target, "UPDATE replicator.state SET version = 0 WHERE job = :j", params={"j": job})
    node.sync()  # the same changes again
    assert rows(target, "item") == before
    assert scalar(target, "SELECT string_agg(ctid::text, ',' ORDER BY id) FROM item") == ctid, (
        "re-applying equal rows must not rewrite them"
    )
    stamp = scalar(target, "SELECT max(last_batch_at) FROM replicator.state")
    assert moved(node.sync()) == 0
    assert scalar(target, "SELECT max(last_batch_at) FROM replicator.state") == stamp, (
        "a sync with nothing new must write nothing"
    )


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


def test_no_echo_both_ways(any_database: Callable[[], str], tmp_path: Path) -> None:
    """Customers replicate both ways: a row never bounces back to where it came from."""
    server, register = any_database(), any_database()
    for url in (server, register):
        execute(url, "CREATE TABLE customer (id varchar(36) PRIMARY KEY, name varchar(80))")
    node = Node(write_node(tmp_path, server, register, BOTH_WAYS))
    node.setup()
    execute(register, "INSERT INTO customer (id, name) VALUES ('c-reg', 'José da Silva')")
    execute(server, "INSERT INTO customer (id, name) VALUES ('c-srv', 'Maria')")
    assert moved(node.sync("movimento")) == 1
    assert moved(node.sync("cadastros")) == 1  # only c-srv goes down, not c-reg back
    assert rows(server, "customer") == rows(register, "customer")
    for _ in range(3):
        assert moved(node.sync("movimento", "cadastros")) == 0
    execute(server, "UPDATE customer SET name = 'José S.' WHERE id = 'c-reg'")
    assert moved(node.sync("movimento")) == 0
    assert moved(node.sync("cadastros")) == 1
    assert moved(node.sync("movimento", "cadastros")) == 0
    assert rows(server, "customer") == rows(register, "customer")
    execute(register, "DELETE FROM customer WHERE id = 'c-srv'")
    node.sync("movimento", "cadastros")
    assert rows(server, "customer") == rows(register, "customer") == [("c-reg", "José S.")]
    assert moved(node.sync("movimento", "cadastros")) == 0
    node.close()


# --- 3. Atomic progress -----------------------------------------------------------------
def test_failure_before_commit_keeps_rows_and_watermark(pg_pair: tuple[Node, str, str]) -> None:
    """A failure after the rows and watermark are written, at commit, leaves both unchanged."""
    node, source, target = pg_pair
    execute(source, "INSERT INTO item SELECT g, 'n', g FROM generate_series(1, 50) g")
    execute(
        target,
        """
        CREATE FUNCTION fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'injected failure at commit'; END $$""",
        """CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT OR UPDATE
               ON replicator.state DEFERRABLE INITIALLY DEFERRED
               FOR EACH ROW EXECUTE FUNCTION fail_at_commit()""",
    )
    with pytest.raises(PermanentError, match="injected failure"):
        node.sync()
    assert rows(target, "item") == []
    assert scalar(target, "SELECT count(*) FROM replicator.state") == 0
    execute(target, "DROP TRIGGER fail_at_commit ON replicator.state")
    node.sync()
    assert rows(target, "item") == rows(source, "item")


def test_sqlite_failure_before_commit(sqlite_database: Callable[[], str], tmp_path: Path) -> None:
    source, target = sqlite_database(), sqlite_database()
    execute(source, ITEM_DDL)
    execute(target, ITEM_DDL)
    node = Node(write_node(tmp_path, server=target, register=source, mappings={"itens": ITEMS}))
    node.setup()
    execute(
        source, *[f"INSERT INTO item (id, name, qty) VALUES ({i}, 'n', {i})" for i in range(1, 21)]
    )
    execute(
        target,
        """CREATE TRIGGER fail AFTER INSERT ON replicator_state
                       BEGIN SELECT RAISE(ABORT, 'injected failure'); END""",
    )
    with pytest.raises(PermanentError, match="injected failure"):
        node.sync()
    assert rows(target, "item") == []
    execute(target, "DROP TRIGGER fail")
    node.sync()
    assert rows(target, "item") == rows(source, "item")
    node.close()


def test_kill_9_mid_sync_resumes_without_loss(
    pg_pair: tuple[Node, str, str], tmp_path: Path
) -> None:
    """A real `replicator sync` process killed with SIGKILL, then run again."""
    node, source, target = pg_pair
    node.close()
    config = write_node(
        tmp_path,
        server=target,
        register=source,
        mappings={"itens": ITEMS},
        extra="[sync]\nbatch_rows = 2000\n",
    )
    for start in range(1, 200_001, 1000):
        execute(
            source,
            f"INSERT INTO item SELECT g, 'n', g FROM generate_series({start}, {start + 999}) g",
        )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "replicator.cli", "-c", str(config), "sync"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (scalar(target, "SELECT count(*) FROM item") or 0) > 0:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The killed client's server sessions end when PostgreSQL notices the closed socket
    # (after the statement in flight): wait for that, as the next service run would.
    for url in (source, target):
        name = url.rsplit("/", 1)[1]
        while scalar(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = "
            f"'{name}' AND application_name = 'replicator'",
        ):
            assert time.monotonic() < deadline + 60, "orphan session did not end"
            time.sleep(0.05)
    partial = scalar(target, "SELECT count(*) FROM item")
    assert 0 < partial < 200_000, "the kill should land mid-way"
    state = scalar(target, "SELECT max(version) FROM replicator.state")
    done = scalar(target, "SELECT count(*) FROM item")
    assert done == partial
    assert state is not None
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    assert rows(target, "item") == rows(source, "item")


# --- the per-job lock -----------------------------------------------------------------------
def test_job_lock_makes_services_take_turns(pg_pair: tuple[Node, str, str]) -> None:
    node, source, target = pg_pair
    execute(source, "INSERT INTO item (id, name, qty) VALUES (1, 'n', 1)")
    job = node.settings.jobs()[0].name
    holder = psycopg.connect(psql_url(target))
    holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"replicator:{job}"])
    results = node.sync()
    assert results[0].skipped and "another service" in results[0].skipped
    assert rows(target, "item") == []
    holder.rollback()
    holder.close()
    node.sync()
    assert rows(target, "item") == rows(source, "item")


# --- 5. Fail loud, lose nothing: bad rows are quarantined, the rest goes on ------------------
def test_bad_row_is_quarantined_and_the_rest_applied(
    any_database: Callable[[], str], tmp_path: Path
) -> None:
    source, target = any_database(), any_database()
    execute(source, "CREATE TABLE item (id integer PRIMARY KEY, name varchar(200), qty integer)")
    execute(
        target,
        "CREATE TABLE item (id integer PRIMARY KEY, name varchar(20), "
        "qty integer CHECK (qty >= 0))",
    )
    node = Node(write_node(tmp_path, server=target, register=source, mappings={"itens": ITEMS}))
    node.setup()
    execute(
        source,
        *[f"INSERT INTO item (id, name, qty) VALUES ({i}, 'ok', {i})" for i in range(1, 101)],
        "UPDATE item SET qty = -5 WHERE id = 37",
    )
    results = node.sync()
    assert results[0].tables["item"].quarantined == 1
    assert len(rows(target, "item")) == 99
    ct = node.dbs["server"].ct.quarantine
    with node.dbs["server"].engine.connect() as conn:
        q = conn.execute(sa.select(ct.c.table_name, ct.c.row_key, ct.c.reason)).all()
    assert [(name, key) for name, key, _ in q] == [("item", "[37]")]
    assert "check" in q[0][2].lower() or "constraint" in q[0][2].lower(), q[0][2]
    node.close()


# --- 7. Sales arrive whole ------------------------------------------------------------------
SALES = """\
group: movimento
direction: register_to_server
tables:
  - source: sale
    key: [id]
  - source: item
    key: [sale_id, line]
    depends_on: [sale]
"""
SALE_DDL = "CREATE TABLE sale (id integer PRIMARY KEY, total numeric(12,2))"
ITEM_SOURCE = "CREATE TABLE item (sale_id integer, line integer, PRIMARY KEY (sale_id, line))"
ITEM_TARGET = (
    "CREATE TABLE item (sale_id integer REFERENCES sale (id), line integer, "
    "PRIMARY KEY (sale_id, line))"
)


def test_items_whose_sale_changed_later_are_not_lost(
    any_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """A sale updated after its items (the sale's version is now above the items'): the
    batch from a SQLite register takes everything committed, so it is never cut between
    them and the sale arrives whole in one batch, even with a tiny batch_rows."""
    source, target = sqlite_database(), any_database()
    execute(source, SALE_DDL, ITEM_SOURCE)
    execute(target, SALE_DDL, ITEM_TARGET)
    config = write_node(
        tmp_path,
        server=target,
        register=source,
        mappings={"m": SALES},
        extra="[sync]\nbatch_rows = 3\n",
    )
    node = Node(config)
    node.setup()
    execute(
        source,
        "INSERT INTO sale (id, total) VALUES (1, 0)",
        *[f"INSERT INTO item (sale_id, line) VALUES (1, {n})" for n in range(1, 6)],
        "UPDATE sale SET total = 10.5 WHERE id = 1",
    )
    node.sync(max_batches=1)
    assert rows(target, "sale") == rows(source, "sale")
    assert rows(target, "item") == rows(source, "item")
    assert quarantined(node) == []
    node.close()


def test_items_held_back_by_an_open_transaction_are_not_lost(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    source, target = pg_database(), pg_database()
    execute(source, SALE_DDL, ITEM_SOURCE, "CREATE TABLE other (id int)")
    execute(target, SALE_DDL, ITEM_TARGET)
    node = Node(write_node(tmp_path, server=target, register=source, mappings={"m": SALES}))
    node.setup()
    execute(
        source,
        "INSERT INTO sale (id, total) VALUES (1, 0)",
        "INSERT INTO item (sale_id, line) SELECT 1, g FROM generate_series(1, 4) g",
    )
    blocker = psycopg.connect(psql_url(source))
    blocker.execute("INSERT INTO other VALUES (1)")  # unrelated, open: holds the bound back
    execute(source, "UPDATE sale SET total = 99.90 WHERE id = 1")
    node.sync()
    assert rows(target, "sale") == [] and rows(target, "item") == []
    blocker.commit()
    blocker.close()
    node.sync()
    assert rows(target, "sale") == rows(source, "sale")
    assert rows(target, "item") == rows(source, "item")
    assert quarantined(node) == []
    node.close()


def test_quarantined_row_goes_through_once_the_target_is_fixed(
    sqlite_database: Callable[[], str], pg_database: Callable[[], str], tmp_path: Path
) -> None:
    source, target = sqlite_database(), pg_database()
    execute(source, ITEM_DDL)
    execute(
        target,
        "CREATE TABLE item (id integer PRIMARY KEY, name varchar(20), "
        "qty integer CONSTRAINT positive CHECK (qty >= 0))",
    )
    node = Node(write_node(tmp_path, server=target, register=source, mappings={"itens": ITEMS}))
    node.setup()
    execute(source, "INSERT INTO item (id, name, qty) VALUES (1, 'ok', 1), (2, 'bad', -1)")
    node.sync()
    assert quarantined(node) == [("item", "[2]")]
    execute(target, "ALTER TABLE item DROP CONSTRAINT positive")
    node.sync()  # no new change at the source: the retry runs all the same
    assert rows(target, "item") == rows(source, "item")
    assert quarantined(node) == []
    node.close()


def test_refused_delete_is_quarantined_not_fatal(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    source, target = pg_database(), pg_database()
    execute(source, ITEM_DDL)
    execute(target, ITEM_DDL, "CREATE TABLE local_ref (item_id int REFERENCES item (id))")
    node = Node(write_node(tmp_path, server=target, register=source, mappings={"itens": ITEMS}))
    node.setup()
    execute(
        source, "INSERT INTO item (id, name, qty) SELECT g, 'n', g FROM generate_series(1, 5) g"
    )
    node.sync()
    execute(target, "INSERT INTO local_ref VALUES (2)")  # the target still needs item 2
    execute(source, "DELETE FROM item WHERE id IN (2, 3)")
    results = node.sync()
    assert results[0].tables["item"].deletes == 1
    assert [r[0] for r in rows(target, "item")] == [1, 2, 4, 5]
    assert quarantined(node) == [("item", "[2]")]
    node.close()


def test_two_services_share_a_job_whatever_they_call_the_databases(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    """The register's own service and the server's service run the same job: they share its
    watermark (and lock) because both name the databases' nodes the same way."""
    source, target = pg_database(), pg_database()
    execute(source, ITEM_DDL)
    execute(target, ITEM_DDL)
    on_register = write_node(
        tmp_path / "a", server=target, register=source, mappings={"itens": ITEMS}
    )
    on_server = tmp_path / "b" / "replicator.toml"
    on_server.parent.mkdir()
    (tmp_path / "b" / "mappings").symlink_to(tmp_path / "a" / "mappings")
    on_server.write_text(
        on_register.read_text("utf-8")
        .replace("[databases.server]", '[databases.servidor]\nnode = "server"')
        .replace("[databases.caixa]", '[databases.pdv3]\nnode = "caixa"'),
        "utf-8",
    )
    a, b = Node(on_register), Node(on_server)
    a.setup()
    execute(
        source, "INSERT INTO item (id, name, qty) SELECT g, 'n', g FROM generate_series(1, 9) g"
    )
    assert moved(a.sync()) == 9
    assert [j.name for j in a.settings.jobs()] == [j.name for j in b.settings.jobs()]
    assert moved(b.sync()) == 0, "the second service must not apply the same changes again"
    execute(source, "UPDATE item SET qty = 0 WHERE id = 1")
    assert moved(b.sync()) == 1
    assert moved(a.sync()) == 0
    assert rows(target, "item") == rows(source, "item")
    a.close()
    b.close()


def test_open_transaction_in_another_database_does_not_hold_back(
    pg_pair: tuple[Node, str, str], pg_database: Callable[[], str]
) -> None:
    """Transaction ids are cluster-wide; only this database's open transactions must wait."""
    node, source, target = pg_pair
    elsewhere = pg_database()
    execute(elsewhere, "CREATE TABLE t (id int)")
    other = psycopg.connect(psql_url(elsewhere))
    other.execute("INSERT INTO t VALUES (1)")  # open, with a transaction id below ours
    execute(source, "INSERT INTO item (id, name, qty) VALUES (1, 'n', 1)")
    node.sync()
    assert rows(target, "item") == rows(source, "item") != []
    other.rollback()
    other.close()


# --- 4. The register comes first --------------------------------------------------------------
def test_reading_a_register_never_blocks_a_sale(
    sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """While the replicator holds its read snapshot on a register, the POS still commits."""
    source, target = sqlite_database(), sqlite_database()
    execute(source, ITEM_DDL)
    execute(target, ITEM_DDL)
    node = Node(write_node(tmp_path, server=target, register=source, mappings={"itens": ITEMS}))
    node.setup()
    execute(source, "INSERT INTO item (id, name, qty) VALUES (1, 'n', 1)")
    pos = sqlite3.connect(source.removeprefix("sqlite:///"), timeout=0.5)
    with node.dbs["caixa"].read_snapshot() as snapshot:
        assert snapshot.exec_driver_sql("SELECT count(*) FROM item").scalar() == 1
        started = time.monotonic()
        pos.execute("INSERT INTO item (id, name, qty) VALUES (2, 'sale', 1)")
        pos.commit()  # would raise "database is locked" if the read blocked writers
        assert time.monotonic() - started < 0.5
        assert snapshot.exec_driver_sql("SELECT count(*) FROM item").scalar() == 1
    pos.close()
    node.sync()
    assert rows(target, "item") == rows(source, "item")
    node.close()


# --- 8. Secrets stay secret ------------------------------------------------------------------
def test_password_never_printed(pg_database: Callable[[], str], tmp_path: Path) -> None:
    url = pg_database()
    execute(url, ITEM_DDL)
    config = write_node(tmp_path, url, f"sqlite:///{tmp_path / 'r.db'}", {"itens": ITEMS})
    text = config.read_text("utf-8").replace(
        "[databases.server]", '[databases.server]\npassword_env = "REPL_TEST_PASSWORD"'
    )
    text = text.replace("[databases.caixa]", '[databases.caixa]\nnode = "caixa"')
    config.write_text(text, "utf-8")
    execute(f"sqlite:///{tmp_path / 'r.db'}", ITEM_DDL)
    secret = "S3cr3t-p4ss"
    env = {**os.environ, "REPL_TEST_PASSWORD": secret}
    base = [sys.executable, "-m", "replicator.cli", "--log-level", "DEBUG", "-c", str(config)]
    outputs = []
    for args in (["setup"], ["check"], ["sync"], ["status"]):
        proc = subprocess.run(base + args, env=env, capture_output=True, text=True, timeout=120)
        outputs.append(proc.stdout + proc.stderr)
    # and a failure that prints the URL: the server port is wrong
    config.write_text(text.replace("127.0.0.1:5432", "127.0.0.1:1"), "utf-8")
    proc = subprocess.run([*base, "sync"], env=env, capture_output=True, text=True, timeout=120)
    outputs.append(proc.stdout + proc.stderr)
    assert proc.returncode != 0 and "127.0.0.1:1" in outputs[-1]
    for out in outputs:
        assert secret not in out
