"""The service loop (`replicator run`) measured through the command line on real databases.

    .venv/bin/python bench/bench_service.py [--quick] [--only latency,outage,server,rss]
        [--rss-minutes N] [--registers 50,200] [--workers 4,8] [--sync-chunk 25]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Every scenario starts `<venv>/bin/replicator --config X run` (the console script next to the
Python that runs this file) as a subprocess in its own temporary folder, with TZ=UTC, and reads
its log (the console: no log folder) for the per-run summary lines. Every line printed says
what its number is; ratios are against a baseline measured in the same run.

- latency: a SQLite register (a file) -> a PostgreSQL server, one sale table in a movement
  group at `every = "1s"`. A writer thread commits 100 sales/s, one transaction each, through
  plain sqlite3 with a 1 s busy timeout, and keeps the time right after each commit. The
  server's table has `arrived_at timestamptz DEFAULT clock_timestamp()`, filled by PostgreSQL
  when the replicator inserts the row (a few ms before its batch commits). Latency per sale =
  arrived_at - commit time (one machine, one clock). Ends by comparing ids and values of the
  register, the writer's list and the server: every sale exactly once, or exit 1.
- outage: the same, with the server behind a TCP proxy (tests/proxy.py) that is cut
  for 60 s and restored, with the retry settings at their defaults (retry_after 5s,
  max_backoff 5m) and with max_backoff = "10s". Reports the time from the restore until every
  sale committed before it is on the server, and until the lag is back under the goal for good.
- server: one server database and N PostgreSQL register databases (clones of one template
  that has the table and `replicator setup`'s tracking, each given its own incarnation), the
  server's config running the movement job of every register. Baseline: `replicator sync`
  (every job once, in sequence) for 1,000 new sales per register, in processes of at most
  --sync-chunk registers one after the other: one process for the whole store keeps every
  register's pool open and runs out of connections at 50 registers (tried and reported up to
  50). Then `run` for the next 1,000 per register, cold (from the process start) and warm
  (sales written while it runs), and its idle round from /health (idle runs log no line).
- rss: `run` on a small store (one SQLite register, movement every 1 s and a catalog group
  every 5 s) with a writer at 10 sales/s and a price change every 5 s, VmRSS sampled every 10 s.

PostgreSQL databases are named bench_svc_* and dropped at the end (also after a failure).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import random
import re
import shlex
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

REPLICATOR = Path(sys.executable).parent / "replicator"
ENV = {**os.environ, "TZ": "UTC"}
PREFIX = "bench_svc_"
CLUSTER: Cluster
GOAL_EXTRA = 0.5  # the goal: p99 <= interval + 0.5 s

SUMMARY = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \| (?P<level>\S+) +\| \[job=(?P<job>[^\]]+)\] "
    r"(?P<group>\S+) (?P<source>\S+) -> (?P<target>\S+): (?P<outcome>.*?); "
    r"(?P<rows>\d+) rows [a-z]+, .*?(?P<secs>\d+\.\d+)s$",
    re.M,
)
RETRY = re.compile(r"FAILED, retrying in (\S+) \(failure (\d+) in a row\)")

SQLITE_SALE = """CREATE TABLE sale (
    sale_id INTEGER PRIMARY KEY, total NUMERIC(12,2) NOT NULL, sold_at DATETIME NOT NULL)"""
SQLITE_PRODUCT = """CREATE TABLE product (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, price NUMERIC(10,2) NOT NULL)"""
PG_REGISTER_SALE = """CREATE TABLE sale (
    sale_id integer PRIMARY KEY, total numeric(12,2) NOT NULL,
    sold_at timestamptz NOT NULL DEFAULT now())"""
PG_SERVER_SALE = """CREATE TABLE sale (
    store_id integer NOT NULL, register_id integer NOT NULL, sale_id integer NOT NULL,
    total numeric(12,2) NOT NULL, sold_at timestamptz NOT NULL,
    arrived_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (store_id, register_id, sale_id))"""
PG_PRODUCT = """CREATE TABLE product (
    id integer PRIMARY KEY, name text NOT NULL, price numeric(10,2) NOT NULL)"""
MOVIMENTO = """\
group: movimento
direction: register_to_server
tables:
  - source: sale
    key: [sale_id]
    target_key: [store_id, register_id, sale_id]
    columns:
      store_id: "{store_id}"
      register_id: "{register_id}"
"""
PRODUTOS = """\
group: produtos
direction: server_to_register
tables:
  - source: product
    key: [id]
"""


# --- the machine ----------------------------------------------------------------------------------
def machine(admin: str) -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = 0.0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) / 1024 / 1024
    with psycopg.connect(admin) as conn:
        pg = conn.execute("SELECT version()").fetchone()[0]  # type: ignore[index]
        maxconn = conn.execute("SHOW max_connections").fetchone()[0]  # type: ignore[index]
    head = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parent.parent), "log", "-1", "--format=%h"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return [
        f"CPU: {cpu}, {os.cpu_count()} cores; RAM {ram:.1f} GB; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + " at start",
        f"OS: {platform.platform()}",
        f"PostgreSQL: {pg.split(' on ')[0]} at 127.0.0.1, max_connections {maxconn}",
        f"SQLite: {sqlite3.sqlite_version} (Python's sqlite3); Python {platform.python_version()}",
        f"replicator: {REPLICATOR} (tree at commit {head or '?'} plus uncommitted work)",
    ]


def load() -> str:
    """The load averages (1, 5, 15 min): other work on this machine shows here."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- PostgreSQL helpers ---------------------------------------------------------------------------
class Cluster:
    """Creates bench_svc_* databases and drops every one of them at the end."""

    def __init__(self, admin: str) -> None:
        self.admin = admin
        self.base = admin.rsplit("/", 1)[0]
        self.created: list[str] = []
        self.tag = uuid.uuid4().hex[:6]

    def name(self, what: str) -> str:
        return f"{PREFIX}{self.tag}_{what}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def create(self, what: str, template: str | None = None) -> str:
        name = self.name(what)
        with psycopg.connect(self.admin, autocommit=True) as conn:
            extra = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{extra}')
        self.created.append(name)
        return name

    def drop(self, names: list[str] | None = None) -> None:
        todo = list(self.created if names is None else names)
        with psycopg.connect(self.admin, autocommit=True) as conn:
            for name in todo:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                if name in self.created:
                    self.created.remove(name)

    def connections(self) -> tuple[int, int]:
        """(connections of application 'replicator' to bench databases, all connections)."""
        with psycopg.connect(self.admin) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE application_name = 'replicator' "
                "AND datname LIKE %s), count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend'",
                (f"{PREFIX}{self.tag}%",),
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


def sa_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://")


class ConnectionWatch:
    """Samples the replicator's connections to the bench databases (pg_stat_activity)."""

    def __init__(self, cluster: Cluster, every: float = 0.5) -> None:
        self.cluster, self.every = cluster, every
        self.peak = 0
        self.peak_all = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(psycopg.Error):
                ours, every = self.cluster.connections()
                self.peak = max(self.peak, ours)
                self.peak_all = max(self.peak_all, every)


# --- the TCP proxy: the tests' own (tests/proxy.py), not a copy ---------------------------
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from proxy import Proxy  # noqa: E402


# --- the service process --------------------------------------------------------------------------
@dataclass
class RunLine:
    at: float  # epoch seconds of the summary line (the end of the run)
    job: str
    source: str
    outcome: str
    rows: int
    secs: float

    @property
    def began(self) -> float:
        return self.at - self.secs


class Service:
    """`replicator --config X run` as a subprocess, its console in a log file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.command = [str(REPLICATOR), "--config", str(config), "run"]
        with open(log, "ab") as out:  # the child keeps its copy
            self.started = time.time()
            self.proc = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=config.parent
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text("utf-8", errors="replace")

    def runs(self) -> list[RunLine]:
        out = []
        for m in SUMMARY.finditer(self.text()):
            at = datetime.strptime(m["at"], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
            out.append(
                RunLine(
                    at.timestamp(),
                    m["job"],
                    m["source"],
                    m["outcome"],
                    int(m["rows"]),
                    float(m["secs"]),
                )
            )
        return out

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(
                f"`replicator run` exited with {self.proc.returncode}:\n{self.text()[-3000:]}"
            )

    def wait_first_runs(self, jobs: int, timeout: float = 120) -> None:
        """Until every job has logged at least one summary line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            if len({r.job for r in self.runs()}) >= jobs:
                return
            time.sleep(0.2)
        raise SystemExit(
            f"no first run of {jobs} jobs after {timeout:.0f} s:\n{self.text()[-3000:]}"
        )

    def stop(self, timeout: float = 30) -> float:
        began = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                print(f"  !! `replicator run` did not stop within {timeout:.0f} s: killed")
        if self.proc.returncode != 0:
            print(f"  !! `replicator run` exited with {self.proc.returncode}")
        return time.monotonic() - began


def replicator(config: Path, *args: str, log: Path | None = None) -> tuple[int, float, str]:
    """One `replicator --config X ARGS` to its end: (exit code, wall seconds, output)."""
    log = log or config.parent / f"{args[0]}.log"
    with open(log, "w+b") as out:
        began = time.perf_counter()
        code = subprocess.run(
            [str(REPLICATOR), "--config", str(config), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
            cwd=config.parent,
        ).returncode
        seconds = time.perf_counter() - began
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return code, seconds, text


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


# --- a register selling ---------------------------------------------------------------------------
class Writer(threading.Thread):
    """Commits one sale every 1/rate s (one transaction each: autocommit) through plain sqlite3
    with a 1 s busy timeout; keeps the time right after each commit."""

    def __init__(self, path: Path, rate: float, first_id: int = 1) -> None:
        super().__init__(daemon=True)
        self.path, self.every, self.next_id = path, 1.0 / rate, first_id
        self.committed: dict[int, float] = {}  # sale_id -> epoch seconds after the commit
        self.failed: list[tuple[float, str]] = []  # (epoch, error) of the sales that failed
        self.longest = 0.0  # the longest INSERT+commit
        self.slow: list[tuple[float, float]] = []  # (epoch start, seconds) of writes > 0.25 s
        self.halt = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None)
        due = time.monotonic()
        try:
            while not self.halt.is_set():
                sale = self.next_id
                self.next_id += 1
                began, wall = time.monotonic(), time.time()
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
                took = time.monotonic() - began
                self.longest = max(self.longest, took)
                if took > 0.25:
                    self.slow.append((wall, took))
                due += self.every
                delay = due - time.monotonic()
                if delay > 0:
                    self.halt.wait(delay)
                else:
                    due = max(due, time.monotonic() - 0.5)  # catch up a little, never burst
        finally:
            conn.close()

    def stop(self) -> None:
        self.halt.set()
        self.join()


class PriceChanger(threading.Thread):
    """The back office: one price change every `every` seconds on the server."""

    def __init__(self, url: str, products: int, every: float) -> None:
        super().__init__(daemon=True)
        self.url, self.products, self.every = url, products, every
        self.changes = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.halt.wait(self.every):
                conn.execute(
                    "UPDATE product SET price = price + 0.01 WHERE id = %s",
                    (1 + self.changes % self.products,),
                )
                self.changes += 1

    def stop(self) -> None:
        self.halt.set()
        self.join()


# --- a register node: SQLite register, PostgreSQL server ------------------------------------------
def register_node(
    directory: Path, server_url: str, register: Path, groups: dict[str, str], extra: str = ""
) -> Path:
    (directory / "mappings").mkdir(parents=True, exist_ok=True)
    for name, text in groups.items():
        (directory / "mappings" / f"{name}.yaml").write_text(text, "utf-8")
    jobs = "".join(f'\n[[jobs]]\ngroup = "{g}"\nevery = "{e}"\n' for g, e in groups_every(groups))
    config = directory / "replicator.toml"
    config.write_text(
        textwrap.dedent(f"""\
        mappings = "mappings"

        [node]
        name = "bench-caixa02"
        store_id = 1
        register_id = 2
        timezone = "UTC"

        [databases.server]
        role = "server"
        node = "bench-server"
        url = "{sa_url(server_url)}"

        [databases.caixa02]
        role = "register"
        node = "bench-caixa02"
        url = "sqlite:///{register}"

        [log]
        level = "INFO"
        """)
        + jobs
        + extra,
        "utf-8",
    )
    return config


def groups_every(groups: dict[str, str]) -> list[tuple[str, str]]:
    return [(g, "1s" if g == "movimento" else "5s") for g in groups]


def sqlite_store(
    cluster: Cluster, directory: Path, what: str, catalog: bool = False
) -> tuple[str, Path]:
    """A server database and a register file with the tables (tracking not installed yet)."""
    server = cluster.url(cluster.create(what))
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(PG_SERVER_SALE)
        if catalog:
            conn.execute(PG_PRODUCT)
            conn.execute(
                "INSERT INTO product SELECT g, 'produto ' || g, 1 + g % 100 FROM "
                "generate_series(1, 500) g"
            )
    register = directory / "caixa02.db"
    with sqlite3.connect(register) as conn:
        conn.execute(SQLITE_SALE)
        if catalog:
            conn.execute(SQLITE_PRODUCT)
    return server, register


def setup_or_die(config: Path, *args: str) -> float:
    code, seconds, text = replicator(config, "setup", *args)
    if code:
        raise SystemExit(f"replicator setup failed ({code}):\n{text[-3000:]}")
    return seconds


def server_sales(server: str) -> dict[int, tuple[float, str, float]]:
    """sale_id -> (arrived_at epoch, total as text, sold_at epoch) on the server."""
    with psycopg.connect(server) as conn:
        rows = conn.execute(
            "SELECT sale_id, extract(epoch FROM arrived_at)::float8, total::text, "
            "extract(epoch FROM sold_at)::float8 FROM sale"
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def server_count(server: str) -> int:
    with psycopg.connect(server) as conn:
        return int(conn.execute("SELECT count(*) FROM sale").fetchone()[0])  # type: ignore[index]


def wait_until(what: Callable[[], bool], timeout: float, message: str, svc: Service) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        svc.alive()
        if what():
            return time.monotonic() - began
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f} s: {message}\n{svc.text()[-3000:]}")


def exactly_once(
    register: Path, writer: Writer, server: str
) -> dict[int, tuple[float, str, float]]:
    """Every committed sale on the server once, with its values; exit 1 otherwise."""
    on_server = server_sales(server)
    with sqlite3.connect(register) as conn:
        local = {
            r[0]: (str(r[1]), r[2])
            for r in conn.execute("SELECT sale_id, total, sold_at FROM sale")
        }
    wrote = set(writer.committed)
    problems = []
    if set(local) != wrote:
        problems.append(f"register holds {len(local)} sales, the writer committed {len(wrote)}")
    missing, extra = wrote - set(on_server), set(on_server) - wrote
    if missing or extra:
        problems.append(
            f"server holds {len(on_server)} sales, writer committed {len(wrote)}: "
            f"{len(missing)} missing (e.g. {sorted(missing)[:5]}), {len(extra)} unexpected"
        )
    differ = 0
    for sale, (total, sold_at) in local.items():
        if sale not in on_server:
            continue
        _, s_total, s_sold = on_server[sale]
        local_sold = datetime.fromisoformat(sold_at).replace(tzinfo=UTC).timestamp()
        if f"{float(total):.2f}" != s_total or abs(local_sold - s_sold) > 1e-5:
            differ += 1
    if differ:
        problems.append(f"{differ} sales differ in total or sold_at")
    if problems:
        print("  !! NOT EXACTLY ONCE:\n     " + "\n     ".join(problems))
        raise SystemExit(1)
    return on_server


def stalls(writer: Writer, runs: list[RunLine]) -> None:
    """The writer's slow and failed writes, with the runs of the service that overlapped them
    (times in seconds from the writer's first sale), and the slowest runs."""
    t0 = min(writer.committed.values(), default=time.time())

    def overlapping(at: float, took: float) -> str:
        during = [r for r in runs if r.began - 0.05 <= at + took and r.at + 0.05 >= at]
        return (
            ", ".join(
                f"{r.job.split(':')[0]} {r.began - t0:.1f}..{r.at - t0:.1f} s ({r.rows} rows)"
                for r in during
            )
            or "none"
        )

    for at, took in writer.slow[:5]:
        print(
            f"  slow write at {at - t0:.1f} s took {took:.3f} s; runs overlapping it: "
            + overlapping(at, took)
        )
    if len(writer.slow) > 5:
        print(f"  ... {len(writer.slow)} writes over 0.25 s in all")
    for at, message in writer.failed[:5]:
        print(
            f"  !! FAILED write at {at - t0:.1f} s: {message}; runs overlapping it: "
            + overlapping(at - 1.0, 1.0)
        )
    slowest = sorted(runs, key=lambda r: -r.secs)[:3]
    print(
        "  slowest runs: "
        + ", ".join(
            f"{r.job.split(':')[0]} {r.secs:.3f} s at {r.began - t0:.1f} s ({r.rows} rows)"
            for r in slowest
        )
    )


def catalog_differs(server: str, register: Path) -> int:
    """Products whose price differs between the server and the register (or that one lacks)."""
    with psycopg.connect(server) as conn:
        want: dict[int, str] = {
            r[0]: r[1] for r in conn.execute("SELECT id, price::text FROM product")
        }
    with sqlite3.connect(register) as conn:
        have: dict[int, object] = dict(conn.execute("SELECT id, price FROM product").fetchall())
    return sum(
        1
        for k in want.keys() | have.keys()
        if k not in want or k not in have or float(want[k]) != float(str(have[k]))
    )


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


# --- 1. latency -----------------------------------------------------------------------------------
def latency(args: argparse.Namespace, cluster: Cluster) -> dict[str, object]:
    seconds = 15 if args.quick else 60
    print(
        f"1. Commit-to-server latency: SQLite register -> PostgreSQL server, every = 1s, "
        f"writer at 100 sales/s for {seconds} s"
    )
    with tempfile.TemporaryDirectory(prefix="bench_svc_lat_") as tmp:
        d = Path(tmp)
        server, register = sqlite_store(cluster, d, "lat")
        config = register_node(d, server, register, {"movimento": MOVIMENTO})
        setup_or_die(config)
        svc = Service(config, d / "run.log")
        try:
            svc.wait_first_runs(1)
            writer = Writer(register, rate=100)
            writer.start()
            time.sleep(seconds)
            writer.stop()
            done = len(writer.committed)
            waited = wait_until(lambda: server_count(server) >= done, 60, "every sale", svc)
            time.sleep(1.5)  # one more run: anything extra would show
            stop_s = svc.stop()
        finally:
            svc.stop()
        on_server = exactly_once(register, writer, server)
        lat = [on_server[s][0] - at for s, at in writer.committed.items()]
        runs = [r for r in svc.runs() if r.began >= min(writer.committed.values()) - 1]
        busy = [r for r in runs if r.rows]
        p50, p95, p99 = pct(lat, 50), pct(lat, 95), pct(lat, 99)
        goal = 1 + GOAL_EXTRA
        print(
            f"  sales committed by the writer: {done:,} in {seconds} s "
            f"({done / seconds:.1f}/s); failed writes (1 s busy timeout): {len(writer.failed)}; "
            f"longest INSERT+commit {writer.longest * 1000:.1f} ms"
        )
        print(
            f"  every sale on the server exactly once (ids, totals, sold_at compared): yes; "
            f"the last arrived {waited:.1f} s after the writer stopped"
        )
        print(f"  latency commit -> row inserted on the server (arrived_at), {len(lat):,} sales:")
        print(
            f"    p50 {p50:.3f} s   p95 {p95:.3f} s   p99 {p99:.3f} s   max {max(lat):.3f} s   "
            f"min {min(lat):.3f} s   mean {statistics.fmean(lat):.3f} s"
        )
        print(
            f"    goal p99 <= interval + 0.5 s = {goal:.1f} s: "
            f"{'met' if p99 <= goal else 'NOT MET'} (p99 is {p99 / goal:.2f}x of the goal)"
        )
        if busy:
            secs = [r.secs for r in busy]
            gaps = [b.began - a.began for a, b in itertools.pairwise(runs)]
            print(
                f"  runs of the job while selling: {len(runs)} ({len(busy)} with rows), "
                f"{statistics.median([r.rows for r in busy]):.0f} rows per run (median); run "
                f"duration median {statistics.median(secs):.3f} s, max {max(secs):.3f} s; "
                f"start-to-start median {statistics.median(gaps):.3f} s (every = 1s)"
            )
        stalls(writer, runs)
        print(f"  SIGTERM to exit: {stop_s:.2f} s")
        if writer.failed:
            raise SystemExit(1)
    cluster.drop()
    return {"p50": p50, "p99": p99, "sales": done}


# --- 2. outage ------------------------------------------------------------------------------------
def outage_once(
    args: argparse.Namespace, cluster: Cluster, max_backoff: str | None
) -> dict[str, float]:
    outage = 10 if args.quick else 60
    before, after = (3, 5) if args.quick else (5, 10)
    label = (
        f"max_backoff = {max_backoff!r}"
        if max_backoff
        else "defaults (retry_after 5s, max_backoff 5m)"
    )
    print(f"  -- retry settings: {label}")
    with tempfile.TemporaryDirectory(prefix="bench_svc_out_") as tmp, Proxy(5432) as proxy:
        d = Path(tmp)
        server, register = sqlite_store(cluster, d, "out")
        via = server.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        extra = f'\n[service]\nmax_backoff = "{max_backoff}"\n' if max_backoff else ""
        config = register_node(d, via, register, {"movimento": MOVIMENTO}, extra)
        setup_or_die(config)
        svc = Service(config, d / "run.log")
        try:
            svc.wait_first_runs(1)
            writer = Writer(register, rate=100)
            writer.start()
            time.sleep(before)
            cut = time.time()
            proxy.cut()
            time.sleep(outage)
            proxy.restore()
            restore = time.time()
            committed_before = {s for s, at in writer.committed.items() if at < restore}
            # keep selling until the backlog is in and `after` seconds more
            limit = restore + (30 if args.quick else 400)

            def backlog_in() -> bool:
                with psycopg.connect(server) as conn:
                    n = conn.execute(
                        "SELECT count(*) FROM sale WHERE sale_id = ANY(%s)",
                        (list(committed_before),),
                    ).fetchone()[0]  # type: ignore[index]
                return n == len(committed_before) or time.time() > limit

            wait_until(backlog_in, limit - time.time() + 10, "the backlog", svc)
            time.sleep(after)
            writer.stop()
            done = len(writer.committed)
            wait_until(lambda: server_count(server) >= done, 120, "every sale", svc)
        finally:
            svc.stop()
        on_server = exactly_once(register, writer, server)
        runs = svc.runs()
    cluster.drop()
    goal = 1 + GOAL_EXTRA
    backlog = max(on_server[s][0] for s in committed_before) - restore
    late = [on_server[s][0] for s, at in writer.committed.items() if on_server[s][0] - at > goal]
    caught = max(late) - restore if late else 0.0
    first_after = min(
        (on_server[s][0] for s in on_server if on_server[s][0] >= restore), default=restore
    )
    post = [on_server[s][0] - at for s, at in writer.committed.items() if at > restore + caught + 1]
    # where the backoff was at the restore (from the summary lines)
    fails = [r for r in runs if r.outcome.startswith("FAILED") and cut - 1 <= r.at <= restore]
    ok_after = [r for r in runs if r.outcome == "ok" and r.at >= restore]
    in_force = "no failed run logged during the outage"
    if fails:
        last = fails[-1]
        m = RETRY.search(last.outcome)
        if m:
            in_force = (
                f"{len(fails)} failed runs during the outage; the last, "
                f"{last.at - cut:.1f} s after the cut (failure {m[2]} in a row), said "
                f"'retrying in {m[1]}', i.e. {last.at + seconds(m[1]) - restore:+.1f} s "
                "from the restore"
            )
    if ok_after:
        in_force += (
            f"; first ok run after the restore began {ok_after[0].began - restore:+.1f} s "
            f"from it, {ok_after[0].rows:,} rows in {ok_after[0].secs:.2f} s"
        )
    print(
        f"    outage {restore - cut:.1f} s; sales committed before the restore: "
        f"{len(committed_before):,}; all sales: {done:,}; failed writes: {len(writer.failed)}; "
        f"exactly once: yes"
    )
    print(f"    {in_force}")
    print(f"    restore -> first row on the server again: {first_after - restore:.1f} s")
    print(
        f"    restore -> every sale committed before the restore is on the server: {backlog:.1f} s"
    )
    print(
        f"    restore -> caught up with the live writer (no sale later than {goal:.1f} s "
        f"after it): {caught:.1f} s"
    )
    if post:
        print(
            f"    after catching up: latency p50 {pct(post, 50):.3f} s, p99 {pct(post, 99):.3f} s "
            f"({len(post):,} sales)"
        )
    stalls(writer, runs)
    if writer.failed:
        raise SystemExit(1)
    return {"backlog": backlog, "caught": caught}


def seconds(age: str) -> float:
    """`12s`, `3m`, `1h05m` (the summary's rounded waits) in seconds."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", age)
    if not m:
        return float("nan")
    h, mi, se = (int(x) if x else 0 for x in m.groups())
    return h * 3600 + mi * 60 + se


def simulate_backoff(outage: float, retry_after: float, cap: float, n: int = 20000) -> list[float]:
    """The scheduler's formula (min(cap, first * 2**(failures-1)) * uniform(0.5, 1)), run for an
    outage that starts at a random moment of the 1 s interval: wait from the restore until the
    next try. A model of the code, not a measurement."""
    rng = random.Random(1)
    out = []
    for _ in range(n):
        t = rng.uniform(0, 1.0)  # first failed run after the cut
        failures = 0
        while t < outage:
            failures += 1
            t += min(cap, retry_after * 2 ** min(failures - 1, 20)) * rng.uniform(0.5, 1.0)
        out.append(t - outage)
    return out


def outages(args: argparse.Namespace, cluster: Cluster) -> dict[str, object]:
    outage = 10 if args.quick else 60
    print(
        f"2. Recovery after a {outage} s outage (TCP proxy cut between the register's service "
        "and the server), writer at 100 sales/s"
    )
    res: dict[str, object] = {
        "default": outage_once(args, cluster, None),
        "10s": outage_once(args, cluster, "10s"),
    }
    for label, cap in (("defaults (5s, 5m)", 300.0), ("max_backoff 10s", 10.0)):
        waits = simulate_backoff(outage, 5.0, cap)
        print(
            f"  model of the backoff formula, {label}, {outage} s outage (20,000 draws): wait "
            f"from the restore to the next try: median {statistics.median(waits):.1f} s, "
            f"p90 {pct(waits, 90):.1f} s, max {max(waits):.1f} s"
        )
    return res


# --- 3. server role -------------------------------------------------------------------------------
def server_config(
    path: Path, server: str, registers: list[tuple[int, str]], workers: int = 4, http: int = 0
) -> Path:
    """The server's config: register i is [databases.caixaNNN] with register_id i."""
    (path.parent / "mappings").mkdir(parents=True, exist_ok=True)
    (path.parent / "mappings" / "movimento.yaml").write_text(MOVIMENTO, "utf-8")
    lines = [
        'mappings = "mappings"',
        "",
        "[node]",
        'name = "bench-server"',
        "store_id = 1",
        "",
        "[databases.server]",
        'role = "server"',
        f'url = "{sa_url(server)}"',
    ]
    for i, url in registers:
        lines += [
            "",
            f"[databases.caixa{i:03d}]",
            'role = "register"',
            f'url = "{sa_url(url)}"',
            f"vars = {{ register_id = {i} }}",
        ]
    lines += [
        "",
        "[[jobs]]",
        'group = "movimento"',
        'every = "1s"',
        "",
        "[service]",
        f"workers = {workers}",
        *([f'http = "127.0.0.1:{http}"'] if http else []),
        "",
        "[log]",
        'level = "INFO"',
    ]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def add_sales(registers: list[str], first: int, n: int) -> tuple[float, float]:
    """n sales in each register, one transaction per register: (first commit, last commit)."""
    stamps = []
    for url in registers:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO sale (sale_id, total) SELECT g, 1 + g %% 500 FROM "
                "generate_series(%s::int, %s::int) g",
                (first, first + n - 1),
            )
            stamps.append(time.time())
    return stamps[0], stamps[-1]


def arrived(server: str, expected: int) -> Callable[[], bool]:
    return lambda: server_count(server) >= expected


def last_arrival(server: str, since: float) -> float:
    with psycopg.connect(server) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(arrived_at))::float8 FROM sale "
            "WHERE arrived_at >= to_timestamp(%s)",
            (since,),
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else float("nan")


def check_store(server: str, n: int, per: int) -> None:
    """Every register's sales 1..per on the server, once each; exit 1 otherwise."""
    with psycopg.connect(server) as conn:
        rows = conn.execute(
            "SELECT register_id, count(*), count(DISTINCT sale_id), min(sale_id), max(sale_id) "
            "FROM sale GROUP BY register_id"
        ).fetchall()
    bad = [r for r in rows if r[1:] != (per, per, 1, per)]
    if len(rows) != n or bad:
        print(f"  !! server holds {len(rows)} registers' sales (expected {n}); e.g. {bad[:3]}")
        raise SystemExit(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health(port: int) -> dict[str, dict[str, object]]:
    """Per job, what the service says on /health (runs, last_seconds, last_rows, ...)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
        doc = json.load(answer)
    return {j["job"]: j for j in doc["jobs"]}


def idle_rounds(port: int, seconds: float, jobs: int, workers: int) -> str:
    """The idle round from /health (idle runs log no summary line): runs counted over a window,
    and the duration of each job's last run, sampled every 0.5 s."""
    first = health(port)
    began = time.monotonic()
    secs: dict[tuple[str, object], float] = {}  # (job, last_end) -> seconds of that run
    while time.monotonic() - began < seconds:
        time.sleep(0.5)
        for name, j in health(port).items():
            if j["last_end"] and not j["last_rows"] and not j["running"]:
                secs[(name, j["last_end"])] = float(str(j["last_seconds"]))
    last = health(port)
    span = time.monotonic() - began
    runs = sum(int(str(last[k]["runs"])) - int(str(first[k]["runs"])) for k in last)
    if not runs or not secs:
        return "no idle runs seen on /health"
    each = statistics.median(secs.values())
    return (
        f"{runs} idle runs in {span:.0f} s ({runs / span:.1f} runs/s; from /health); one idle run "
        f"median {each * 1000:.0f} ms, p90 {pct(list(secs.values()), 90) * 1000:.0f} ms (its "
        f"seconds as the service measures them, {len(secs)} runs sampled); busy time of one "
        f"round of all {jobs} jobs / {workers} workers = {jobs * each / workers:.2f} s; "
        f"start-to-start of the same job (the round as the store sees it, every = 1s): "
        f"{span * jobs / runs:.2f} s on average"
    )


def chunked_sync(
    d: Path, tag: str, server: str, registers: list[str], chunk: int
) -> tuple[float, int, int]:
    """`replicator sync` over configs of at most `chunk` registers, one process after the
    other: (total wall seconds, worst exit code, peak replicator connections)."""
    total, worst, peak = 0.0, 0, 0
    numbered = list(enumerate(registers, start=1))
    for k in range(0, len(numbered), chunk):
        part = numbered[k : k + chunk]
        config = server_config(d / "chunks" / f"{tag}-{k // chunk:02d}.toml", server, part)
        with ConnectionWatch(CLUSTER) as watch:
            code, secs, text = replicator(config, "sync")
        total += secs
        worst = max(worst, code)
        peak = max(peak, watch.peak)
        if code:
            print(f"    !! sync of registers {part[0][0]}..{part[-1][0]}: exit {code}")
            print(textwrap.indent(_tail(text, 4), "    | "))
    return total, worst, peak


def server_role(args: argparse.Namespace, cluster: Cluster, n: int) -> dict[str, object]:
    per = 1000
    chunk = args.sync_chunk
    workers = args.workers if n <= 50 else args.workers[:1]
    out: dict[str, object] = {"n": n}
    print(
        f"3. Server role: {n} PostgreSQL registers -> one PostgreSQL server, {per:,} new sales "
        f"per register, every = 1s, workers {', '.join(map(str, workers))}"
    )
    with tempfile.TemporaryDirectory(prefix=f"bench_svc_srv{n}_") as tmp:
        d = Path(tmp)
        began = time.perf_counter()
        server = cluster.url(cluster.create(f"srv{n}"))
        tpl_name = cluster.create(f"tpl{n}")
        tpl = cluster.url(tpl_name)
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(PG_SERVER_SALE)
        with psycopg.connect(tpl, autocommit=True) as conn:
            conn.execute(PG_REGISTER_SALE)
        setup_or_die(server_config(d / "tpl" / "tpl.toml", server, [(1, tpl)]))
        tpl_s = time.perf_counter() - began
        began = time.perf_counter()
        names = [cluster.create(f"r{n}_{i:03d}", template=tpl_name) for i in range(1, n + 1)]
        registers = [cluster.url(x) for x in names]
        incarnations = set()
        for url in registers:
            with psycopg.connect(url, autocommit=True) as conn:
                incarnations.add(
                    conn.execute(
                        "UPDATE replicator.incarnation SET incarnation = md5(random()::text) "
                        "RETURNING incarnation"
                    ).fetchone()
                )
        clone_s = time.perf_counter() - began
        assert len(incarnations) == n, "every clone has its own incarnation"
        print(
            f"  build: server + template with the table and `replicator setup` {tpl_s:.1f} s; "
            f"{n} clones (CREATE DATABASE ... TEMPLATE, then a new incarnation each) "
            f"{clone_s:.1f} s ({clone_s / n * 1000:.0f} ms each)"
        )
        whole = server_config(
            d / "whole" / "replicator.toml", server, list(enumerate(registers, start=1))
        )
        with ConnectionWatch(cluster) as watch:
            code, secs, text = replicator(whole, "setup")
        print(
            f"  `replicator setup` on the whole config (server + {n} clones that already have "
            f"everything; not needed): exit {code}, {secs:.1f} s, peak {watch.peak} "
            "replicator connections"
        )
        if code:
            print(textwrap.indent(_tail(text, 2), "    | "))

        # baseline: `replicator sync`, sequential, every job once
        add_sales(registers, 1, per)
        sync_s, code, peak = chunked_sync(d, "a", server, registers, chunk)
        if code or server_count(server) != n * per:
            raise SystemExit(f"the baseline syncs did not deliver: {server_count(server)}")
        print(
            f"  baseline: `replicator sync` (every job once, in sequence), {n * per:,} new "
            f"sales, in {-(-n // chunk)} process(es) of <= {chunk} registers one after the "
            f"other: {sync_s:.2f} s ({n * per / sync_s:,.0f} sales/s, includes "
            f"{-(-n // chunk)} process start-ups and the jobs' first runs), peak {peak} "
            "replicator connections"
        )
        idle_sync_s, code, peak = chunked_sync(d, "idle", server, registers, chunk)
        print(
            f"  baseline idle: the same syncs with nothing to do: {idle_sync_s:.2f} s "
            f"(exit {code}, peak {peak} connections)"
        )
        # the same with one process for the whole store (above 50 registers it only repeats
        # the failure of 50: each register's pool stays open until the process ends)
        add_sales(registers, per + 1, per)
        if n > 50:
            rest_s, code, _ = chunked_sync(d, "b", server, registers, chunk)
            print(
                f"  one `replicator sync` process for all {n} registers: not tried (it runs out "
                f"of connections at 50 already); this batch by chunked syncs: {rest_s:.1f} s"
            )
        with ConnectionWatch(cluster) as watch:
            code, one_s, text = (0, 0.0, "") if n > 50 else replicator(whole, "sync")
        got = server_count(server) - n * per
        if n <= 50:
            print(
                f"  one `replicator sync` process for all {n} registers, {n * per:,} new sales: "
                f"exit {code}, {one_s:.2f} s, {got:,} of {n * per:,} delivered, peak "
                f"{watch.peak} replicator connections (all clients on the cluster: "
                f"{watch.peak_all}, max_connections 100)"
            )
            if code:
                print(textwrap.indent(_tail(text, 1), "    | "))
                rest_s, code, _ = chunked_sync(d, "rest", server, registers, chunk)
                print(f"    (the rest delivered by chunked syncs: {rest_s:.1f} s, exit {code})")
        check_store(server, n, 2 * per)
        out.update(sync=sync_s, idle_sync=idle_sync_s, one=(code, one_s, got, watch.peak))
        batch = 2 * per + 1
        for w in workers:
            port = free_port()
            config = server_config(
                d / f"w{w}" / "replicator.toml",
                server,
                list(enumerate(registers, start=1)),
                w,
                http=port,
            )
            add_sales(registers, batch, per)
            expected = n * (batch - 1 + per)
            t0 = time.time()
            with ConnectionWatch(cluster) as watch:
                svc = Service(config, d / f"run-w{w}.log")
                try:
                    wait_until(arrived(server, expected), 900, "cold cycle", svc)
                    cold = last_arrival(server, t0) - svc.started
                    time.sleep(2)
                    idle = idle_rounds(port, 4 if args.quick else 10 if n <= 50 else 20, n, w)
                    batch += per
                    expected += n * per
                    first_c, last_c = add_sales(registers, batch, per)
                    wait_until(arrived(server, expected), 900, "warm cycle", svc)
                    warm = last_arrival(server, first_c)
                    batch += per
                finally:
                    svc.stop()
                runs = svc.runs()
            check_store(server, n, batch - 1)
            errors = [r for r in runs if r.outcome != "ok"]
            print(
                f"  `replicator run`, workers = {w}: peak {watch.peak} replicator connections "
                f"(all clients on the cluster: {watch.peak_all}); {len(runs)} runs, "
                f"{len(errors)} not ok"
            )
            for r in errors[:3]:
                print(f"    not ok: {r.job}: {r.outcome[:200]}")
            print(
                f"    cold: process start -> all {n * per:,} new sales on the server: "
                f"{cold:.2f} s ({n * per / cold:,.0f} sales/s; {sync_s / cold:.2f}x the speed "
                "of the sync baseline)"
            )
            print(
                f"    warm: {n * per:,} sales written while it runs (the bench's inserts took "
                f"{last_c - first_c:.1f} s): last insert -> all on the server "
                f"{warm - last_c:.2f} s; first insert -> all {warm - first_c:.2f} s "
                f"({sync_s / (warm - first_c):.2f}x the speed of the sync baseline)"
            )
            print("    idle: " + idle)
            print(
                f"    idle baseline: one sync pass over all jobs with nothing to do "
                f"{idle_sync_s:.2f} s"
            )
            out[f"w{w}"] = (cold, warm - last_c, warm - first_c, watch.peak)
    cluster.drop()
    return out


def _tail(text: str, lines: int) -> str:
    keep = [x for x in text.splitlines() if x.strip()]
    return "\n".join(keep[-lines:])


# --- 4. RSS ---------------------------------------------------------------------------------------
def rss(args: argparse.Namespace, cluster: Cluster) -> dict[str, float]:
    minutes = args.rss_minutes if args.rss_minutes is not None else (0.75 if args.quick else 10)
    every = 5 if minutes < 3 else 10
    warm = min(60.0, minutes * 60 / 3)
    print(
        f"4. RSS of `run` over {minutes} min: one SQLite register, movement every 1s and "
        f"a catalog group every 5s, 10 sales/s and a price change every 5 s; VmRSS every "
        f"{every} s"
    )
    with tempfile.TemporaryDirectory(prefix="bench_svc_rss_") as tmp:
        d = Path(tmp)
        server, register = sqlite_store(cluster, d, "rss", catalog=True)
        port = free_port()
        config = register_node(
            d,
            server,
            register,
            {"movimento": MOVIMENTO, "produtos": PRODUTOS},
            f'\n[service]\nhttp = "127.0.0.1:{port}"\n',
        )
        setup_or_die(config)
        svc = Service(config, d / "run.log")
        samples: list[tuple[float, float]] = []
        try:
            svc.wait_first_runs(2)
            writer = Writer(register, rate=10)
            prices = PriceChanger(server, 500, 5.0)
            writer.start()
            prices.start()
            t0 = svc.started
            end = time.time() + minutes * 60
            while time.time() < end:
                svc.alive()
                mb = rss_mb(svc.pid)
                if mb is not None:
                    samples.append((time.time() - t0, mb))
                time.sleep(max(0.0, min(every, end - time.time())))
            mb = rss_mb(svc.pid)
            if mb is not None:
                samples.append((time.time() - t0, mb))
            writer.stop()
            prices.stop()
            done = len(writer.committed)
            wait_until(lambda: server_count(server) >= done, 60, "every sale", svc)
            wait_until(lambda: catalog_differs(server, register) == 0, 60, "the catalog", svc)
            seen = health(port)
        finally:
            svc.stop()
        runs = svc.runs()
        exactly_once(register, writer, server)
    cluster.drop()
    after = [(t, m) for t, m in samples if t >= warm]
    start_mb, end_mb = after[0][1], after[-1][1]
    ts, ms = [t / 3600 for t, _ in after], [m for _, m in after]
    slope = statistics.linear_regression(ts, ms).slope if len(after) > 2 else float("nan")
    print(
        f"  {len(samples)} samples; "
        + ", ".join(
            f"{k.split(':')[0]} {v['runs']} runs ({v['errors']} failed)" for k, v in seen.items()
        )
        + f" (/health); {sum(1 for r in runs if r.outcome != 'ok')} summary lines not ok; "
        f"{done:,} sales, "
        f"{prices.changes} price changes; failed writes {len(writer.failed)}; every sale on "
        f"the server exactly once: yes; catalog equal on both sides: yes"
    )
    print(
        f"  VmRSS first sample {samples[0][1]:.1f} MB; at {after[0][0]:.0f} s (start) "
        f"{start_mb:.1f} MB; end ({after[-1][0]:.0f} s) {end_mb:.1f} MB; max "
        f"{max(m for _, m in samples):.1f} MB; end - start {end_mb - start_mb:+.1f} MB"
    )
    print(
        f"  slope (least squares over the samples after {warm:.0f} s): {slope:+.2f} MB/hour, "
        f"extrapolated from {minutes} min (the issue's goal is an hour)"
    )
    for r in [r for r in runs if r.outcome != "ok"][:3]:
        print(f"  not ok: {r.job}: {r.outcome[:240]}")
    stalls(writer, runs)
    print(
        "  samples (s: MB): "
        + ", ".join(f"{t:.0f}: {m:.1f}" for t, m in samples[:: max(1, len(samples) // 12)])
    )
    return {"start": start_mb, "end": end_mb, "slope": slope}


# --- main -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, 10 registers")
    parser.add_argument("--only", default="latency,outage,server,rss")
    parser.add_argument("--rss-minutes", type=float, default=None, help="default 10 (quick: 0.75)")
    parser.add_argument("--registers", default=None, help="server role sizes (default 50,200)")
    parser.add_argument(
        "--workers", default="4,8", help="server role worker counts (above 50 registers: the first)"
    )
    parser.add_argument("--sync-chunk", type=int, default=25, help="registers per baseline sync")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    args.workers = [int(x) for x in args.workers.split(",")]
    sizes = [int(x) for x in (args.registers or ("10" if args.quick else "50,200")).split(",")]
    only = set(args.only.split(","))
    unknown = only - {"latency", "outage", "server", "rss"}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if not REPLICATOR.exists():
        raise SystemExit(f"no {REPLICATOR}: run this with the venv's python")
    os.environ["TZ"] = "UTC"
    time.tzset()
    print("command: " + shlex.join([sys.executable, *sys.argv]))
    print("\n".join(machine(args.pg)))
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n")
    cluster = Cluster(args.pg)
    global CLUSTER
    CLUSTER = cluster
    began = time.monotonic()
    try:
        steps: list[tuple[str, Callable[..., object], tuple[object, ...]]] = []
        if "latency" in only:
            steps.append(("latency", latency, ()))
        if "outage" in only:
            steps.append(("outage", outages, ()))
        if "server" in only:
            steps += [(f"server {n}", server_role, (n,)) for n in sizes]
        if "rss" in only:
            steps.append(("rss", rss, ()))
        for name, step, extra in steps:
            t = time.monotonic()
            step(args, cluster, *extra)
            print(f"  ({name}: {time.monotonic() - t:.0f} s; load average after: {load()})\n")
    finally:
        cluster.drop()
    print(f"total {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
