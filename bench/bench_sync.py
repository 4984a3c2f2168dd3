"""Throughput of one sync against baselines measured in the same run.

    python bench/bench_sync.py [--rows 200000] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Creates throw-away databases on the PostgreSQL server, loads a sale_item-like table, and
prints rows/s and ratios against raw COPY (the ceiling for writing) in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from replicator.config import load_settings
from replicator.sync import Databases, run_jobs
from replicator.tracking import install

DDL = """CREATE TABLE sale_item (
    sale_id integer NOT NULL, line_no integer NOT NULL, product_id integer NOT NULL,
    quantity numeric(12,3) NOT NULL, unit_price numeric(12,2) NOT NULL,
    total numeric(12,2) NOT NULL, sold_at timestamptz NOT NULL, note text,
    PRIMARY KEY (sale_id, line_no))"""
FILL = """INSERT INTO sale_item SELECT g / 4, g %% 4, 1 + g %% 5000, (g %% 7) + 0.5,
    1.99 + g %% 100, ((g %% 7) + 0.5) * (1.99 + g %% 100), now() - (g || ' s')::interval,
    CASE WHEN g %% 3 = 0 THEN 'promoção ç' END FROM generate_series(0, %s - 1) g"""
MAPPING = """\
group: movimento
direction: register_to_server
tables:
  - source: sale_item
    key: [sale_id, line_no]
"""


@contextmanager
def databases(admin: str, count: int) -> Iterator[list[str]]:
    names = [f"repl_bench_{uuid.uuid4().hex[:8]}" for _ in range(count)]
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    try:
        yield [f"{base}/{name}" for name in names]
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def raw_copy(source: str, target: str) -> float:
    """COPY the table out (binary) and into an empty table: the floor for moving rows."""
    with psycopg.connect(target) as t:
        t.execute("TRUNCATE sale_item")
    start = time.perf_counter()
    with (
        psycopg.connect(source) as s,
        psycopg.connect(target) as t,
        s.cursor().copy("COPY sale_item TO STDOUT (FORMAT binary)") as out,
        t.cursor().copy("COPY sale_item FROM STDIN (FORMAT binary)") as into,
    ):
        for block in out:
            into.write(block)
    elapsed = time.perf_counter() - start
    with psycopg.connect(target) as t:
        t.execute("TRUNCATE sale_item")
    return elapsed


def node(directory: Path, server: str, register: str) -> Path:
    (directory / "mappings").mkdir()
    (directory / "mappings" / "movimento.yaml").write_text(MAPPING, "utf-8")
    config = directory / "replicator.toml"
    sa_url = lambda u: u.replace("postgresql://", "postgresql+psycopg://")  # noqa: E731
    config.write_text(
        textwrap.dedent(f"""\
        mappings = "mappings"
        [node]
        name = "bench"
        [databases.server]
        role = "server"
        url = "{sa_url(server)}"
        [databases.caixa]
        role = "register"
        url = "{sa_url(register)}"
        [log]
        level = "WARNING"
        """),
        "utf-8",
    )
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    n = args.rows
    from replicator.log import setup_logging

    setup_logging("WARNING")
    with databases(args.pg, 2) as (source, target), tempfile.TemporaryDirectory() as tmp:
        for url in (source, target):
            with psycopg.connect(url) as c:
                c.execute(DDL)
        with psycopg.connect(source) as c:
            c.execute(FILL % n)
        copy_s = statistics.median(raw_copy(source, target) for _ in range(3))

        settings = load_settings(node(Path(tmp), server=target, register=source))
        dbs = Databases(settings)
        install(settings, dbs)
        jobs = settings.jobs()
        first = timed(lambda: run_jobs(settings, jobs, dbs))
        with psycopg.connect(source) as c:
            c.execute("UPDATE sale_item SET quantity = quantity + 1 WHERE sale_id % 2 = 0")
            changed = c.execute("SELECT count(*) FROM sale_item WHERE sale_id % 2 = 0").fetchone()[
                0
            ]  # type: ignore[index]
        update = timed(lambda: run_jobs(settings, jobs, dbs))
        idle = statistics.median(timed(lambda: run_jobs(settings, jobs, dbs)) for _ in range(20))
        with psycopg.connect(source) as s, psycopg.connect(target) as t:
            q = (
                "SELECT md5(string_agg(t::text, ',' ORDER BY sale_id, line_no)) FROM "
                "(SELECT sale_id, line_no, product_id, quantity, unit_price, total, sold_at, "
                "note FROM sale_item) t"
            )
            assert s.execute(q).fetchone() == t.execute(q).fetchone(), "sides differ!"
        dbs.close()

    rate = lambda rows, s: f"{rows / s:>10,.0f} rows/s"  # noqa: E731
    print(f"PostgreSQL -> PostgreSQL, {n:,} rows ({changed:,} updated)")
    print(f"  raw COPY out+in (baseline)    {rate(n, copy_s)}   1.00x")
    print(f"  replicator initial sync       {rate(n, first)}   {copy_s / first:.2f}x of COPY")
    print(
        f"  replicator update sync        {rate(changed, update)}   "
        f"{(copy_s / n) / (update / changed):.2f}x of COPY"
    )
    print(f"  idle cycle (nothing to do)    {idle * 1000:>10.1f} ms  (median of 20)")


if __name__ == "__main__":
    main()
