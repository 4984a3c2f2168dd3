"""Compare one table of one job by chunk checksums, then repair what differs.

Chunk bounds are source key values found by a keyset walk (`key > last ORDER BY key OFFSET
step-1 LIMIT 1`), never positions in a string collation: text key columns are compared in
code point order on both sides (`COLLATE "C"` on PostgreSQL, SQLite's BINARY). Each side
computes `(count, sum of row hashes)` of the range inside its own database
(`resync_hash`); a range whose checksums differ is split again by source keys, down to
`leaf_rows`, where both sides' rows are fetched and compared in Python (the source side of
a leaf in memory, the target side streamed): memory stays bounded whatever the table size.

Repairs go through the one apply path (`Applier.upserts` / `Applier.deletes`) inside
`Backend.write(job)`, which holds the job's lock: the current source rows are read again
under that lock, so a resync never writes a row older than what incremental sync already
applied. Positions are not moved: upserts are idempotent, and a change made meanwhile is
read again by the next incremental sync, the newer version winning.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from replicator.apply import TableRound
from replicator.backends import Backend
from replicator.backends.base import Row, chunks
from replicator.errors import BusyError, PermanentError
from replicator.quarantine import Budget, TableStopped
from replicator.resync_hash import (
    FieldSpec,
    canonical_row,
    checksum_of,
    field_specs,
    field_text,
    postgresql_sum,
    sqlite_sum,
)
from replicator.sync import JobRunner
from replicator.transform import TablePlan

CHUNK_ROWS = 10_000  # rows per top-level chunk
LEAF_ROWS = 1_000  # a differing range this small is fetched and compared row by row
FANOUT = 10  # sub-ranges per differing range
REPAIR_ROWS = 500  # keys per repair transaction (fewer on a register: see _paced)
SAMPLES = 20  # differences kept per table for the report
LOCK_WAIT = 60.0  # seconds to wait for the job's lock (a running sync) before giving up

Key = tuple[Any, ...]


@dataclass
class Checksum:
    count: int
    total: int


@dataclass
class TableReport:
    job: str
    table: str
    rows: int = 0  # source rows compared
    target_rows: int = 0
    chunks: int = 0
    fetched: int = 0  # rows downloaded to compare (both sides)
    missing: int = 0  # on the target
    extra: int = 0  # on the target only
    different: int = 0
    repaired: int = 0  # rows written
    deleted: int = 0  # extra rows deleted (or marked)
    held: int = 0  # rows the target refused (quarantined) or kept (conflicts)
    samples: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def differences(self) -> int:
        return self.missing + self.extra + self.different

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "table": self.table,
            "rows_compared": self.rows,
            "target_rows": self.target_rows,
            "chunks": self.chunks,
            "rows_fetched": self.fetched,
            "missing_on_target": self.missing,
            "extra_on_target": self.extra,
            "different": self.different,
            "repaired": self.repaired,
            "deleted": self.deleted,
            "held": self.held,
            "samples": self.samples,
            "error": self.error,
        }


@dataclass
class _Leaf:
    upsert: list[Key] = field(default_factory=list)  # source keys
    delete: list[tuple[Key, Key]] = field(default_factory=list)  # (target key, source key)


class _Side:
    """One database's view of a table's mapped rows, over ranges of the range key."""

    def __init__(
        self,
        backend: Backend,
        table: sa.Table,
        exprs: Sequence[sa.ColumnElement[Any]],
        where: Sequence[sa.ColumnElement[bool]],
        range_cols: Sequence[sa.Column[Any]],
        specs: Sequence[FieldSpec],
        key_specs: Sequence[FieldSpec],
        extra: Sequence[sa.ColumnElement[Any]] = (),
    ) -> None:
        self.backend = backend
        self.table = table
        self.exprs = list(exprs)
        self.where = list(where)
        self.range_cols = list(range_cols)
        self.specs = list(specs)
        self.key_specs = list(key_specs)
        self.extra = list(extra)  # selected after the mapped columns (the source key)
        self.zone = backend.timezone
        self.pg = backend.dialect == "postgresql"
        self._agg = f"repl_resync_{id(self) & 0xFFFFFF}"

    def ordered(self) -> list[Any]:
        """The range columns, text in code point order on every backend."""
        out: list[Any] = []
        for col in self.range_cols:
            text = isinstance(col.type, sa.String) and self.pg
            out.append(col.collate("C") if text else col)
        return out

    def in_range(self, lo: Key | None, hi: Key | None) -> list[sa.ColumnElement[bool]]:
        cols = self.ordered()
        cond: list[sa.ColumnElement[bool]] = []
        for bound, after in ((lo, True), (hi, False)):
            if bound is None:
                continue
            values = [
                sa.literal(v, type_=c.type) for v, c in zip(bound, self.range_cols, strict=True)
            ]
            left, right = sa.tuple_(*cols), sa.tuple_(*values)
            cond.append(left > right if after else left <= right)
        return cond

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A short read transaction (read only on PostgreSQL)."""
        with self.backend.engine.connect() as conn, conn.begin():
            if self.pg:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            yield conn

    def checksum(self, lo: Key | None, hi: Key | None) -> Checksum:
        with self.connect() as conn:
            if self.pg:
                total: Any = postgresql_sum(self.specs, self.exprs, self.zone)
            else:
                total = sqlite_sum(conn, self._agg, self.specs, self.exprs, self.zone)
            stmt = (
                sa.select(sa.func.count(), total)
                .select_from(self.table)
                .where(*self.where, *self.in_range(lo, hi))
            )
            count, value = conn.execute(stmt).one()
            return Checksum(int(count or 0), checksum_of(value) if count else 0)

    def next_bound(self, after: Key | None, hi: Key | None, step: int) -> Key | None:
        """The `step`-th range key after `after` (within `hi`), or None."""
        with self.connect() as conn:
            stmt = (
                sa.select(*self.range_cols)
                .where(*self.where, *self.in_range(after, hi))
                .order_by(*self.ordered())
                .offset(step - 1)
                .limit(1)
            )
            row = conn.execute(stmt).first()
            return tuple(row) if row is not None else None

    def rows(self, lo: Key | None, hi: Key | None, page: int) -> Iterator[Sequence[Row]]:
        with self.connect() as conn:
            stmt = sa.select(*self.exprs, *self.extra).where(*self.where, *self.in_range(lo, hi))
            result = conn.execute(
                stmt, execution_options={"stream_results": True, "yield_per": page}
            )
            try:
                yield from result.partitions()
            finally:
                result.close()

    def key_text(self, values: Sequence[Any]) -> tuple[Any, ...]:
        out: list[Any] = []
        for spec, v in zip(self.key_specs, values, strict=True):
            text = field_text(spec, v, self.zone)
            if spec.kind in ("int", "dec") and text is not None:
                try:
                    out.append(Decimal(text))
                    continue
                except ArithmeticError:
                    pass
            out.append(text)
        return tuple(out)


class TableResync:
    """Compare (and unless dry_run, repair) one table of one job."""

    def __init__(
        self,
        runner: JobRunner,
        plan: TablePlan,
        *,
        dry_run: bool,
        delete_extra: bool,
        progress: Callable[[TableReport, int], None] | None = None,
        chunk_rows: int = CHUNK_ROWS,
        leaf_rows: int = LEAF_ROWS,
    ) -> None:
        self.r = runner
        self.plan = plan
        self.dry_run = dry_run
        self.delete = delete_extra or plan.deletes
        self.progress = progress
        self.chunk_rows = chunk_rows
        self.leaf_rows = leaf_rows
        self.report = TableReport(runner.job.name, plan.label)
        self.round = TableRound(plan, Budget(plan.label, runner.target.bisect_seconds))
        self._build()

    # --- setting up both sides ------------------------------------------------------------
    def _build(self) -> None:
        plan = self.plan
        zone = self.r.target.timezone or "UTC"
        specs = field_specs(plan.target, plan.columns, zone)
        # per source key column: the target key column it becomes
        self.range_target: list[str] = []
        for i, name in enumerate(plan.mapping.key):
            found = [
                k for k, src in zip(plan.target_key, plan.key_from_source, strict=True) if src == i
            ]
            if not found:
                raise PermanentError(
                    f"table {plan.label!r}: key column {name!r} does not reach the target key "
                    f"{plan.target_key}; resync compares rows by it: add it to target_key"
                )
            self.range_target.append(found[0])
        key_specs = [specs[plan.columns.index(k)] for k in self.range_target]
        restrict = [
            plan.target.c[k] == v
            for k, i, v in zip(
                plan.target_key, plan.key_from_source, plan.key_constants, strict=True
            )
            if i is None
        ]
        if plan.soft_delete:  # a row marked deleted is not there for the comparison
            restrict.append(plan.target.c[plan.soft_delete].is_distinct_from(sa.true()))
        self.source = _Side(
            self.r.source,
            plan.source,
            plan.select,
            plan.filters,
            plan.source_key,
            specs,
            key_specs,
            extra=[c.label(f"repl_key_{i}") for i, c in enumerate(plan.source_key)],
        )
        self.target = _Side(
            self.r.target,
            plan.target,
            [plan.target.c[c] for c in plan.columns],
            restrict,
            [plan.target.c[k] for k in self.range_target],
            specs,
            key_specs,
        )
        self._range_index = [plan.columns.index(k) for k in self.range_target]

    # --- the walk ----------------------------------------------------------------------------
    def run(self) -> TableReport:
        rep = self.report
        try:
            lo: Key | None = None
            while True:
                hi = self.source.next_bound(lo, None, self.chunk_rows)
                self._range(lo, hi, top=True)
                if hi is None:
                    break
                lo = hi
        except TableStopped as exc:
            rep.error = str(exc)
        except sa_exc.SQLAlchemyError as exc:
            raise self.r.target.classify(exc) from exc
        return rep

    def _range(self, lo: Key | None, hi: Key | None, top: bool = False) -> None:
        s, t = self.source.checksum(lo, hi), self.target.checksum(lo, hi)
        rep = self.report
        if top:
            rep.chunks += 1
        if s.count == t.count and s.total == t.total:
            if top:
                rep.rows += s.count
                rep.target_rows += t.count
                self._tick(s.count)
            return
        if s.count > self.leaf_rows:
            step = max(self.leaf_rows, -(-s.count // FANOUT))
            start = lo
            while True:
                end = self.source.next_bound(start, hi, step)
                if end is None:
                    self._range(start, hi)
                    break
                self._range(start, end)
                start = end
        else:
            self._leaf(lo, hi)
        if top:
            rep.rows += s.count
            rep.target_rows += t.count
            self._tick(s.count)

    def _tick(self, rows: int) -> None:
        if self.progress is not None:
            self.progress(self.report, rows)

    # --- a leaf: rows compared in Python --------------------------------------------------------
    def _leaf(self, lo: Key | None, hi: Key | None) -> None:
        plan, rep = self.plan, self.report
        n = plan.width
        wanted: dict[tuple[Any, ...], tuple[list[str | None], Key]] = {}
        for page in self.source.rows(lo, hi, self.leaf_rows):
            for row in page:
                skey = tuple(row[n:])
                fields = canonical_row(self.source.specs, row[:n], self.source.zone)
                wanted[self.source.key_text(skey)] = (fields, skey)
                rep.fetched += 1
        todo = _Leaf()
        for page in self.target.rows(lo, hi, self.leaf_rows):
            for row in page:
                rep.fetched += 1
                rkey = tuple(row[i] for i in self._range_index)
                there = canonical_row(self.target.specs, row, self.target.zone)
                mine = wanted.pop(self.target.key_text(rkey), None)
                if mine is None:
                    rep.extra += 1
                    self._sample("extra", plan.target_key_text(tuple(row)), None)
                    tkey = tuple(row[plan.columns.index(k)] for k in plan.target_key)
                    todo.delete.append((tkey, rkey))
                elif mine[0] != there:
                    rep.different += 1
                    cols = [
                        c for c, a, b in zip(plan.columns, mine[0], there, strict=True) if a != b
                    ]
                    self._sample("different", plan.target_key_text(tuple(row)), cols)
                    todo.upsert.append(mine[1])
                if len(todo.delete) >= REPAIR_ROWS:
                    self._repair(todo)
                    todo = _Leaf()
        for _, skey in wanted.values():
            rep.missing += 1
            self._sample("missing", plan.source_codec.text(skey), None)
            todo.upsert.append(skey)
        self._repair(todo)

    def _sample(self, what: str, key: str, columns: list[str] | None) -> None:
        if len(self.report.samples) < SAMPLES:
            item: dict[str, Any] = {"kind": what, "key": key}
            if columns is not None:
                item["columns"] = columns
            self.report.samples.append(item)

    # --- repairs ---------------------------------------------------------------------------------
    def _repair(self, todo: _Leaf) -> None:
        if self.dry_run:
            return
        for part in chunks(todo.upsert, REPAIR_ROWS):
            self._paced(list(part), self._upsert)
        if self.delete and todo.delete:
            for part in chunks(todo.delete, REPAIR_ROWS):
                self._paced(list(part), self._delete)

    def _paced(self, items: list[Any], fn: Callable[[Connection, list[Any]], None]) -> None:
        """Short target transactions: on a register, at most about write_hold_seconds each,
        then the pause a waiting sale needs (the same pacing as incremental sync)."""
        target = self.r.target
        hold = target.write_hold_seconds
        size = len(items) if hold is None else min(len(items), 100)
        start = 0
        while start < len(items):
            part = items[start : start + size]

            def step(conn: Connection, part: list[Any] = part) -> None:
                fn(conn, part)

            held = self._locked(step)
            start += len(part)
            if hold is not None:
                factor = min(1.5, max(0.25, hold * 0.8 / max(held, 1e-3)))
                size = max(20, min(REPAIR_ROWS, int(size * factor)))
                time.sleep(target.pause_after(held))

    def _locked(self, fn: Callable[[Connection], None]) -> float:
        """Run `fn` in one target write transaction holding the job's lock; seconds held."""
        target, deadline, wait = self.r.target, time.monotonic() + LOCK_WAIT, 0.1
        while True:
            try:
                with target.write(self.r.job.name) as conn:
                    opened = time.monotonic()
                    self.round.budget.new_transaction()
                    target.mark_origin(conn, self.r.source_node)
                    fn(conn)
                    target.mark_origin(conn, None)
                return time.monotonic() - opened
            except BusyError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(wait)
                wait = min(2.0, wait * 2)
            except sa_exc.SQLAlchemyError as exc:
                raise target.classify(exc) from exc

    def _upsert(self, conn: Connection, keys: list[Key]) -> None:
        """The current source rows of `keys`, read under the job's lock, applied."""
        with self.r.source.engine.connect() as sconn:
            found = self.r.reader.current(sconn, self.plan, keys)
        found = [c for c in found if c.wanted and c.version is not None]
        if not found:
            return
        tally = self.round.tally
        before = (tally.upserts, tally.quarantined + tally.conflicts)
        with conn.begin_nested():
            self.r.applier.upserts(
                conn,
                self.round,
                [c.row for c in found],
                [c.source_key for c in found],
                [c.version for c in found],
            )
        self.report.repaired += tally.upserts - before[0]
        self.report.held += tally.quarantined + tally.conflicts - before[1]

    def _delete(self, conn: Connection, items: list[tuple[Key, Key]]) -> None:
        """Extra target rows whose key the source still lacks, under the job's lock."""
        with self.r.source.engine.connect() as sconn:
            alive = self.r.reader.alive(sconn, self.plan, [s for _, s in items])
        gone = [(t, s) for t, s in items if self.plan.source_codec.text(s) not in alive]
        if not gone:
            return
        tally = self.round.tally
        before = (tally.deletes, tally.quarantined + tally.conflicts)
        with conn.begin_nested():
            self.r.applier.deletes(conn, self.round, [t for t, _ in gone], [s for _, s in gone])
        self.report.deleted += tally.deletes - before[0]
        self.report.held += tally.quarantined + tally.conflicts - before[1]


def source_rows(runner: JobRunner, plan: TablePlan) -> int:
    """How many source rows a table's resync compares (for the progress bar)."""
    with runner.source.engine.connect() as conn:
        stmt = sa.select(sa.func.count()).select_from(plan.source).where(*plan.filters)
        return int(conn.execute(stmt).scalar() or 0)
