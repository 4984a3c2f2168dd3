"""Round trips between every pair of backends: inserts, updates, deletes, awkward values.

After each step both sides are compared row by row."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support import Node, moved, rows, write_node

BRT = timezone(timedelta(hours=-3))
TEXTS = [
    "Pão de queijo",
    "Açúcar ç ã é õ",
    "Café ☕ com leite 🥛",
    "",
    "emoji 🧾🛒💳",
    "aspas ' e \" e \\ barra",
    "linha\nquebrada",
    "tab\tseparado",
]

MAPPING = """\
group: linhas
direction: register_to_server
tables:
  - source: SaleLine
    key: [Store, order]
"""


def metadata() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "SaleLine",
        md,
        sa.Column("Store", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("order", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("Desc", sa.String(200)),
        sa.Column("qty", sa.Numeric(12, 3)),
        sa.Column("amount", sa.Numeric(12, 2)),
        sa.Column("at", sa.DateTime(timezone=True)),
        sa.Column("select", sa.Boolean),
        sa.Column("note", sa.Text),
    )
    return md


def make_row(rng: random.Random, store: int, order: int) -> dict[str, Any]:
    at = datetime(2026, 11, 27, 8, 0, tzinfo=BRT) + timedelta(
        seconds=rng.randrange(86400), microseconds=rng.randrange(1_000_000)
    )
    return {
        "Store": store,
        "order": order,
        "Desc": rng.choice(TEXTS),
        "qty": Decimal(rng.randrange(-(10**6), 10**9)) / 1000,
        "amount": rng.choice(
            [
                Decimal("0.00"),
                Decimal("9999999999.99"),
                Decimal("-0.01"),
                Decimal(rng.randrange(10**7)) / 100,
            ]
        ),
        "at": rng.choice([at, None]),
        "select": rng.choice([True, False, None]),
        "note": rng.choice([None, "ok", "ç" * 300]),
    }


def store_form(url: str, row: dict[str, Any]) -> dict[str, Any]:
    """What an application writes: SQLite keeps timestamps as naive UTC."""
    if url.startswith("sqlite") and row["at"] is not None:
        return {**row, "at": row["at"].astimezone(UTC).replace(tzinfo=None)}
    return row


PAIRS = [
    ("sqlite", "postgresql"),
    ("postgresql", "sqlite"),
    ("postgresql", "postgresql"),
    ("sqlite", "sqlite"),
]


@pytest.fixture(params=PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Node, str, str]:
    makers: dict[str, Callable[[], str]] = {}
    for kind in set(request.param):
        fixture = "pg_database" if kind == "postgresql" else "sqlite_database"
        makers[kind] = request.getfixturevalue(fixture)
    source, target = makers[request.param[0]](), makers[request.param[1]]()
    for url in (source, target):
        engine = sa.create_engine(url)
        metadata().create_all(engine)
        engine.dispose()
    node = Node(write_node(tmp_path, server=target, register=source, mappings={"linhas": MAPPING}))
    node.setup()
    request.addfinalizer(node.close)
    return node, source, target


def write(url: str, fn: Callable[[sa.Connection, sa.Table], None]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        fn(conn, sa.Table("SaleLine", sa.MetaData(), autoload_with=conn))
    engine.dispose()


def test_round_trip(pair: tuple[Node, str, str]) -> None:
    node, source, target = pair
    rng = random.Random(7)
    first = [make_row(rng, store, order) for store in (1, 2) for order in range(1, 151)]
    write(source, lambda c, t: c.execute(t.insert(), [store_form(source, r) for r in first]))

    assert moved(node.sync()) == 300
    assert rows(target, "SaleLine") == rows(source, "SaleLine")
    assert len(rows(target, "SaleLine")) == 300

    def change(conn: sa.Connection, t: sa.Table) -> None:
        for order in range(1, 51):  # updates, including to NULL
            conn.execute(
                t.update()
                .where(t.c.Store == 1, t.c.order == order)
                .values(
                    Desc="mudou ✓ ção", amount=None if order % 2 else Decimal("1.99"), note=None
                )
            )
        conn.execute(t.delete().where(t.c.Store == 2, t.c.order <= 30))
        again = [make_row(rng, 2, order) for order in range(1, 6)]  # deleted, then back
        conn.execute(t.insert(), [store_form(source, r) for r in again])
        conn.execute(t.insert(), [store_form(source, make_row(rng, 3, 1))])

    write(source, change)
    assert moved(node.sync()) == 50 + 25 + 5 + 1
    assert rows(target, "SaleLine") == rows(source, "SaleLine")
    assert len(rows(target, "SaleLine")) == 300 - 30 + 5 + 1

    assert moved(node.sync()) == 0, "a second sync with no changes must move nothing"

    write(source, lambda c, t: c.execute(t.delete()))
    node.sync()
    assert rows(target, "SaleLine") == [] == rows(source, "SaleLine")
