"""PostgreSQL -> PostgreSQL movement batches travel as COPY streams (source `COPY (SELECT ...)
TO STDOUT` into the target's `COPY ... FROM STDIN`): straight into the table when the keys are
new, through the stage and the upsert when some exist, and page by page (which finds and holds
refused rows) when the target refuses one. Every path ends with both sides equal."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import execute
from support import ITEMS, Node, quarantined, rows, scalar, write_node

from replicator.backends.postgresql import PostgreSQLBackend
from replicator.sync import JobRunner

pytestmark = pytest.mark.postgres


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every COPY stream tried: ("direct" or "stage", "ok" or the SQLSTATE it failed with)."""
    seen: list[tuple[str, str]] = []
    real = PostgreSQLBackend.copy_through

    def spy(self: PostgreSQLBackend, *args: Any) -> int:
        kind = (
            "direct" if args[5] is None else "stage"
        )  # (conn, source, select, table, cols, build)
        try:
            count = real(self, *args)
        except sa.exc.DBAPIError as exc:
            seen.append((kind, str(getattr(exc.orig, "sqlstate", "?"))))
            raise
        seen.append((kind, "ok"))
        return count

    monkeypatch.setattr(PostgreSQLBackend, "copy_through", spy)
    return seen


def _pair(
    pg_database: Callable[[], str], tmp_path: Path, source_ddl: str, target_ddl: str
) -> tuple[str, str, Node]:
    source, target = pg_database(), pg_database()
    execute(source, source_ddl)
    execute(target, target_ddl)
    node = Node(write_node(tmp_path, server=target, register=source, mappings={"itens": ITEMS}))
    node.setup()
    return source, target, node


DDL = "CREATE TABLE item (id integer PRIMARY KEY, name varchar(20), qty integer)"


def test_new_rows_go_straight_in(
    pg_database: Callable[[], str], tmp_path: Path, copies: list[tuple[str, str]]
) -> None:
    source, target, node = _pair(pg_database, tmp_path, DDL, DDL)
    execute(source, "INSERT INTO item SELECT g, 'nome ' || g, g FROM generate_series(1, 500) g")
    results = node.sync()
    assert results[0].tables["item"].upserts == 500
    assert copies == [("direct", "ok")]
    assert rows(source, "item") == rows(target, "item")
    # a second cycle has nothing to send, and sends nothing
    assert sum(r.rows for r in node.sync()) == 0
    assert copies == [("direct", "ok")]
    node.close()


def test_a_long_stream_beats_the_stall_guard(
    pg_database: Callable[[], str], tmp_path: Path, copies: list[tuple[str, str]]
) -> None:
    """One version larger than a batch is one stream: it tells the service's stall guard it
    moves (at every megabyte), as pages did."""
    source, target, node = _pair(pg_database, tmp_path, DDL, DDL)
    execute(source, "INSERT INTO item SELECT g, 'nome ' || g, g FROM generate_series(1, 60000) g")
    runner = JobRunner(node.settings, node.dbs, node.settings.jobs()[0])
    beats: list[float] = []
    runner.heartbeat = lambda: beats.append(1.0)
    assert runner.run().rows == 60000
    assert copies == [("direct", "ok")]
    assert len(beats) >= 2  # the page's own beat, and the stream's beats
    assert rows(source, "item") == rows(target, "item")
    node.close()


def test_existing_keys_go_through_the_upsert(
    pg_database: Callable[[], str], tmp_path: Path, copies: list[tuple[str, str]]
) -> None:
    source, target, node = _pair(pg_database, tmp_path, DDL, DDL)
    execute(source, "INSERT INTO item SELECT g, 'nome ' || g, g FROM generate_series(1, 100) g")
    # the target already holds some keys: 1..10 equal to the source, 11..20 different
    execute(target, "INSERT INTO item SELECT g, 'nome ' || g, g FROM generate_series(1, 10) g")
    execute(target, "INSERT INTO item SELECT g, 'velho', 0 FROM generate_series(11, 20) g")
    before = scalar(target, "SELECT xmin::text FROM item WHERE id = 5")
    runner = JobRunner(node.settings, node.dbs, node.settings.jobs()[0])  # kept, as by `run`
    assert runner.run().error is None
    assert copies == [("direct", "23505"), ("stage", "ok")]
    assert rows(source, "item") == rows(target, "item")
    # a row equal to the target is not written again (no new row version)
    assert scalar(target, "SELECT xmin::text FROM item WHERE id = 5") == before
    # the runner's next batches of the table go through the stage without a direct try
    execute(source, "UPDATE item SET qty = qty + 1 WHERE id = 3")
    assert runner.run().error is None
    assert copies[2:] == [("stage", "ok")]
    assert rows(source, "item") == rows(target, "item")
    node.close()


def test_a_refused_row_is_held_alone(
    pg_database: Callable[[], str], tmp_path: Path, copies: list[tuple[str, str]]
) -> None:
    source, target, node = _pair(
        pg_database,
        tmp_path,
        DDL,
        "CREATE TABLE item (id integer PRIMARY KEY, name varchar(20), qty integer CHECK "
        "(qty >= 0))",
    )
    execute(source, "INSERT INTO item SELECT g, 'ok', g FROM generate_series(1, 100) g")
    execute(source, "UPDATE item SET qty = -5 WHERE id = 37")
    results = node.sync()
    assert copies == [("direct", "23514")]  # then page by page, which holds the row
    assert results[0].tables["item"].quarantined == 1
    assert quarantined(node) == [("item", "[37]")]
    assert len(rows(target, "item")) == 99
    node.close()


def test_other_types_travel_as_text(
    pg_database: Callable[[], str], tmp_path: Path, copies: list[tuple[str, str]]
) -> None:
    source, target, node = _pair(
        pg_database,
        tmp_path,
        "CREATE TABLE item (id integer PRIMARY KEY, name varchar(20), qty numeric(10,2))",
        "CREATE TABLE item (id bigint PRIMARY KEY, name text, qty numeric(12,2))",
    )
    execute(
        source,
        "INSERT INTO item SELECT g, 'ação ' || g, g * 1.25 FROM generate_series(1, 50) g",
    )
    node.sync()
    assert copies == [("direct", "ok")]
    assert rows(source, "item") == rows(target, "item")
    node.close()


def test_echoes_are_not_copied(
    pg_database: Callable[[], str], tmp_path: Path, copies: list[tuple[str, str]]
) -> None:
    source, target, node = _pair(pg_database, tmp_path, DDL, DDL)
    server_node = node.settings.node("server")
    execute(
        source,
        f"SELECT set_config('replicator.origin', '{server_node}', true)",
        "INSERT INTO item SELECT g, 'eco', g FROM generate_series(1, 10) g",
    )
    execute(source, "INSERT INTO item SELECT g, 'novo', g FROM generate_series(11, 20) g")
    node.sync()
    assert copies == [("direct", "ok")]
    assert [r[0] for r in rows(target, "item")] == list(range(11, 21))
    node.close()


CATALOG = """\
group: produtos
direction: server_to_register
tables:
  - source: item
    key: [id]
"""


def _catalog(
    pg_database: Callable[[], str], tmp_path: Path, target_ddl: str = DDL
) -> tuple[str, str, Node]:
    server, register = pg_database(), pg_database()
    execute(server, DDL)
    execute(register, target_ddl)
    config = write_node(
        tmp_path,
        server=server,
        register=register,
        mappings={"produtos": CATALOG},
        extra="[sync]\nbatch_rows = 30\n",
    )
    node = Node(config)
    node.setup()
    return server, register, node


def test_catalog_streams_commit_page_by_page(
    pg_database: Callable[[], str], tmp_path: Path, copies: list[tuple[str, str]]
) -> None:
    """Server -> PostgreSQL register: one COPY stream per short commit of batch_rows rows,
    each commit carrying the position of its last row."""
    server, register, node = _catalog(pg_database, tmp_path)
    execute(server, "INSERT INTO item SELECT g, 'p ' || g, g FROM generate_series(1, 100) g")
    node.sync()
    assert copies == [("direct", "ok")] * 4  # 30 + 30 + 30 + 10 rows, one commit each
    assert rows(server, "item") == rows(register, "item")
    # half updated, half new: through the stage and the upsert, still page by page
    execute(server, "UPDATE item SET qty = qty + 1 WHERE id % 2 = 0")
    execute(server, "INSERT INTO item SELECT g, 'n ' || g, g FROM generate_series(101, 150) g")
    node.sync()
    assert ("direct", "23505") in copies[4:] and ("stage", "ok") in copies[4:]
    assert rows(server, "item") == rows(register, "item")
    node.close()


def test_catalog_refused_row_after_committed_streams(
    pg_database: Callable[[], str], tmp_path: Path, copies: list[tuple[str, str]]
) -> None:
    server, register, node = _catalog(
        pg_database,
        tmp_path,
        "CREATE TABLE item (id integer PRIMARY KEY, name varchar(20), qty integer CHECK "
        "(qty <> 77))",
    )
    execute(server, "INSERT INTO item SELECT g, 'p ' || g, g FROM generate_series(1, 100) g")
    results = node.sync()
    # rows 1..60 went as two streams; the third (61..90) holds 77: page by page from there
    assert copies[:3] == [("direct", "ok"), ("direct", "ok"), ("direct", "23514")]
    assert results[0].tables["item"].quarantined == 1
    assert quarantined(node, "caixa") == [("item", "[77]")]
    assert len(rows(register, "item")) == 99
    assert sum(r.rows for r in node.sync()) == 0
    node.close()


def test_sqlite_rows_go_straight_in_while_their_keys_are_new(
    pg_database: Callable[[], str],
    sqlite_database: Callable[[], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A register that is not PostgreSQL: its rows are decoded, and still written by one COPY
    straight into the table when their keys are new; through the stage and the upsert when
    some exist (and equal rows are not written again)."""
    into: list[str] = []
    real = PostgreSQLBackend._copy_rows

    def spy(self: PostgreSQLBackend, *args: Any) -> None:
        into.append("stage" if args[-1] else "table")
        real(self, *args)

    monkeypatch.setattr(PostgreSQLBackend, "_copy_rows", spy)
    register, server = sqlite_database(), pg_database()
    execute(register, DDL)
    execute(server, DDL)
    node = Node(write_node(tmp_path, server=server, register=register, mappings={"itens": ITEMS}))
    node.setup()
    execute(
        register,
        *[f"INSERT INTO item (id, name, qty) VALUES ({i}, 'n{i}', {i})" for i in range(1, 41)],
    )
    node.sync()
    assert into == ["table"]
    assert rows(register, "item") == rows(server, "item")
    execute(server, "UPDATE item SET qty = 0 WHERE id = 2")  # differs: the upsert mends it
    before = scalar(server, "SELECT xmin::text FROM item WHERE id = 1")
    execute(register, "UPDATE item SET name = name WHERE id <= 2")  # sent again, id 1 equal
    node.sync()
    assert into[1:] == ["table", "stage"]  # the direct COPY met key 1, then the stage
    assert rows(register, "item") == rows(server, "item")
    assert scalar(server, "SELECT xmin::text FROM item WHERE id = 1") == before
    node.close()


def test_an_unreadable_register_value_is_held_and_its_page_goes_on(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """A page is checked for unreadable values in one pass; a page with one still refuses
    that row alone (and a page without any is written whole)."""
    register, server = sqlite_database(), pg_database()
    ddl = "CREATE TABLE item (id integer PRIMARY KEY, name varchar(20), sold_at {})"
    execute(register, ddl.format("DATETIME"))
    execute(server, ddl.format("timestamptz"))
    node = Node(write_node(tmp_path, server=server, register=register, mappings={"itens": ITEMS}))
    node.setup()
    execute(
        register,
        *[
            f"INSERT INTO item (id, name, sold_at) VALUES ({i}, 'n{i}', "
            f"'2026-12-01 10:00:0{i % 10}')"
            for i in range(1, 31)
        ],
        "UPDATE item SET sold_at = 'not a date' WHERE id = 7",
    )
    results = node.sync()
    assert results[0].tables["item"].quarantined == 1
    assert quarantined(node) == [("item", "[7]")]
    assert sorted(r[0] for r in rows(server, "item")) == [i for i in range(1, 31) if i != 7]
    execute(register, "UPDATE item SET sold_at = '2026-12-01 11:00:00' WHERE id = 7")
    node.sync()
    assert len(rows(server, "item")) == 30
    assert quarantined(node) == []
    node.close()
