"""Scale: one server service (`replicator run`, 4 workers, movement every 1 s) with R register
databases, 1,000 new sales in each; then the same with nothing to do.

The registers are SQLite files (copies of one file that `replicator setup` tracked, each given
its own identity), a stand-in for 500 register databases: 500 PostgreSQL databases on this
one cluster would need more than its max_connections = 100 at once. The server is PostgreSQL.

- converge: from the process start until the last of the R x 1,000 sales is on the server
  (goal: within one 60 s cycle);
- idle: one idle run of a job as the service measures it (from /health), and one round of
  all jobs (goal: <= 20 ms per idle job).

Ends by checking every register's 1,000 sales on the server exactly once.
"""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from bench import bench_service as svc
from bench.common import Cluster, Figure, Outcome, pct

PER = 1000
GOAL_CONVERGE = 60.0
GOAL_IDLE_MS = 20.0
WORKERS = 4


def _fill(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO sale (sale_id, total, sold_at) VALUES (?, ?, strftime('%Y-%m-%d "
            "%H:%M:%f', 'now'))",
            [(k, 1 + k % 500) for k in range(1, PER + 1)],
        )
    conn.close()


def run(
    cluster: Cluster, work: Path, rows: int, repeats: int, quick: bool, args: Any = None
) -> list[Outcome]:
    n = args.registers if args is not None else (3 if quick else 500)
    out = Outcome(f"scale: one server service, {n} SQLite registers x {PER:,} new sales")
    svc.CLUSTER = svc.Cluster(cluster.admin)
    d = work / "scale"
    d.mkdir()
    try:
        server = svc.CLUSTER.url(svc.CLUSTER.create("scale"))
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(svc.PG_SERVER_SALE)
        began = time.monotonic()
        regs = _registers(d, server, n)
        made = time.monotonic() - began
        port = svc.free_port()
        config = svc.server_config(d / "server.toml", server, regs, WORKERS, http=port)
        service = svc.Service(config, d / "run.log")
        try:
            converge = svc.wait_until(
                svc.arrived(server, n * PER), 600, "every register's sales", service
            )
            converge = time.time() - service.started
            time.sleep(2)
            idle_window = 5 if quick else 20
            first = svc.health(port)
            t0 = time.monotonic()
            secs: dict[tuple[str, object], float] = {}
            while time.monotonic() - t0 < idle_window:
                time.sleep(0.5)
                for name, j in svc.health(port).items():
                    if j["last_end"] and not j["last_rows"] and not j["running"]:
                        secs[(name, j["last_end"])] = float(str(j["last_seconds"]))
            last = svc.health(port)
            span = time.monotonic() - t0
        finally:
            service.stop()
        svc.check_store(server, n, PER)
        runs = sum(int(str(last[k]["runs"])) - int(str(first[k]["runs"])) for k in last)
        each = statistics.median(secs.values()) * 1000 if secs else float("nan")
        out.add(
            Figure(
                "converge: process start -> last sale on the server",
                converge,
                "s",
                goal=f"<= {GOAL_CONVERGE:.0f} s",
                met=converge <= GOAL_CONVERGE,
            )
        )
        out.add(
            Figure(
                "idle run of one job (median, from /health)",
                each,
                "ms",
                goal=f"<= {GOAL_IDLE_MS:.0f} ms",
                met=each <= GOAL_IDLE_MS,
            )
        )
        if secs:
            out.add(Figure("idle run of one job, p90", pct(list(secs.values()), 90) * 1000, "ms"))
        out.add(Figure("idle runs per second (all jobs)", runs / span, "runs/s"))
        out.add(
            Figure("one round of all jobs (start-to-start of a job)", span * n / max(1, runs), "s")
        )
        out.verified.append(f"verified: {n} registers x {PER:,} sales on the server exactly once")
        out.notes.append(f"registers made (file copies, own identities) in {made:.1f} s")
    finally:
        svc.CLUSTER.drop()
    return [out]


def _registers(d: Path, server: str, n: int) -> list[tuple[int, str]]:
    """n register files with the sale table and tracking (copies of one file that `replicator
    setup` tracked), each given its own identity, with PER sales each."""
    template = d / "template.db"
    with sqlite3.connect(template) as conn:
        conn.execute(svc.SQLITE_SALE)
    conn.close()
    svc.setup_or_die(svc.server_config(d / "template.toml", server, [(1, f"sqlite:///{template}")]))
    out = []
    for i in range(1, n + 1):
        path = d / f"caixa{i:03d}.db"
        shutil.copyfile(template, path)
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE replicator_incarnation SET incarnation = ?", (uuid.uuid4().hex,))
        conn.close()
        _fill(path)
        out.append((i, f"sqlite:///{path}"))
    return out
