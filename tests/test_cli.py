"""The commands as a user runs them: demo, setup --print, check, sync, status."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import execute
from support import rows, write_node

from replicator.cli import cli
from replicator.demo.run import build_store


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_demo_moves_catalog_down_and_sales_up(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "replicator.cli", "demo", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "cadastros:server->caixa1" in proc.stdout
    assert "movimento:caixa2->server" in proc.stdout
    assert "nothing new, nothing written" in proc.stdout
    server, caixa1 = f"sqlite:///{tmp_path / 'server.db'}", f"sqlite:///{tmp_path / 'caixa1.db'}"
    assert len(rows(server, "sale")) == 10
    assert len(rows(caixa1, "product")) == len(rows(server, "product")) == 40
    assert len(rows(caixa1, "price")) == 40  # only store 1's prices reach the register
    assert {
        r[3] for r in rows(server, "sale", ["store_id", "register_id", "sale_id", "status"])
    } <= {"open", "closed", "cancelled"}
    code, out = run("-c", str(tmp_path / "replicator.toml"), "status", "--json")
    assert code == 0
    status = json.loads(out)
    assert {s["pending"] for s in status} == {0}
    assert sum(s["rows_applied"] for s in status if s["table"] == "sale") == 10


@pytest.fixture
def store(tmp_path: Path) -> Path:
    config = build_store(tmp_path, registers=1)
    code, out = run("-c", str(config), "setup")
    assert code == 0, out
    return config


def test_check_accepts_the_demo_store(store: Path) -> None:
    code, out = run("-c", str(store), "check")
    assert code == 0, out
    assert "configuration is valid" in out


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text("utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), "utf-8")


def test_check_names_missing_target_column(store: Path) -> None:
    edit(store.parent / "mappings" / "movimento.yaml", "      status:\n", "      estado:\n")
    code, out = run("-c", str(store), "check")
    assert code == 3
    assert "FAILED" in out and "movimento" in out
    assert "columns.estado: no column 'estado' in target table 'sale'" in out


def test_check_names_missing_table(store: Path) -> None:
    execute(f"sqlite:///{store.parent / 'caixa1.db'}", "DROP TABLE user_login")
    code, out = run("-c", str(store), "check")
    assert code == 3
    assert "target table 'user_login' does not exist" in out


def test_check_finds_key_without_constraint_and_bad_types(
    sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    source, target = sqlite_database(), sqlite_database()
    execute(source, "CREATE TABLE t (id integer PRIMARY KEY, code varchar(10), qty integer)")
    execute(target, "CREATE TABLE t (id integer, code integer, qty integer)")
    config = write_node(
        tmp_path,
        target,
        source,
        {
            "g": """\
        group: g
        direction: register_to_server
        tables:
          - source: t
            key: [id]
        """
        },
    )
    code, out = run("-c", str(config), "setup")
    assert code == 3, "setup must not pass a mapping that check rejects"
    assert "change tracking is installed, but 1 problem(s) remain" in out
    assert "mappings/g.yaml:4 (group 'g'): table 't': target key ['id']" in out
    code, out = run("-c", str(config), "check")
    assert code == 3
    assert "target key ['id'] is not the primary key or a unique constraint" in out
    assert (
        "column 'code': source type VARCHAR(10) into target type INTEGER: non-numeric text" in out
    )


def test_check_says_when_tracking_is_missing(store: Path) -> None:
    for db in ("server", "caixa1"):
        execute(f"sqlite:///{store.parent / db}.db", "CREATE TABLE extra (id integer PRIMARY KEY)")
    edit(
        store.parent / "mappings" / "produtos.yaml",
        "tables:\n",
        "tables:\n  - source: extra\n    key: [id]\n",
    )
    code, out = run("-c", str(store), "check")
    assert code == 3
    assert "change tracking is not installed; run `replicator setup`" in out


def test_setup_print_shows_reviewable_sql(pg_database: Callable[[], str], tmp_path: Path) -> None:
    url = pg_database()
    config = write_node(
        tmp_path,
        url,
        f"sqlite:///{tmp_path / 'r.db'}",
        {
            "g": """\
        group: g
        direction: server_to_register
        tables:
          - source: Odd Name
            key: [id]
        """
        },
    )
    code, out = run("-c", str(config), "setup", "--print")
    assert code == 0, out
    assert re.search(
        r"CREATE TRIGGER replicator_stamp_odd_name_[0-9a-f]{8} "
        r'BEFORE INSERT OR UPDATE ON "Odd Name"',
        out,
    )
    assert re.search(
        r"CREATE TRIGGER replicator_del_odd_name_[0-9a-f]{8} "
        r'AFTER DELETE ON "Odd Name"',
        out,
    )
    assert "NEW.repl_version := pg_current_xact_id()::text::bigint" in out
    assert "CREATE TABLE IF NOT EXISTS replicator.state" in out
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_schema("replicator"), "--print must change nothing"
    engine.dispose()


def test_sync_without_setup_says_what_to_do(tmp_path: Path) -> None:
    config = build_store(tmp_path, registers=1)
    code, out = run("-c", str(config), "sync", "movimento")
    assert code != 0
    assert "run `replicator setup`" in out
    assert "Traceback" not in out


def test_sync_unknown_group(store: Path) -> None:
    code, out = run("-c", str(store), "sync", "vendas")
    assert code == 2
    assert "no mapping group 'vendas'" in out and "movimento" in out


def test_schema_is_json(tmp_path: Path) -> None:
    code, out = run("schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["title"] == "replicator mapping file"
    assert "tables" in schema["properties"]
