"""Idle cycle: 20 mapped tables of N rows each (PostgreSQL register -> PostgreSQL server), no
changes: the time of one cycle of the job, and per table.

Both sides hold the same N rows per table before tracking is installed (the rows carry version
1, as if replicated long ago); the job's positions say version 1 is applied, which is what a
sync leaves. Two ways of running the cycle:

- kept: one `JobRunner` for all cycles, as `replicator run` keeps its runners, connections and
  reflected tables across cycles;
- fresh: `run_jobs` per cycle in the same process (a new runner: plans built again; the open
  databases and their reflected tables are kept, like `replicator sync` run in a loop).

The scenario ends by changing one row of every table, running one more cycle, and comparing
every table on both sides.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from bench.common import (
    KEY,
    SELECT,
    Cluster,
    Figure,
    Node,
    Outcome,
    fill_pg,
    mapping,
    median,
    node_config,
    pg_ddl,
    pg_digest,
    timed,
    verify,
)

TABLES = 20
GOAL_TABLE_MS = 2.0


def tables_of(n: int) -> list[str]:
    return [f"item_{i:02d}" for i in range(n)]


def build(cluster: Cluster, rows: int, names: list[str]) -> tuple[str, str]:
    source, target = cluster.create("idle_src"), cluster.create("idle_dst")
    first = names[0]
    with psycopg.connect(source, autocommit=True) as c:
        c.execute(pg_ddl(first).encode())
        c.execute(
            f"ALTER TABLE {first} ADD COLUMN repl_version bigint DEFAULT 1, "
            "ADD COLUMN repl_origin text".encode()
        )
    fill_pg(source, 0, rows, table=first)
    with psycopg.connect(source, autocommit=True) as c:
        c.execute(f"ALTER TABLE {first} ALTER COLUMN repl_version DROP DEFAULT".encode())
        for name in names[1:]:
            c.execute(f"CREATE TABLE {name} (LIKE {first} INCLUDING ALL)".encode())
            c.execute(f"INSERT INTO {name} SELECT * FROM {first}".encode())
    with psycopg.connect(source) as s, psycopg.connect(target) as t:
        for name in names:
            t.execute(pg_ddl(name).encode())
            with (
                s.cursor().copy(
                    f"COPY (SELECT {SELECT} FROM {first}) TO STDOUT (FORMAT binary)".encode()
                ) as out,
                t.cursor().copy(
                    f"COPY {name} ({SELECT}) FROM STDIN (FORMAT binary)".encode()
                ) as into,
            ):
                for block in out:
                    into.write(block)
            t.commit()
    for url in (source, target):
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("VACUUM ANALYZE")
    return source, target


def caught_up(node: Node, target: str) -> None:
    """The positions a sync leaves once version 1 is applied, for every table."""
    job = node.jobs[0]
    labels = [t.label for t in node.settings.groups[job.group].tables]
    with psycopg.connect(target, autocommit=True) as c:
        for label in labels:
            c.execute(
                "INSERT INTO replicator.state (job, table_name, version, tomb_version, tomb_id, "
                "rows_applied, deletes_applied) VALUES (%s, %s, 1, 0, 0, 0, 0)",
                (job.name, label),
            )


def run(cluster: Cluster, work: Path, rows: int, repeats: int, quick: bool) -> list[Outcome]:
    from replicator.sync import JobRunner, run_jobs

    names = tables_of(TABLES)
    out = Outcome(f"idle cycle, {TABLES} tables of {rows:,} rows, PG -> PG")
    source, target = build(cluster, rows, names)
    d = work / "idle"
    d.mkdir()
    group = {"movimento": mapping("movimento", "register_to_server", names)}
    cycles = 10 if quick else 30
    with Node(node_config(d, target, source, group)) as node:
        node.setup()
        caught_up(node, target)
        job = node.jobs[0]
        runner = JobRunner(node.settings, node.dbs, job)
        runner.report = False
        results = [runner.run() for _ in range(3)]  # warm: connections, reflection
        kept = []
        for _ in range(cycles):
            seconds = timed(lambda: results.append(runner.run()))
            kept.append(seconds)
        fresh = [
            timed(lambda: results.extend(run_jobs(node.settings, node.jobs, node.dbs)))
            for _ in range(cycles)
        ]
        written = sum(r.rows for r in results)
        errors = [str(r.error) for r in results if r.error]
        if written or errors:
            raise SystemExit(f"idle cycles wrote {written} rows, errors: {errors[:3]}")
        # one live cycle: one changed row per table arrives
        with psycopg.connect(source, autocommit=True) as c:
            for name in names:
                where = " AND ".join(f"{k} = 2" for k in KEY)
                c.execute(f"UPDATE {name} SET note = 'mudou' WHERE {where}".encode())
        live = runner.run()
        if live.rows != TABLES or live.error:
            raise SystemExit(f"the cycle after the change wrote {live.rows} rows: {live.error}")
    per_table = median(kept) * 1000 / TABLES
    out.add(Figure("kept runner (`run`): one cycle", median(kept) * 1000, "ms"))
    out.add(
        Figure(
            "kept runner (`run`): per table",
            per_table,
            "ms",
            goal=f"<= {GOAL_TABLE_MS:.0f} ms",
            met=per_table <= GOAL_TABLE_MS,
        )
    )
    out.add(Figure("fresh runner (`sync` loop): one cycle", median(fresh) * 1000, "ms"))
    for name in names:
        out.verified.append(
            verify(
                f"idle {name}",
                lambda n=name: pg_digest(source, n),  # type: ignore[misc]
                lambda n=name: pg_digest(target, n),  # type: ignore[misc]
                rows,
            )
        )
    out.verified = [f"verified: {TABLES} tables of {rows:,} rows equal; idle cycles wrote 0 rows"]
    out.notes.append(
        f"{cycles} cycles each; kept p90 {sorted(kept)[int(cycles * 0.9)] * 1000:.1f} ms"
    )
    cluster.drop(source)
    cluster.drop(target)
    return [out]
