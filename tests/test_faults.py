"""Bad data and odd situations: each is quarantined or recovered, never a stuck job or a
silent loss."""

from __future__ import annotations

import shutil
import sqlite3
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import execute
from support import ITEMS, Node, moved, quarantined, rows, write_node

from replicator.errors import ConfigError, PermanentError


def test_value_too_long_is_quarantined_and_other_registers_go_on(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    server = pg_database()
    execute(
        server,
        "CREATE TABLE item (register int, id int, name varchar(5), PRIMARY KEY (register, id))",
    )
    registers = []
    for n in (1, 2):
        url = f"sqlite:///{tmp_path / f'caixa{n}.db'}"
        execute(url, "CREATE TABLE item (id integer PRIMARY KEY, name varchar(5))")
        registers.append(url)
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "itens.yaml").write_text(
        textwrap.dedent("""\
        group: itens
        direction: register_to_server
        tables:
          - source: item
            key: [id]
            target_key: [register, id]
            columns: {register: "{register_id}"}
        """),
        "utf-8",
    )
    config = tmp_path / "replicator.toml"
    config.write_text(
        textwrap.dedent(f"""\
        [node]
        name = "srv"
        [databases.server]
        role = "server"
        url = "{server}"
        [databases.caixa1]
        role = "register"
        url = "{registers[0]}"
        vars = {{ register_id = 1 }}
        [databases.caixa2]
        role = "register"
        url = "{registers[1]}"
        vars = {{ register_id = 2 }}
        """),
        "utf-8",
    )
    node = Node(config)
    node.setup()
    # SQLite does not enforce varchar(5): the register accepts what the server refuses.
    execute(
        registers[0],
        "INSERT INTO item (id, name) VALUES (1, 'ok'), (2, 'much too long'), (3, 'fine')",
    )
    execute(registers[1], "INSERT INTO item (id, name) VALUES (1, 'b1'), (2, 'b2')")
    results = node.sync()
    assert [r.error for r in results] == [None, None]
    assert rows(server, "item") == [(1, 1, "ok"), (1, 3, "fine"), (2, 1, "b1"), (2, 2, "b2")]
    assert quarantined(node) == [("item", "[1,2]")]
    node.close()


def test_invalid_utf8_at_a_register_is_quarantined(
    sqlite_database: Callable[[], str], pg_database: Callable[[], str], tmp_path: Path
) -> None:
    source, target = sqlite_database(), pg_database()
    execute(source, "CREATE TABLE item (id integer PRIMARY KEY, name text)")
    execute(target, "CREATE TABLE item (id integer PRIMARY KEY, name text)")
    node = Node(write_node(tmp_path, target, source, {"itens": ITEMS}))
    node.setup()
    raw = sqlite3.connect(source.removeprefix("sqlite:///"))
    raw.execute("INSERT INTO item (id, name) VALUES (1, 'Açúcar')")
    raw.execute("INSERT INTO item (id, name) VALUES (2, CAST(x'41e7fa6361' AS TEXT))")  # Latin-1
    raw.commit()
    raw.close()
    node.sync()
    assert rows(target, "item") == [(1, "Açúcar")]
    assert quarantined(node) == [("item", "[2]")]
    node.close()


def test_schema_mismatch_fails_loudly_instead_of_bisecting_forever(
    sqlite_database: Callable[[], str], pg_database: Callable[[], str], tmp_path: Path
) -> None:
    source, target = sqlite_database(), pg_database()
    execute(source, "CREATE TABLE item (id integer PRIMARY KEY, unit text)")
    execute(target, "CREATE TABLE item (id integer PRIMARY KEY, unit text NOT NULL)")
    node = Node(write_node(tmp_path, target, source, {"itens": ITEMS}))
    node.setup()
    execute(
        source,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
        "WHERE i < 3000) INSERT INTO item (id, unit) SELECT i, NULL FROM n",
    )
    with pytest.raises(PermanentError, match="does not match the mapping rather than a few"):
        node.sync()
    assert rows(target, "item") == [] and quarantined(node) == []
    status = node.dbs["server"]
    with status.engine.connect() as conn:
        error = conn.execute(sa.text("SELECT last_error FROM replicator.state")).scalar()
    assert "table 'item'" in error, "the stop is saved for status"
    node.close()


def test_changing_a_key_removes_the_old_row(
    any_database: Callable[[], str], tmp_path: Path
) -> None:
    source, target = any_database(), any_database()
    for url in (source, target):
        execute(url, "CREATE TABLE item (id integer PRIMARY KEY, name varchar(20))")
    node = Node(write_node(tmp_path, target, source, {"itens": ITEMS}))
    node.setup()
    execute(source, "INSERT INTO item (id, name) VALUES (1, 'a'), (2, 'b')")
    node.sync()
    execute(source, "UPDATE item SET id = 10 WHERE id = 1")
    node.sync()
    assert rows(target, "item") == rows(source, "item")
    assert sorted(rows(target, "item")) == [(2, "b"), (10, "a")]
    node.close()


def test_tables_with_long_similar_names_keep_their_own_tracking(
    any_database: Callable[[], str], tmp_path: Path
) -> None:
    names = [f"movimento_financeiro_lancamentos_contabeis_{year}" for year in (2023, 2024)]
    source, target = any_database(), any_database()
    for url in (source, target):
        execute(url, *[f"CREATE TABLE {n} (id integer PRIMARY KEY, v integer)" for n in names])
    mapping = "group: fin\ndirection: register_to_server\ntables:\n" + "".join(
        f"  - source: {n}\n    key: [id]\n" for n in names
    )
    node = Node(write_node(tmp_path, target, source, {"fin": mapping}))
    node.setup()
    for n in names:
        execute(source, f"INSERT INTO {n} (id, v) VALUES (1, 1), (7, 7)")
    node.sync()
    execute(source, f"DELETE FROM {names[0]} WHERE id = 7", f"UPDATE {names[1]} SET v = 2")
    node.sync()
    for n in names:
        assert rows(target, n) == rows(source, n)
    assert rows(target, names[0]) == [(1, 1)]
    node.close()


def test_register_restored_from_backup_replays_instead_of_losing_sales(
    sqlite_database: Callable[[], str], pg_database: Callable[[], str], tmp_path: Path
) -> None:
    source, target = sqlite_database(), pg_database()
    for url in (source, target):
        execute(url, "CREATE TABLE item (id integer PRIMARY KEY, name varchar(20))")
    node = Node(write_node(tmp_path, target, source, {"itens": ITEMS}))
    node.setup()
    path = Path(source.removeprefix("sqlite:///"))
    execute(source, "INSERT INTO item (id, name) VALUES (1, 'before backup')")
    node.sync()
    node.close()
    shutil.copy(path, tmp_path / "backup.db")  # last night's backup
    execute(
        source, *[f"INSERT INTO item (id, name) VALUES ({i}, 'lost day')" for i in range(2, 12)]
    )
    node = Node(write_node(tmp_path, target, source, {"itens": ITEMS}))
    node.sync()
    node.close()
    shutil.copy(tmp_path / "backup.db", path)  # the disk died: restored from the backup
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    execute(source, "INSERT INTO item (id, name) VALUES (100, 'after restore')")
    node = Node(write_node(tmp_path, target, source, {"itens": ITEMS}))
    node.sync()
    ids = sorted(r[0] for r in rows(target, "item"))
    assert 100 in ids, "a sale made after the restore must reach the server"
    assert ids == [1, *range(2, 12), 100], "what the server had stays"
    assert moved(node.sync()) == 0
    node.close()


def test_password_in_url_query_is_refused(tmp_path: Path) -> None:
    config = write_node(
        tmp_path,
        "postgresql+psycopg://u@h/db?password=S3cret",
        f"sqlite:///{tmp_path / 'r.db'}",
        {"itens": ITEMS},
    )
    with pytest.raises(ConfigError) as err:
        Node(config)
    assert "the URL contains a password" in str(err.value)
    assert "S3cret" not in str(err.value)


def test_json_and_uuid_values_cross_backends(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    server, pg_register, lite_register = pg_database(), pg_database(), sqlite_database()
    execute(server, "CREATE TABLE item (id uuid PRIMARY KEY, attrs jsonb, doc json)")
    execute(pg_register, "CREATE TABLE item (id uuid PRIMARY KEY, attrs jsonb, doc json)")
    execute(lite_register, "CREATE TABLE item (id varchar(36) PRIMARY KEY, attrs text, doc text)")
    down = ITEMS.replace("register_to_server", "server_to_register")
    execute(
        server,
        """INSERT INTO item VALUES ('0b7e7a52-7f3a-4c1e-9d52-2c1f3c6f7a10',
                       '{"cor": "azul", "tam": [1, 2]}', '{"a": 1}')""",
    )
    for i, register in enumerate((pg_register, lite_register)):
        node = Node(write_node(tmp_path / str(i), server, register, {"itens": down}))
        node.setup()
        node.sync()
        assert len(rows(register, "item")) == 1
        execute(server, "UPDATE item SET doc = '{\"a\": 2}'")
        assert moved(node.sync()) == 1
        node.close()
    assert '"a": 2' in str(rows(lite_register, "item")[0][2])
