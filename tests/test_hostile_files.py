"""Hostile input: files and databases that are valid but built to break the replicator.

- a mapping file of a dozen lines whose nested YAML aliases expand to billions of values
  ("billion laughs") is refused at once, naming file and line, before the expansion is paid;
- PostgreSQL databases whose own settings change the text form of values (DateStyle,
  IntervalStyle, extra_float_digits, bytea_output, TimeZone) replicate exactly: every session
  of ours pins those settings;
- table names that contain `$body$` (the trigger bodies' dollar quote), accents, spaces and
  reserved words are tracked by `setup` and replicated.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import execute
from support import Node, moved, rows, write_node
from test_config_errors import MOVIMENTO, make_node

from replicator.backends.base import TrackedTable
from replicator.backends.postgresql import PostgreSQLBackend
from replicator.cli import cli
from replicator.config import load_settings
from replicator.errors import ConfigError
from replicator.mapping import load_mapping
from replicator.sourcefile import load_yaml

# 13 lines, 82 aliases: 9**9 (387 million) copies of "lol" once expanded.
BOMB = (
    "group: bomba\n"
    "direction: register_to_server\n"
    'a0: &a0 ["lol"]\n'
    + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))
    + "tables: *a9\n"
)


def _refused_bomb(message: str, path: Path) -> None:
    # the first alias whose expansion alone passes the budget: *a5 (9**5 values), line 9
    assert f"{path}:9: *a5: this file uses YAML aliases" in message, message
    assert "82 times" in message, message
    assert "write the values out" in message, message


def test_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bomba.yaml"
    path.write_text(BOMB, encoding="utf-8")
    assert len(BOMB.splitlines()) == 13
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_mapping(path)
    assert time.monotonic() - start < 2
    _refused_bomb(str(info.value), path)


def test_alias_bomb_in_the_mappings_folder_fails_every_command(tmp_path: Path) -> None:
    config = make_node(tmp_path)
    bomb = tmp_path / "mappings" / "bomba.yaml"
    bomb.write_text(BOMB, encoding="utf-8")
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    _refused_bomb(str(info.value), bomb)
    result = CliRunner().invoke(cli, ["-c", str(config), "check"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    _refused_bomb(result.stderr, bomb)
    # and in a real process, bounded in memory: the expansion would need many gigabytes
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
        "from replicator.cli import main; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "-c", str(config), "status"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    _refused_bomb(proc.stderr, bomb)
    assert time.monotonic() - start < 30
    assert not list(tmp_path.glob("*.db")), "a database was opened for a bad config"


def test_a_wide_alias_fan_out_is_refused(tmp_path: Path) -> None:
    """No single alias is big, but their sum is: 200 uses of a 1,000-value list."""
    path = tmp_path / "largo.yaml"
    items = ", ".join(str(n) for n in range(999))
    path.write_text(
        f"group: g\ndirection: register_to_server\nbig: &big [{items}]\ntables:\n"
        + "".join("  - *big\n" for _ in range(200)),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert f"{path}:5: *big: this file uses YAML aliases (*big) 200 times" in str(info.value)


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "laco.yaml"
    path.write_text("group: g\ndirection: register_to_server\ntables: &t\n  - *t\n", "utf-8")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert f"{path}:4: the YAML alias *t is used inside its own anchor &t" in str(info.value)


def test_deep_nesting_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "fundo.yaml"
    path.write_text("group: g\ntables:\n  " + "[" * 5000 + "]" * 5000 + "\n", "utf-8")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert f"{path}:3: lists and mappings nested more than" in str(info.value)


def test_modest_aliases_still_work(tmp_path: Path) -> None:
    """A DBA may share a value with & and *: a few aliases of small values are fine."""
    path = tmp_path / "movimento.yaml"
    make_node(tmp_path)
    text = (tmp_path / MOVIMENTO).read_text("utf-8")
    text = text.replace(
        '    columns:\n      store_id: "{store_id}"\n      register_id: "{register_id}"\n'
        "    deletes: ignore\n    closing:",
        '    columns: &node_columns\n      store_id: "{store_id}"\n'
        '      register_id: "{register_id}"\n    deletes: ignore\n    closing:',
    ).replace(
        '    columns:\n      store_id: "{store_id}"\n      register_id: "{register_id}"\n'
        "    depends_on",
        "    columns: *node_columns\n    depends_on",
    )
    assert text.count("*node_columns") == 1
    path.write_text(text, "utf-8")
    mapping = load_mapping(path)
    assert [t.source for t in mapping.tables] == ["sale", "sale_item"]
    assert load_yaml(path).data["tables"][1]["columns"] == {
        "store_id": "{store_id}",
        "register_id": "{register_id}",
    }


# ---- PostgreSQL sessions: the database's own settings never change a value ------------------

VALUES_DDL = """
CREATE TABLE valor (
    id integer PRIMARY KEY,
    dia date,
    hora timestamp,
    instante timestamptz,
    prazo interval,
    fator float8,
    fator4 float4,
    dados bytea
)"""
VALUES_ROWS = """
INSERT INTO valor VALUES
 (1, '2024-02-01', '2024-02-01 08:30:00.25', '2024-02-01 08:30:00.25+00',
  '-1 day -02:03:04', 0.1::float8 + 0.2::float8, 0.1::float4, '\\x00ff27275c0a'::bytea),
 (2, '2024-12-25', '2024-12-25 23:59:59.999999', '2024-12-25 23:59:59.999999-03',
  '1 day -02:00:00', 1e-310, 3.4028235e38::float4, '\\x'::bytea),
 (3, '2024-03-04', '2024-03-04 00:00:00', '2024-03-04 00:00:00+05:30',
  '1 year 2 mons -3 days 04:05:06.789', 2.718281828459045, 16777217, '\\x5c5c00'::bytea),
 (4, '0044-03-15 BC', '1999-12-31 23:59:59', '2038-01-19 03:14:08+00',
  '-3 mons +1 day', -0.0, 'NaN', NULL),
 (5, NULL, NULL, NULL, NULL, 'Infinity', '-Infinity', '\\x'::bytea)
"""
VALUES_MAPPING = """\
group: valores
direction: register_to_server
tables:
  - source: valor
    key: [id]
"""
# The text of every value in one fixed session, so nothing is left to a driver's parsing.
PINNED = "-c DateStyle=ISO,YMD -c IntervalStyle=postgres -c extra_float_digits=3 -c TimeZone=UTC"


def text_rows(url: str) -> list[tuple[str | None, ...]]:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, options=PINNED) as conn:
        return [
            tuple(r)
            for r in conn.execute(
                "SELECT id::text, dia::text, hora::text, instante::text, prazo::text, "
                "fator::text, fator4::text, encode(dados, 'hex') FROM valor ORDER BY id"
            )
        ]


def hostile_settings(url: str, datestyle: str, intervalstyle: str) -> None:
    name = url.rpartition("/")[2]
    execute(
        url,
        f"ALTER DATABASE \"{name}\" SET DateStyle = '{datestyle}'",
        f"ALTER DATABASE \"{name}\" SET IntervalStyle = '{intervalstyle}'",
        f'ALTER DATABASE "{name}" SET extra_float_digits = 0',
        f"ALTER DATABASE \"{name}\" SET bytea_output = 'escape'",
        f"ALTER DATABASE \"{name}\" SET TimeZone = 'America/Sao_Paulo'",
    )


@pytest.mark.parametrize(
    "styles",
    [
        (("SQL, DMY", "sql_standard"), ("SQL, DMY", "sql_standard")),
        (("SQL, DMY", "sql_standard"), ("Postgres, MDY", "postgres_verbose")),
        (("German", "iso_8601"), ("SQL, MDY", "sql_standard")),
    ],
    ids=["same-everywhere", "dmy-to-mdy", "german-to-mdy"],
)
def test_database_settings_do_not_change_replicated_values(
    pg_database: Callable[[], str], tmp_path: Path, styles: tuple[tuple[str, str], ...]
) -> None:
    source, target = pg_database(), pg_database()
    for url, (datestyle, intervalstyle) in zip((source, target), styles, strict=True):
        execute(url, VALUES_DDL)
        hostile_settings(url, datestyle, intervalstyle)  # for sessions opened from now on
    execute(source, VALUES_ROWS)
    expected = text_rows(source)
    assert expected[0][1:3] == ("2024-02-01", "2024-02-01 08:30:00.25")
    assert expected[0][4:6] == ("-1 days -02:03:04", "0.30000000000000004")

    node = Node(
        write_node(tmp_path, server=target, register=source, mappings={"v": VALUES_MAPPING})
    )
    try:
        node.setup()
        assert moved(node.sync()) == 5
        assert text_rows(target) == expected

        execute(source, "UPDATE valor SET prazo = prazo - interval '1 day', fator = fator / 3")
        assert moved(node.sync()) == 5
        assert text_rows(target) == text_rows(source)
    finally:
        node.close()


# ---- table names that break naive SQL templates ----------------------------------------------

ODD_NAMES = ["weird$body$name", "pedido de venção", "order"]
ODD_MAPPING = """\
group: estranhos
direction: register_to_server
tables:
  - source: weird$body$name
    key: [$body$]
  - source: pedido de venção
    key: [número]
  - source: order
    key: [select]
"""


def test_odd_table_names_are_tracked_and_replicated(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    source, target = pg_database(), pg_database()
    keys = {"weird$body$name": "$body$", "pedido de venção": "número", "order": "select"}
    for url in (source, target):
        execute(
            url,
            *(
                f'CREATE TABLE "{t}" ("{k}" integer PRIMARY KEY, "$x$ body" text)'
                for t, k in keys.items()
            ),
        )
    node = Node(write_node(tmp_path, server=target, register=source, mappings={"e": ODD_MAPPING}))
    try:
        node.setup()
        node.setup()  # again: idempotent
        for table, key in keys.items():
            execute(
                source,
                f'INSERT INTO "{table}" ("{key}", "$x$ body") VALUES (1, $$a$body$b$$), (2, NULL)',
            )
        assert moved(node.sync()) == 6
        for table, key in keys.items():
            execute(source, f'UPDATE "{table}" SET "{key}" = 3 WHERE "{key}" = 2')  # a key change
            execute(source, f'UPDATE "{table}" SET "$x$ body" = \'ç\' WHERE "{key}" = 1')
        node.sync()
        for table in keys:
            assert rows(target, table) == rows(source, table) == [(1, "ç"), (3, None)], table
    finally:
        node.close()
    # the trigger functions carry a dollar quote that is not `$body$`
    dsn = source.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        bodies = conn.execute(
            "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'replicator'"
        ).fetchall()
    assert len(bodies) == 2 * len(ODD_NAMES)
    assert any("weird$body$name" in text for _, text in bodies)


def test_each_trigger_body_has_a_dollar_quote_of_its_own() -> None:
    """The dollar tag around a trigger body occurs nowhere else in the statement."""
    backend = PostgreSQLBackend(sa.make_url("postgresql+psycopg://nobody@127.0.0.1:9/x"), "n")
    try:
        for name in [*ODD_NAMES, "$repl_x$", "public.t$body$"]:
            functions = [
                s
                for s in backend.tracking_ddl(None, TrackedTable(name, ("$body$",), "v$body$"))
                if s.startswith("CREATE OR REPLACE FUNCTION")
            ]
            assert len(functions) == 2
            for stmt in functions:
                body = stmt.partition(" LANGUAGE plpgsql AS ")[2]
                tag = body[: body.index("$", 1) + 1]
                assert tag.startswith("$repl_") and body.endswith(tag), stmt
                assert stmt.count(tag) == 2, stmt
    finally:
        backend.dispose()
