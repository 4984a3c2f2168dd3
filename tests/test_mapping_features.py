"""What a mapping declares is what happens: column maps, filters, delete handling, conflict
rules. Each runs on every backend as the target."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from conftest import execute
from support import Node, rows, write_node

from replicator.status import collect

SOURCE = (
    "CREATE TABLE product (id integer PRIMARY KEY, store integer, name varchar(40), "
    "kind varchar(1), changed_at integer)"
)


def node_for(
    target_ddl: str,
    table_yaml: str,
    any_database: Callable[[], str],
    sqlite_database: Callable[[], str],
    tmp_path: Path,
) -> tuple[Node, str, str]:
    source, target = sqlite_database(), any_database()
    execute(source, SOURCE)
    execute(target, target_ddl)
    mapping = "group: g\ndirection: register_to_server\ntables:\n" + table_yaml
    node = Node(
        write_node(
            tmp_path,
            target,
            source,
            {"g": mapping},
            register_vars='{ register_id = 3, region = "sul" }',
        )
    )
    node.setup()
    return node, source, target


def test_column_map_renames_constants_variables_and_value_maps(
    any_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    node, source, target = node_for(
        "CREATE TABLE produto (codigo integer PRIMARY KEY, nome varchar(40), tipo varchar(10), "
        "caixa integer, regiao varchar(10), origem varchar(10))",
        """\
  - source: product
    target: produto
    key: [id]
    columns:
      codigo: id
      nome: name
      tipo: {from: kind, map: {"A": alimento, "B": bebida}, default: outro}
      caixa: "{register_id}"
      regiao: "{region}"
      origem: {const: pdv}
    copy_other_columns: false
""",
        any_database,
        sqlite_database,
        tmp_path,
    )
    execute(
        source,
        "INSERT INTO product (id, store, name, kind, changed_at) VALUES "
        "(1, 1, 'Pão', 'A', 1), (2, 1, 'Suco', 'B', 1), (3, 1, 'Vela', 'Z', 1), "
        "(4, 1, 'Nada', NULL, 1)",
    )
    node.sync()
    assert sorted(rows(target, "produto")) == [
        (1, "Pão", "alimento", 3, "sul", "pdv"),
        (2, "Suco", "bebida", 3, "sul", "pdv"),
        (3, "Vela", "outro", 3, "sul", "pdv"),
        (4, "Nada", "outro", 3, "sul", "pdv"),
    ]
    node.close()


def test_where_filter_with_a_variable(
    any_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    node, source, target = node_for(
        SOURCE,
        """\
  - source: product
    key: [id]
    where: {store: "{register_id}", kind: ["A", "B"]}
""",
        any_database,
        sqlite_database,
        tmp_path,
    )
    execute(
        source,
        "INSERT INTO product (id, store, name, kind, changed_at) VALUES "
        "(1, 3, 'mine', 'A', 1), (2, 4, 'other store', 'A', 1), "
        "(3, 3, 'wrong kind', 'Z', 1), (4, 3, 'mine too', 'B', 1)",
    )
    node.sync()
    assert sorted(r[0] for r in rows(target, "product")) == [1, 4]
    node.close()


def test_soft_delete_and_return(
    any_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    node, source, target = node_for(
        SOURCE.replace("changed_at integer)", "changed_at integer, gone boolean)"),
        """\
  - source: product
    key: [id]
    deletes: {soft: gone}
""",
        any_database,
        sqlite_database,
        tmp_path,
    )
    execute(
        source,
        "INSERT INTO product (id, store, name, kind, changed_at) VALUES "
        "(1, 1, 'a', 'A', 1), (2, 1, 'b', 'A', 1)",
    )
    node.sync()
    execute(source, "DELETE FROM product WHERE id = 1")
    node.sync()
    flags = {r[0]: bool(r[1]) for r in rows(target, "product", ["id", "gone"])}
    assert flags == {1: True, 2: False}
    execute(
        source,
        "INSERT INTO product (id, store, name, kind, changed_at) VALUES (1, 1, 'back', 'A', 2)",
    )
    node.sync()
    flags = {r[0]: bool(r[1]) for r in rows(target, "product", ["id", "gone"])}
    assert flags == {1: False, 2: False}
    node.close()


def test_deletes_ignore_keeps_the_target_row(
    any_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    node, source, target = node_for(
        SOURCE,
        """\
  - source: product
    key: [id]
    deletes: ignore
""",
        any_database,
        sqlite_database,
        tmp_path,
    )
    execute(
        source, "INSERT INTO product (id, store, name, kind, changed_at) VALUES (1, 1, 'a', 'A', 1)"
    )
    node.sync()
    execute(source, "DELETE FROM product")
    node.sync()
    assert [r[0] for r in rows(target, "product")] == [1]
    node.close()


def test_newer_wins_keeps_a_newer_target_row(
    any_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    node, source, target = node_for(
        SOURCE,
        """\
  - source: product
    key: [id]
    conflict: {newer_wins: changed_at}
""",
        any_database,
        sqlite_database,
        tmp_path,
    )
    execute(
        target,
        "INSERT INTO product (id, store, name, kind, changed_at) VALUES "
        "(1, 1, 'edited on the server later', 'A', 50)",
    )
    execute(
        source,
        "INSERT INTO product (id, store, name, kind, changed_at) VALUES "
        "(1, 1, 'older register edit', 'A', 10), (2, 1, 'new', 'A', 10)",
    )
    node.sync()
    assert sorted(r[:3] for r in rows(target, "product")) == [
        (1, 1, "edited on the server later"),
        (2, 1, "new"),
    ]
    execute(source, "UPDATE product SET name = 'newest', changed_at = 60 WHERE id = 1")
    node.sync()
    assert sorted(r[2] for r in rows(target, "product")) == ["new", "newest"]
    node.close()


def test_keep_target_reports_the_conflict(
    any_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    node, source, target = node_for(
        SOURCE,
        """\
  - source: product
    key: [id]
    conflict: keep_target
""",
        any_database,
        sqlite_database,
        tmp_path,
    )
    execute(
        target,
        "INSERT INTO product (id, store, name, kind, changed_at) VALUES "
        "(1, 1, 'server version', 'A', 1)",
    )
    execute(
        source,
        "INSERT INTO product (id, store, name, kind, changed_at) VALUES "
        "(1, 1, 'register version', 'A', 1), (2, 1, 'no conflict', 'A', 1)",
    )
    results = node.sync()
    assert results[0].tables["product"].conflicts == 1
    assert sorted(r[2] for r in rows(target, "product")) == ["no conflict", "server version"]
    backend = node.dbs["server"]
    q = backend.ct.quarantine
    with backend.engine.connect() as conn:
        found = conn.execute(sa.select(q.c.row_key, q.c.status, q.c.reason)).all()
    assert [(k, s) for k, s, _ in found] == [("[1]", "conflict")]
    assert "keep_target" in found[0][2]
    status = collect(node.settings, node.dbs)
    assert [s.quarantined for s in status] == [1]
    node.close()
