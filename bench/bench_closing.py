"""`replicator closing` on a server holding many registers' history: seconds and peak RSS.

    python bench/bench_closing.py [--registers 200] [--days 30] [--sales 2000]
                                  [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--keep]

Builds a PostgreSQL server database whose `sale` and `payment` tables hold `--days` days of
`--sales` sales for each of `--registers` registers (the earlier days generated in SQL, the
last day replicated for real from one SQLite file per register, which holds that day), then
times, each in a fresh process (peak RSS of that process):

- baseline: starting the command line (imports, config), and `replicator status` over the
  same jobs;
- `closing` for one day and one register (every row of the day compared);
- `closing` for one day and all registers (counts and sums on both sides; rows compared only
  where they differ), then with `--full` (every row of every register);

first with only the primary keys on the server, then with the index docs/closing.md
recommends, `sale (store_id, register_id, opened_at)`. Goal: all registers under 2 s and
150 MB. `--keep` keeps the database and the register files for another run (`--reuse DIR`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import sqlalchemy as sa

BRT = timezone(timedelta(hours=-3))
FIRST_DAY = datetime(2026, 11, 1, 8, 0, tzinfo=BRT)
STEP_SECONDS = 20  # between two sales of a register
DB = "repl_bench_closing"
METHODS = ("pix", "cartão de débito", "cartão de crédito", "dinheiro")

SERVER_DDL = [
    "CREATE TABLE product (product_id integer PRIMARY KEY, name varchar(60) NOT NULL, "
    "price numeric(12,2) NOT NULL, updated_at timestamptz NOT NULL)",
    "CREATE TABLE price (store_id integer, product_id integer, price numeric(12,2) NOT NULL, "
    "valid_from timestamptz NOT NULL, PRIMARY KEY (store_id, product_id))",
    "CREATE TABLE sale (store_id integer NOT NULL, register_id integer NOT NULL, "
    "sale_id integer NOT NULL, opened_at timestamptz NOT NULL, status varchar(10) NOT NULL, "
    "total numeric(12,2) NOT NULL)",
    "CREATE TABLE payment (store_id integer NOT NULL, register_id integer NOT NULL, "
    "sale_id integer NOT NULL, seq integer NOT NULL, method varchar(20) NOT NULL, "
    "amount numeric(12,2) NOT NULL)",
]
REGISTER_DDL = [
    "CREATE TABLE product (product_id INTEGER PRIMARY KEY, name VARCHAR(60) NOT NULL, "
    "price NUMERIC(12,2) NOT NULL, updated_at DATETIME NOT NULL)",
    "CREATE TABLE price (store_id INTEGER, product_id INTEGER, price NUMERIC(12,2) NOT NULL, "
    "valid_from DATETIME NOT NULL, PRIMARY KEY (store_id, product_id))",
    "CREATE TABLE sale (sale_id INTEGER PRIMARY KEY, opened_at DATETIME NOT NULL, "
    "status VARCHAR(1) NOT NULL, total NUMERIC(12,2) NOT NULL)",
    "CREATE TABLE payment (sale_id INTEGER NOT NULL REFERENCES sale (sale_id), "
    "seq INTEGER NOT NULL, method VARCHAR(20) NOT NULL, amount NUMERIC(12,2) NOT NULL, "
    "PRIMARY KEY (sale_id, seq))",
]
# total of sale s of register r on day d, in cents: the same formula in SQL and in Python
CENTS = "((({s}) * 37 + ({r}) * 11 + ({d})) %% 20000 + 100)"  # %% : a psycopg query

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
      status: {from: status, map: {"C": closed, "X": cancelled}}
    deletes: ignore
    closing: {date: opened_at, sums: [total], where: {status: "C"}}
  - source: payment
    key: [sale_id, seq]
    target_key: [store_id, register_id, sale_id, seq]
    columns:
      store_id: "{store_id}"
      register_id: "{register_id}"
    depends_on: [sale]
    deletes: ignore
    closing: {via: sale, date: opened_at, where: {status: "C"}, by: method, sums: [amount]}
"""
CADASTROS = """\
group: cadastros
direction: server_to_register
tables:
  - source: product
    key: [product_id]
    closing: {changed: updated_at, show: [price]}
  - source: price
    key: [store_id, product_id]
    depends_on: [product]
    where: {store_id: "{store_id}"}
    closing: {changed: valid_from, show: [price]}
"""


def history(admin: str, registers: int, days: int, sales: int) -> str:
    """The server database with days 1..days-1 of every register, generated in SQL."""
    base = admin.rsplit("/", 1)[0]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB}"')
    url = f"{base}/{DB}"
    start = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in SERVER_DDL:
            conn.execute(stmt)
        conn.execute(
            "INSERT INTO product SELECT g, 'produto ' || g, 1 + g * 0.25, "
            "now() - interval '30 days' FROM generate_series(1, 100) g"
        )
        conn.execute("INSERT INTO price SELECT 1, product_id, price, updated_at FROM product")
        cents = CENTS.format(s="s", r="r", d="d")
        conn.execute(
            f"""INSERT INTO sale SELECT 1, r, d * {sales} + s,
                %s::timestamptz + d * interval '1 day' + s * interval '{STEP_SECONDS} s',
                'closed', {cents} / 100.0
            FROM generate_series(0, {days - 2}) d, generate_series(1, {registers}) r,
                 generate_series(1, {sales}) s""",
            (FIRST_DAY,),
        )
        conn.execute(
            """INSERT INTO payment SELECT store_id, register_id, sale_id, 1,
                (ARRAY['pix','cartão de débito','cartão de crédito','dinheiro'])[1 + sale_id % 4],
                CASE WHEN sale_id % 3 = 0 THEN total - 1 ELSE total END FROM sale"""
        )
        conn.execute(
            "INSERT INTO payment SELECT store_id, register_id, sale_id, 2, 'dinheiro', 1 "
            "FROM sale WHERE sale_id % 3 = 0"
        )
        conn.execute("ALTER TABLE sale ADD PRIMARY KEY (store_id, register_id, sale_id)")
        conn.execute("ALTER TABLE payment ADD PRIMARY KEY (store_id, register_id, sale_id, seq)")
        conn.execute("VACUUM ANALYZE")
    print(f"server history: {time.perf_counter() - start:.0f} s", flush=True)
    return url.replace("postgresql://", "postgresql+psycopg://")


def register_day(path: Path, register: int, day: int, sales: int) -> None:
    """One register's SQLite file with its sales of `day` (local time, as a POS writes it)."""
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        for stmt in REGISTER_DDL:
            conn.exec_driver_sql(stmt)
        rows, pays = [], []
        for s in range(1, sales + 1):
            sale_id = day * sales + s
            opened = FIRST_DAY + timedelta(days=day, seconds=s * STEP_SECONDS)
            total = Decimal((s * 37 + register * 11 + day) % 20000 + 100) / 100
            rows.append((sale_id, opened.replace(tzinfo=None).isoformat(sep=" "), "C", str(total)))
            method = METHODS[sale_id % 4]
            if sale_id % 3 == 0:
                pays += [(sale_id, 1, method, str(total - 1)), (sale_id, 2, "dinheiro", "1")]
            else:
                pays.append((sale_id, 1, method, str(total)))
        conn.exec_driver_sql("INSERT INTO sale VALUES (?, ?, ?, ?)", rows)
        conn.exec_driver_sql("INSERT INTO payment VALUES (?, ?, ?, ?)", pays)
    engine.dispose()


def node(directory: Path, server: str, registers: int) -> Path:
    (directory / "mappings").mkdir(parents=True, exist_ok=True)
    (directory / "mappings" / "movimento.yaml").write_text(MOVIMENTO, "utf-8")
    (directory / "mappings" / "cadastros.yaml").write_text(CADASTROS, "utf-8")
    text = [
        'mappings = "mappings"',
        '[node]\nname = "bench-server"\nstore_id = 1\ntimezone = "America/Sao_Paulo"',
        '[log]\nlevel = "WARNING"',
        f'[databases.server]\nrole = "server"\nurl = "{server}"',
    ]
    for r in range(1, registers + 1):
        text.append(
            f'[databases.caixa{r}]\nrole = "register"\nurl = "sqlite:///caixa{r}.db"\n'
            f"vars = {{ register_id = {r} }}"
        )
    text += ['[[jobs]]\ngroup = "movimento"', '[[jobs]]\ngroup = "cadastros"']
    config = directory / "replicator.toml"
    config.write_text("\n\n".join(text) + "\n", "utf-8")
    return config


def replicate(config: Path) -> None:
    from replicator.config import load_settings
    from replicator.log import setup_logging
    from replicator.sync import Databases, run_jobs
    from replicator.tracking import install

    setup_logging("WARNING")
    settings = load_settings(config)
    dbs = Databases(settings)
    try:
        start = time.perf_counter()
        install(settings, dbs)
        for result in run_jobs(settings, settings.jobs(), dbs):
            if result.error:
                raise SystemExit(f"{result.job.name}: {result.error}")
        print(f"setup and first sync: {time.perf_counter() - start:.0f} s", flush=True)
    finally:
        dbs.close()


RUNNER = (
    "import sys; from replicator.cli import cli; from replicator.closing import closing_command;"
    "cli.add_command(closing_command) if 'closing' not in cli.commands else None;"
    "cli(sys.argv[1:], prog_name='replicator')"
)


def measure(args: list[str], runs: int, expect: int = 0) -> tuple[float, float]:
    """Median seconds and the largest peak RSS (MB) of `replicator ARGS` in fresh processes."""
    seconds, peaks = [], []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds.append(time.perf_counter() - start)
        peaks.append(usage.ru_maxrss / 1024)
        code = os.waitstatus_to_exitcode(status)
        if code != expect:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise SystemExit(f"replicator {' '.join(args)} exited {code}: {err[-2000:]}")
    return statistics.median(seconds), max(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registers", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--sales", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    parser.add_argument("--reuse", type=Path, help="a folder kept by --keep")
    a = parser.parse_args()
    base = a.pg.rsplit("/", 1)[0]
    if a.reuse:
        folder = a.reuse
        config = folder / "replicator.toml"
    else:
        folder = Path(tempfile.mkdtemp(prefix="bench-closing-"))
        server = history(a.pg, a.registers, a.days, a.sales)
        start = time.perf_counter()
        for r in range(1, a.registers + 1):
            register_day(folder / f"caixa{r}.db", r, a.days - 1, a.sales)
        print(f"{a.registers} register files: {time.perf_counter() - start:.0f} s", flush=True)
        config = node(folder, server, a.registers)
        replicate(config)
    day = (FIRST_DAY + timedelta(days=a.days - 1)).date().isoformat()
    with psycopg.connect(f"{base}/{DB}") as conn:
        sales = conn.execute("SELECT count(*) FROM sale").fetchone()
        payments = conn.execute("SELECT count(*) FROM payment").fetchone()
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        print(
            f"server: {sales[0] if sales else 0:,} sales, {payments[0] if payments else 0:,} "
            f"payments, {size.fetchone()[0]}; closing day {day}",  # type: ignore[index]
            flush=True,
        )
    c = ["-c", str(config)]
    rows = []
    floor = measure([*c, "--help"], a.runs)
    rows.append(("baseline: start the command line", *floor))
    rows.append(("baseline: status (every job)", *measure([*c, "status", "--json"], a.runs)))
    for index in (False, True):
        with psycopg.connect(f"{base}/{DB}", autocommit=True) as conn:
            if index:
                conn.execute(
                    "CREATE INDEX IF NOT EXISTS sale_day ON sale (store_id, register_id, opened_at)"
                )
            else:
                conn.execute("DROP INDEX IF EXISTS sale_day")
            conn.execute("ANALYZE sale")
        tag = "with index" if index else "primary keys only"
        closing = [*c, "closing", "--json", "--date", day]
        rows.append(
            (f"closing, 1 register ({tag})", *measure([*closing, "--register", "1"], a.runs))
        )
        rows.append((f"closing, all registers ({tag})", *measure(closing, a.runs)))
        rows.append(
            (f"closing --full, all registers ({tag})", *measure([*closing, "--full"], a.runs))
        )
    print()
    print("| run | seconds | x start | peak RSS |")
    print("|---|---:|---:|---:|")
    for name, seconds, peak in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / floor[0]:.1f}x | {peak:.0f} MB |")
    if not a.keep and not a.reuse:
        with psycopg.connect(a.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"\nkept: {folder} and database {DB}; again with --reuse {folder}")


if __name__ == "__main__":
    main()
