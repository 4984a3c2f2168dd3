"""A server's service runs the jobs of registers that run no service of their own ("Exporta
Cadastros" and "Importa Movimento" for each of them), and several `replicator run` processes
share one server's jobs through leases in the server database."""

from __future__ import annotations

import itertools
import re
import shutil
import textwrap
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg
import sqlalchemy as sa
from conftest import execute
from support import Node, rows
from test_service import start, stop, wait_for

REGISTERS = 50
PRODUCT = "CREATE TABLE product (id integer PRIMARY KEY, name varchar(40), price numeric(10,2))"
ITEM = "CREATE TABLE item (id integer PRIMARY KEY, name varchar(40), qty integer)"
SERVER_ITEM = (
    "CREATE TABLE item (register_id integer, id integer, name varchar(40), qty integer, "
    "PRIMARY KEY (register_id, id))"
)
MAPPINGS = {
    "produtos": """\
        group: produtos
        direction: server_to_register
        tables:
          - source: product
            key: [id]
        """,
    "itens": """\
        group: itens
        direction: register_to_server
        tables:
          - source: item
            key: [id]
            target_key: [register_id, id]
            columns:
              register_id: "{register_id}"
        """,
}


def server_config(directory: Path, server: str, registers: list[str], extra: str = "") -> Path:
    (directory / "mappings").mkdir(parents=True, exist_ok=True)
    for name, text in MAPPINGS.items():
        (directory / "mappings" / f"{name}.yaml").write_text(textwrap.dedent(text), "utf-8")
    lines = [
        'mappings = "mappings"',
        "",
        "[node]",
        'name = "loja01-server"',
        "store_id = 1",
        "",
        "[databases.server]",
        'role = "server"',
        f'url = "{server}"',
    ]
    for i, url in enumerate(registers, start=1):
        lines += ["", f"[databases.caixa{i:03d}]", 'role = "register"', f'url = "{url}"']
        lines += [f"vars = {{ register_id = {i} }}"]
    for group in ("produtos", "itens"):
        lines += ["", "[[jobs]]", f'group = "{group}"', 'every = "1s"']
    lines += ["", "[service]", "workers = 4", extra]
    config = directory / "replicator.toml"
    config.write_text("\n".join(lines) + "\n", "utf-8")
    return config


def items(register: int, start_id: int, n: int) -> str:
    values = ", ".join(
        f"({i}, 'sale {register}.{i}', {i % 5})" for i in range(start_id, start_id + n)
    )
    return f"INSERT INTO item (id, name, qty) VALUES {values}"


PRODUCTS_DIGEST = (
    "SELECT md5(string_agg(id || ':' || name || ':' || price, ',' ORDER BY id)) FROM product"
)


def _scalar(url: str, sql: str) -> object:
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        return conn.execute(sql).fetchone()[0]  # type: ignore[index]


def converged(server: str, registers: list[str], sales: int) -> bool:
    """Cheap: counts and a digest computed in each database (the exact row by row
    comparison comes once, at the end)."""
    if _scalar(server, "SELECT count(*) FROM item") != sales * len(registers):
        return False
    want = _scalar(server, PRODUCTS_DIGEST)
    return all(_scalar(url, PRODUCTS_DIGEST) == want for url in registers)


def test_one_server_service_runs_fifty_registers_then_two_share_them(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    server = pg_database()
    registers = [pg_database() for _ in range(REGISTERS)]
    execute(server, PRODUCT, SERVER_ITEM)
    for url in registers:
        execute(url, PRODUCT, ITEM)
    config = server_config(tmp_path / "one", server, registers)
    node = Node(config)
    node.setup()
    node.close()
    execute(
        server,
        "INSERT INTO product (id, name, price) SELECT g, 'p' || g, g / 10.0 "
        "FROM generate_series(1, 200) g",
    )
    for i, url in enumerate(registers, start=1):
        execute(url, items(i, 1, 20))

    # --- one service for the whole store
    proc = start(config)
    try:
        wait_for(lambda: converged(server, registers, 20), 120, "every register converged")
    finally:
        stop(proc)
    for i, url in enumerate(registers, start=1):
        assert rows(server, "item", ["id", "name", "qty"], where=f"register_id = {i}") == rows(
            url, "item"
        )

    # --- two processes (two configs, as on two machines) share the same jobs
    shared = []
    for name in ("a", "b"):
        folder = tmp_path / name
        shutil.copytree(tmp_path / "one" / "mappings", folder / "mappings")
        text = config.read_text().replace("workers = 4\n", "workers = 3\nshared = true\n")
        (folder / "replicator.toml").write_text(text, "utf-8")
        shared.append(folder / "replicator.toml")
    execute(server, "UPDATE product SET price = price + 1 WHERE id % 3 = 0")
    for i, url in enumerate(registers, start=1):
        execute(url, items(i, 21, 20))
    procs = [start(c) for c in shared]
    try:
        wait_for(lambda: converged(server, registers, 40), 180, "converged by two processes")
    finally:
        for p in procs:
            stop(p)

    for i, url in enumerate(registers, start=1):
        assert rows(server, "item", ["id", "name", "qty"], where=f"register_id = {i}") == rows(
            url, "item"
        )
        assert rows(url, "product") == rows(server, "product")

    runs = {c.parent.name: _runs(c.parent / "run.log") for c in shared}
    assert all(runs.values()), "both processes ran jobs"
    by_job: dict[str, list[tuple[float, float, str]]] = {}
    for who, found in runs.items():
        for job, began, ended in found:
            by_job.setdefault(job, []).append((began, ended, who))
    assert len(by_job) == 2 * REGISTERS, "every job ran"
    for job, spans in by_job.items():
        spans.sort()
        for (_, end1, _), (start2, _, _) in itertools.pairwise(spans):
            assert start2 >= end1 - 0.01, f"{job} ran in two processes at once"
    engine = sa.create_engine(server)
    with engine.connect() as conn:
        leases = conn.execute(sa.text("SELECT job, holder, runs FROM replicator.lease")).all()
    engine.dispose()
    assert len(leases) == 2 * REGISTERS
    assert all(holder is None for _, holder, _ in leases), "stopped processes let go"


SUMMARY = re.compile(r"^(\S+ \S+) \| \S+ +\| \[job=(?P<job>[^\]]+)\] .*?(?P<secs>\d+\.\d+)s$", re.M)


def _runs(log: Path) -> list[tuple[str, float, float]]:
    """(job, start, end) of every job run in a service's log (its summary lines)."""
    out = []
    for m in SUMMARY.finditer(log.read_text()):
        if " -> " not in m.group(0):
            continue
        ended = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        out.append((m.group("job"), ended - float(m.group("secs")), ended))
    return out
