"""What the scenarios share: throw-away databases, the sale-item table and its data, node
configs, an in-process sync, timing, and the compare of both sides that ends every scenario.

The sale-item row (11 columns, composite key, numerics, timestamps, text):
`register_id, sale_id, line_no` (the key), `product_id`, `quantity numeric(12,3)`,
`unit_price`, `discount` (NULL for 4 rows in 5), `total numeric(12,2)`, `sold_at timestamptz`,
`booked_on date`, `note text` (accents, NULL for 2 rows in 3).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PREFIX = "bench_run_"
REPLICATOR = Path(sys.executable).parent / "replicator"
ENV = {**os.environ, "TZ": "UTC"}  # naive SQLite timestamps are UTC on both sides
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)

COLS = [
    "register_id",
    "sale_id",
    "line_no",
    "product_id",
    "quantity",
    "unit_price",
    "discount",
    "total",
    "sold_at",
    "booked_on",
    "note",
]
KEY = ["register_id", "sale_id", "line_no"]
KINDS = ["int", "int", "int", "int", "num", "num", "num", "num", "ts", "date", "text"]
PG_TYPES = ["int4", "int8", "int4", "int4", *(["numeric"] * 4), "timestamptz", "date", "text"]
SELECT = ", ".join(COLS)


def pg_ddl(name: str = "sale_item") -> str:
    return f"""CREATE TABLE {name} (
    register_id integer NOT NULL, sale_id bigint NOT NULL, line_no integer NOT NULL,
    product_id integer NOT NULL, quantity numeric(12,3) NOT NULL,
    unit_price numeric(12,2) NOT NULL, discount numeric(12,2), total numeric(12,2) NOT NULL,
    sold_at timestamptz NOT NULL, booked_on date NOT NULL, note text,
    PRIMARY KEY (register_id, sale_id, line_no))"""


SQLITE_DDL = """CREATE TABLE sale_item (
    register_id INTEGER NOT NULL, sale_id BIGINT NOT NULL, line_no INTEGER NOT NULL,
    product_id INTEGER NOT NULL, quantity NUMERIC(12,3) NOT NULL,
    unit_price NUMERIC(12,2) NOT NULL, discount NUMERIC(12,2), total NUMERIC(12,2) NOT NULL,
    sold_at DATETIME NOT NULL, booked_on DATE NOT NULL, note TEXT,
    PRIMARY KEY (register_id, sale_id, line_no))"""

# row n of the data set (the same on every engine); `bump` changes the non-key values
PG_FILL = """INSERT INTO {table} (%s) SELECT 2, g / 4, g % 4, 1 + g % 5000,
    (g % 7) + 0.5 + {bump}, round(1.99 + g % 100, 2),
    CASE WHEN g % 5 = 0 THEN round(0.10 + g % 40, 2) END,
    round(((g % 7) + 0.5 + {bump}) * (1.99 + g % 100), 2),
    timestamptz '2026-11-30 12:00:00+00' - make_interval(secs => g * 1.000001),
    date '2026-11-30' - (g % 400)::int,
    CASE WHEN g % 3 = 0 THEN 'promoção ç ' || g END
    FROM generate_series({first}::bigint, {last}::bigint) g""".replace("%s", SELECT)
SQLITE_FILL = """WITH RECURSIVE g(n) AS (SELECT {first} UNION ALL SELECT n + 1 FROM g
    WHERE n < {last})
    INSERT INTO sale_item (%s) SELECT 2, n / 4, n % 4, 1 + n % 5000, (n % 7) + 0.5,
    round(1.99 + n % 100, 2), CASE WHEN n % 5 = 0 THEN round(0.10 + n % 40, 2) END,
    round(((n % 7) + 0.5) * (1.99 + n % 100), 2),
    strftime('%Y-%m-%d %H:%M:%f', '2026-11-30 12:00:00', '-' || (n * 1.000001) || ' seconds'),
    date('2026-11-30', '-' || (n % 400) || ' days'),
    CASE WHEN n % 3 = 0 THEN 'promoção ç ' || n END FROM g""".replace("%s", SELECT)


def mapping(group: str, direction: str, tables: Iterable[str] = ("sale_item",)) -> str:
    body = "".join(f"  - source: {t}\n    key: [{', '.join(KEY)}]\n" for t in tables)
    return f"group: {group}\ndirection: {direction}\ntables:\n{body}"


class Mismatch(SystemExit):
    """Both sides differ after a scenario: the bench fails (exit 1)."""


# --- databases ----------------------------------------------------------------------------
class Cluster:
    """bench_run_* databases on the PostgreSQL server, every one dropped at the end."""

    def __init__(self, admin: str = ADMIN) -> None:
        self.admin = admin
        self.base = admin.rsplit("/", 1)[0]
        self.tag = uuid.uuid4().hex[:6]
        self.created: list[str] = []

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def create(self, what: str, template: str | None = None) -> str:
        """A new database; its URL."""
        name = f"{PREFIX}{self.tag}_{what}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            extra = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"{extra}')
        self.created.append(name)
        return self.url(name)

    def drop(self, url: str | None = None) -> None:
        names = [url.rsplit("/", 1)[1]] if url else list(self.created)
        with psycopg.connect(self.admin, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                if name in self.created:
                    self.created.remove(name)


def sa_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://")


def fill_pg(url: str, first: int, count: int, table: str = "sale_item", per_tx: int = 0) -> None:
    """Rows first..first+count-1 of the data set, in transactions of per_tx rows (0: one)."""
    step = per_tx or count
    with psycopg.connect(url, autocommit=True) as conn:
        for lo in range(first, first + count, step):
            hi = min(first + count, lo + step) - 1
            conn.execute(PG_FILL.format(table=table, bump=0, first=lo, last=hi).encode())


def fill_sqlite(path: Path, first: int, count: int, per_tx: int = 0) -> None:
    step = per_tx or count
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for lo in range(first, first + count, step):
            hi = min(first + count, lo + step) - 1
            conn.execute("BEGIN")
            conn.execute(SQLITE_FILL.format(first=lo, last=hi))
            conn.execute("COMMIT")
    finally:
        conn.close()


def sqlite_file(path: Path) -> Path:
    path.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(SQLITE_DDL)
        conn.commit()
    return path


# --- nodes ----------------------------------------------------------------------------------
def node_config(
    directory: Path,
    server: str,
    register: str,
    groups: dict[str, str],
    extra: str = "",
    level: str = "ERROR",
    register_extra: str = "",
) -> Path:
    """replicator.toml (one server, one register, `register_id = 2`) and its mapping files.
    URLs are SQLAlchemy URLs or postgresql:// ones."""
    (directory / "mappings").mkdir(parents=True, exist_ok=True)
    for name, text in groups.items():
        (directory / "mappings" / f"{name}.yaml").write_text(text, "utf-8")
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
        url = "{sa_url(server)}"
        [databases.caixa02]
        role = "register"
        node = "bench-caixa02"
        url = "{sa_url(register)}"
        {register_extra}
        [log]
        level = "{level}"
        """)
        + extra,
        "utf-8",
    )
    return config


class Node:
    """A config loaded in this process, with its open databases (like one `replicator run`)."""

    def __init__(self, config: Path) -> None:
        from replicator.config import load_settings
        from replicator.log import setup_logging
        from replicator.sync import Databases

        setup_logging("ERROR")
        self.config = config
        self.settings = load_settings(config)
        self.dbs = Databases(self.settings)
        self.jobs = self.settings.jobs()

    def setup(self) -> None:
        from replicator.tracking import install

        install(self.settings, self.dbs)

    def sync(self) -> int:
        """Every job once, to its end (`replicator sync`): the rows written; raises on an
        error of any job."""
        from replicator.sync import run_jobs

        results = run_jobs(self.settings, self.jobs, self.dbs)
        for r in results:
            if r.error is not None or r.skipped:
                raise SystemExit(f"sync of {r.job.name} failed: {r.error or r.skipped}")
        return sum(r.rows for r in results)

    def close(self) -> None:
        self.dbs.close()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Peak RSS of a child is ru_maxrss, which counts the pages of whoever forked it until its exec:
# a child of this (large) bench process would report the bench's own size. So a small Python
# starts it (posix_spawn) and writes the child's ru_maxrss to a file; its own ~10 MB are the
# most it can add.
SPAWN = (
    "import os, sys\n"
    "pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status) & 255)\n"
)


def replicator(config: Path, *args: str, timeout: float = 3600) -> tuple[int, float, float, str]:
    """`replicator --config X ARGS` as a subprocess: (exit code, seconds, peak RSS MB, output)."""
    log = config.parent / f"{args[0]}.log"
    rss = config.parent / f"{args[0]}.maxrss"
    with open(log, "w+b") as out:
        began = time.perf_counter()
        code = subprocess.run(
            [
                sys.executable,
                "-c",
                SPAWN,
                str(rss),
                str(REPLICATOR),
                "--config",
                str(config),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
            cwd=config.parent,
            timeout=timeout,
        ).returncode
        seconds = time.perf_counter() - began
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return code, seconds, int(rss.read_text()) / 1024, text


def setup_or_die(config: Path) -> None:
    code, _, _, text = replicator(config, "setup")
    if code:
        raise SystemExit(f"replicator setup failed ({code}):\n{text[-3000:]}")


# --- timing ---------------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


# --- comparing both sides -------------------------------------------------------------------
def norm(kind: str, value: Any) -> Any:
    """One representation per value whatever the engine stored (mismatches stay visible)."""
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
    if kind == "date":
        if isinstance(value, datetime):
            value = value.date()
        if isinstance(value, str):
            value = value[:10]
        return str(value) if isinstance(value, date | str) else ("?", value)
    if kind == "int":
        return int(value)
    return value


def checksum(rows: Iterable[tuple[Any, ...]], kinds: list[str] = KINDS) -> tuple[int, int]:
    """(count, sum of 64-bit row hashes mod 2**64): independent of row order and engine."""
    count = total = 0
    for row in rows:
        text = repr(tuple(norm(k, v) for k, v in zip(kinds, row, strict=True)))
        total += int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
        count += 1
    return count, total % 2**64


def pg_rows(url: str, table: str = "sale_item", cols: str = SELECT) -> Iterator[tuple[Any, ...]]:
    with psycopg.connect(url) as conn, conn.cursor(name="compare") as cur:
        cur.itersize = 20_000
        cur.execute(f"SELECT {cols} FROM {table}".encode())
        yield from cur


def sqlite_rows(path: Path, table: str = "sale_item") -> Iterator[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        yield from conn.execute(f"SELECT {SELECT} FROM {table}")
    finally:
        conn.close()


def pg_digest(url: str, table: str = "sale_item") -> tuple[int, int]:
    """(count, order-independent hash sum) computed by PostgreSQL itself (fast)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) "
            f"FROM (SELECT {SELECT} FROM {table}) t".encode()
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def verify(what: str, source: Callable[[], Any], target: Callable[[], Any], rows: int) -> str:
    """Compare two digests of the same rows; raise Mismatch (exit 1) when they differ."""
    s, t = source(), target()
    if s != t or s[0] != rows:
        print(f"  !! {what}: sides DIFFER: source {s}, target {t}, expected {rows:,} rows")
        raise Mismatch(1)
    return f"verified: {rows:,} rows equal on both sides"


# --- the machine and the report -------------------------------------------------------------
def machine(admin: str = ADMIN) -> list[str]:
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
        pg = str(conn.execute("SELECT version()").fetchone()[0])  # type: ignore[index]
        maxconn = conn.execute("SHOW max_connections").fetchone()[0]  # type: ignore[index]
    tree = str(Path(__file__).resolve().parent.parent)
    head = subprocess.run(
        ["git", "-C", tree, "log", "-1", "--format=%h"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", tree, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return [
        f"CPU: {cpu}, {os.cpu_count()} cores; RAM {ram:.1f} GB; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + " at start",
        f"OS: {platform.platform()}",
        f"PostgreSQL: {pg.split(' on ')[0]} at 127.0.0.1, max_connections {maxconn}",
        f"SQLite: {sqlite3.sqlite_version}; Python {platform.python_version()}",
        f"replicator: tree at commit {head or '?'}" + (" plus uncommitted work" if dirty else ""),
    ]


@dataclass
class Figure:
    """One measured line of a scenario: a value, its baseline in the same run, the goal."""

    name: str
    value: float
    unit: str  # "s", "ms", "rows/s", "MB", ...
    baseline: str | None = None
    ratio: float | None = None  # value against the baseline, > 1 is better for us
    goal: str | None = None
    met: bool | None = None


@dataclass
class Outcome:
    scenario: str
    figures: list[Figure] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def rate(
        self,
        name: str,
        rows: int,
        seconds: float,
        base_name: str | None = None,
        base_seconds: float | None = None,
        goal: float | None = None,
    ) -> Figure:
        """rows/s, and the ratio to a baseline's rows/s over the same rows."""
        ratio = base_seconds / seconds if base_seconds else None
        return self.add(
            Figure(
                name,
                rows / seconds,
                "rows/s",
                base_name,
                ratio,
                f">= {goal:.1f}x" if goal is not None else None,
                (ratio >= goal) if goal is not None and ratio is not None else None,
            )
        )


def fmt(f: Figure) -> str:
    value = f"{f.value:,.0f}" if f.value >= 100 else f"{f.value:,.3g}"
    text = f"{f.name:<52} {value:>12} {f.unit}"
    if f.ratio is not None and f.baseline is None:
        text += "   1.00x (baseline)"
    elif f.ratio is not None:
        text += f"   {f.ratio:.2f}x of {f.baseline}"
    if f.goal:
        text += f"   goal {f.goal}: {'met' if f.met else 'NOT MET'}"
    return text
