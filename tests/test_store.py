"""The shipped example store end to end: PostgreSQL server, SQLite registers, the shipped
mappings, real sync both ways, a day of trading with edits, deletes and an outage."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import execute
from support import Node, moved, rows

from replicator.cli import cli
from replicator.demo import store

ROOT = Path(__file__).parent.parent


def create(url: str, metadata: sa.MetaData, seed: Callable[[sa.Connection], None]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        metadata.create_all(conn)
        seed(conn)
    engine.dispose()


@pytest.fixture
def shop(pg_database: Callable[[], str], tmp_path: Path) -> tuple[Node, str, list[str]]:
    server = pg_database()
    registers = [f"sqlite:///{tmp_path / f'caixa{n}.db'}" for n in (1, 2)]
    create(server, store.server_metadata(), lambda c: store.seed_server(c, store_id=1))
    for n, url in enumerate(registers, start=1):
        create(url, store.register_metadata(), lambda c, n=n: store.seed_register(c, n))
    shutil.copytree(ROOT / "mappings", tmp_path / "mappings", ignore=shutil.ignore_patterns("*.py"))
    config = tmp_path / "replicator.toml"
    config.write_text(
        f"""\
mappings = "mappings"

[node]
name = "loja1"
store_id = 1

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

[[jobs]]
group = "movimento"

[[jobs]]
group = "cadastros"
""",
        "utf-8",
    )
    result = CliRunner().invoke(cli, ["-c", str(config), "setup"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["-c", str(config), "check"])
    assert result.exit_code == 0, result.output
    node = Node(config)
    yield node, server, registers
    node.close()


def server_sales(server: str, register_id: int) -> list[tuple[object, ...]]:
    return rows(
        server,
        "sale",
        ["sale_id", "opened_at", "closed_at", "customer_id", "employee_id", "total"],
        where=f"register_id = {register_id}",
    )


def register_sales(url: str) -> list[tuple[object, ...]]:
    return rows(
        url, "sale", ["sale_id", "opened_at", "closed_at", "customer_id", "employee_id", "total"]
    )


def test_a_day_at_the_store(shop: tuple[Node, str, list[str]]) -> None:
    node, server, registers = shop
    node.sync()
    for n, url in enumerate(registers, start=1):
        assert server_sales(server, n) == register_sales(url)
        assert rows(url, "product") == rows(server, "product")
        assert rows(url, "price") == rows(server, "price", where="store_id = 1")
        assert rows(url, "employee") == rows(server, "employee")
    statuses = {r[0] for r in rows(server, "sale", ["status"])}
    assert statuses == {"closed", "cancelled"}
    # customers created at each register reached the server and the other register
    assert (
        rows(registers[0], "customer") == rows(registers[1], "customer") == rows(server, "customer")
    )

    # The network goes down: the registers keep selling, the server edits its catalog.
    outage = store.DEFAULT_START + timedelta(days=1)
    for n, url in enumerate(registers, start=1):
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            store.seed_register(conn, n, sales=7, start=outage)
        engine.dispose()
    execute(
        server,
        "UPDATE product SET price = price * 1.1, name = name || ' (novo)' WHERE product_id <= 10",
        "DELETE FROM price WHERE store_id = 1 AND product_id = 40",
        "DELETE FROM user_login WHERE login = (SELECT min(login) FROM user_login)",
    )
    # Back up: one cycle catches up by itself, both ways.
    assert moved(node.sync()) > 0
    for n, url in enumerate(registers, start=1):
        assert server_sales(server, n) == register_sales(url)
        assert len(register_sales(url)) == 12
        assert rows(url, "product") == rows(server, "product")
        assert rows(url, "price") == rows(server, "price", where="store_id = 1")
        assert rows(url, "user_login") == rows(server, "user_login")
        items = rows(url, "sale_item")
        assert (
            rows(
                server,
                "sale_item",
                [
                    c
                    for c in ("sale_id", "line_no", "product_id", "quantity", "unit_price", "total")
                ],
                where=f"register_id = {n}",
            )
            == items
        )
    totals = rows(server, "sale", ["register_id", "total"])
    assert len(totals) == 24
    assert moved(node.sync()) == 0
