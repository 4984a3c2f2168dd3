"""Benchmark: `replicator resync --dry-run` on PostgreSQL <-> PostgreSQL tables of ROWS rows,
identical and then with 0.1% of rows differing (spread evenly); seconds, rows/second, whole
rows and (key, hash) pairs transferred, peak RSS, and the ratio to `reladiff` on the same
tables in the same run (`pip install reladiff`; with psycopg2 it needs, it may live in another
venv: RELADIFF=/path/to/bin/reladiff). `--hash md5` forces the portable row hash (the one a
SQLite register needs) on PostgreSQL <-> PostgreSQL too. `--sqlite`: the same with the
server on PostgreSQL and a SQLite register file (reladiff has no SQLite driver: its figure is
then the PostgreSQL <-> PostgreSQL one, run on the same rows in the same run, for scale).

    .venv/bin/python bench/bench_resync.py [ROWS] [--hash md5|pg] [--sqlite] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
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
from replicator.resync_hash import HashKind

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
    name = f"bench_rs_{uuid.uuid4().hex[:8]}"
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


def fill_sqlite(path: Path, rows: int) -> None:
    """The same rows in a register file (timestamps as UTC text, booleans 0/1)."""
    with sqlite3.connect(path) as c:
        c.execute(DDL.replace("timestamptz", "datetime"))
        c.execute(
            f"""WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows})
            INSERT INTO product SELECT i, 'p' || i, i % 1000 + 0.25,
              strftime('%Y-%m-%d %H:%M:%S', '2024-01-01', '+' || i || ' seconds'), i % 2 = 0
            FROM s"""
        )


def ours(node: Node, hash_kind: HashKind | None) -> tuple[float, int, int, int]:
    started = time.perf_counter()
    result = run_resync(
        node.settings,
        node.dbs,
        select_jobs(node.settings, [], None),
        dry_run=True,
        hash_kind=hash_kind,
    )
    seconds = time.perf_counter() - started
    t = result.tables[0]
    return seconds, t.fetched, t.hashes, t.differences


def rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kilobytes on Linux


def theirs(a: str, b: str) -> tuple[float, int, float | None] | None:
    """reladiff's seconds, differing lines and peak RSS in MB (through /usr/bin/time: a
    child's own ru_maxrss also counts the parent's pages it was forked with)."""
    exe = (
        os.environ.get("RELADIFF")
        or shutil.which("reladiff")
        or str(Path(sys.executable).parent / "reladiff")
    )
    if not Path(exe).exists():
        return None
    timer = ["/usr/bin/time", "-f", "maxrss %M"] if Path("/usr/bin/time").exists() else []
    started = time.perf_counter()
    done = subprocess.run(
        [
            *timer,
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
    lines = sum(1 for line in done.stdout.splitlines() if line.startswith(("+", "-")))
    rss = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("maxrss ")]
    return seconds, lines, int(rss[-1]) / 1024 if rss else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rows", nargs="?", type=int, default=1_000_000)
    parser.add_argument("--hash", choices=["md5", "pg"], default=None)
    parser.add_argument("--sqlite", action="store_true", help="the register is a SQLite file")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case")
    args = parser.parse_args()
    rows = args.rows
    a, b = database(), database()
    try:
        fill(a, rows)
        fill(b, rows)
        with tempfile.TemporaryDirectory() as tmp:
            register = f"postgresql+psycopg://postgres@127.0.0.1/{b}"
            if args.sqlite:
                fill_sqlite(Path(tmp) / "register.db", rows)
                register = f"sqlite:///{Path(tmp) / 'register.db'}"
            node = Node(
                write_node(
                    Path(tmp),
                    f"postgresql+psycopg://postgres@127.0.0.1/{a}",
                    register,
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
                    if args.sqlite:
                        with sqlite3.connect(Path(tmp) / "register.db") as c:
                            c.execute(sql)
                for _ in range(args.repeat):
                    seconds, fetched, hashes, diffs = ours(node, args.hash)
                    other = theirs(a, b)
                    if other:
                        ratio = f"reladiff{' (PG <-> PG)' if args.sqlite else ''} "
                        ratio += f"{other[0]:.2f}s, {other[1]} differing lines: ours "
                        ratio += f"{other[0] / seconds:.2f}x faster"
                    else:
                        ratio = "reladiff not installed"
                    their_rss = f"{other[2]:.0f} MB" if other and other[2] else "-"
                    print(
                        f"{label}: {rows:,} rows in {seconds:.2f}s = {rows / seconds:,.0f} "
                        f"rows/s, {fetched:,} rows and {hashes:,} (key, hash) pairs "
                        f"transferred, {diffs} differences, peak RSS "
                        f"{rss_mb(resource.RUSAGE_SELF):.0f} MB (reladiff {their_rss}); {ratio}",
                        flush=True,
                    )
            node.close()
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            for n in (a, b):
                conn.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')


if __name__ == "__main__":
    main()
