"""`replicator errors` on a real store: a PostgreSQL server and a SQLite register whose sales
meet a server that refuses one (a note too long), an item waiting for that sale, and a
customer edited on the server that the register's row does not overwrite (a conflict)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from conftest import execute
from support import Node, rows, write_node

from replicator.cli import cli
from replicator.dismissals import dismissals_of_day
from replicator.errors_cli import ROWS_HELD, errors_group
from replicator.i18n import set_language

if "errors" not in cli.commands:  # until cli.py adds the group itself
    cli.add_command(errors_group)

pytestmark = pytest.mark.postgres

MOVIMENTO = """\
group: movimento
direction: register_to_server
tables:
  - source: sale
    key: [id]
  - source: sale_item
    key: [id]
    depends_on: [sale]
  - source: customer
    key: [id]
    conflict: keep_target
"""
REGISTER_DDL = (
    "CREATE TABLE sale (id integer PRIMARY KEY, note varchar(40), total numeric(10,2))",
    "CREATE TABLE sale_item (id integer PRIMARY KEY, sale_id integer, product varchar(20))",
    "CREATE TABLE customer (id integer PRIMARY KEY, name varchar(40))",
)
SERVER_DDL = (
    "CREATE TABLE sale (id integer PRIMARY KEY, note varchar(5), total numeric(10,2))",
    "CREATE TABLE sale_item (id integer PRIMARY KEY, "
    "sale_id integer REFERENCES sale (id), product varchar(20))",
    "CREATE TABLE customer (id integer PRIMARY KEY, name varchar(40))",
)
JOB = "movimento:caixa->server"


class Store:
    def __init__(self, config: Path, server: str, register: str) -> None:
        self.config = config
        self.server = server
        self.register = register

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        base = {"LANG": "", "LC_ALL": "", "LC_MESSAGES": ""}
        return CliRunner().invoke(cli, ["-c", str(self.config), *args], env={**base, **(env or {})})

    def json(self, *args: str) -> tuple[int, Any]:
        result = self.run(*args, "--json")
        return result.exit_code, json.loads(result.stdout)

    def ids(self, *extra: str) -> dict[tuple[str, str], dict[str, Any]]:
        _, doc = self.json("errors", "list", *extra)
        assert isinstance(doc, dict)
        return {(r["table"], r["key_text"]): r for r in doc["rows"]}

    def sync(self) -> None:
        result = self.run("sync")
        assert result.exit_code == 0, result.output


@pytest.fixture
def store(pg_database: Callable[[], str], tmp_path: Path) -> Iterator[Store]:
    server, register = pg_database(), f"sqlite:///{tmp_path / 'caixa.db'}"
    execute(register, *REGISTER_DDL)
    execute(server, *SERVER_DDL, "INSERT INTO customer VALUES (1, 'Ana (edited on server)')")
    config = write_node(tmp_path, server=server, register=register, mappings={"m": MOVIMENTO})
    node = Node(config)
    node.setup()
    node.close()
    execute(
        register,
        "INSERT INTO sale (id, note, total) VALUES (1, 'ok', 10.50), "
        "(2, 'a note far too long', 99.90)",
        "INSERT INTO sale_item (id, sale_id, product) VALUES (10, 1, 'coffee'), (11, 2, 'bread')",
        "INSERT INTO customer (id, name) VALUES (1, 'Ana (register)'), (2, 'Bia')",
    )
    s = Store(config, server, register)
    s.sync()
    yield s
    set_language("en")


def test_list_shows_each_held_row_with_its_state_in_json_and_text(store: Store) -> None:
    code, doc = store.json("errors", "list")
    assert code == ROWS_HELD
    assert isinstance(doc, dict)
    found = {(r["table"], r["key_text"], r["state"]) for r in doc["rows"]}
    assert found == {
        ("sale", "id=2", "refused"),
        ("sale_item", "id=11", "waiting"),
        ("customer", "id=1", "conflict"),
    }
    for r in doc["rows"]:
        assert r["id"].startswith("server:") and r["job"] == JOB
        assert r["attempts"] >= 1 and r["message"]
        assert datetime.fromisoformat(r["first_seen"]) <= datetime.fromisoformat(r["last_seen"])
    sale = next(r for r in doc["rows"] if r["table"] == "sale")
    assert "value too long" in sale["message"]
    assert sale["data"]["note"] == "a note far too long"

    text = store.run("errors", "list")
    assert text.exit_code == ROWS_HELD
    for words in ("refused by the database", "waiting for its parent", "conflict", "id=11"):
        assert words in text.stdout
    assert "first seen" in text.stdout

    pt = store.run("errors", "list", "--lang", "pt-BR")
    assert pt.exit_code == ROWS_HELD
    for words in ("recusada pelo banco de dados", "aguardando o registro pai", "conflito"):
        assert words in pt.stdout
    assert "primeira vez" in pt.stdout
    assert "refused by the database" not in pt.stdout
    today = datetime.now(UTC)
    assert today.strftime("%d/%m/%Y") in pt.stdout  # pt-BR dates: 31/12/2026

    by_env = store.run("errors", "list", env={"LANG": "pt_BR.UTF-8"})
    assert "recusada pelo banco de dados" in by_env.stdout
    only = store.run("errors", "list", "--state", "waiting", "--json")
    assert [r["table"] for r in json.loads(only.stdout)["rows"]] == ["sale_item"]


def test_status_and_errors_agree_on_the_same_rows(store: Store) -> None:
    code, status = store.json("status")
    assert code == 7, "rows held: status says a person must look"
    assert isinstance(status, list)
    held = {s["table"]: s["quarantined"] for s in status}
    listed: dict[str, int] = {}
    for table, _key in store.ids():
        listed[table] = listed.get(table, 0) + 1
    assert held == {"sale": 1, "sale_item": 1, "customer": 1} == listed
    assert {s["table"]: s["conflicts"] for s in status}["customer"] == 1
    text = store.run("status")
    assert "customer" in text.stdout


def test_show_puts_a_conflict_next_to_the_targets_row(store: Store) -> None:
    row_id = store.ids()[("customer", "id=1")]["id"]
    code, doc = store.json("errors", "show", str(row_id))
    assert code == 0
    assert isinstance(doc, dict)
    assert doc["row"]["state"] == "conflict"
    columns = {c["column"]: c for c in doc["columns"]}
    assert columns["name"]["held"] == "Ana (register)"
    assert columns["name"]["target"] == "Ana (edited on server)"
    assert columns["name"]["differs"] and not columns["id"]["differs"]

    text = store.run("errors", "show", str(row_id))
    assert text.exit_code == 0, text.output
    assert "Ana (register)" in text.stdout and "Ana (edited on server)" in text.stdout
    assert "≠" in text.stdout and "keep_target" in text.stdout
    pt = store.run("errors", "show", str(row_id), "--lang", "pt")
    assert "linha retida" in pt.stdout and "agora em server" in pt.stdout

    waiting = store.ids()[("sale_item", "id=11")]["id"]
    text = store.run("errors", "show", str(waiting))
    assert "server has no row with this key." in text.stdout


def test_unknown_id_names_it_and_the_list_command(store: Store) -> None:
    for bad in ("server:999999", "nowhere:1", "12"):
        result = store.run("errors", "show", bad)
        assert result.exit_code == 2, result.output
        assert f"no held row {bad}" in result.stderr
        assert "replicator errors list" in result.stderr
    pt = store.run("errors", "dismiss", "server:999999", "--reason", "x", "--lang", "pt-BR")
    assert pt.exit_code == 2
    assert "nenhuma linha retida server:999999" in pt.stderr


def test_retry_sends_the_rows_again_once_the_server_is_fixed(store: Store) -> None:
    ids = store.ids()
    conflict = str(ids[("customer", "id=1")]["id"])
    refused = store.run("errors", "retry", conflict)
    assert refused.exit_code == 2
    assert "is a conflict" in refused.stderr

    still = store.run("errors", "retry", "--json")
    assert still.exit_code == ROWS_HELD, still.output
    doc = json.loads(still.stdout)
    assert doc["through"] == [] and len(doc["held"]) == 2

    execute(store.server, "ALTER TABLE sale ALTER COLUMN note TYPE varchar(40)")
    result = store.run("errors", "retry", "--lang", "pt-BR")
    assert result.exit_code == 0, result.output
    assert "2 de 2 linhas foram enviadas." in result.stdout
    assert rows(store.server, "sale") == rows(store.register, "sale")
    assert rows(store.server, "sale_item") == rows(store.register, "sale_item")
    assert set(store.ids()) == {("customer", "id=1")}
    code, _doc = store.json("errors", "list", "--state", "refused")
    assert code == 0


def test_dismissed_row_is_hidden_kept_with_its_reason_and_never_sent(store: Store) -> None:
    sale = store.ids()[("sale", "id=2")]
    result = store.run(
        "errors", "dismiss", str(sale["id"]), "--reason", "cancelled at the till", "--by", "ana"
    )
    assert result.exit_code == 0, result.output
    assert "is not sent again" in result.stdout
    assert ("sale", "id=2") not in store.ids()
    shown = store.ids("--all")[("sale", "id=2")]
    assert shown["state"] == "dismissed"
    assert shown["dismissal"]["by"] == "ana"
    assert shown["dismissal"]["reason"] == "cancelled at the till"
    text = store.run("errors", "list", "--all")
    assert "dismissed by ana: cancelled at the till" in text.stdout
    again = store.run("errors", "dismiss", str(sale["id"]), "--reason", "twice")
    assert again.exit_code == 2 and "already dismissed" in again.stderr
    retry = store.run("errors", "retry", str(sale["id"]))
    assert retry.exit_code == 2 and "is dismissed" in retry.stderr

    # the server is fixed: a retried row would now go through; the dismissed one does not
    execute(store.server, "ALTER TABLE sale ALTER COLUMN note TYPE varchar(40)")
    store.sync()
    store.run("errors", "retry")
    store.sync()
    assert [r[0] for r in rows(store.server, "sale")] == [1]
    after = store.ids("--all")[("sale", "id=2")]
    assert after["state"] == "dismissed" and after["attempts"] == sale["attempts"]

    node = Node(store.config)
    try:
        today = datetime.now(UTC).date()
        found = dismissals_of_day(node.settings, node.dbs, today, "UTC")
        assert [(d.job, d.table, d.key, d.reason, d.by) for d in found] == [
            (JOB, "sale", "id=2", "cancelled at the till", "ana")
        ]
        assert found[0].held_state == "refused" and found[0].data is not None
        yesterday = today.replace(day=today.day - 1) if today.day > 1 else None
        if yesterday is not None:
            assert dismissals_of_day(node.settings, node.dbs, yesterday, "UTC") == []
    finally:
        node.close()


def test_dismiss_in_portuguese_and_by_the_os_user(store: Store) -> None:
    conflict = store.ids()[("customer", "id=1")]
    result = store.run(
        "errors", "dismiss", str(conflict["id"]), "--reason", "cliente já corrigido",
        env={"LC_ALL": "pt_BR.UTF-8"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "descartada" in result.stdout
    shown = store.ids("--all")[("customer", "id=1")]
    assert shown["dismissal"]["by"]  # getpass.getuser()
    assert rows(store.server, "customer", ["name"], "id = 1") == [("Ana (edited on server)",)]


def test_node_lang_setting_chooses_portuguese(store: Store) -> None:
    text = store.config.read_text("utf-8")
    store.config.write_text(
        text.replace('name = "test-node"', 'name = "test-node"\nlang = "pt-BR"'), "utf-8"
    )
    result = store.run("errors", "list", env={"LANG": "en_US.UTF-8"})
    assert "recusada pelo banco de dados" in result.stdout
    english = store.run("errors", "list", "--lang", "en")
    assert "refused by the database" in english.stdout


def test_a_database_set_up_before_the_dismissal_table_says_run_setup(store: Store) -> None:
    execute(store.server, "DROP TABLE replicator.dismissal")
    sale = store.ids()[("sale", "id=2")]
    result = store.run("errors", "dismiss", str(sale["id"]), "--reason", "x")
    assert result.exit_code == 3, result.output
    assert "run `replicator setup` to add the table" in result.stderr
    assert store.ids()[("sale", "id=2")]["state"] == "refused", "nothing changed"
    assert store.run("errors", "list", "--all").exit_code == ROWS_HELD  # still readable
    setup = store.run("setup")
    assert setup.exit_code == 0, setup.output
    engine = sa.create_engine(store.server)
    try:
        with engine.connect() as conn:
            assert sa.inspect(conn).has_table("dismissal", schema="replicator")
    finally:
        engine.dispose()
    again = store.run("errors", "dismiss", str(sale["id"]), "--reason", "x")
    assert again.exit_code == 0, again.output
