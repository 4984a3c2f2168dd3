"""Insert-only movement, register -> server: N new sale-item rows.

- PostgreSQL -> PostgreSQL. Baselines: raw binary COPY out of the source into an empty table
  of the target (`COPY (SELECT ...) TO STDOUT` piped into `COPY ... FROM STDIN`), and psycopg
  COPY of the same rows, already in Python, into an empty table (the write alone).
- SQLite -> PostgreSQL. Baselines: raw COPY out+in of the same rows between two PostgreSQL
  tables, and a hand-written sqlite3 read + psycopg binary COPY.
- MariaDB / Firebird -> PostgreSQL, when replicator/backends/<kind>.py exists and a server is
  reachable at BENCH_<KIND>_URL (a SQLAlchemy URL); skipped with the reason otherwise.

The source rows are written after `replicator setup`, in transactions of 10,000 rows, so they
carry many versions as sales do. Each repeat empties the target and its job state.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sqlite3
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    COLS,
    KEY,
    PG_TYPES,
    SELECT,
    Cluster,
    Figure,
    Node,
    Outcome,
    checksum,
    fill_pg,
    fill_sqlite,
    mapping,
    median,
    node_config,
    pg_ddl,
    pg_digest,
    pg_rows,
    sqlite_file,
    sqlite_rows,
    timed,
    verify,
)

MOVEMENT = {"movimento": mapping("movimento", "register_to_server")}
GOAL_PG = 0.7
GOAL_SQLITE_RAW = 0.5
GOAL_SQLITE_HAND = 0.9


def reset_target(url: str) -> None:
    """An empty target table and no job state: the next sync starts from the beginning."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE sale_item")
        for t in ("state", "job", "mapping_print", "quarantine", "fence"):
            conn.execute(f"DELETE FROM replicator.{t}".encode())
        conn.execute("VACUUM ANALYZE sale_item")


def raw_copy(source: str, target: str, table: str = "sale_item") -> float:
    """COPY the rows out (binary) and into an empty table: the floor for moving rows."""
    with psycopg.connect(target, autocommit=True) as t:
        t.execute("TRUNCATE base_item")
    with psycopg.connect(source) as s, psycopg.connect(target) as t:
        out_sql = f"COPY (SELECT {SELECT} FROM {table}) TO STDOUT (FORMAT binary)"

        def run() -> None:
            with (
                s.cursor().copy(out_sql.encode()) as out,
                t.cursor().copy(f"COPY base_item ({SELECT}) FROM STDIN (FORMAT binary)") as into,
            ):
                for block in out:
                    into.write(block)
            t.commit()

        return timed(run)


def copy_rows(rows: list[tuple[Any, ...]], target: str) -> float:
    """psycopg binary COPY of rows already in Python into an empty table."""
    with psycopg.connect(target, autocommit=True) as t:
        t.execute("TRUNCATE base_item")
    with psycopg.connect(target) as t:

        def run() -> None:
            with t.cursor().copy(f"COPY base_item ({SELECT}) FROM STDIN (FORMAT binary)") as c:
                c.set_types(PG_TYPES)
                for row in rows:
                    c.write_row(row)
            t.commit()

        return timed(run)


def _num(v: Any) -> Decimal | None:
    return None if v is None else Decimal(repr(v) if isinstance(v, float) else str(v))


def sqlite_to_pg_by_hand(register: Path, target: str) -> float:
    """sqlite3 read, values made Decimal/datetime/date, psycopg binary COPY, one commit."""
    with psycopg.connect(target, autocommit=True) as t:
        t.execute("TRUNCATE base_item")

    def run() -> None:
        conn = sqlite3.connect(register)
        try:
            with psycopg.connect(target) as pg:
                with pg.cursor().copy(f"COPY base_item ({SELECT}) FROM STDIN (FORMAT binary)") as c:
                    c.set_types(PG_TYPES)
                    for r in conn.execute(f"SELECT {SELECT} FROM sale_item"):
                        c.write_row(
                            (
                                r[0],
                                r[1],
                                r[2],
                                r[3],
                                _num(r[4]),
                                _num(r[5]),
                                _num(r[6]),
                                _num(r[7]),
                                datetime.fromisoformat(r[8]).replace(tzinfo=UTC),
                                date.fromisoformat(r[9]),
                                r[10],
                            )
                        )
                pg.commit()
        finally:
            conn.close()

    return timed(run)


def _replicate(node: Node, target: str, repeats: int, rows: int) -> list[float]:
    out = []
    for _ in range(repeats):
        reset_target(target)
        seconds = timed(node.sync)
        out.append(seconds)
    with psycopg.connect(target) as conn:
        count = conn.execute("SELECT count(*) FROM sale_item").fetchone()[0]  # type: ignore[index]
    if count != rows:
        raise SystemExit(f"the target holds {count} rows after the sync, not {rows}")
    return out


def pg_to_pg(cluster: Cluster, work: Path, rows: int, repeats: int) -> Outcome:
    out = Outcome("insert-only PostgreSQL -> PostgreSQL")
    source, target = cluster.create("ins_src"), cluster.create("ins_dst")
    for url in (source, target):
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(pg_ddl().encode())
            c.execute(pg_ddl("base_item").encode())
    d = work / "ins_pg"
    d.mkdir()
    with Node(node_config(d, target, source, MOVEMENT)) as node:
        node.setup()
        fill_pg(source, 0, rows, per_tx=10_000)
        with psycopg.connect(source, autocommit=True) as c:
            c.execute("VACUUM ANALYZE sale_item")
        raw = [raw_copy(source, target) for _ in range(repeats)]
        in_python = list(pg_rows(source))
        write = [copy_rows(in_python, target) for _ in range(repeats)]
        del in_python
        ours = _replicate(node, target, repeats, rows)
    base = median(raw)
    out.add(Figure("raw COPY out+in (baseline)", rows / base, "rows/s", None, 1.0))
    out.add(
        Figure(
            "psycopg COPY of rows in Python, write only",
            rows / median(write),
            "rows/s",
            "raw COPY",
            base / median(write),
        )
    )
    out.rate("replicator sync", rows, median(ours), "raw COPY", base, GOAL_PG)
    out.rate(
        "replicator sync vs the write alone", rows, median(ours), "psycopg COPY", median(write)
    )
    out.verified.append(
        verify("PG -> PG", lambda: pg_digest(source), lambda: pg_digest(target), rows)
    )
    out.notes.append(f"runs of each: {repeats}; replicator seconds {sorted(ours)}")
    cluster.drop(source)
    cluster.drop(target)
    return out


def sqlite_to_pg(cluster: Cluster, work: Path, rows: int, repeats: int) -> Outcome:
    out = Outcome("insert-only SQLite -> PostgreSQL")
    target = cluster.create("ins_sq_dst")
    with psycopg.connect(target, autocommit=True) as c:
        c.execute(pg_ddl().encode())
        c.execute(pg_ddl("base_item").encode())
        c.execute(pg_ddl("pg_copy").encode())
    d = work / "ins_sqlite"
    d.mkdir()
    register = sqlite_file(d / "caixa02.db")
    with Node(node_config(d, target, f"sqlite:///{register}", MOVEMENT)) as node:
        node.setup()
        fill_sqlite(register, 0, rows, per_tx=10_000)
        # the same rows in PostgreSQL, for the raw COPY baseline
        by_hand = [sqlite_to_pg_by_hand(register, target) for _ in range(repeats)]
        with psycopg.connect(target, autocommit=True) as c:
            c.execute("INSERT INTO pg_copy SELECT * FROM base_item")
            c.execute("VACUUM ANALYZE pg_copy")
        raw = [raw_copy(target, target, "pg_copy") for _ in range(repeats)]
        ours = _replicate(node, target, repeats, rows)
    out.add(
        Figure(
            "raw COPY out+in of the same rows (baseline)", rows / median(raw), "rows/s", None, 1.0
        )
    )
    out.add(
        Figure(
            "hand-written sqlite3 read + binary COPY",
            rows / median(by_hand),
            "rows/s",
            "raw COPY",
            median(raw) / median(by_hand),
        )
    )
    out.rate("replicator sync", rows, median(ours), "raw COPY", median(raw), GOAL_SQLITE_RAW)
    out.rate(
        "replicator sync vs hand-written",
        rows,
        median(ours),
        "hand-written",
        median(by_hand),
        GOAL_SQLITE_HAND,
    )
    out.verified.append(
        verify(
            "SQLite -> PG",
            lambda: checksum(sqlite_rows(register)),
            lambda: checksum(pg_rows(target)),
            rows,
        )
    )
    out.notes.append(f"runs of each: {repeats}; replicator seconds {sorted(ours)}")
    cluster.drop(target)
    return out


# --- engines other backends bring -------------------------------------------------------------
def other_backend(kind: str, cluster: Cluster, work: Path, rows: int, repeats: int) -> Outcome:
    """<kind> register -> PostgreSQL server, when the backend and a server are there."""
    out = Outcome(f"insert-only {kind} -> PostgreSQL")
    if importlib.util.find_spec(f"replicator.backends.{kind}") is None:
        out.skipped = f"replicator/backends/{kind}.py does not exist yet"
        return out
    url = os.environ.get(f"BENCH_{kind.upper()}_URL")
    if not url:
        out.skipped = f"no {kind} server given: set BENCH_{kind.upper()}_URL to a SQLAlchemy URL"
        return out
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect():
            pass
    except Exception as exc:  # whatever the driver raises: the server is not there
        out.skipped = f"{kind} server at {engine.url!r} not reachable: {exc}"
        engine.dispose()
        return out
    md = sa.MetaData()
    table = sa.Table(
        "sale_item",
        md,
        sa.Column("register_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sale_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("line_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("product_id", sa.Integer, nullable=False),
        sa.Column("quantity", sa.Numeric(12, 3), nullable=False),
        sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
        sa.Column("discount", sa.Numeric(12, 2)),
        sa.Column("total", sa.Numeric(12, 2), nullable=False),
        sa.Column("sold_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("booked_on", sa.Date, nullable=False),
        sa.Column("note", sa.String(100)),
    )
    target = cluster.create(f"ins_{kind}_dst")
    with psycopg.connect(target, autocommit=True) as c:
        c.execute(pg_ddl().encode())
        c.execute(pg_ddl("base_item").encode())
    d = work / f"ins_{kind}"
    d.mkdir()
    try:
        with engine.begin() as conn:
            table.drop(conn, checkfirst=True)
            table.create(conn)
        # a password in the bench's URL reaches the config by reference, as in a store
        plain = engine.url._replace(password=None).render_as_string(hide_password=False)
        extra = ""
        if engine.url.password:
            os.environ["BENCH_REGISTER_PASSWORD"] = str(engine.url.password)
            extra = 'password_env = "BENCH_REGISTER_PASSWORD"'
        with Node(node_config(d, target, plain, MOVEMENT, register_extra=extra)) as node:
            node.setup()
            source = pg_rows_like(cluster, rows)
            with engine.begin() as conn:
                for k in range(0, rows, 10_000):
                    conn.execute(
                        table.insert(),
                        [dict(zip(COLS, r, strict=True)) for r in source[k : k + 10_000]],
                    )
            ours = _replicate(node, target, repeats, rows)
        with engine.connect() as conn:
            there = [tuple(r) for r in conn.execute(sa.select(*table.c))]
        out.rate("replicator sync", rows, median(ours))
        out.verified.append(
            verify(
                f"{kind} -> PG",
                lambda: checksum(there),
                lambda: checksum(pg_rows(target)),
                rows,
            )
        )
    finally:
        with contextlib.suppress(Exception), engine.begin() as conn:
            table.drop(conn, checkfirst=True)
        engine.dispose()
        cluster.drop(target)
    return out


def pg_rows_like(cluster: Cluster, rows: int) -> list[tuple[Any, ...]]:
    """The data set's rows as Python values (timestamps naive, in UTC), made by PostgreSQL."""
    url = cluster.create("rows")
    try:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(pg_ddl().encode())
        fill_pg(url, 0, rows)
        return [(*r[:8], r[8].replace(tzinfo=None), *r[9:]) for r in pg_rows(url)]
    finally:
        cluster.drop(url)


def run(cluster: Cluster, work: Path, rows: int, repeats: int, quick: bool) -> list[Outcome]:
    outcomes = [pg_to_pg(cluster, work, rows, repeats), sqlite_to_pg(cluster, work, rows, repeats)]
    for kind in ("mariadb", "firebird"):
        outcomes.append(other_backend(kind, cluster, work, rows, repeats))
    return outcomes


__all__ = ["KEY", "run"]
