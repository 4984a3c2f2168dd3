"""Benchmark: `replicator resync --dry-run` on PostgreSQL <-> PostgreSQL tables of ROWS rows,
identical and then with 0.1% of rows differing (spread evenly); seconds, rows/second, whole
rows and (key, hash) pairs transferred, peak RSS, and the ratio to `reladiff` on the same
tables in the same run (`pip install reladiff`; with psycopg2 it needs, it may live in another
venv: RELADIFF=/path/to/bin/reladiff).

    .venv/bin/python bench/bench_resync.py [ROWS]
"""

from __future__ import annotations

import os
import resource
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


def ours(node: Node) -> tuple[float, int, int, int]:
    started = time.perf_counter()
    result = run_resync(node.settings, node.dbs, select_jobs(node.settings, [], None), dry_run=True)
    seconds = time.perf_counter() - started
    t = result.tables[0]
    return seconds, t.fetched, t.hashes, t.differences


def rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kilobytes on Linux


def theirs(a: str, b: str) -> tuple[float, int] | None:
    exe = (
        os.environ.get("RELADIFF")
        or shutil.which("reladiff")
        or str(Path(sys.executable).parent / "reladiff")
    )
    if not Path(exe).exists():
        return None
    started = time.perf_counter()
    done = subprocess.run(
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
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        print(f"reladiff failed: {done.stderr.strip()[-500:]}")
        return None
    return seconds, sum(1 for line in done.stdout.splitlines() if line.startswith(("+", "-")))


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
                seconds, fetched, hashes, diffs = ours(node)
                other = theirs(a, b)
                if other:
                    ratio = f"reladiff {other[0]:.2f}s, {other[1]} differing lines: ours "
                    ratio += f"{other[0] / seconds:.2f}x faster"
                else:
                    ratio = "reladiff not installed"
                print(
                    f"{label}: {rows:,} rows in {seconds:.2f}s = {rows / seconds:,.0f} rows/s, "
                    f"{fetched:,} rows and {hashes:,} (key, hash) pairs transferred, {diffs} "
                    f"differences, peak RSS {rss_mb(resource.RUSAGE_SELF):.0f} MB "
                    f"(reladiff {rss_mb(resource.RUSAGE_CHILDREN):.0f} MB); {ratio}",
                    flush=True,
                )
            node.close()
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            for n in (a, b):
                conn.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')


if __name__ == "__main__":
    main()
