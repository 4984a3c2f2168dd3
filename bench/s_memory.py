"""Memory: peak RSS (ru_maxrss) of one `replicator sync` process moving N new rows,
PostgreSQL -> PostgreSQL and SQLite -> PostgreSQL (and 10 N rows PG -> PG with --big).
Baseline: the same process with nothing to do (imports, connections, reflection)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    Cluster,
    Figure,
    Node,
    Outcome,
    checksum,
    fill_pg,
    fill_sqlite,
    node_config,
    pg_ddl,
    pg_digest,
    pg_rows,
    replicator,
    sqlite_file,
    sqlite_rows,
    verify,
)
from bench.s_insert import MOVEMENT

GOAL_MB = 150.0


def _sync(config: Path) -> tuple[float, float]:
    code, seconds, rss, text = replicator(config, "sync")
    if code:
        raise SystemExit(f"replicator sync failed ({code}):\n{text[-3000:]}")
    return seconds, rss


def one(cluster: Cluster, work: Path, rows: int, kind: str) -> Outcome:
    out = Outcome(f"memory, {rows:,} rows {kind} -> PostgreSQL")
    target = cluster.create(f"mem_{kind}_{rows}")
    d = work / f"{kind}_{rows}"
    d.mkdir()
    with psycopg.connect(target, autocommit=True) as c:
        c.execute(pg_ddl().encode())
    if kind == "PostgreSQL":
        source = cluster.create(f"mem_src_{rows}")
        with psycopg.connect(source, autocommit=True) as c:
            c.execute(pg_ddl().encode())
        register = source
    else:
        path = sqlite_file(d / "caixa02.db")
        register = f"sqlite:///{path}"
    config = node_config(d, target, register, MOVEMENT, level="WARNING")
    with Node(config) as node:
        node.setup()
    # rows written after setup, 100,000 per transaction (many versions, as sales do)
    if kind == "PostgreSQL":
        fill_pg(source, 0, rows, per_tx=100_000)
    else:
        fill_sqlite(path, 0, rows, per_tx=100_000)
    seconds, rss = _sync(config)
    _, idle_rss = _sync(config)
    out.add(Figure("idle `replicator sync` process (baseline)", idle_rss, "MB"))
    out.add(
        Figure(
            f"peak RSS of `replicator sync` ({seconds:.1f} s)",
            rss,
            "MB",
            goal=f"<= {GOAL_MB:.0f} MB",
            met=rss <= GOAL_MB,
        )
    )
    src: Any
    if kind == "PostgreSQL":
        src = lambda: pg_digest(source)  # noqa: E731
        dst = lambda: pg_digest(target)  # noqa: E731
    else:
        src = lambda: checksum(sqlite_rows(path))  # noqa: E731
        dst = lambda: checksum(pg_rows(target))  # noqa: E731
    out.verified.append(verify(f"memory {kind}", src, dst, rows))
    cluster.drop()
    return out


def run(
    cluster: Cluster, work: Path, rows: int, repeats: int, quick: bool, args: Any = None
) -> list[Outcome]:
    outcomes = [one(cluster, work, rows, "PostgreSQL"), one(cluster, work, rows, "SQLite")]
    if args is not None and args.big:
        outcomes.append(one(cluster, work, rows * 10, "PostgreSQL"))
    return outcomes
