"""What an operator meets first: the demo folder, exit codes of `status`, unreachable servers
and mistyped SQLite paths, missing grants, a full log disk, `--max-batches 0`, piped output
and `--json`. Real files, real PostgreSQL, the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import execute
from support import ITEM_DDL, ITEMS, rows, write_node

from replicator.cli import cli

PRODUCTS = """\
group: produtos
direction: server_to_register
tables:
  - source: prod
    key: [id]
"""
PROD_DDL = "CREATE TABLE prod (id integer PRIMARY KEY, name varchar(40))"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a real process, standard output and error piped (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "replicator.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sqlite_node(tmp_path: Path, extra: str = "") -> Path:
    """A server and a register on SQLite files, with the `itens` group's table on both."""
    server, register = f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 'r.db'}"
    execute(server, ITEM_DDL)
    execute(register, ITEM_DDL)
    return write_node(tmp_path, server, register, {"itens": ITEMS}, extra)


# --- 1. demo --dir ---------------------------------------------------------------------------
def test_demo_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "vendas.db").write_bytes(b"the shop's own database")
    (tmp_path / "notas.txt").write_text("keep me", "utf-8")
    result = invoke("demo", "--dir", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert f"FAILED: {tmp_path} is not empty;" in result.stderr
    assert "pass --force to replace the demo store there" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notas.txt", "vendas.db"]

    result = invoke("demo", "--dir", str(tmp_path), "--force")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "vendas.db").read_bytes() == b"the shop's own database"
    assert (tmp_path / "notas.txt").read_text("utf-8") == "keep me"
    assert len(rows(f"sqlite:///{tmp_path / 'server.db'}", "sale")) == 10

    # again over the demo store: replaced, not added to
    result = invoke("demo", "--dir", str(tmp_path), "--force", "--registers", "1")
    assert result.exit_code == 0, result.output
    assert len(rows(f"sqlite:///{tmp_path / 'server.db'}", "sale")) == 5
    assert not (tmp_path / "caixa2.db").exists()
    assert (tmp_path / "vendas.db").exists()


def test_demo_builds_in_a_new_or_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for where in (tmp_path / "empty", tmp_path / "new"):
        result = invoke("demo", "--dir", str(where), "--registers", "1")
        assert result.exit_code == 0, result.output


# --- 2. status exit codes ----------------------------------------------------------------------
def test_status_fails_when_a_database_is_unreachable(tmp_path: Path) -> None:
    register = f"sqlite:///{tmp_path / 'r.db'}"
    execute(register, ITEM_DDL)
    port = closed_port()
    config = write_node(
        tmp_path, f"postgresql+psycopg://postgres@127.0.0.1:{port}/loja", register, {"itens": ITEMS}
    )
    result = invoke("-c", str(config), "status")
    assert result.exit_code == 4, result.output
    assert "itens:caixa->server" in result.stdout  # the table is still printed
    assert "FAILED: job itens:caixa->server: database 'server'" in result.stderr
    assert f"127.0.0.1:{port}/loja): cannot connect:" in result.stderr

    result = invoke("-c", str(config), "status", "--json")
    assert result.exit_code == 4, result.output
    [status] = json.loads(result.stdout)
    assert status["job"] == "itens:caixa->server" and status["error"]


def test_status_tries_an_unreachable_database_once(tmp_path: Path) -> None:
    """Several jobs on a server that cannot be reached: the first waits for the driver, the
    others say at once that it was not reached (a stalled link would cost a connect timeout
    per job, and `status` is what support runs while the store waits)."""
    register = f"sqlite:///{tmp_path / 'r.db'}"
    execute(register, ITEM_DDL, "CREATE TABLE produto (id integer PRIMARY KEY, nome text)")
    catalog = (
        "group: catalogo\ndirection: register_to_server\n"
        "tables:\n  - source: produto\n    key: [id]\n"
    )
    port = closed_port()
    config = write_node(
        tmp_path,
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/loja",
        register,
        {"itens": ITEMS, "catalogo": catalog},
    )
    result = invoke("-c", str(config), "status", "--json")
    assert result.exit_code == 4, result.output
    errors = {s["job"]: s["error"] for s in json.loads(result.stdout)}
    assert len(errors) == 2 and all(errors.values()), errors
    assert sum(e.startswith("server not reached: ") for e in errors.values()) == 1, errors


def test_status_fails_when_setup_was_not_run(tmp_path: Path) -> None:
    config = sqlite_node(tmp_path)
    result = invoke("-c", str(config), "status")
    assert result.exit_code == 3, result.output
    assert "itens:caixa->server" in result.stdout
    assert "run `replicator setup`" in result.stderr
    assert invoke("-c", str(config), "setup").exit_code == 0
    result = invoke("-c", str(config), "status")
    assert result.exit_code == 0, result.output


# --- 3. unreachable servers, mistyped SQLite paths -----------------------------------------------
def test_setup_names_a_server_it_cannot_reach(pg_admin: str, tmp_path: Path) -> None:
    register = f"sqlite:///{tmp_path / 'r.db'}"
    execute(register, ITEM_DDL)
    port = closed_port()
    missing = f"repl_missing_{uuid.uuid4().hex[:8]}"
    for url, reason in (
        (f"postgresql+psycopg://postgres@127.0.0.1:{port}/loja", "Connection refused"),
        (f"postgresql+psycopg://postgres@127.0.0.1:5432/{missing}", "does not exist"),
    ):
        config = write_node(tmp_path, url, register, {"itens": ITEMS})
        text = config.read_text("utf-8").replace(
            "[databases.server]", '[databases.server]\npassword_env = "REPL_OP_PASSWORD"'
        )
        config.write_text(text, "utf-8")
        proc = process("-c", str(config), "setup", env={"REPL_OP_PASSWORD": "Pa55-w0rd"})
        assert proc.returncode == 4, proc.stderr
        assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
        assert "Pa55-w0rd" not in proc.stdout + proc.stderr
        [failed] = [line for line in proc.stderr.splitlines() if line.startswith("FAILED:")]
        masked = url.replace("postgres@", "postgres:***@")  # a password is set: shown masked
        assert failed.startswith(f"FAILED: database 'server' ({masked}): cannot connect: "), failed
        assert reason in failed
        assert failed.endswith(
            "; check that the server runs and the URL (host, port, database name)"
        )


def test_a_mistyped_sqlite_path_is_refused_not_created(tmp_path: Path) -> None:
    server = f"sqlite:///{tmp_path / 's.db'}"
    execute(server, ITEM_DDL)
    typo = tmp_path / "caixa.db"
    config = write_node(tmp_path, server, "sqlite:///caixa.db", {"itens": ITEMS})
    expected = (
        f"FAILED: database 'caixa': SQLite file {typo} does not exist; check the path in "
        f"{config} (setup creates it)"
    )
    for command in (["check"], ["sync"], ["status"], ["status", "--json"], ["check", "--json"]):
        result = invoke("-c", str(config), *command)
        assert result.exit_code == 2, (command, result.output)
        assert expected in result.stderr, result.stderr
        assert not typo.exists(), f"{command} created {typo}"
    result = invoke("-c", str(config), "setup", "--print")
    assert result.exit_code == 0, result.output
    assert not typo.exists()


# --- 4. grants ---------------------------------------------------------------------------------
def test_check_names_missing_grants(
    pg_admin: str, pg_database: Callable[[], str], tmp_path: Path
) -> None:
    url = pg_database()
    register = f"sqlite:///{tmp_path / 'r.db'}"
    execute(url, ITEM_DDL, PROD_DDL)
    execute(register, ITEM_DDL, PROD_DDL)
    mappings = {"itens": ITEMS, "produtos": PRODUCTS}
    admin = write_node(tmp_path / "admin", url, register, mappings)
    assert invoke("-c", str(admin), "setup").exit_code == 0
    role, database = f"repl_op_{uuid.uuid4().hex[:8]}", url.rsplit("/", 1)[1]
    execute(
        url, f"CREATE ROLE {role} LOGIN", f"REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC"
    )
    try:
        config = write_node(
            tmp_path / "op", url.replace("postgres@", f"{role}@"), register, mappings
        )
        result = invoke("-c", str(config), "check")
        assert result.exit_code == 3, result.output
        assert "control tables" not in result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
        assert all(f"role '{role}'" in line for line in errors), errors
        grants = re.findall(r"GRANT [^;]+;", result.stderr)
        assert len(grants) == len(set(grants)) == len(errors)  # one statement per problem
        assert {
            f"GRANT TEMPORARY ON DATABASE {database} TO {role};",
            f"GRANT USAGE ON SCHEMA replicator TO {role};",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON public.item TO {role};",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON replicator.state TO {role};",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON replicator.quarantine TO {role};",
            f"GRANT USAGE ON SEQUENCE replicator.quarantine_id_seq TO {role};",
            f"GRANT SELECT ON public.prod TO {role};",
            f"GRANT SELECT, DELETE ON replicator.tombstone TO {role};",
        } <= set(grants), result.stderr
        assert "on table public.item (mapped target table)" in result.stderr

        # the statements it prints are the ones needed: run them, and the role can work
        execute(url, *[g.rstrip(";") for g in grants])
        result = invoke("-c", str(config), "check")
        assert result.exit_code == 0, result.output
        execute(register, "INSERT INTO item (id, name, qty) VALUES (1, 'sold', 2)")
        execute(url, "INSERT INTO prod (id, name) VALUES (7, 'cafe')")
        result = invoke("-c", str(config), "sync")
        assert result.exit_code == 0, result.output
        assert rows(url, "item") == [(1, "sold", 2)]
        assert rows(register, "prod") == [(7, "cafe")]
    finally:
        execute(url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


# --- 5. a full log disk ------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_log_disk_is_reported_once(tmp_path: Path) -> None:
    """A log folder that cannot be written (here a device, not a folder; test_logs.py fills a
    disk for real) is reported once, and the command does its work with its lines on stderr."""
    config = sqlite_node(tmp_path, extra='\n[log]\nlevel = "INFO"\ndir = "/dev/full"\n')
    proc = process("-c", str(config), "setup")
    assert proc.returncode == 0, proc.stderr
    message = "replicator: cannot write the log folder /dev/full"
    assert proc.stderr.count(message) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Logging error" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert proc.stderr.count("tracking installed on") == 2  # the log lines still go to stderr


# --- 6. --max-batches 0 ------------------------------------------------------------------------
def test_sync_refuses_zero_batches(tmp_path: Path) -> None:
    config = sqlite_node(tmp_path)
    assert invoke("-c", str(config), "setup").exit_code == 0
    execute(f"sqlite:///{tmp_path / 'r.db'}", "INSERT INTO item (id, name, qty) VALUES (1, 'a', 1)")
    result = invoke("-c", str(config), "sync", "--max-batches", "0")
    assert result.exit_code == 2, result.output
    assert "--max-batches" in result.stderr and "0 is not in the range x>=1" in result.stderr
    result = invoke("-c", str(config), "sync", "--max-batches", "1")
    assert result.exit_code == 0, result.output
    assert rows(f"sqlite:///{tmp_path / 's.db'}", "item") == [(1, "a", 1)]


# --- 7. piped output, --json -------------------------------------------------------------------
def test_piped_tables_keep_whole_rows(tmp_path: Path) -> None:
    config = sqlite_node(tmp_path)
    long = "loja-0001-rua-das-flores-centro-sao-paulo-caixa-numero-dois-balcao-principal"
    text = config.read_text("utf-8")
    text = text.replace("[databases.caixa]", f'[databases.caixa]\nnode = "{long}"')
    config.write_text(text.replace("[databases.server]", '[databases.server]\nnode = "matriz"'))
    job = f"itens:{long}->matriz"
    assert len(job) > 80
    assert invoke("-c", str(config), "setup").exit_code == 0
    execute(f"sqlite:///{tmp_path / 'r.db'}", "INSERT INTO item (id, name, qty) VALUES (1, 'a', 1)")
    for command in ("sync", "status"):
        proc = process("-c", str(config), command, env={"COLUMNS": "80"})
        assert proc.returncode == 0, proc.stderr
        lines = [line for line in proc.stdout.splitlines() if job in line]
        assert lines, proc.stdout
        assert " item " in lines[0] and "…" not in proc.stdout


def test_json_output(tmp_path: Path) -> None:
    config = sqlite_node(tmp_path)
    result = invoke("-c", str(config), "setup", "--print", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)["databases"]
    assert [d["database"] for d in printed] == ["server", "caixa"]
    assert any("CREATE TRIGGER" in s for s in printed[1]["statements"])

    result = invoke("-c", str(config), "setup", "--json")
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)["databases"]
    assert [(d["database"], d["installed"]) for d in done] == [("server", True), ("caixa", True)]

    result = invoke("-c", str(config), "check", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["valid"] is True and report["errors"] == [] and report["ok"]
    assert isinstance(report["warnings"], list)

    execute(
        f"sqlite:///{tmp_path / 'r.db'}",
        "INSERT INTO item (id, name, qty) VALUES (1, 'a', 1), (2, 'b', 2)",
    )
    result = invoke("-c", str(config), "sync", "--json")
    assert result.exit_code == 0, result.output
    [job] = json.loads(result.stdout)["jobs"]
    assert job["job"] == "itens:caixa->server"
    assert job["tables"]["item"]["rows"] == 2 and job["rows"] == 2
    assert job["skipped"] is None and job["error"] is None

    # failures keep their exit codes, and stdout stays one JSON document
    execute(f"sqlite:///{tmp_path / 's.db'}", "DROP TABLE item")
    result = invoke("-c", str(config), "check", "--json")
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert any("target table 'item' does not exist" in e for e in report["errors"])
    result = invoke("-c", str(config), "sync", "--json")
    assert result.exit_code != 0
    [job] = json.loads(result.stdout)["jobs"]
    assert "does not exist" in job["error"]


def test_check_reports_every_table_of_a_job_not_only_the_first_broken_one(
    tmp_path: Path,
) -> None:
    """One table of the group has no tracking yet (added to the mapping after setup), another
    maps a column that does not exist: `check` names both problems, each at its table."""
    register, server = f"sqlite:///{tmp_path / 'r.db'}", f"sqlite:///{tmp_path / 's.db'}"
    for url in (register, server):
        execute(url, ITEM_DDL, "CREATE TABLE log_caixa (id integer PRIMARY KEY, msg text)")
    one = "group: itens\ndirection: register_to_server\ntables:\n"
    item = "  - source: item\n    key: [id]\n    columns:\n      name: nome_errado\n"
    log = "  - source: log_caixa\n    key: [id]\n"
    config = write_node(
        tmp_path, server, register, {"itens": one + "  - source: item\n    key: [id]\n"}
    )
    assert invoke("-c", str(config), "setup").exit_code == 0
    (tmp_path / "mappings" / "itens.yaml").write_text(one + item + log, encoding="utf-8")
    result = invoke("-c", str(config), "check")
    assert result.exit_code == 3, result.output
    assert "'nome_errado' is not a column of source table 'item'" in result.output
    assert "log_caixa" in result.output and "replicator setup" in result.output
