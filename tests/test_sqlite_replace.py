"""SQLite REPLACE (INSERT OR REPLACE, REPLACE INTO, UPDATE OR REPLACE, ON CONFLICT REPLACE)
deletes the rows it displaces without firing delete triggers on a POS connection with default
settings: the replace triggers must record those rows, or the target keeps them for ever."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import execute
from support import Node, moved, quarantined, rows, write_node

from replicator.tracking import printable, setup_script

PRODUCTS = """\
group: produtos
direction: register_to_server
tables:
  - source: product
    key: [id]
"""
PRODUCT_DDL = "CREATE TABLE product (id integer PRIMARY KEY, barcode varchar(20) UNIQUE, name text)"
SEED = "INSERT INTO product (id, barcode, name) VALUES (1, 'X', 'one'), (3, 'Z', 'three')"


def pos(path: Path, *statements: str, recursive_triggers: bool = False) -> None:
    """The POS application: its own sqlite3 connection, default settings unless told."""
    db = sqlite3.connect(path)
    try:
        if recursive_triggers:
            db.execute("PRAGMA recursive_triggers = ON")
        for stmt in statements:
            db.execute(stmt)
        db.commit()
    finally:
        db.close()


def tombstones(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [k for (k,) in db.execute("SELECT key FROM replicator_tombstone ORDER BY version")]
    finally:
        db.close()


Store = Callable[..., tuple[Node, Path]]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """Factory: a register (SQLite file) whose table goes to `target`, set up and synced once.
    Its node is closed at teardown, also when the test fails."""
    nodes: list[Node] = []

    def make(
        target: str,
        source_ddl: str = PRODUCT_DDL,
        target_ddl: str = PRODUCT_DDL,
        mapping: str = PRODUCTS,
        seed: str = SEED,
        columns: list[str] | None = None,
    ) -> tuple[Node, Path]:
        path = tmp_path / "caixa.db"
        register = f"sqlite:///{path}"
        execute(register, source_ddl)
        execute(target, target_ddl)
        node = Node(write_node(tmp_path, target, register, {"produtos": mapping}))
        nodes.append(node)
        node.setup()
        execute(register, seed)
        node.sync()
        assert rows(target, "product") == rows(register, "product", columns)
        return node, path

    yield make
    for node in nodes:
        node.close()


@pytest.mark.parametrize("recursive_triggers", [False, True], ids=["default", "recursive"])
def test_insert_or_replace_through_a_unique_column(
    any_database: Callable[[], str], store: Store, recursive_triggers: bool
) -> None:
    target = any_database()
    node, path = store(target)
    # Row 1 holds barcode X: the new row 2 displaces it.
    pos(
        path,
        "INSERT OR REPLACE INTO product (id, barcode, name) VALUES (2, 'X', 'two')",
        recursive_triggers=recursive_triggers,
    )
    assert set(tombstones(path)) == {"[1]"}  # twice with recursive triggers: harmless
    # NULLs never conflict in a unique column: no tombstone for them.
    pos(
        path,
        "INSERT OR REPLACE INTO product (id, barcode, name) VALUES (4, NULL, 'four')",
        "INSERT OR REPLACE INTO product (id, barcode, name) VALUES (5, NULL, 'five')",
    )
    assert set(tombstones(path)) == {"[1]"}
    node.sync()
    assert rows(target, "product") == rows(f"sqlite:///{path}", "product")
    assert rows(target, "product") == [
        (2, "X", "two"),
        (3, "Z", "three"),
        (4, None, "four"),
        (5, None, "five"),
    ]
    assert quarantined(node) == []


@pytest.mark.parametrize(
    ("source_ddl", "index", "statement", "expected"),
    [
        (
            PRODUCT_DDL,
            None,
            "REPLACE INTO product (id, barcode, name) VALUES (2, 'X', 'two')",
            [(2, "X", "two"), (3, "Z", "three")],
        ),
        (
            PRODUCT_DDL,
            None,
            "UPDATE OR REPLACE product SET barcode = 'X' WHERE id = 3",
            [(3, "X", "three")],
        ),
        (  # the constraint's own conflict clause: a plain INSERT replaces
            "CREATE TABLE product (id integer PRIMARY KEY, barcode varchar(20), name text, "
            "UNIQUE (barcode) ON CONFLICT REPLACE)",
            None,
            "INSERT INTO product (id, barcode, name) VALUES (2, 'X', 'two')",
            [(2, "X", "two"), (3, "Z", "three")],
        ),
        (  # a unique index of two columns, one compared without case, added after setup
            "CREATE TABLE product (id integer PRIMARY KEY, barcode varchar(20), name text)",
            "CREATE UNIQUE INDEX product_bn ON product (barcode, name COLLATE NOCASE)",
            "INSERT OR REPLACE INTO product (id, barcode, name) VALUES (2, 'X', 'ONE')",
            [(2, "X", "ONE"), (3, "Z", "three")],
        ),
    ],
    ids=["replace-into", "update-or-replace", "on-conflict-replace", "two-column-index"],
)
def test_replace_into_and_update_or_replace(
    any_database: Callable[[], str],
    store: Store,
    source_ddl: str,
    index: str | None,
    statement: str,
    expected: list[tuple[object, ...]],
) -> None:
    target = any_database()
    node, path = store(target, source_ddl=source_ddl)
    register = f"sqlite:///{path}"
    if index:
        execute(register, index)
        node.setup()  # run again after a unique index was added
    pos(path, statement)
    node.sync()
    assert rows(register, "product") == expected
    assert rows(target, "product") == expected
    assert quarantined(node) == []


def test_insert_or_ignore_deletes_nothing(any_database: Callable[[], str], store: Store) -> None:
    target = any_database()
    node, path = store(target)
    pos(path, "INSERT OR IGNORE INTO product (id, barcode, name) VALUES (2, 'X', 'two')")
    # The trigger ran before SQLite chose to ignore the row: a tombstone for row 1, still alive.
    assert tombstones(path) == ["[1]"]
    # A plain INSERT that fails takes its tombstone with it when the statement is undone.
    with pytest.raises(sqlite3.IntegrityError):
        pos(path, "INSERT INTO product (id, barcode, name) VALUES (2, 'Z', 'two')")
    assert tombstones(path) == ["[1]"]
    node.sync()
    assert rows(target, "product") == [(1, "X", "one"), (3, "Z", "three")]
    assert quarantined(node) == []


def source_version(path: Path, key: int) -> int:
    db = sqlite3.connect(path)
    try:
        return int(
            db.execute("SELECT repl_version FROM product WHERE id = ?", (key,)).fetchone()[0]
        )
    finally:
        db.close()


def test_replace_with_the_same_key_sends_the_new_values(
    any_database: Callable[[], str], store: Store
) -> None:
    target = any_database()
    node, path = store(target)
    before = source_version(path, 1)
    # Same primary key, same barcode: a delete and an insert of the same key.
    pos(path, "REPLACE INTO product (id, barcode, name) VALUES (1, 'X', 'uno')")
    assert source_version(path, 1) > before
    assert tombstones(path) == []
    assert moved(node.sync()) == 1
    assert rows(target, "product") == [(1, "X", "uno"), (3, "Z", "three")]
    # Same primary key, and the barcode of another row: that one is displaced too.
    pos(path, "REPLACE INTO product (id, barcode, name) VALUES (1, 'Z', 'one again')")
    node.sync()
    assert rows(target, "product") == [(1, "Z", "one again")]
    assert quarantined(node) == []


def test_replace_through_the_primary_key_when_the_key_is_another_column(
    pg_database: Callable[[], str], store: Store
) -> None:
    """The mapping's key is the unique `code`; a REPLACE on the rowid displaces a code."""
    target = pg_database()
    node, path = store(
        target,
        source_ddl="CREATE TABLE product (id integer PRIMARY KEY, code text NOT NULL UNIQUE, "
        "name text)",
        target_ddl="CREATE TABLE product (code text PRIMARY KEY, name text)",
        mapping=PRODUCTS.replace("key: [id]", "key: [code]\n    exclude: [id]"),
        seed="INSERT INTO product (id, code, name) VALUES (1, 'A', 'one'), (2, 'B', 'two')",
        columns=["code", "name"],
    )
    pos(path, "REPLACE INTO product (id, code, name) VALUES (1, 'C', 'three')")
    pos(path, "UPDATE OR REPLACE product SET id = 1 WHERE code = 'B'")
    node.sync()
    assert rows(target, "product") == [("B", "two")]
    assert quarantined(node) == []


def test_without_rowid_table(any_database: Callable[[], str], store: Store) -> None:
    target = any_database()
    ddl = (
        "CREATE TABLE product (shop integer, code varchar(10), barcode varchar(20) UNIQUE, "
        "name text, PRIMARY KEY (shop, code))"
    )
    node, path = store(
        target,
        source_ddl=ddl + " WITHOUT ROWID",
        target_ddl=ddl,
        mapping=PRODUCTS.replace("key: [id]", "key: [shop, code]"),
        seed="INSERT INTO product (shop, code, barcode, name) VALUES (1, 'a', 'X', 'one'), "
        "(1, 'b', 'Y', 'two'), (1, 'c', 'Z', 'three')",
    )
    pos(
        path,
        "INSERT OR REPLACE INTO product (shop, code, barcode, name) VALUES (1, 'd', 'X', 'four')",
        "UPDATE OR REPLACE product SET barcode = 'Y' WHERE code = 'c'",
    )
    node.sync()
    expected = [(1, "c", "Y", "three"), (1, "d", "X", "four")]
    assert rows(f"sqlite:///{path}", "product") == expected
    assert rows(target, "product") == expected
    assert quarantined(node) == []


def test_setup_print_says_replace_triggers_need_the_live_table(
    sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    path = tmp_path / "caixa.db"
    config = write_node(tmp_path, sqlite_database(), f"sqlite:///{path}", {"produtos": PRODUCTS})
    node = Node(config)
    generic = printable(setup_script(node.settings, node.dbs, "caixa"))  # no file yet
    assert "generated only against the live table" in generic
    assert "CREATE TRIGGER replicator_replace_" not in generic
    node.close()
    execute(f"sqlite:///{path}", PRODUCT_DDL)
    node = Node(config)
    live = printable(setup_script(node.settings, node.dbs, "caixa"))
    assert "generated only against the live table" not in live
    assert "CREATE TRIGGER replicator_replace_ins_product_" in live
    assert "BEFORE UPDATE OF barcode ON product" in live
    node.close()
