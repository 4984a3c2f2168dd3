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

from replicator.apply import Applier
from replicator.backends import Backend, open_backend
from replicator.backends.base import Row
from replicator.config import Job, Settings
from replicator.errors import BusyError, ReplicatorError
from replicator.mapping import MappingFile
from replicator.read import RETRY_LIMIT, Reader
from replicator.state import open_quarantine, read_watermarks, reset_watermarks
from replicator.transform import TablePlan, build_plan


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


class Databases:
    """The node's open backends, one per configured database, opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._open: dict[str, Backend] = {}

    def __getitem__(self, name: str) -> Backend:
        if name not in self._open:
            self._open[name] = open_backend(
                self.settings.url(name), self.node(name), self.settings.config.sync.lock_timeout_ms
            )
        return self._open[name]

    def node(self, name: str) -> str:
        return self.settings.node(name)

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
        self.source_node = job.source_node
        self.target_node = job.target_node
        self.page_rows = settings.config.sync.page_rows
        self.batch_rows = settings.config.sync.batch_rows
        self.where = f"group {job.group!r} ({settings.config.mappings / (job.group + '.yaml')})"
        self._plans: list[TablePlan] | None = None
        self.reader = Reader(
            self.source,
            self.target_node,
            self.batch_rows,
            self.page_rows,
            same_kind=self.source.dialect == self.target.dialect == "postgresql",
        )
        self.applier = Applier(self.target, job.name, self.source_node)
        self.log = logger.bind(job=job.name)

    # --- plans ---------------------------------------------------------------------------
    def plans(self) -> list[TablePlan]:
        if self._plans is None:
            sources = self._reflect_all(
                self.source, [m.source for m in self.group.tables], "source"
            )
            targets = self._reflect_all(
                self.target, [m.target_table for m in self.group.tables], "target"
            )
            self._plans = [
                build_plan(m, s, t, self.job.vars, self.where)
                for m, s, t in zip(self.group.tables, sources, targets, strict=True)
            ]
        return self._plans

    def _reflect_all(self, backend: Backend, names: list[str], side: str) -> list[sa.Table]:
        try:
            with backend.engine.connect() as conn:
                return [self._reflect(backend, conn, name, side) for name in names]
        except sa_exc.SQLAlchemyError as exc:
            raise backend.classify(exc) from exc

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
        result = JobResult(self.job, {m.label: TableResult() for m in self.group.tables})
        started = time.perf_counter()
        try:
            self.plans()
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
        marks, parked = self._target_state()
        try:
            with self.source.read_snapshot() as sconn:
                high = self.source.safe_upper_bound(sconn)
                if marks and max(marks.values()) > high:
                    self._restart(marks, high)
                    return True
                cut = self.reader.cut(sconn, plans, marks, high)
                if cut is None:
                    if not parked:
                        return None
                    cut = high  # nothing new: still give quarantined rows their retry
                changes = [
                    self.reader.read(sconn, p, marks.get(p.label, 0), cut, parked.get(p.label, []))
                    for p in plans
                ]
        except sa_exc.SQLAlchemyError as exc:
            raise self.source.classify(exc) from exc
        try:
            with self.target.write(self.job.name) as tconn:
                if read_watermarks(tconn, self.target.ct, self.job.name) != marks:
                    raise BusyError("another service advanced this job meanwhile; will read again")
                self.applier.apply(tconn, changes, cut, result.tables)
            rows = sum(len(c.rows) + len(c.deleted) for c in changes)
            if rows:
                self.log.info(
                    "batch {}: {} changes up to version {} ({} still behind the safe bound)",
                    result.batches + 1,
                    rows,
                    cut,
                    "some" if cut < high else "none",
                )
        except sa_exc.SQLAlchemyError as exc:
            raise self.target.classify(exc) from exc
        return cut < high

    def _restart(self, marks: dict[str, int], high: int) -> None:
        """The source's versions went back below what was applied: it was restored from a
        backup or rebuilt. Replay everything it has; upserts make that safe (no duplicates)."""
        self.log.warning(
            "source {} is behind this job's progress (version {} < {}): restored from a "
            "backup? replaying all of its rows from the start",
            self.source.display_url,
            high,
            max(marks.values()),
        )
        with self.target.write(self.job.name) as tconn:
            if read_watermarks(tconn, self.target.ct, self.job.name) != marks:
                raise BusyError("another service advanced this job meanwhile; will read again")
            reset_watermarks(tconn, self.target.ct, self.job.name)

    def _target_state(self) -> tuple[dict[str, int], dict[str, list[Row]]]:
        """Watermarks and the quarantined keys to retry, read without holding any lock."""
        try:
            with self.target.engine.connect() as conn:
                return (
                    read_watermarks(conn, self.target.ct, self.job.name),
                    open_quarantine(conn, self.target.ct, self.job.name, RETRY_LIMIT),
                )
        except sa_exc.SQLAlchemyError as exc:
            if isinstance(exc, sa_exc.ProgrammingError) or "no such table" in str(exc):
                raise ReplicatorError(
                    f"{self.target.display_url}: control tables are missing; run "
                    "`replicator setup` first"
                ) from None
            raise self.target.classify(exc) from exc

    def pending(self, marks: dict[str, int], cap: int) -> dict[str, int]:
        """Changes waiting at the source per table (rows and deletes, counted up to cap)."""
        with self.source.read_snapshot() as conn:
            return {
                p.label: self.reader.pending(conn, p, marks.get(p.label, 0), cap)
                for p in self.plans()
            }


def run_jobs(
    settings: Settings,
    jobs: Sequence[Job],
    databases: Databases | None = None,
    max_batches: int | None = None,
) -> list[JobResult]:
    """Run each job once; a failing job is reported and the others still run."""
    own = databases is None
    dbs = databases or Databases(settings)
    try:
        out = []
        for job in jobs:
            try:
                out.append(JobRunner(settings, dbs, job).run(max_batches))
            except ReplicatorError as exc:
                logger.bind(job=job.name).error("failed: {}", exc)
                out.append(JobResult(job, error=exc))
            except Exception as exc:  # a bug: log the traceback, keep the other jobs going
                logger.bind(job=job.name).exception("unexpected error")
                err = ReplicatorError(f"unexpected {type(exc).__name__}: {exc}")
                out.append(JobResult(job, error=err))
        return out
    finally:
        if own:
            dbs.close()
