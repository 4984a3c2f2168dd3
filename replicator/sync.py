"""Incremental sync of one job: read changes after the watermark, apply them atomically.

A batch is a version range (watermark, cut] over all tables of the group. The cut never splits
a version, so a source transaction (PostgreSQL) or a tie on the change column is never split.
The batch is read in one source snapshot, then applied in one target transaction together
with the new watermarks: a crash at any instant leaves both or neither.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from loguru import logger
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from replicator.backends import Backend, open_backend
from replicator.backends.base import ORIGIN_COLUMN, Row, chunks
from replicator.config import Job, Settings
from replicator.errors import BusyError, ReplicatorError
from replicator.mapping import MappingFile
from replicator.state import quarantine_row, read_watermarks, save_progress
from replicator.transform import TablePlan, build_plan, decode_key


@dataclass
class TableResult:
    upserts: int = 0
    deletes: int = 0
    quarantined: int = 0
    conflicts: int = 0


@dataclass
class JobResult:
    job: Job
    tables: dict[str, TableResult] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0
    skipped: str | None = None
    error: ReplicatorError | None = None

    @property
    def rows(self) -> int:
        return sum(t.upserts + t.deletes for t in self.tables.values())


@dataclass
class Changes:
    plan: TablePlan
    low: int
    rows: list[Row]
    deleted: list[Row]  # target keys


class Databases:
    """The node's open backends, one per configured database, opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._open: dict[str, Backend] = {}

    def __getitem__(self, name: str) -> Backend:
        if name not in self._open:
            self._open[name] = open_backend(self.settings.url(name), self.node(name))
        return self._open[name]

    def node(self, name: str) -> str:
        """The stable identity written as origin: the same name in every node's config."""
        return self.settings.config.databases[name].node or name

    def close(self) -> None:
        for backend in self._open.values():
            backend.dispose()
        self._open.clear()


class JobRunner:
    def __init__(self, settings: Settings, databases: Databases, job: Job) -> None:
        self.job = job
        self.group: MappingFile = settings.groups[job.group]
        self.source = databases[job.source]
        self.target = databases[job.target]
        self.source_node = databases.node(job.source)
        self.target_node = databases.node(job.target)
        self.page_rows = settings.config.sync.page_rows
        self.batch_rows = settings.config.sync.batch_rows
        self.where = f"group {job.group!r} ({settings.config.mappings / (job.group + '.yaml')})"
        self._plans: list[TablePlan] | None = None
        self.log = logger.bind(job=job.name)

    # --- plans ---------------------------------------------------------------------------
    def plans(self) -> list[TablePlan]:
        if self._plans is None:
            with self.source.engine.connect() as sconn, self.target.engine.connect() as tconn:
                self._plans = [
                    build_plan(
                        m,
                        self._reflect(self.source, sconn, m.source, "source"),
                        self._reflect(self.target, tconn, m.target_table, "target"),
                        self.job.vars,
                        self.where,
                    )
                    for m in self.group.tables
                ]
        return self._plans

    def _reflect(self, backend: Backend, conn: Connection, name: str, side: str) -> sa.Table:
        try:
            return backend.table(conn, name)
        except sa_exc.NoSuchTableError:
            raise ReplicatorError(
                f"{self.where}: {side} table {name!r} does not exist in "
                f"{backend.display_url}; fix the mapping or create the table"
            ) from None

    # --- the job -------------------------------------------------------------------------
    def run(self, max_batches: int | None = None) -> JobResult:
        result = JobResult(self.job, {p.label: TableResult() for p in self.plans()})
        started = time.perf_counter()
        try:
            while max_batches is None or result.batches < max_batches:
                more = self.batch(result)
                if more is None:
                    break
                result.batches += 1
                if not more:
                    break
        except BusyError as exc:
            result.skipped = str(exc)
            self.log.info("skipped: {}", exc)
        except ReplicatorError as exc:
            result.error = exc
            self.log.error("failed: {}", exc)
        result.seconds = time.perf_counter() - started
        if result.rows or result.error:
            self.log.info(
                "{} rows in {} batches, {:.3f}s", result.rows, result.batches, result.seconds
            )
        return result

    def batch(self, result: JobResult) -> bool | None:
        """Apply one batch. None: nothing to do; True: more may be waiting."""
        plans = self.plans()
        marks = self._watermarks()
        try:
            with self.source.read_snapshot() as sconn:
                high = self.source.safe_upper_bound(sconn)
                cut = self._cut(sconn, plans, marks, high)
                if cut is None:
                    return None
                changes = [self._read(sconn, p, marks.get(p.label, 0), cut) for p in plans]
        except sa_exc.SQLAlchemyError as exc:
            raise self.source.classify(exc) from exc
        try:
            with self.target.write(self.job.name) as tconn:
                if read_watermarks(tconn, self.target.ct, self.job.name) != marks:
                    raise BusyError("another service advanced this job meanwhile; will read again")
                self._apply(tconn, changes, cut, result)
        except sa_exc.SQLAlchemyError as exc:
            raise self.target.classify(exc) from exc
        return cut < high

    def _watermarks(self) -> dict[str, int]:
        try:
            with self.target.engine.connect() as conn:
                return read_watermarks(conn, self.target.ct, self.job.name)
        except sa_exc.ProgrammingError as exc:
            raise ReplicatorError(
                f"{self.target.display_url}: control tables are missing; run `replicator "
                "setup` first"
            ) from exc
        except sa_exc.SQLAlchemyError as exc:
            if "no such table" in str(exc):
                raise ReplicatorError(
                    f"{self.target.display_url}: control tables are missing; run "
                    "`replicator setup` first"
                ) from None
            raise self.target.classify(exc) from exc

    def pending(self, marks: dict[str, int], cap: int) -> dict[str, int]:
        """Changes waiting at the source per table (rows and deletes, counted up to cap)."""
        out = {}
        tomb = self.source.ct.tombstone
        with self.source.read_snapshot() as conn:
            for plan in self.plans():
                low = marks.get(plan.label, 0)
                origin = plan.source.c[ORIGIN_COLUMN]
                probes = [
                    sa.select(plan.version).where(
                        plan.version > low,
                        sa.or_(origin.is_(None), origin != self.target_node),
                        *plan.filters,
                    )
                ]
                if plan.deletes:
                    probes.append(
                        sa.select(tomb.c.version).where(
                            tomb.c.table_name == plan.mapping.source, tomb.c.version > low
                        )
                    )
                out[plan.label] = sum(
                    int(
                        conn.execute(
                            sa.select(sa.func.count()).select_from(p.limit(cap).subquery())
                        ).scalar()
                        or 0
                    )
                    for p in probes
                )
        return out

    # --- reading -------------------------------------------------------------------------
    def _cut(
        self, conn: Connection, plans: Sequence[TablePlan], marks: dict[str, int], high: int
    ) -> int | None:
        """The highest version such that no table has much more than batch_rows below it."""
        cut = high
        pending = False
        tomb = self.source.ct.tombstone
        for plan in plans:
            low = marks.get(plan.label, 0)
            if low >= high:
                continue
            probes = [
                sa.select(plan.version.label("v"))
                .where(plan.version > low, plan.version <= high)
                .order_by(plan.version)
                .limit(self.batch_rows),
            ]
            if plan.deletes:
                probes.append(
                    sa.select(tomb.c.version.label("v"))
                    .where(
                        tomb.c.table_name == plan.mapping.source,
                        tomb.c.version > low,
                        tomb.c.version <= high,
                    )
                    .order_by(tomb.c.version)
                    .limit(self.batch_rows)
                )
            for probe in probes:
                sub = probe.subquery()
                count, last = conn.execute(sa.select(sa.func.count(), sa.func.max(sub.c.v))).one()
                if count:
                    pending = True
                if count >= self.batch_rows:
                    cut = min(cut, int(last))
        return cut if pending else None

    def _read(self, conn: Connection, plan: TablePlan, low: int, cut: int) -> Changes:
        changes = Changes(plan, low, [], [])
        if low >= cut:
            return changes
        origin = plan.source.c[ORIGIN_COLUMN]
        not_echo = sa.or_(origin.is_(None), origin != self.target_node)
        stmt = (
            sa.select(*plan.select)
            .where(plan.version > low, plan.version <= cut, not_echo, *plan.filters)
            .order_by(plan.version, *plan.source_key)
        )
        result = conn.execution_options(stream_results=True, yield_per=self.page_rows)
        for page in result.execute(stmt).partitions():
            changes.rows.extend(tuple(r) for r in page)
        if plan.deletes:
            changes.deleted = self._deleted(conn, plan, low, cut)
        return changes

    def _deleted(self, conn: Connection, plan: TablePlan, low: int, cut: int) -> list[Row]:
        tomb = self.source.ct.tombstone
        stmt = (
            sa.select(tomb.c.key)
            .where(
                tomb.c.table_name == plan.mapping.source,
                tomb.c.version > low,
                tomb.c.version <= cut,
                sa.or_(tomb.c.origin.is_(None), tomb.c.origin != self.target_node),
            )
            .order_by(tomb.c.version)
        )
        keys = list(dict.fromkeys(decode_key(k) for (k,) in conn.execute(stmt)))
        if not keys:
            return []
        # A key deleted and inserted again is alive: the row stream carries it.
        alive: set[Row] = set()
        width = len(plan.source_key)
        size = max(1, self.source.capabilities.max_bind_params // width - 1)
        for part in chunks(keys, size):
            found = conn.execute(
                sa.select(*plan.source_key).where(
                    sa.tuple_(*plan.source_key).in_([tuple(k) for k in part])
                )
            )
            alive.update(tuple(r) for r in found)
        return [plan.target_key_from_tombstone(k) for k in keys if k not in alive]

    # --- applying ------------------------------------------------------------------------
    def _apply(self, conn: Connection, changes: list[Changes], cut: int, result: JobResult) -> None:
        self.target.mark_origin(conn, self.source_node)
        for ch in reversed(changes):  # children first, so foreign keys hold
            if ch.deleted:
                n = self.target.delete(
                    conn, ch.plan.target, ch.plan.target_key, ch.deleted, ch.plan.soft_delete
                )
                result.tables[ch.plan.label].deletes += n
        for ch in changes:  # parents first
            if ch.rows:
                self._upsert(conn, ch, result.tables[ch.plan.label])
        for ch in changes:
            if cut > ch.low:
                save_progress(
                    conn,
                    self.target.ct,
                    self.job.name,
                    ch.plan.label,
                    cut,
                    len(ch.rows),
                    len(ch.deleted),
                )
        self.target.mark_origin(conn, None)

    def _upsert(self, conn: Connection, ch: Changes, out: TableResult) -> None:
        plan = ch.plan
        bad = self._apply_rows(conn, plan, ch.rows, out)
        for row, reason in bad:
            key = list(plan.key_of(row))
            quarantine_row(
                conn,
                self.target.ct,
                self.job.name,
                plan.label,
                key,
                dict(zip(plan.columns, row, strict=True)),
                0,
                reason,
            )
            self.log.bind(table=plan.label).warning("quarantined {}: {}", key, reason)
        out.quarantined += len(bad)
        out.upserts += len(ch.rows) - len(bad)

    def _apply_rows(
        self, conn: Connection, plan: TablePlan, rows: list[Row], out: TableResult
    ) -> list[tuple[Row, str]]:
        """Apply rows; on a row error bisect to find the bad rows, keep the good ones."""
        try:
            with conn.begin_nested():
                kept = self.target.upsert(
                    conn, plan.target, plan.columns, plan.target_key, rows, plan.conflict
                )
        except sa_exc.SQLAlchemyError as exc:
            if not self.target.is_row_error(exc):
                raise
            if len(rows) == 1:
                return [(rows[0], self.target.classify(exc).args[0])]
            mid = len(rows) // 2
            return self._apply_rows(conn, plan, rows[:mid], out) + self._apply_rows(
                conn, plan, rows[mid:], out
            )
        for key in kept:
            quarantine_row(
                conn,
                self.target.ct,
                self.job.name,
                plan.label,
                list(key),
                None,
                0,
                "conflict: the target row differs and the rule is keep_target",
            )
            out.conflicts += 1
        return []


def run_jobs(
    settings: Settings,
    jobs: Sequence[Job],
    databases: Databases | None = None,
    max_batches: int | None = None,
) -> list[JobResult]:
    own = databases is None
    dbs = databases or Databases(settings)
    try:
        out = []
        for job in jobs:
            try:
                runner = JobRunner(settings, dbs, job)
                out.append(runner.run(max_batches))
            except ReplicatorError as exc:
                logger.bind(job=job.name).error("failed: {}", exc)
                out.append(JobResult(job, error=exc))
            except sa_exc.SQLAlchemyError as exc:
                err = dbs[job.target].classify(exc)
                logger.bind(job=job.name).error("failed: {}", err)
                out.append(JobResult(job, error=err))
        return out
    finally:
        if own:
            dbs.close()
