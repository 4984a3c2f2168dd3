"""Incremental sync of one job: read the source's changes after the job's positions and apply
them on the target, positions committed with the rows.

A batch reads in one source snapshot, below the source's safe bound. Two shapes:

- **atomic** (movement, register -> server): one target transaction for the whole batch, so a
  sale arrives with its items and payments. On PostgreSQL sources (a version is a transaction)
  the batch ends at a version boundary near `batch_rows`; elsewhere it takes everything below
  the bound. A version larger than a batch is still one batch, read and written a page at a
  time, so memory stays bounded.
- **split** (catalog, server -> register): short target commits of at most `batch_rows` rows
  (on a SQLite register, as many rows as fit in about 100 ms, then a pause so that a waiting
  sale gets the lock), parents before children, positions `(version, key)` committed with
  each, so one huge version (setup, a store-wide price update) never blocks a sale.

PostgreSQL to PostgreSQL, rows travel as COPY streams (the source's `COPY (SELECT ...) TO
STDOUT` into the target's `COPY ... FROM STDIN`, never decoded) whenever the mapping needs no
per-row work in Python: see `_streamable`. Elsewhere they are read and written page by page.

Before a batch is applied the source is told (its `ack` row) which batch the job is applying;
a source whose acknowledgement is behind what the target applied was restored from a backup,
and one with another identity was replaced: see `_identity`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from loguru import logger
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from replicator.apply import Applier, TableRound, Tally
from replicator.backends import Backend, open_backend
from replicator.backends.base import Row
from replicator.backends.postgresql import DIRECT_WAIT, PostgreSQLBackend
from replicator.codec import Codec
from replicator.config import Job, Settings
from replicator.errors import BusyError, CheckError, PermanentError, ReplicatorError
from replicator.mapping import MappingFile
from replicator.position import Position, SourcePosition
from replicator.quarantine import RETRY_PAGE, Budget, TableStopped
from replicator.read import Reader, Tomb
from replicator.resync_drift import drift_message, stored_prints, table_print
from replicator.state import (
    JobState,
    MappingPrint,
    TableState,
    now,
    read_job,
    read_positions,
    record_run,
    reset_positions,
    save_position,
    write_job,
    write_print,
)
from replicator.transform import TablePlan, build_plan

T = TypeVar("T")
DONE = 2**62  # a tombstone position's tie when its whole version is done
STREAM_FACTOR = 10  # an atomic batch of COPY streams takes this many times batch_rows


@dataclass
class TableResult(Tally):
    """What one table did in a job's run: the tallies of its commits, and its stop."""

    error: str | None = None


@dataclass
class JobResult:
    job: Job
    tables: dict[str, TableResult] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0
    skipped: str | None = None
    error: ReplicatorError | None = None
    longest_write: float = 0.0  # the longest target write transaction, in seconds
    blocker: str | None = None  # a long source transaction that held the bound back
    stopped: bool = False  # the service asked it to stop: it ended at a commit, to resume

    @property
    def rows(self) -> int:
        return sum(t.upserts + t.deletes for t in self.tables.values())


@dataclass
class TargetState:
    positions: dict[str, TableState]
    job: JobState | None
    held: dict[str, dict[str, str]]  # table -> held row_key -> status (a page of them)
    held_source: dict[str, dict[str, str | None]]  # table -> row_key -> source_key
    fenced: set[str]


class Databases:
    """The node's open backends, one per configured database, opened on first use (by any of
    the service's worker threads: their engines are thread-safe)."""

    def __init__(self, settings: Settings, pool_size: int = 5) -> None:
        self.settings = settings
        self.pool_size = pool_size
        self._open: dict[str, Backend] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Backend:
        backend = self._open.get(name)
        if backend is not None:
            return backend
        with self._lock:
            if name not in self._open:
                self._open[name] = open_backend(
                    self.settings.url(name),
                    self.node(name),
                    self.settings.config.sync.lock_timeout_ms,
                    timezone=self.settings.timezone(name),
                    pool_size=self.pool_size,
                )
            return self._open[name]

    def opened(self) -> list[Backend]:
        return list(self._open.values())

    def forget_tables(self, *names: str) -> None:
        """Reflect these databases' tables again at their next use."""
        for name in names:
            backend = self._open.get(name)
            if backend is not None:
                backend.forget_tables()

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
        self.settings = settings
        self.split = self.group.direction == "server_to_register"
        self._plans: list[TablePlan] | None = None
        self.reader = Reader(
            self.source,
            self.target_node,
            self.page_rows,
            same_kind=self.source.dialect == self.target.dialect == "postgresql",
        )
        self.applier = Applier(self.target, job.name, self.source_node, self.source.timezone)
        self.log = logger.bind(job=job.name)
        hold = self.target.write_hold_seconds if self.split else None
        self.chunk_rows = min(self.batch_rows, 200) if hold else self.batch_rows
        self._warned: set[int] = set()  # pids of long transactions already reported
        self.max_batches: int | None = None
        # set by the service loop: a stop request (honoured at the next commit) and a call
        # made at every page, which tells its stall guard that the job is moving
        self.stop: threading.Event | None = None
        self.heartbeat: Any = None
        self.report = True  # log the run's outcome (the service logs its own summary)
        self.reverse = self._reverse_jobs(settings)
        # mapping fingerprints stored on the target, read once per run (None: not set up)
        self.prints: dict[str, MappingPrint] | None = None
        self.current_prints: dict[str, MappingPrint] = {}  # the mapping as loaded now
        self._drift_warned: set[str] = set()
        self._prints_due = False  # read the stored fingerprints with the next target state
        # PostgreSQL to PostgreSQL: rows go as COPY blocks when the mapping allows (see
        # _streamable); per table, batches left before a direct COPY is tried again
        self.copy_through = isinstance(self.source, PostgreSQLBackend) and isinstance(
            self.target, PostgreSQLBackend
        )
        self._direct_wait: dict[str, int] = {}
        self.stream_batches = self.copy_through and "batch_rows" not in (
            settings.config.sync.model_fields_set
        )

    def _reverse_jobs(self, settings: Settings) -> dict[str, tuple[str, str, str]]:
        """Two-way tables: per table label, the job that copies the same rows the other way
        (its name, its label for the table, and the change column on our target)."""
        out = {}
        for group in settings.groups.values():
            if group.direction == self.group.direction:
                continue
            for back in group.tables:
                for mine in self.group.tables:
                    if back.source == mine.target_table and back.target_table == mine.source:
                        name = f"{group.group}:{self.target_node}->{self.source_node}"
                        out[mine.label] = (name, back.label, back.change_column)
        return out

    def _reverse_positions(self, sconn: Connection) -> dict[str, Position]:
        """Where the reverse jobs stand, read from the source (it is their target): a target
        row changed after that position has not reached the source yet."""
        out: dict[str, Position] = {}
        if not self.reverse:
            return out
        st = self.source.ct.state.c
        for label, (job, back, _) in self.reverse.items():
            row = sconn.execute(
                sa.select(st.version, st.row_key).where(st.job == job, st.table_name == back)
            ).first()
            out[label] = Position(int(row[0]), row[1]) if row else Position()
        return out

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
                build_plan(m, s, t, self.job.vars, self.settings.where(self.job.group, i))
                for i, (m, s, t) in enumerate(zip(self.group.tables, sources, targets, strict=True))
            ]
        return self._plans

    def plans_each(self) -> tuple[list[tuple[int, TablePlan]], list[str]]:
        """Each table's plan built on its own (`check`, after `plans` failed): the plans that
        build, with their index in the group, and the errors of the others, so that one table
        that is not set up does not hide the mistakes of the rest."""
        built: list[tuple[int, TablePlan]] = []
        errors: list[str] = []
        for i, m in enumerate(self.group.tables):
            try:
                [source] = self._reflect_all(self.source, [m.source], "source")
                [target] = self._reflect_all(self.target, [m.target_table], "target")
                where = self.settings.where(self.job.group, i)
                built.append((i, build_plan(m, source, target, self.job.vars, where)))
            except ReplicatorError as exc:
                errors.extend(str(exc).splitlines())
        return built, errors

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
            index = next(
                (i for i, m in enumerate(self.group.tables) if name in (m.source, m.target_table)),
                None,
            )
            raise ReplicatorError(
                f"{self.settings.where(self.job.group, index)}: {side} table {name!r} does not "
                f"exist in "
                f"{backend.display_url}; fix the mapping or create the table"
            ) from None

    # --- the job -------------------------------------------------------------------------
    def run(self, max_batches: int | None = None) -> JobResult:
        result = JobResult(self.job, {m.label: TableResult() for m in self.group.tables})
        started = time.perf_counter()
        try:
            self._drift()
            while max_batches is None or result.batches < max_batches:
                if self.stopping():
                    result.stopped = True
                    break
                if not self.batch(result, max_batches):
                    break
        except BusyError as exc:
            result.skipped = str(exc)
            self.log.info("skipped: {}", exc)
        except ReplicatorError as exc:
            result.error = exc
            if self.report:
                self.log.error("failed: {}", exc)
        stopped = {t: r.error for t, r in result.tables.items() if r.error}
        only_tables = bool(stopped) and result.error is None
        if only_tables:
            result.error = PermanentError(
                "; ".join(f"{e}" for e in stopped.values())
                + f" ({len(result.tables) - len(stopped)} other tables of the group went on)"
            )
        result.seconds = time.perf_counter() - started
        if self.report and (result.rows or result.error):
            self.log.info(
                "{} rows in {} batches, {:.3f}s{}",
                result.rows,
                result.batches,
                result.seconds,
                " (then failed)" if result.error else "",
            )
        if not result.skipped:
            self._record(result, only_tables)
        return result

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def _drift(self) -> None:
        """The mapping's fingerprints as loaded now; the stored ones are read with the
        target state of the run's first batch (same connection, no extra round trip)."""
        if not self.current_prints:  # the plans are the runner's for its whole life
            self.current_prints = {p.label: table_print(p) for p in self.plans()}
        self._prints_due = True

    def _read_prints(self, conn: Connection) -> None:
        """Read the stored fingerprints (once per run); warn, once per runner, of tables
        whose replicated rows follow an older mapping."""
        self._prints_due = False
        self.prints = stored_prints(self.target, conn, self.job.name)
        stored = self.prints or {}
        for plan in self.plans():
            message = drift_message(self.job, plan, stored.get(plan.label))
            if message and message not in self._drift_warned:
                # once per runner: the service keeps its runners, `status` and `check` repeat it
                self._drift_warned.add(message)
                self.log.bind(table=plan.label).warning("{}", message)

    def beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat()

    def _record(self, result: JobResult, only_tables: bool) -> None:
        """Save the run's outcome on the target (status shows the last error). A stopped
        table keeps its own error (state.last_error, shown on its row only)."""
        error = None if only_tables or result.error is None else str(result.error)
        try:
            with self.target.engine.connect() as conn, conn.begin():
                if isinstance(self.target, PostgreSQLBackend):
                    # a status record, written again at the next run: its commit does not
                    # wait for the disk (the flush was most of an idle run's time). Positions
                    # and rows commit in the batch's own transaction, flushed as always.
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                record_run(conn, self.target.ct, self.job.name, error, ok=not only_tables)
        except sa_exc.SQLAlchemyError:
            pass  # the target is unreachable: the error is in the log and in the exit code

    def batch(self, result: JobResult, max_batches: int | None = None) -> bool | None:
        """Apply one batch. None: nothing to do; True: more may be waiting."""
        self.max_batches = max_batches
        plans = self.plans()
        ts = self._target_state()
        try:
            with self.source.read_snapshot() as sconn:
                pos = self.source.source_position(sconn, self.job.name)
                result.blocker = pos.blocker.text if pos.blocker else None
                if pos.blocker and pos.blocker.pid not in self._warned:
                    self._warned.add(pos.blocker.pid)
                    self.log.warning("source {}: {}", self.source.display_url, pos.blocker)
                if self._identity(pos, ts):
                    return True
                rows_after = {p.label: self._rows_pos(ts, p) for p in plans}
                tombs_after = {p.label: self._tombs_pos(ts, p) for p in plans}
                active = self.reader.active(sconn, plans, rows_after, tombs_after, pos.bound)
                if not active and not any(ts.held.values()):
                    return None
                cut = pos.bound
                if not self.split and self.source.versions_are_transactions:
                    cut = self.reader.version_cut(
                        sconn, active, rows_after, tombs_after, pos.bound, self._cut_rows(ts)
                    )
                seq = (ts.job.seq if ts.job else 0) + 1
                confirmed = min((self._confirmed(p, ts) for p in plans), default=0)
                purged = self._ack(pos, seq, confirmed)
                if purged:
                    self.log.info("{} tombstones purged at the source", purged)
                reverse = self._reverse_positions(sconn)
                return self._apply(sconn, plans, ts, pos, cut, seq, result, reverse)
        except sa_exc.SQLAlchemyError as exc:
            raise self.source.classify(exc) from exc

    def _ack(self, pos: SourcePosition, seq: int, confirmed: int) -> int:
        try:
            return self.source.write_ack(self.job.name, pos.incarnation or "", seq, confirmed)
        except sa_exc.OperationalError as exc:
            raise BusyError(
                f"{self.source.display_url}: could not record progress at the source "
                f"({self.source.classify(exc)}); will try again"
            ) from None

    # --- identity: restored and replaced sources -------------------------------------------
    def _identity(self, pos: SourcePosition, ts: TargetState) -> bool:
        """Check the source is the database this job has been reading. True when the batch
        must start again (a new incarnation was recorded)."""
        if pos.incarnation is None:
            raise PermanentError(
                f"{self.source.display_url}: change tracking is not installed (no incarnation "
                "record); run `replicator setup`"
            )
        job = ts.job
        if job is None:
            return False
        if pos.incarnation == job.incarnation:
            if pos.ack_seq is None or pos.ack_seq < job.seq:
                what = (
                    "it has no record of the batches applied"
                    if pos.ack_seq is None
                    else f"it acknowledges batch {pos.ack_seq}, the target applied {job.seq}"
                )
                reason = f"restored from a backup ({what})"
                fresh = self.source.new_incarnation(reason)
                self._new_incarnation(ts, fresh, reason)
                return True
            if pos.ack_seq > job.seq + 1:
                self.log.warning(
                    "target {} is behind what the source acknowledges (batch {} < {}): "
                    "restored from a backup? going on from the target's own positions",
                    self.target.display_url,
                    job.seq,
                    pos.ack_seq,
                )
            return False
        if pos.incarnation in job.retired:
            raise PermanentError(
                f"{self.source.display_url} identifies as an earlier incarnation "
                f"({pos.incarnation[:8]}) of node {self.source_node!r}, which job {self.job.name} "
                "left behind when it found that node restored or replaced: two databases act "
                f"as node {self.source_node!r} (a copied database file, or two registers "
                "configured with the same node name). Give each database its own `node` in "
                "replicator.toml; if this database is a backup restored once more, give it a "
                f"new identity: `replicator setup --database {self.job.source} --new-identity`"
            )
        self._new_incarnation(
            ts,
            pos.incarnation,
            "replaced by another database (or restored from a backup, and an earlier sync "
            "that found it was interrupted)",
        )
        return True

    def _new_incarnation(self, ts: TargetState, incarnation: str, reason: str) -> None:
        """Record that the job now reads another incarnation of its source: positions back
        to the start (everything is read again), and for movement every key the earlier
        incarnation wrote on the target is fenced: an incoming row that differs from it is
        held as a conflict instead of overwriting it."""
        assert ts.job is not None
        fence = not self.split
        self.source.forget_bound()
        # the source first: it always knows at least the batch the target has applied
        self._ack(SourcePosition(0, incarnation, None), ts.job.seq, 0)
        self.log.warning(
            "source {} (node {}) was {}: reading all of it again{}",
            self.source.display_url,
            self.source_node,
            reason,
            "; rows that would overwrite what its earlier incarnation wrote are held as conflicts"
            if fence
            else "",
        )
        try:
            with self.target.write(self.job.name) as tconn:
                self._verify(tconn, ts)
                if fence:
                    for plan in self.plans():
                        self._fence(tconn, plan, ts.job.incarnation)
                reset_positions(tconn, self.target.ct, self.job.name)
                write_job(
                    tconn,
                    self.target.ct,
                    self.job.name,
                    JobState(incarnation, [*ts.job.retired, ts.job.incarnation], ts.job.seq, now()),
                )
        except sa_exc.SQLAlchemyError as exc:
            raise self.target.classify(exc) from exc

    def _fence(self, conn: Connection, plan: TablePlan, incarnation: str) -> None:
        """Fence the target keys of this job's slice of a table (rows whose constant key
        columns, such as {register_id}, are this job's)."""
        table = plan.target
        cols = [table.c[k] for k in plan.target_key]
        where = [
            table.c[k] == v
            for k, i, v in zip(
                plan.target_key, plan.key_from_source, plan.key_constants, strict=True
            )
            if i is None
        ]
        if not where:
            # no {register_id}-like column in the key: the table is shared by every node
            # (uuids, server-assigned keys), so one register cannot own its rows
            self.log.bind(table=plan.label).info(
                "not fenced: its target key has no node variable, rows are shared"
            )
            return
        # streamed a page at a time (years of a register's sales), inserted once per key
        insert = self.target.insert_construct(self.target.ct.fence).on_conflict_do_nothing()
        stmt = sa.select(*cols).where(*where)
        result = conn.execute(stmt, execution_options={"stream_results": True, "yield_per": 5000})
        try:
            for page in result.partitions():
                keys = sorted({plan.target_codec.text(r) for r in page})
                conn.execute(
                    insert,
                    [
                        {
                            "job": self.job.name,
                            "table_name": plan.label,
                            "row_key": k,
                            "incarnation": incarnation,
                        }
                        for k in keys
                    ],
                )
        finally:
            result.close()

    # --- state ----------------------------------------------------------------------------
    def _confirmed(self, plan: TablePlan, ts: TargetState) -> int:
        """Every tombstone of this table below the returned version is applied on the target
        (or ignored by the mapping): the source may purge it."""
        if plan.deletes:
            pos = self._tombs_pos(ts, plan)
            return pos.version + (1 if pos.tie >= DONE else 0)
        pos = self._rows_pos(ts, plan)
        return pos.version + (1 if pos.key is None and pos.version else 0)

    def _rows_pos(self, ts: TargetState, plan: TablePlan) -> Position:
        st = ts.positions.get(plan.label)
        return st.rows if st else Position()

    def _tombs_pos(self, ts: TargetState, plan: TablePlan) -> Position:
        st = ts.positions.get(plan.label)
        return st.tombs if st else Position()

    def _target_state(self) -> TargetState:
        """Positions, the job's identity record and a page of held keys, read without any
        lock (checked again under the lock before writing)."""
        try:
            with self.target.engine.connect() as conn:
                ct = self.target.ct
                positions = read_positions(conn, ct, self.job.name)
                job = read_job(conn, ct, self.job.name)
                page = self.applier.quarantine.retry_page(conn)
                f = ct.fence.c
                fenced = set(
                    conn.execute(
                        sa.select(f.table_name).where(f.job == self.job.name).distinct()
                    ).scalars()
                )
                if self._prints_due:
                    self._read_prints(conn)
        except sa_exc.SQLAlchemyError as exc:
            if isinstance(exc, sa_exc.ProgrammingError | sa_exc.OperationalError):
                self._control_tables_present()
            raise self.target.classify(exc) from exc
        held = {t: {h.row_key: h.status for h in hs} for t, hs in page.items()}
        held_source = {t: {h.row_key: h.source_key for h in hs} for t, hs in page.items()}
        return TargetState(positions, job, held, held_source, fenced)

    def _control_tables_present(self) -> None:
        """Raise a clear error when the target lacks the control tables (not set up)."""
        ct = self.target.ct
        with contextlib.suppress(sa_exc.SQLAlchemyError), self.target.engine.connect() as conn:
            missing = [
                t.fullname
                for t in (ct.state, ct.job, ct.quarantine, ct.fence)
                if not self.target.has_table(conn, t.fullname)
            ]
            if missing:
                raise CheckError(
                    f"{self.target.display_url}: control tables {', '.join(missing)} are "
                    "missing; run `replicator setup` first"
                )

    def _verify(self, conn: Connection, ts: TargetState) -> None:
        """Under the job's lock: nobody else moved this job since its state was read."""
        ct = self.target.ct
        now_pos = read_positions(conn, ct, self.job.name)
        job = read_job(conn, ct, self.job.name)
        same_pos = {k: (v.rows, v.tombs) for k, v in now_pos.items()} == {
            k: (v.rows, v.tombs) for k, v in ts.positions.items()
        }
        same_job = (job.seq if job else None) == (ts.job.seq if ts.job else None)
        if not (same_pos and same_job):
            raise BusyError("another service advanced this job meanwhile; will read again")

    # --- applying a batch --------------------------------------------------------------------
    def _apply(
        self,
        sconn: Connection,
        plans: list[TablePlan],
        ts: TargetState,
        pos: SourcePosition,
        cut: int,
        seq: int,
        result: JobResult,
        reverse: dict[str, Position],
    ) -> bool:
        rounds = {
            p.label: TableRound(
                p,
                Budget(p.label, self.target.bisect_seconds),
                held=ts.held.get(p.label, {}),
                fenced=p.label in ts.fenced,
            )
            for p in plans
        }
        for label, back in reverse.items():
            change = self.reverse[label][2]
            target = rounds[label].plan.target
            if change in target.c and "repl_origin" in target.c:
                rounds[label].reverse = (back, change)
        if ts.fenced:
            for plan in plans:
                tr = rounds[plan.label]
                tr.parents = _parents(plan, plans)
                tr.fenced = tr.fenced or bool(tr.parents)
        rows_pos = {p.label: self._rows_pos(ts, p) for p in plans}
        tombs_pos = {p.label: self._tombs_pos(ts, p) for p in plans}
        errors: dict[str, str] = {}
        writer = _Writer(self, ts, pos, seq, rounds, rows_pos, tombs_pos, errors, result)
        try:
            for plan in reversed(plans):  # deletes first, children first: foreign keys hold
                if plan.deletes:
                    self._delete_stream(sconn, writer, rounds[plan.label], cut)
            for plan in plans:  # then rows, parents first
                self._row_stream(sconn, writer, rounds[plan.label], cut)
            for plan in plans:
                self._retry(sconn, writer, rounds[plan.label], ts, cut)
            writer.commit(final=True)
        except _Enough:
            if self.stopping():
                result.stopped = True
                return False
            return True
        except sa_exc.SQLAlchemyError as exc:
            writer.abort()
            if writer.failing_side == "source":
                raise self.source.classify(exc) from exc
            raise self.target.classify(exc) from exc
        except BaseException:
            writer.abort()
            raise
        more = cut < pos.bound
        if writer.resolved and any(len(tr.held) >= RETRY_PAGE for tr in rounds.values()):
            more = True  # a full page of held rows went through: the next page may too
        return more and (self.max_batches is None or result.batches < self.max_batches)

    def _row_stream(self, sconn: Connection, w: _Writer, tr: TableRound, cut: int) -> None:
        plan = tr.plan
        start = w.rows_pos[plan.label]
        if start.done_through(cut):
            return
        if self._streamable(tr):
            if self._copy_stream(sconn, w, tr, start, cut):
                w.rows_pos[plan.label] = _later(w.rows_pos[plan.label], Position(cut))
                return
            start = w.rows_pos[plan.label]  # a split batch's streams before it committed
        n, width = plan.width, len(plan.source_key)
        w.failing_side = "source"
        pages = self.reader.rows(sconn, plan, start, cut, compares=tr.fenced)
        with contextlib.closing(_rechunk(pages, lambda: self.chunk_rows)) as chunks:
            done = self._row_pages(chunks, w, tr, n, width)
        if done:
            w.rows_pos[plan.label] = _later(w.rows_pos[plan.label], Position(cut))

    def _cut_rows(self, ts: TargetState) -> int:
        """Changes per atomic batch: `batch_rows`; when the config leaves it at its default
        and every table's rows go as COPY streams, STREAM_FACTOR times as many (memory does
        not grow with the batch then, and each batch costs a dozen round trips and two
        commits whatever its size)."""
        if self.stream_batches and all(
            self._streams(
                p, bool(ts.held.get(p.label)), p.label in ts.fenced, p.label in self.reverse
            )
            for p in self.plans()
        ):
            return self.batch_rows * STREAM_FACTOR
        return self.batch_rows

    def _streamable(self, tr: TableRound) -> bool:
        return self._streams(tr.plan, bool(tr.held), bool(tr.fenced), tr.reverse is not None)

    def _streams(self, plan: TablePlan, held: bool, fenced: bool, two_way: bool) -> bool:
        """Rows may travel as COPY blocks, never decoded: PostgreSQL to PostgreSQL, and
        nothing the apply does per row in Python (held or fenced keys, two-way tables,
        keep_target, value checks, time zone adapters)."""
        return (
            self.copy_through
            and not (held or fenced or two_way)
            and plan.conflict.rule != "keep_target"
            and self.applier.streamable(plan)
        )

    def _copy_stream(
        self, sconn: Connection, w: _Writer, tr: TableRound, start: Position, cut: int
    ) -> bool:
        """The batch's rows of one table as COPY streams from the source into the target:
        atomic, one stream for the batch; split, one per short commit, each ending at the
        position of its last row (found first by an index probe). False when the target
        refused a row: the page-by-page path goes on from the last commit, finds the row
        and holds it (the savepoint undid what the stream wrote)."""
        plan = tr.plan
        pos = start
        while True:
            end = None
            if self.split:
                rows = self.batch_rows * (STREAM_FACTOR if self.stream_batches else 1)
                end = self.reader.page_end(sconn, plan, pos, cut, rows)
            select = self.reader.copy_select(plan, pos, cut, end)
            mark = (end or Position(cut)) if self.split else None
            if not self._copy_page(sconn, w, tr, select, mark):
                return False
            if end is None:
                return True
            pos = end

    def _copy_page(
        self, sconn: Connection, w: _Writer, tr: TableRound, select: Any, mark: Position | None
    ) -> bool:
        """One COPY stream: straight into the table while its keys are new (one write), else
        through the stage and one upsert."""
        plan = tr.plan
        target = self.target
        assert isinstance(target, PostgreSQLBackend)
        label = plan.label

        def upsert(insert: Any) -> Any:
            return target.upsert_statement(
                insert, plan.target, plan.columns, plan.target_key, plan.conflict
            )

        # after a duplicate key, the next streams of the table go through the stage a while
        wait = self._direct_wait.get(label, 0)
        self._direct_wait[label] = max(0, wait - 1)
        builds: list[Any] = [upsert] if wait else [None, upsert]
        done = False

        def apply() -> None:
            nonlocal done
            conn = w.conn()
            for build in builds:
                try:
                    with conn.begin_nested():
                        count = target.copy_through(
                            conn, sconn, select, plan.target, plan.columns, build, self.beat
                        )
                except sa_exc.DBAPIError as exc:
                    if target.row_error(exc) is None:
                        raise
                    if build is None and getattr(exc.orig, "sqlstate", None) == "23505":
                        self._direct_wait[label] = DIRECT_WAIT
                        continue  # some keys exist: through the stage and the upsert
                    return  # a refused row: the page-by-page path holds it
                tr.tally.upserts += count
                if mark is not None:
                    w.rows_pos[label] = mark  # committed with these rows (split)
                done = True
                return

        w.failing_side = "target"
        w.page(tr, apply, "rows", None)
        w.failing_side = "source"
        return done

    def _row_pages(
        self, chunks: Iterator[Sequence[Row]], w: _Writer, tr: TableRound, n: int, width: int
    ) -> bool:
        """Apply the pages of a row stream; False when its table stopped."""
        plan = tr.plan
        for page in chunks:
            w.failing_side = "target"
            conn = w.conn()

            def apply(page: Sequence[Row] = page, conn: Connection = conn) -> None:
                self.applier.upserts(
                    conn,
                    tr,
                    [r[:n] for r in page],
                    [r[n : n + width] for r in page],
                    [r[-1] for r in page],
                )

            last = page[-1]
            mark = Position(int(last[-1]), plan.source_codec.text(last[n : n + width]))
            if not w.page(tr, apply, "rows", mark):
                return False
            w.failing_side = "source"
        return True

    def _delete_stream(self, sconn: Connection, w: _Writer, tr: TableRound, cut: int) -> None:
        plan = tr.plan
        start = w.tombs_pos[plan.label]
        if start.version > cut or (start.version == cut and start.tie >= DONE):
            return
        w.failing_side = "source"
        with contextlib.closing(
            _rechunk(self.reader.tombstones(sconn, plan, start, cut), lambda: self.chunk_rows)
        ) as chunks:
            done = self._delete_pages(sconn, chunks, w, tr)
        if done:
            w.tombs_pos[plan.label] = _later(w.tombs_pos[plan.label], Position(cut, None, DONE))

    def _delete_pages(
        self, sconn: Connection, chunks: Iterator[Sequence[Tomb]], w: _Writer, tr: TableRound
    ) -> bool:
        """Apply the pages of a tombstone stream; False when its table stopped."""
        plan = tr.plan
        for tombs in chunks:
            latest = {plan.source_codec.text(t.source_key): t for t in tombs}
            alive = self.reader.alive(sconn, plan, [t.source_key for t in latest.values()])
            gone = [t for k, t in latest.items() if k not in alive]
            keys = [plan.target_key_from_tombstone(t.source_key) for t in gone]
            skeys = [t.source_key for t in gone]
            w.failing_side = "target"
            conn = w.conn()

            def apply(
                keys: list[Row] = keys, skeys: list[Row] = skeys, conn: Connection = conn
            ) -> None:
                self.applier.deletes(conn, tr, keys, skeys)

            mark = Position(tombs[-1].version, None, tombs[-1].id)
            if not w.page(tr, apply, "tombs", mark):
                return False
            w.failing_side = "source"
        return True

    def _retry(
        self, sconn: Connection, w: _Writer, tr: TableRound, ts: TargetState, cut: int
    ) -> None:
        """Held keys not seen in this batch's stream: their current source row is applied
        again (a parent may have arrived, the target may have been fixed); a key gone at the
        source is deleted; a key with nothing to send leaves the quarantine."""
        plan = tr.plan
        todo = [k for k in tr.held if k not in tr.streamed]
        if not todo or plan.label in w.errors:
            return
        sources = ts.held_source.get(plan.label, {})
        by_source: dict[str, str] = {}
        for key in todo:
            skey = sources.get(key)
            if skey is not None:
                by_source[skey] = key
        w.failing_side = "source"
        found = self.reader.current(
            sconn, plan, [plan.source_codec.from_text(s) for s in by_source]
        )
        seen: set[str] = set()
        rows: list[Row] = []
        skeys: list[Row] = []
        versions: list[int | None] = []
        settle: list[str] = []
        for cur in found:
            text = plan.source_codec.text(cur.source_key)
            held_key = by_source.get(text)
            if held_key is None:
                continue
            seen.add(text)
            if not cur.wanted:
                settle.append(held_key)
            elif cur.version is not None and cur.version <= cut:
                rows.append(cur.row)
                skeys.append(cur.source_key)
                versions.append(cur.version)
        gone = [s for s in by_source if s not in seen]
        w.failing_side = "target"
        conn = w.conn()

        def apply() -> None:
            if rows:
                self.applier.upserts(conn, tr, rows, skeys, versions)
            if gone and plan.deletes:
                self.applier.deletes(
                    conn,
                    tr,
                    [plan.target_codec.from_text(by_source[s]) for s in gone],
                    [plan.source_codec.from_text(s) for s in gone],
                )
            # A held row the source no longer has, on a table whose deletes are ignored
            # (sales the register purged, or an earlier incarnation's rows after a restore):
            # its record is the only copy left, so it stays held for an operator.
            self.applier.settle(conn, tr, settle)

        w.page(tr, apply, None, None)


class _Writer:
    """Target transactions of one batch: one for all of it (atomic), or short ones that
    commit positions as they go (split)."""

    def __init__(
        self,
        runner: JobRunner,
        ts: TargetState,
        pos: SourcePosition,
        seq: int,
        rounds: dict[str, TableRound],
        rows_pos: dict[str, Position],
        tombs_pos: dict[str, Position],
        errors: dict[str, str],
        result: JobResult,
    ) -> None:
        self.r = runner
        self.ts = ts
        self.pos = pos
        self.seq = seq
        self.rounds = rounds
        self.rows_pos = rows_pos
        self.tombs_pos = tombs_pos
        self.errors = errors
        self.result = result
        self.failing_side = "target"
        self._stack: contextlib.ExitStack | None = None
        self._conn: Connection | None = None
        self._opened = 0.0
        self._rows = 0
        self._start = dict(ts.positions)  # where the batch began (an atomic stop goes back)
        self._stream_sp: Any = None
        self._stream: tuple[str, str | None] | None = None
        self._tally_at_stream = Tally()
        self.resolved = 0  # held rows that went through in this batch

    def conn(self) -> Connection:
        if self._conn is None:
            self._stack = contextlib.ExitStack()
            self._conn = self._stack.enter_context(self.r.target.write(self.r.job.name))
            self._opened = time.monotonic()
            for tr in self.rounds.values():
                tr.budget.new_transaction()
            self.r._verify(self._conn, self.ts)
            self.r.target.mark_origin(self._conn, self.r.source_node)
        return self._conn

    def page(self, tr: TableRound, apply: Any, kind: str | None, mark: Position | None) -> bool:
        """Apply one page of a stream; False when its table stopped (too many refusals)."""
        self.r.beat()
        conn = self.conn()
        label = tr.plan.label
        if label in self.errors:
            return False
        split = self.r.split
        if not split and self._stream != (label, kind):
            # atomic: one savepoint per stream, so a stopped table rolls back whole
            if self._stream_sp is not None:
                self._stream_sp.commit()
            self._stream_sp = conn.begin_nested()
            self._stream = (label, kind)
            self._tally_at_stream = dataclasses.replace(tr.tally)
        try:
            if split:
                with conn.begin_nested():
                    apply()
            else:
                apply()
        except TableStopped as exc:
            if not split and self._stream_sp is not None:
                self._stream_sp.rollback()
                self._stream_sp, self._stream = None, None
                tr.tally = self._tally_at_stream  # what the stream wrote is undone
                # the stream's positions go back to where the batch began
                start = self._start.get(label)
                if kind == "rows":
                    self.rows_pos[label] = start.rows if start else Position()
                elif kind == "tombs":
                    self.tombs_pos[label] = start.tombs if start else Position()
            self.errors[label] = str(exc)
            self.r.log.bind(table=label).error("{}", exc)
            return False
        if mark is not None:
            if kind == "rows":
                self.rows_pos[label] = mark
            else:
                self.tombs_pos[label] = mark
        self._rows += 1
        if split:
            self.commit(final=False)
        return True

    def commit(self, final: bool) -> None:
        if self._conn is None:
            if not final:
                return
            self.conn()  # nothing was written, but positions and the job record move on
        conn = self._conn
        assert conn is not None and self._stack is not None
        if self._stream_sp is not None:
            self._stream_sp.commit()
            self._stream_sp, self._stream = None, None
        r = self.r
        ct = r.target.ct
        positions = dict(self.ts.positions)
        for label, tr in self.rounds.items():
            state = TableState(self.rows_pos[label], self.tombs_pos[label], self.errors.get(label))
            save_position(
                conn,
                ct,
                r.job.name,
                label,
                state,
                tr.tally.upserts,
                tr.tally.deletes,
                state.last_error,
            )
            positions[label] = state
            self._fingerprint(conn, tr.plan)
        old = self.ts.job
        job = JobState(
            self.pos.incarnation or "",
            old.retired if old else [],
            self.seq,
            (old.since if old else None) or now(),
        )
        write_job(conn, ct, r.job.name, job)
        # what the target holds once this commits: the next short commit checks against it
        self.ts = dataclasses.replace(self.ts, positions=positions, job=job)
        r.target.mark_origin(conn, None)
        stack, self._stack, self._conn = self._stack, None, None
        stack.close()  # commits
        held = time.monotonic() - self._opened
        self.result.longest_write = max(self.result.longest_write, held)
        self.result.batches += 1
        for label, tr in self.rounds.items():
            out = self.result.tables.setdefault(label, TableResult())
            out.add(tr.tally)
            out.error = self.errors.get(label, out.error)
            if tr.tally.resolved:
                self.resolved += tr.tally.resolved
                r.log.bind(table=label).info("{} held rows went through", tr.tally.resolved)
            tr.tally = Tally()
        changes = self._rows
        self._rows = 0
        if changes:
            r.log.info(
                "batch {}: {} pages applied ({:.3f}s of target lock)",
                self.result.batches,
                changes,
                held,
            )
        hold = r.target.write_hold_seconds
        limit = r.max_batches
        if r.split and not final and limit is not None and self.result.batches >= limit:
            raise _Enough()
        if r.split and not final and r.stopping():
            raise _Enough()  # a stop request: this commit kept everything up to here
        if r.split and hold and not final:
            # keep each write short, and leave the database free long enough for a sale
            factor = min(1.5, max(0.25, hold * 0.8 / max(held, 1e-3)))
            r.chunk_rows = min(r.batch_rows, max(50, int(r.chunk_rows * factor)))
            time.sleep(r.target.pause_after(held))

    def _fingerprint(self, conn: Connection, plan: TablePlan) -> None:
        """Record the table's mapping fingerprint with its positions when none is stored, or
        when the stored one differs and no rows of the table were replicated before this
        batch (or the change does not affect them). A drifted table keeps its old one, so
        the warning stays until `replicator resync` of it completes."""
        prints = self.r.prints
        if prints is None:
            return
        stored = prints.get(plan.label)
        current = self.r.current_prints.get(plan.label) or table_print(plan)
        if stored is not None and stored.fingerprint == current.fingerprint:
            return
        start = self._start.get(plan.label)
        replicated = start is not None and bool(start.rows.version or start.tombs.version)
        if stored is not None and replicated and drift_message(self.r.job, plan, stored):
            return
        write_print(conn, self.r.target.ct, self.r.job.name, plan.label, current)
        prints[plan.label] = current

    def abort(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._conn = self._stack, None, None
            with contextlib.suppress(Exception):
                stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


def _parents(plan: TablePlan, plans: Sequence[TablePlan]) -> list[tuple[str, Codec, list[int]]]:
    """The target's foreign keys from this table to the other tables of the group, as the
    positions in this table's mapped rows of each parent's target key."""
    out = []
    for fkc in plan.target.foreign_key_constraints:
        referred = fkc.referred_table
        parent = next(
            (
                p
                for p in plans
                if (p.target.name, p.target.schema) == (referred.name, referred.schema)
            ),
            None,
        )
        if parent is None or parent is plan:
            continue
        to_child = {el.column.name: el.parent.name for el in fkc.elements}
        cols = [to_child.get(k) for k in parent.target_key]
        if any(c is None or c not in plan.columns for c in cols):
            continue
        out.append((parent.label, parent.target_codec, [plan.columns.index(str(c)) for c in cols]))
    return out


class _Enough(Exception):
    """--max-batches reached in the middle of a split batch (its positions are saved)."""


def _later(old: Position, new: Position) -> Position:
    """Positions never move backwards."""
    if (old.version, old.key is None, old.tie) > (new.version, new.key is None, new.tie):
        return old
    return new


def _rechunk(pages: Iterator[Sequence[T]], size: Any) -> Generator[Sequence[T], None, None]:
    """Pages of exactly size() items but the last (the size may change between pages): a
    write per `batch_rows` rows (or per short commit on a register), whatever the fetch size."""
    buffer: list[T] = []
    for page in pages:
        buffer.extend(page)
        start = 0
        while len(buffer) - start >= (n := max(1, int(size()))):
            yield buffer[start : start + n]
            start += n
        del buffer[:start]  # once per fetched page, not once per chunk
    if buffer:
        yield buffer


def run_jobs(
    settings: Settings,
    jobs: Sequence[Job],
    databases: Databases | None = None,
    max_batches: int | None = None,
) -> list[JobResult]:
    """Run each job once; a failing job is reported and the others still run."""
    own = databases is None
    dbs = databases or Databases(settings)
    # A server's config with many registers keeps no idle connection to each register
    # between its jobs (on one PostgreSQL cluster they would exhaust max_connections).
    registers = {job.target if job.source == job.server else job.source for job in jobs}
    many = len(registers) > 4
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
            finally:
                if many:
                    for name in {job.source, job.target} - {job.server}:
                        dbs[name].engine.dispose()  # idle connections only
        return out
    finally:
        if own:
            dbs.close()


__all__ = ["Databases", "JobResult", "JobRunner", "TableResult", "run_jobs"]
