"""One huge single-version initial sync, with a point of sale selling on the register meanwhile.

    python bench/bench_core.py [--rows 1000000] [--scenario A|B|both]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres]

The case where `replicator setup` stamps every existing row of a table with one version (one
transaction on PostgreSQL, one clock tick on SQLite) and the first `sync` then moves all of them.

- A: server PostgreSQL -> register SQLite (`server_to_register`), a price-like table.
  Baseline: psycopg COPY out of PostgreSQL + sqlite3 executemany into an empty table in one
  transaction.
- B: register SQLite -> server PostgreSQL (`register_to_server`), a sale_item-like table.
  Baseline: sqlite3 read + psycopg binary COPY into an empty table.

The sync runs as `sys.executable -m replicator.cli --config ... sync GROUP` (so it uses the
package of whichever venv runs this script) in a temporary directory. While it runs, a POS thread
commits one sale every 50 ms into another table of the register file through plain sqlite3 with
a 1 s busy timeout and counts the sales that fail ("database is locked"); a prober thread takes
the write lock (BEGIN IMMEDIATE; ROLLBACK) every 50 ms with a 10 min busy timeout, so its longest
wait is, within about 0.1 s, the longest write-lock hold of the replicator. Peak RSS is the sync
process's ru_maxrss (os.wait4). Each scenario ends by comparing both sides (count and an
order-independent checksum of normalised rows) and the bench exits 1 if they differ.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

ENV = {**os.environ, "TZ": "UTC"}  # naive SQLite timestamps are UTC on both sides
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
LOCK_LINE = re.compile(r"batch (\d+): .*\(([\d.]+)s of target lock\)")

# --- A: a price-like catalog table, server -> register ------------------------------------
PRICE_COLS = ["product_id", "store_id", "price", "promo_price", "description", "updated_at"]
PRICE_KINDS = ["int", "int", "num", "num", "text", "ts"]
PRICE_PG = """CREATE TABLE price (
    product_id integer NOT NULL, store_id integer NOT NULL, price numeric(12,2) NOT NULL,
    promo_price numeric(12,2), description text NOT NULL, updated_at timestamptz NOT NULL,
    PRIMARY KEY (product_id, store_id))"""
PRICE_FILL = """INSERT INTO price SELECT 1 + g / 8, 1 + g % 8,
    round(0.99 + (g % 9000) * 0.37, 2),
    CASE WHEN g % 5 = 0 THEN round(0.49 + (g % 9000) * 0.31, 2) END,
    'Produto ' || g || CASE WHEN g % 3 = 0 THEN ' pão de açúcar ç' ELSE '' END,
    timestamptz '2026-11-30 03:00:00+00' - make_interval(secs => g * 1.000001)
    FROM generate_series(0, {n} - 1) g"""
PRICE_SQLITE = """CREATE TABLE price (
    product_id INTEGER NOT NULL, store_id INTEGER NOT NULL, price NUMERIC(12,2) NOT NULL,
    promo_price NUMERIC(12,2), description TEXT NOT NULL, updated_at DATETIME NOT NULL,
    PRIMARY KEY (product_id, store_id))"""
PRICE_MAPPING = """\
group: precos
direction: server_to_register
tables:
  - source: price
    key: [product_id, store_id]
"""

# --- B: a sale_item-like movement table, register -> server --------------------------------
ITEM_COLS = [
    "sale_id",
    "line_no",
    "product_id",
    "quantity",
    "unit_price",
    "total",
    "sold_at",
    "note",
]
ITEM_KINDS = ["int", "int", "int", "num", "num", "num", "ts", "text"]
ITEM_PG = """CREATE TABLE {name} (
    sale_id integer NOT NULL, line_no integer NOT NULL, product_id integer NOT NULL,
    quantity numeric(12,3) NOT NULL, unit_price numeric(12,2) NOT NULL,
    total numeric(12,2) NOT NULL, sold_at timestamptz NOT NULL, note text,
    PRIMARY KEY (sale_id, line_no))"""
ITEM_SQLITE = """CREATE TABLE sale_item (
    sale_id INTEGER NOT NULL, line_no INTEGER NOT NULL, product_id INTEGER NOT NULL,
    quantity NUMERIC(12,3) NOT NULL, unit_price NUMERIC(12,2) NOT NULL,
    total NUMERIC(12,2) NOT NULL, sold_at DATETIME NOT NULL, note TEXT,
    PRIMARY KEY (sale_id, line_no))"""
ITEM_FILL = """WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n < {n} - 1)
    INSERT INTO sale_item SELECT n / 4, n % 4, 1 + n % 5000, (n % 7) + 0.5,
    round(1.99 + n % 100, 2), round(((n % 7) + 0.5) * (1.99 + n % 100), 2),
    strftime('%Y-%m-%d %H:%M:%f', '2026-11-30 12:00:00', '-' || n || ' seconds'),
    CASE WHEN n % 3 = 0 THEN 'promoção ç' END FROM g"""
ITEM_MAPPING = """\
group: movimento
direction: register_to_server
tables:
  - source: sale_item
    key: [sale_id, line_no]
"""

POS_SQLITE = """CREATE TABLE pos_sale (
    id INTEGER PRIMARY KEY, register INTEGER NOT NULL, total NUMERIC(12,2) NOT NULL,
    sold_at DATETIME NOT NULL)"""


@contextmanager
def database(admin: str) -> Iterator[str]:
    name = f"repl_bench_core_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def node(directory: Path, server: str, register: Path, mapping: str) -> Path:
    """replicator.toml and one mapping group (the subset of the config both versions read)."""
    (directory / "mappings").mkdir()
    group = mapping.split("\n", 1)[0].split(": ")[1]
    (directory / "mappings" / f"{group}.yaml").write_text(mapping, "utf-8")
    config = directory / "replicator.toml"
    config.write_text(
        textwrap.dedent(f"""\
        mappings = "mappings"
        [node]
        name = "bench-core"
        store_id = 1
        [databases.server]
        role = "server"
        url = "{server.replace("postgresql://", "postgresql+psycopg://")}"
        [databases.caixa]
        role = "register"
        url = "sqlite:///{register}"
        vars = {{ register_id = 3 }}
        [log]
        level = "INFO"
        """),
        "utf-8",
    )
    return config


# --- the register's other writers ----------------------------------------------------------
@dataclass
class Writer:
    """A thread that writes to the register every `every` seconds until stopped."""

    path: Path
    every: float = 0.05
    ok: int = 0
    failed: int = 0
    longest: float = 0.0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        due = time.monotonic()
        conn = self.connect()
        try:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    self.once(conn)
                    self.ok += 1
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        self.errors.append(str(exc))
                    self.failed += 1
                    conn.rollback()
                self.longest = max(self.longest, time.monotonic() - start)
                due += self.every
                self._stop.wait(max(0.0, due - time.monotonic()))
                due = max(due, time.monotonic() - self.every)  # no burst after a long wait
        finally:
            conn.close()

    def connect(self) -> sqlite3.Connection:
        raise NotImplementedError

    def once(self, conn: sqlite3.Connection) -> None:
        raise NotImplementedError


class Pos(Writer):
    """The point of sale: one small sale per commit, plain sqlite3, 1 s busy timeout."""

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=1.0)

    def once(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO pos_sale (register, total, sold_at) VALUES (3, ?, ?)",
            (round(1 + self.ok * 0.37 % 500, 2), datetime.now(UTC).strftime("%F %T.%f")),
        )
        conn.commit()


class Prober(Writer):
    """Takes the write lock and lets it go at once, waiting as long as needed: its longest wait
    is the longest time another connection held the lock (to within the busy handler's sleep)."""

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=600.0, isolation_level=None)

    def once(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")


# --- running the replicator ----------------------------------------------------------------
@dataclass
class Run:
    seconds: float
    exit_code: int
    max_rss_mb: float
    stderr: str
    killed: str | None = None

    def lock_holds(self) -> list[tuple[float, int]]:
        """(seconds of target lock, batch number) of every commit the replicator logged."""
        return [(float(m[2]), int(m[1])) for m in LOCK_LINE.finditer(self.stderr)]


def replicator(config: Path, *args: str, timeout: float, max_rss_mb: float) -> Run:
    """`python -m replicator.cli --config CONFIG ARGS`, with its own peak RSS (ru_maxrss)."""
    log = config.parent / f"{args[0]}.log"
    command = [sys.executable, "-m", "replicator.cli", "--config", str(config), "--log-level"]
    with log.open("w+", encoding="utf-8") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*command, "INFO", *args],
            cwd=config.parent,  # never the repository: `-m` would import the package in cwd
            env=ENV,
            stdout=err,
            stderr=err,
        )
        killed: list[str] = []
        done = threading.Event()

        def watch() -> None:
            status = Path(f"/proc/{proc.pid}/status")
            while not done.wait(0.2):
                if time.perf_counter() - start > timeout:
                    killed.append(f"killed after {timeout:.0f} s")
                elif (rss := _rss_mb(status)) > max_rss_mb:
                    killed.append(f"killed at {rss:,.0f} MB RSS")
                else:
                    continue
                proc.send_signal(signal.SIGKILL)
                return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        watcher.join()
        err.seek(0)
        text = err.read()
    return Run(
        seconds, proc.returncode, usage.ru_maxrss / 1024, text, killed[0] if killed else None
    )


def _rss_mb(status: Path) -> float:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def synced(config: Path, group: str, register: Path, args: argparse.Namespace) -> Result:
    """One `sync GROUP` with the POS and the prober writing to the register meanwhile."""
    pos, prober = Pos(register), Prober(register)
    pos.start()
    prober.start()
    try:
        run = replicator(config, "sync", group, timeout=args.timeout, max_rss_mb=args.max_rss_mb)
    finally:
        pos.stop()
        prober.stop()
    with sqlite3.connect(register) as conn:
        kept = conn.execute("SELECT count(*) FROM pos_sale").fetchone()[0]
    if kept != pos.ok:
        raise SystemExit(f"the register holds {kept} sales, the POS committed {pos.ok}")
    idle = None
    if run.exit_code == 0 and run.killed is None:
        again = replicator(config, "sync", group, timeout=args.timeout, max_rss_mb=args.max_rss_mb)
        idle = again.seconds if again.exit_code == 0 else None
    return Result(run, pos, prober, idle)


@dataclass
class Result:
    run: Run
    pos: Pos
    prober: Prober
    idle: float | None  # a second sync with nothing to do: start-up, connections, one cycle


# --- comparing both sides ------------------------------------------------------------------
def norm(kind: str, value: Any) -> Any:
    """One representation per value whatever the backend stored (mismatches stay visible)."""
    if value is None:
        return None
    if kind == "num":
        if isinstance(value, float):
            value = repr(value)
        try:
            return str(Decimal(value).normalize())
        except (ArithmeticError, TypeError, ValueError):
            return ("?", value)
    if kind == "ts":
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return ("?", value)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            return (value - EPOCH) // US
        return ("?", value)
    return value


def checksum(rows: Iterable[tuple[Any, ...]], kinds: list[str]) -> tuple[int, int]:
    """(count, sum of 64-bit row hashes mod 2**64): independent of row order."""
    count = total = 0
    for row in rows:
        text = repr(tuple(norm(k, v) for k, v in zip(kinds, row, strict=True)))
        total += int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
        count += 1
    return count, total % 2**64


def pg_rows(url: str, table: str, cols: list[str]) -> Iterator[tuple[Any, ...]]:
    with psycopg.connect(url) as conn, conn.cursor(name="compare") as cur:
        cur.itersize = 20_000
        cur.execute(f"SELECT {', '.join(cols)} FROM {table}")
        yield from cur


def sqlite_rows(path: Path, table: str, cols: list[str]) -> Iterator[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        yield from conn.execute(f"SELECT {', '.join(cols)} FROM {table}")
    finally:
        conn.close()


def compare(
    what: str,
    source: Callable[[], Iterable[tuple[Any, ...]]],
    target: Callable[[], Iterable[tuple[Any, ...]]],
    kinds: list[str],
    keys: int,
) -> tuple[int, int]:
    s, t = checksum(source(), kinds), checksum(target(), kinds)
    if s == t:
        return s
    print(
        f"  {what}: sides DIFFER: source {s[0]:,} rows {s[1]:#018x}, target {t[0]:,} {t[1]:#018x}"
    )
    both = [
        {
            r[:keys]: r
            for r in (tuple(norm(k, v) for k, v in zip(kinds, x, strict=True)) for x in f())
        }
        for f in (source, target)
    ]
    diffs = [k for k in both[0].keys() | both[1].keys() if both[0].get(k) != both[1].get(k)]
    print(f"  {len(diffs):,} keys differ, e.g.:")
    for key in sorted(diffs, key=repr)[:5]:
        print(f"    source {both[0].get(key)}\n    target {both[1].get(key)}")
    raise SystemExit(1)


# --- baselines -----------------------------------------------------------------------------
def baseline_pg_to_sqlite(source: str, directory: Path) -> float:
    """COPY out of PostgreSQL (text), sqlite3 executemany into an empty table, one commit."""
    path = directory / "baseline.db"
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute(PRICE_SQLITE)
    start = time.perf_counter()
    conn = sqlite3.connect(path)
    query = f"COPY (SELECT {', '.join(PRICE_COLS)} FROM price) TO STDOUT"
    with psycopg.connect(source) as pg, pg.cursor().copy(query) as copy:
        conn.executemany(
            f"INSERT INTO price VALUES ({', '.join('?' * len(PRICE_COLS))})", copy.rows()
        )
        conn.commit()
    elapsed = time.perf_counter() - start
    conn.close()
    path.unlink()
    return elapsed


def baseline_sqlite_to_pg(register: Path, target: str) -> float:
    """sqlite3 read, values made into Python objects, psycopg binary COPY into an empty table."""

    def num(v: Any) -> Decimal:
        return Decimal(repr(v) if isinstance(v, float) else v)

    with psycopg.connect(target) as pg:
        pg.execute("TRUNCATE baseline_sale_item")
    start = time.perf_counter()
    conn = sqlite3.connect(register)
    query = "COPY baseline_sale_item FROM STDIN (FORMAT binary)"
    with psycopg.connect(target) as pg, pg.cursor().copy(query) as copy:
        copy.set_types([*(["int4"] * 3), *(["numeric"] * 3), "timestamptz", "text"])
        for a, b, c, q, p, t, at, note in conn.execute(
            f"SELECT {', '.join(ITEM_COLS)} FROM sale_item"
        ):
            when = datetime.fromisoformat(at).replace(tzinfo=UTC)
            copy.write_row((a, b, c, num(q), num(p), num(t), when, note))
    elapsed = time.perf_counter() - start
    conn.close()
    with psycopg.connect(target) as pg:
        pg.execute("TRUNCATE baseline_sale_item")
    return elapsed


# --- the scenarios -------------------------------------------------------------------------
def setup(config: Path, args: argparse.Namespace) -> float:
    run = replicator(config, "setup", timeout=args.timeout, max_rss_mb=args.max_rss_mb)
    if run.exit_code:
        raise SystemExit(f"replicator setup failed ({run.exit_code}):\n{run.stderr[-3000:]}")
    return run.seconds


def scenario_a(args: argparse.Namespace, directory: Path) -> Report:
    n = args.rows
    register = directory / "caixa.db"
    with database(args.pg) as server:
        with psycopg.connect(server) as c:
            c.execute(PRICE_PG)
            c.execute(PRICE_FILL.format(n=n))
            c.execute("ANALYZE price")
        with sqlite3.connect(register) as c:
            c.execute(PRICE_SQLITE)
            c.execute(POS_SQLITE)
        config = node(directory, server, register, PRICE_MAPPING)
        setup_s = setup(config, args)
        with psycopg.connect(server) as c:
            versions = c.execute("SELECT count(DISTINCT repl_version) FROM price").fetchone()
        assert versions == (1,), f"setup should stamp one version, found {versions}"
        base = statistics.median(baseline_pg_to_sqlite(server, directory) for _ in range(3))
        result = synced(config, "precos", register, args)
        report = Report("A", n, base, setup_s, result, "SQLite register (the target)")
        report.show(
            "PostgreSQL server -> SQLite register (server_to_register), price-like table",
            "psycopg COPY out + sqlite3 executemany, one transaction",
        )
        if report.finished:
            report.checked = compare(
                "A",
                lambda: pg_rows(server, "price", PRICE_COLS),
                lambda: sqlite_rows(register, "price", PRICE_COLS),
                PRICE_KINDS,
                keys=2,
            )
            count, total = report.checked
            print(f"  both sides equal: {count:,} rows, checksum {total:#018x}")
    return report


def scenario_b(args: argparse.Namespace, directory: Path) -> Report:
    n = args.rows
    register = directory / "caixa.db"
    with database(args.pg) as server:
        with psycopg.connect(server) as c:
            c.execute(ITEM_PG.format(name="sale_item"))
            c.execute(ITEM_PG.format(name="baseline_sale_item"))
        with sqlite3.connect(register) as c:
            c.execute(ITEM_SQLITE)
            c.execute(ITEM_FILL.format(n=n))
            c.execute(POS_SQLITE)
        config = node(directory, server, register, ITEM_MAPPING)
        setup_s = setup(config, args)
        with sqlite3.connect(register) as c:
            versions = c.execute("SELECT count(DISTINCT repl_version) FROM sale_item").fetchone()
        assert versions == (1,), f"setup should stamp one version, found {versions}"
        base = statistics.median(baseline_sqlite_to_pg(register, server) for _ in range(3))
        result = synced(config, "movimento", register, args)
        report = Report("B", n, base, setup_s, result, "PostgreSQL server (the target)")
        report.show(
            "SQLite register -> PostgreSQL server (register_to_server), sale_item-like table",
            "sqlite3 read + psycopg binary COPY",
        )
        if report.finished:
            report.checked = compare(
                "B",
                lambda: sqlite_rows(register, "sale_item", ITEM_COLS),
                lambda: pg_rows(server, "sale_item", ITEM_COLS),
                ITEM_KINDS,
                keys=2,
            )
            count, total = report.checked
            print(f"  both sides equal: {count:,} rows, checksum {total:#018x}")
    return report


@dataclass
class Report:
    name: str
    rows: int
    baseline: float
    setup: float
    result: Result
    log_target: str
    checked: tuple[int, int] | None = None

    @property
    def finished(self) -> bool:
        return self.result.run.exit_code == 0 and self.result.run.killed is None

    def show(self, title: str, baseline: str) -> None:
        run, pos, prober = self.result.run, self.result.pos, self.result.prober
        n = self.rows
        print(f"{self.name}. {title}, {n:,} rows stamped with one version by setup")
        print(f"  baseline: {baseline}")
        print(
            f"    {n / self.baseline:>10,.0f} rows/s   1.00x   ({self.baseline:.1f} s, median of 3)"
        )
        print(f"  replicator setup (stamps every row)  {self.setup:.1f} s")
        if self.finished:
            print(
                f"  replicator sync (one subprocess)\n    {n / run.seconds:>10,.0f} rows/s   "
                f"{self.baseline / run.seconds:.2f}x of baseline   ({run.seconds:.1f} s)"
            )
        else:
            why = run.killed or f"exit code {run.exit_code}"
            print(f"  replicator sync DID NOT FINISH: {why} after {run.seconds:.1f} s")
            print(textwrap.indent(run.stderr[-3000:], "    | "))
        if self.result.idle is not None:
            print(f"  second sync, nothing to do (start-up included)  {self.result.idle:.1f} s")
        print(f"  peak RSS of the sync process  {run.max_rss_mb:,.0f} MB")
        print(
            f"  POS sales during the sync  {pos.ok + pos.failed:,}, {pos.failed:,} failed "
            f"('database is locked'), longest INSERT+commit {pos.longest:.3f} s"
        )
        print(
            f"  longest wait for the register's write lock (prober)  {prober.longest:.3f} s "
            f"({prober.ok:,} probes)"
        )
        holds = run.lock_holds()
        if holds:
            longest, batch = max(holds)
            seconds = [h for h, _ in holds]
            print(
                f"  replicator log, {self.log_target}: {len(holds):,} commits, longest "
                f"{longest:.3f} s of target lock (batch {batch}), median "
                f"{statistics.median(seconds):.3f} s, {sum(h > 0.2 for h in seconds)} over 0.2 s"
            )
        else:
            print(f"  replicator log, {self.log_target}: no 'batch N: ... of target lock' lines")
        for problem in dict.fromkeys(pos.errors + prober.errors):
            print(f"  writer error: {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--scenario", choices=["A", "B", "both"], default="both")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per sync")
    parser.add_argument("--max-rss-mb", type=float, default=8000, help="kill the sync above it")
    args = parser.parse_args()
    os.environ["TZ"] = "UTC"
    time.tzset()
    package = subprocess.run(
        [sys.executable, "-c", "import replicator; print(replicator.__file__)"],
        cwd=tempfile.gettempdir(),
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"python {sys.executable}\nreplicator {package}\n")
    reports = []
    for name, scenario in (("A", scenario_a), ("B", scenario_b)):
        if args.scenario in (name, "both"):
            with tempfile.TemporaryDirectory(prefix=f"bench_core_{name}_") as tmp:
                reports.append(scenario(args, Path(tmp)))
            print()
    if not all(r.finished for r in reports):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
