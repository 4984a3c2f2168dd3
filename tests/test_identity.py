"""A database's history is its own (promise 9): registers restored from a backup or rebuilt
from scratch, two databases claiming one node, and tombstones purged once acknowledged."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import execute
from support import Node, rows, scalar, write_node

from replicator.cli import cli
from replicator.errors import PermanentError

SALES = """\
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
REGISTER_DDL = (
    "CREATE TABLE sale (sale_id integer PRIMARY KEY, total numeric(12,2))",
    "CREATE TABLE sale_item (sale_id integer REFERENCES sale (sale_id), line integer, "
    "product text, PRIMARY KEY (sale_id, line))",
)
SERVER_DDL = (
    "CREATE TABLE sale (register_id integer, sale_id integer, total numeric(12,2), "
    "PRIMARY KEY (register_id, sale_id))",
    "CREATE TABLE sale_item (register_id integer, sale_id integer, line integer, product text, "
    "PRIMARY KEY (register_id, sale_id, line), "
    "FOREIGN KEY (register_id, sale_id) REFERENCES sale (register_id, sale_id))",
)


def sell(url: str, first: int, count: int, tag: str, lines: int = 1) -> None:
    stmts = []
    for i in range(first, first + count):
        cents = sum(map(ord, tag)) % 100
        stmts.append(f"INSERT INTO sale (sale_id, total) VALUES ({i}, {i}.{cents:02d})")
        for line in range(1, lines + 1):
            stmts.append(
                f"INSERT INTO sale_item (sale_id, line, product) VALUES ({i}, {line}, '{tag}')"
            )
    execute(url, *stmts)


def held(node: Node) -> list[tuple[str, str, str]]:
    backend = node.dbs["server"]
    q = backend.ct.quarantine.c
    with backend.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.select(q.table_name, q.row_key, q.status)))


@pytest.fixture
def store(
    sqlite_database: Callable[[], str], pg_database: Callable[[], str], tmp_path: Path
) -> tuple[Path, str, str]:
    register, server = sqlite_database(), pg_database()
    execute(register, *REGISTER_DDL)
    execute(server, *SERVER_DDL)
    config = write_node(tmp_path, server, register, {"movimento": SALES})
    node = Node(config)
    node.setup()
    node.close()
    return config, register, server


def test_register_restored_from_backup_keeps_archived_sales(
    store: tuple[Path, str, str], tmp_path: Path
) -> None:
    """Backup at 50 sales; the day goes on to 100 sales, all on the server; the disk dies,
    the backup comes back and sells 80 more, reusing ids 51..130. Every archived sale stays
    as it was; the 50 reused ids are held as conflicts with the register's rows; the 30 new
    ids arrive."""
    config, register, server = store
    path = Path(register.removeprefix("sqlite:///"))
    sell(register, 1, 50, "before backup")
    node = Node(config)
    node.sync()
    node.close()
    shutil.copy(path, tmp_path / "backup.db")  # last night's backup
    sell(register, 51, 50, "lost day")
    node = Node(config)
    node.sync()
    node.close()
    archived = rows(server, "sale")
    assert len(archived) == 100
    shutil.copy(tmp_path / "backup.db", path)  # restored, then it sells past the old mark
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    sell(register, 51, 80, "after restore", lines=2)  # a second line the old sales lack
    node = Node(config)
    node.sync()
    now = rows(server, "sale")
    assert [r for r in now if r[1] <= 100] == archived, "no archived sale is overwritten"
    assert sorted(r[1] for r in now) == list(range(1, 131)), "every new id arrives"
    items = rows(server, "sale_item")
    assert {r[3] for r in items if r[1] <= 50} == {"before backup"}
    assert {r[3] for r in items if 50 < r[1] <= 100} == {"lost day"}, "items stay with their sale"
    assert {r[3] for r in items if r[1] > 100} == {"after restore"}
    conflicts = [h for h in held(node) if h[2] == "conflict"]
    assert len(conflicts) == 150, "50 sales and their 100 items wait for an operator"
    assert ("sale_item", "[3,51,2]", "conflict") in conflicts, "never under the archived sale"
    assert ("sale", "[3,51]", "conflict") in conflicts
    # status shows them, and exits 7: nothing failed, but a person must look at them
    result = CliRunner().invoke(cli, ["--config", str(config), "status", "--json"])
    shown = {r["table"]: r["conflicts"] for r in json.loads(result.stdout)}
    assert shown == {"sale": 50, "sale_item": 100}, result.output
    assert result.exit_code == 7
    assert "150 rows held (see `replicator errors list`)" in result.stderr
    # a later sale goes through, and the conflicts stay put
    sell(register, 131, 1, "next day")
    node.sync()
    assert len(rows(server, "sale")) == 131
    assert len([h for h in held(node) if h[2] == "conflict"]) == 150
    node.close()


def test_register_rebuilt_from_scratch_does_not_take_over_archived_sales(
    store: tuple[Path, str, str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    config, register, server = store
    path = Path(register.removeprefix("sqlite:///"))
    sell(register, 1, 3, "old register")
    node = Node(config)
    node.sync()
    node.close()
    archived = rows(server, "sale_item")
    # hardware swap: a new empty database file, set up again, numbering from 1
    path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    execute(register, *REGISTER_DDL)
    node = Node(config)
    node.setup()
    execute(register, "INSERT INTO sale (sale_id, total) VALUES (1, 99.00)")
    execute(
        register, "INSERT INTO sale_item (sale_id, line, product) VALUES (1, 1, 'new register')"
    )
    sell(register, 4, 1, "new register")
    node.sync()
    assert rows(server, "sale_item")[:3] == archived, "the old sale 1 keeps its items"
    assert next(r for r in rows(server, "sale") if r[1] == 1)[2] != 99
    assert [r[1] for r in rows(server, "sale")] == [1, 2, 3, 4]
    assert ("sale", "[3,1]", "conflict") in held(node)
    node.close()


def test_two_databases_claiming_one_node_are_refused(
    store: tuple[Path, str, str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """Two registers configured (in two configs) with the same node name: the second one's
    sales would silently take the first one's job. The target knows which incarnation wrote
    the job: the first one back is refused with a clear message."""
    config, register, server = store
    other = sqlite_database()
    execute(other, *REGISTER_DDL)
    second = tmp_path / "second"
    second_config = write_node(second, server, other, {"movimento": SALES})
    sell(register, 1, 2, "register A")
    node = Node(config)
    node.sync()
    node.close()
    b = Node(second_config)
    b.setup()
    sell(other, 10, 2, "register B")
    b.sync()  # looks like a replaced register: held apart, nothing overwritten
    b.close()
    node = Node(config)
    with pytest.raises(PermanentError, match="two databases act as node 'caixa'"):
        node.sync()
    node.close()


def test_duplicate_identities_in_one_config_are_refused(
    sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    server, a, b = sqlite_database(), sqlite_database(), sqlite_database()
    for url in (server, a, b):
        execute(url, "CREATE TABLE t (x integer)")
    config = write_node(tmp_path, server, a, {"movimento": SALES})
    text = config.read_text()
    text += f'\n[databases.caixa2]\nrole = "register"\nurl = "{b}"\nnode = "caixa"\n'
    text += "vars = { register_id = 3 }\n"
    config.write_text(text)
    result = CliRunner().invoke(cli, ["--config", str(config), "check"])
    assert result.exit_code == 2, result.output
    assert "node 'caixa'" in result.output and "caixa2" in result.output
    assert "register_id" in result.output


def test_tombstones_are_purged_once_every_target_applied_them(
    sqlite_database: Callable[[], str], pg_database: Callable[[], str], tmp_path: Path
) -> None:
    server, register = pg_database(), sqlite_database()
    ddl = "CREATE TABLE product (product_id integer PRIMARY KEY, name text)"
    execute(server, ddl)
    execute(register, ddl)
    catalog = (
        "group: cadastros\ndirection: server_to_register\ntables:\n"
        "  - source: product\n    key: [product_id]\n"
    )
    node = Node(write_node(tmp_path, server, register, {"cadastros": catalog}))
    node.setup()
    execute(server, *[f"INSERT INTO product VALUES ({i}, 'p{i}')" for i in range(1, 11)])
    node.sync()
    execute(server, "DELETE FROM product WHERE product_id <= 5")
    node.sync()
    assert sorted(r[0] for r in rows(register, "product")) == [6, 7, 8, 9, 10]
    assert scalar(server, "SELECT count(*) FROM replicator.tombstone") == 5
    execute(server, "UPDATE product SET name = 'x' WHERE product_id = 6")
    node.sync()  # the next batch tells the source the deletes were applied
    assert scalar(server, "SELECT count(*) FROM replicator.tombstone") == 0
    node.close()


def test_the_same_backup_restored_twice_is_refused_until_given_a_new_identity(
    store: tuple[Path, str, str], tmp_path: Path
) -> None:
    config, register, server = store
    path = Path(register.removeprefix("sqlite:///"))
    sell(register, 1, 5, "before backup")
    node = Node(config)
    node.sync()
    node.close()
    shutil.copy(path, tmp_path / "backup.db")
    sell(register, 6, 5, "lost day")
    for _ in range(2):  # restored, sells, synced; then the same backup restored again
        node = Node(config)
        node.sync()
        node.close()
        shutil.copy(tmp_path / "backup.db", path)
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        sell(register, 6, 1, "after restore")
    node = Node(config)
    with pytest.raises(PermanentError, match="--new-identity"):
        node.sync()
    node.close()
    result = CliRunner().invoke(
        cli, ["--config", str(config), "setup", "--database", "caixa", "--new-identity"]
    )
    assert result.exit_code == 0, result.output
    node = Node(config)
    node.sync()
    assert len(rows(server, "sale")) == 10, "archived sales stay"
    assert ("sale", "[3,6]", "conflict") in held(node)
    node.close()


def test_setup_run_again_leaves_the_sqlite_clock_alone(
    sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """A second `setup` stamps nothing new, so it must not move the version counter (the
    clock of every register)."""
    server, register = sqlite_database(), sqlite_database()
    execute(register, *REGISTER_DDL)
    execute(server, *SERVER_DDL)
    node = Node(write_node(tmp_path, server, register, {"movimento": SALES}))
    node.setup()
    sell(register, 1, 3, "x")
    clock = scalar(register, "SELECT version FROM replicator_clock")
    node.setup()
    node.setup()
    assert scalar(register, "SELECT version FROM replicator_clock") == clock
    node.close()


def test_a_long_transaction_at_the_source_is_named_in_status(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    import time

    import psycopg

    register, server = pg_database(), pg_database()
    execute(register, *REGISTER_DDL)
    execute(server, *SERVER_DDL)
    config = write_node(tmp_path, server, register, {"movimento": SALES})
    node = Node(config)
    node.setup()
    node.close()
    blocker = psycopg.connect(
        register.replace("postgresql+psycopg://", "postgresql://"), application_name="pdv-caixa"
    )
    blocker.execute("INSERT INTO sale (sale_id, total) VALUES (1, 1)")  # open, writing
    pid = blocker.info.backend_pid
    time.sleep(1.2)
    from replicator.backends.postgresql import PostgreSQLBackend

    old = PostgreSQLBackend.blocker_seconds
    PostgreSQLBackend.blocker_seconds = 1
    try:
        result = CliRunner().invoke(cli, ["--config", str(config), "status"])
    finally:
        PostgreSQLBackend.blocker_seconds = old
        blocker.rollback()
        blocker.close()
    assert f"transaction of pid {pid} (pdv-caixa" in result.output, result.output


def test_a_held_sale_is_never_dropped_when_the_register_loses_it(
    store: tuple[Path, str, str], tmp_path: Path
) -> None:
    """A sale the server refused waits in its quarantine; the register is then restored from
    a backup that predates it. The quarantine record is the only copy left: it stays held."""
    config, register, server = store
    execute(server, "ALTER TABLE sale ADD CONSTRAINT positive CHECK (total >= 0)")
    path = Path(register.removeprefix("sqlite:///"))
    sell(register, 1, 2, "ok")
    node = Node(config)
    node.sync()
    node.close()
    shutil.copy(path, tmp_path / "backup.db")
    execute(register, "INSERT INTO sale (sale_id, total) VALUES (3, -7.90)")
    node = Node(config)
    node.sync()
    assert ("sale", "[3,3]", "refused") in held(node)
    node.close()
    shutil.copy(tmp_path / "backup.db", path)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    node = Node(config)
    node.sync()
    node.sync()
    assert ("sale", "[3,3]", "refused") in held(node), "the only copy of sale 3 is kept"
    node.close()


def test_a_large_register_restored_from_a_backup_is_read_again_in_bounded_lookups(
    store: tuple[Path, str, str], tmp_path: Path
) -> None:
    """12,000 sales (more keys than one IN list of three-column keys can take on PostgreSQL)
    restored from a backup: every fenced key is checked in bounded lookups, the shared history
    lifts the fence, and nothing is held."""
    config, register, server = store
    path = Path(register.removeprefix("sqlite:///"))
    sell(register, 1, 12000, "day")
    node = Node(config)
    node.sync()
    node.close()
    shutil.copy(path, tmp_path / "backup.db")
    sell(register, 12001, 1, "lost")
    node = Node(config)
    node.sync()
    node.close()
    shutil.copy(tmp_path / "backup.db", path)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    node = Node(config)
    results = node.sync()
    assert results[0].error is None
    assert held(node) == []
    # shared history lifted the fence; what the restored register lacks stays fenced
    assert scalar(server, "SELECT count(*) FROM replicator.fence") == 2
    assert len(rows(server, "sale")) == 12001, "the lost sale stays on the server"
    node.close()
