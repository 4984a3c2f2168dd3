"""Two-way tables (customers travel up with movement and down with the catalog): the same row
edited on both sides between syncs. Both sides end with the same row, the table's rule says
which, and the edit that lost is recorded as a conflict (never lost silently)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import execute
from support import Node, rows, write_node

UP = """\
group: movimento
direction: register_to_server
tables:
  - source: customer
    key: [customer_id]
    deletes: ignore
{conflict}"""
DOWN = """\
group: cadastros
direction: server_to_register
tables:
  - source: customer
    key: [customer_id]
{conflict}"""
DDL = "CREATE TABLE customer (customer_id integer PRIMARY KEY, name text, updated_at text)"


@pytest.mark.parametrize("first", ["movimento", "cadastros"])
@pytest.mark.parametrize("rule", ["source_wins", "newer_wins"])
def test_an_edit_on_both_sides_converges(
    any_database: Callable[[], str],
    sqlite_database: Callable[[], str],
    tmp_path: Path,
    first: str,
    rule: str,
) -> None:
    server, register = any_database(), sqlite_database()
    execute(server, DDL)
    execute(register, DDL)
    conflict = "    conflict: {newer_wins: updated_at}\n" if rule == "newer_wins" else ""
    node = Node(
        write_node(
            tmp_path,
            server,
            register,
            {
                "movimento": UP.format(conflict=conflict),
                "cadastros": DOWN.format(conflict=conflict),
            },
        )
    )
    node.setup()
    execute(
        server,
        "INSERT INTO customer (customer_id, name, updated_at) "
        "VALUES (1, 'Ana', '2024-01-01T10:00')",
    )
    node.sync("cadastros")
    execute(register, "UPDATE customer SET name = 'Ana Maria', updated_at = '2024-01-02T09:00'")
    execute(server, "UPDATE customer SET name = 'Ana M.', updated_at = '2024-01-02T11:00'")
    second = "cadastros" if first == "movimento" else "movimento"
    node.sync(first)
    node.sync(second)
    node.sync(first)
    node.sync(second)
    up, down = rows(server, "customer"), rows(register, "customer")
    assert up == down, "both sides end with the same row"
    if rule == "newer_wins":
        assert up[0][1] == "Ana M.", "the later edit wins whatever the order"
        lost = "Ana Maria"
    else:
        winner = "Ana Maria" if first == "movimento" else "Ana M."
        assert up[0][1] == winner, "source_wins: the job that runs first wins"
        lost = "Ana M." if first == "movimento" else "Ana Maria"
    # the edit that lost is never lost silently: one conflict record holds it
    records = [
        (db, json.loads(data)["name"]) for db in ("server", "caixa") for data in held_data(node, db)
    ]
    assert [name for _, name in records] == [lost], records
    node.close()


def held_data(node: Node, db: str) -> list[str]:
    backend = node.dbs[db]
    q = backend.ct.quarantine.c
    with backend.engine.connect() as conn:
        return list(conn.execute(sa.select(q.row_data).where(q.status == "conflict")).scalars())
