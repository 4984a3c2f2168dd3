"""Peer: the same incremental job done by dlt (PyPI `dlt`): its sql_database source reading
the register's sale_item table with an incremental cursor on the version column
(`repl_version`), the pyarrow backend, a postgres destination, `merge` on the key (no
duplicates, like ours). Both move the same N rows PostgreSQL -> PostgreSQL into empty tables,
then N/10 new rows incrementally, in the same run. Only in the full run (`pip install
"dlt[postgres]" pyarrow`); skipped with the reason when dlt is not installed.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    KEY,
    SELECT,
    Cluster,
    Figure,
    Node,
    Outcome,
    checksum,
    fill_pg,
    node_config,
    pg_ddl,
    pg_rows,
    sa_url,
    timed,
    verify,
)
from bench.s_insert import MOVEMENT

GOAL = 5.0


def run(
    cluster: Cluster, work: Path, rows: int, repeats: int, quick: bool, args: Any = None
) -> list[Outcome]:
    out = Outcome(f"peer: dlt vs replicator, {rows:,} rows then {rows // 10:,} more, PG -> PG")
    missing = [m for m in ("dlt", "pyarrow") if importlib.util.find_spec(m) is None]
    if missing:
        out.skipped = f'{", ".join(missing)} not installed (pip install "dlt[postgres]" pyarrow)'
        return [out]
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt
    from dlt.sources.sql_database import sql_table

    source = cluster.create("peer_src")
    ours_db = cluster.create("peer_ours")
    theirs_db = cluster.create("peer_dlt")
    for url in (source, ours_db):
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(pg_ddl().encode())
    d = work / "peer"
    d.mkdir()
    more = rows // 10
    with Node(node_config(d, ours_db, source, MOVEMENT)) as node:
        node.setup()
        fill_pg(source, 0, rows, per_tx=10_000)
        with psycopg.connect(source, autocommit=True) as c:
            c.execute("VACUUM ANALYZE sale_item")
        pipeline = dlt.pipeline(
            pipeline_name="bench_peer",
            # dlt insists on a password; the server trusts local connections and ignores it
            destination=dlt.destinations.postgres(
                credentials=theirs_db.replace("postgres@", "postgres:unused@")
            ),
            dataset_name="peer",
            pipelines_dir=str(d / "dlt"),
        )

        def resource() -> Any:
            return sql_table(
                credentials=sa_url(source),
                table="sale_item",
                incremental=dlt.sources.incremental("repl_version"),
                backend="pyarrow",
                chunk_size=50_000,
            )

        def theirs() -> None:
            info = pipeline.run(resource(), write_disposition="merge", primary_key=KEY)
            info.raise_on_failed_jobs()

        first_theirs = timed(theirs)
        first_ours = timed(node.sync)
        fill_pg(source, rows, more, per_tx=10_000)
        inc_theirs = timed(theirs)
        inc_ours = timed(node.sync)
    total = rows + more
    out.add(Figure("dlt, first load (baseline)", rows / first_theirs, "rows/s", None, 1.0))
    out.rate("replicator, first sync", rows, first_ours, "dlt", first_theirs, GOAL)
    out.add(Figure("dlt, incremental", more / inc_theirs, "rows/s", None, 1.0))
    out.rate("replicator, incremental", more, inc_ours, "dlt", inc_theirs, GOAL)
    out.verified.append(
        verify(
            "replicator",
            lambda: checksum(pg_rows(source)),
            lambda: checksum(pg_rows(ours_db)),
            total,
        )
    )
    out.verified.append(
        verify(
            "dlt",
            lambda: checksum(pg_rows(source)),
            lambda: checksum(pg_rows(theirs_db, "peer.sale_item", SELECT)),
            total,
        )
    )
    out.notes.append(
        f"dlt {dlt.__version__}: sql_table(backend='pyarrow', incremental on repl_version, "
        "chunk_size 50,000), postgres destination, write_disposition merge on the key"
    )
    cluster.drop()
    return [out]
