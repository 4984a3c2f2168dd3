"""Benchmark: `replicator resync --dry-run` on PostgreSQL <-> PostgreSQL tables of ROWS rows,
identical and then with 0.1% of rows differing; rows/second and rows transferred, and the
ratio to `reladiff` (if installed: `pip install reladiff`) on the same tables in the same run.

    .venv/bin/python bench/bench_resync.py [ROWS]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from support import Node, write_node

from replicator.resync import run_resync, select_jobs

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
MAPPING = """\
group: produtos
direction: server_to_register
tables:
  - source: product
    key: [product_id]
"""
DDL = (
    "CREATE TABLE product (product_id integer PRIMARY KEY, name varchar(40), "
    "price numeric(10,2), updated_at timestamptz, active boolean)"
)


def database() -> str:
    name = f"repl_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def fill(name: str, rows: int) -> None:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}", autocommit=True) as c:
        c.execute(DDL)
        c.execute(
            "INSERT INTO product SELECT i, 'p' || i, i % 1000 + 0.25, "
            "timestamptz '2024-01-01' + make_interval(secs => i), i % 2 = 0 "
            f"FROM generate_series(1, {rows}) i"
        )
        c.execute("ANALYZE product")


def ours(node: Node) -> tuple[float, int, int]:
    started = time.perf_counter()
    result = run_resync(node.settings, node.dbs, select_jobs(node.settings, [], None), dry_run=True)
    seconds = time.perf_counter() - started
    t = result.tables[0]
    return seconds, t.fetched, t.differences


def theirs(a: str, b: str) -> float | None:
    exe = shutil.which("reladiff") or str(Path(sys.executable).parent / "reladiff")
    if not Path(exe).exists():
        return None
    started = time.perf_counter()
    subprocess.run(
        [
            exe,
            f"postgresql://postgres@127.0.0.1:5432/{a}",
            "product",
            f"postgresql://postgres@127.0.0.1:5432/{b}",
            "product",
            "-k",
            "product_id",
            "-c",
            "name",
            "-c",
            "price",
            "-c",
            "updated_at",
            "-c",
            "active",
        ],
        check=False,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    a, b = database(), database()
    try:
        fill(a, rows)
        fill(b, rows)
        with tempfile.TemporaryDirectory() as tmp:
            node = Node(
                write_node(
                    Path(tmp),
                    f"postgresql+psycopg://postgres@127.0.0.1/{a}",
                    f"postgresql+psycopg://postgres@127.0.0.1/{b}",
                    {"produtos": MAPPING},
                )
            )
            node.setup()
            for label, sql in (
                ("identical", None),
                ("0.1% differ", "UPDATE product SET name = 'x' WHERE product_id % 1000 = 0"),
            ):
                if sql:
                    with psycopg.connect(
                        f"postgresql://postgres@127.0.0.1:5432/{b}", autocommit=True
                    ) as c:
                        c.execute(sql)
                seconds, fetched, diffs = ours(node)
                other = theirs(a, b)
                ratio = f"{other / seconds:.2f}x" if other else "reladiff not installed"
                print(
                    f"{label}: {rows:,} rows in {seconds:.2f}s = {rows / seconds:,.0f} rows/s, "
                    f"{fetched:,} rows transferred, {diffs} differences; "
                    f"reladiff {other and round(other, 2)}s (ours faster by {ratio})"
                )
            node.close()
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            for n in (a, b):
                conn.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')


if __name__ == "__main__":
    main()
