"""Latency and register impact: a SQLite register -> PostgreSQL server, `replicator run` with
the movement job at `every = "1s"`.

- latency: a writer commits 100 sales/s (one transaction each, plain sqlite3, 1 s busy
  timeout) for S seconds; the server's `arrived_at` (clock_timestamp() when the row is inserted)
  minus the commit time gives commit-to-server p50/p99 (one machine, one clock).
- register impact: the same paced writer's sales/s without the replicator and with it (the
  issue's measure), and a writer that commits as fast as it can for a few seconds, without
  and with `replicator run` running (the harder one: it competes for the disk and 2 cores).

Ends with every sale on the server exactly once (ids, totals, sold_at compared).
The service and its helpers are bench/bench_service.py's (one copy of them).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import bench_service as svc
from bench.common import Cluster, Figure, Outcome, median, pct

GOAL_EXTRA = 0.5
GOAL_THROUGHPUT = 0.9


class FastWriter(threading.Thread):
    """Commits sales one transaction each, as fast as it can, until stopped."""

    def __init__(self, path: Path, first_id: int) -> None:
        super().__init__(daemon=True)
        self.path, self.next_id = path, first_id
        self.committed: dict[int, float] = {}
        self.failed: list[tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None)
        try:
            while not self.halt.is_set():
                sale = self.next_id
                self.next_id += 1
                try:
                    conn.execute(
                        "INSERT INTO sale (sale_id, total, sold_at) VALUES (?, ?, ?)",
                        (
                            sale,
                            round(1 + sale * 0.37 % 500, 2),
                            datetime.now(UTC).strftime("%F %T.%f"),
                        ),
                    )
                    self.committed[sale] = time.time()
                except sqlite3.Error as exc:
                    self.failed.append((time.time(), f"sale {sale}: {exc}"))
        finally:
            conn.close()

    def stop(self) -> None:
        self.halt.set()
        self.join()


def _burst(register: Path, first: int, seconds: float) -> FastWriter:
    writer = FastWriter(register, first)
    writer.start()
    time.sleep(seconds)
    writer.stop()
    return writer


def run(cluster: Cluster, work: Path, rows: int, repeats: int, quick: bool) -> list[Outcome]:
    seconds = 5 if quick else 60
    burst = 1 if quick else 15
    repeats = 1 if quick else repeats
    svc.CLUSTER = svc.Cluster(cluster.admin)
    out = Outcome(f"latency at 100 sales/s, every = 1s; register impact ({burst} s bursts)")
    d = work / "lat"
    d.mkdir()
    try:
        server, register = svc.sqlite_store(svc.CLUSTER, d, "lat")
        config = svc.register_node(d, server, register, {"movimento": svc.MOVIMENTO})
        svc.setup_or_die(config)
        # the register alone: the paced writer's sales/s, and a writer as fast as it can
        # (median of the bursts)
        next_id = 1
        paced_alone = svc.Writer(register, rate=100, first_id=next_id)
        paced_alone.start()
        time.sleep(seconds)
        paced_alone.stop()
        next_id = paced_alone.next_id
        alone = []
        for _ in range(repeats):
            w = _burst(register, next_id, burst)
            next_id = w.next_id
            alone.append(len(w.committed) / burst)
        service = svc.Service(config, d / "run.log")
        try:
            service.wait_first_runs(1)
            paced = svc.Writer(register, rate=100, first_id=next_id)
            paced.start()
            time.sleep(seconds)
            paced.stop()
            next_id = paced.next_id
            both = []
            writers = [paced]
            for _ in range(repeats):
                w = _burst(register, next_id, burst)
                next_id = w.next_id
                writers.append(w)
                both.append(len(w.committed) / burst)
            with sqlite3.connect(register) as conn:
                total = int(conn.execute("SELECT count(*) FROM sale").fetchone()[0])
            svc.wait_until(lambda: svc.server_count(server) >= total, 120, "every sale", service)
            time.sleep(1.5)  # one more run: anything extra would show
        finally:
            service.stop()
        on_server = svc.server_sales(server)
        with sqlite3.connect(register) as conn:
            local = {r[0]: str(r[1]) for r in conn.execute("SELECT sale_id, total FROM sale")}
        if set(on_server) != set(local) or any(
            f"{float(v):.2f}" != on_server[k][1] for k, v in local.items()
        ):
            missing = len(set(local) - set(on_server))
            extra = len(set(on_server) - set(local))
            print(f"  !! sales differ: {missing} missing on the server, {extra} extra")
            raise SystemExit(1)
        lat = [on_server[k][0] - at for k, at in paced.committed.items()]
        p50, p99 = pct(lat, 50), pct(lat, 99)
        goal = 1 + GOAL_EXTRA
        out.add(Figure("commit -> server p50", p50, "s"))
        out.add(Figure("commit -> server p99", p99, "s", goal=f"<= {goal:.1f} s", met=p99 <= goal))
        paced_ratio = (len(paced.committed) / seconds) / (len(paced_alone.committed) / seconds)
        out.add(
            Figure(
                "writer at 100 sales/s alone (baseline)",
                len(paced_alone.committed) / seconds,
                "sales/s",
            )
        )
        out.add(
            Figure(
                "writer at 100 sales/s with `replicator run`",
                len(paced.committed) / seconds,
                "sales/s",
                "alone",
                paced_ratio,
                f">= {GOAL_THROUGHPUT}x",
                paced_ratio >= GOAL_THROUGHPUT,
            )
        )
        ratio = median(both) / median(alone)
        out.add(Figure("writer as fast as it can, alone (baseline)", median(alone), "sales/s"))
        out.add(
            Figure(
                "writer as fast as it can, with `replicator run`",
                median(both),
                "sales/s",
                "alone",
                ratio,
            )
        )
        failed = sum(len(w.failed) for w in [paced_alone, *writers])
        out.verified.append(
            f"verified: all {len(local):,} sales on the server exactly once, values equal; "
            f"failed writes {failed}"
        )
        out.notes.append(
            f"paced writer: {len(paced.committed):,} sales in {seconds} s; latency max "
            f"{max(lat):.3f} s"
        )
    finally:
        svc.CLUSTER.drop()
    return [out]
