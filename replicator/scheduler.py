"""`replicator run`: the service loop.

Every job runs at its `every` (the `schedule` library keeps the clock) on a bounded pool of
worker threads, so one slow or failing job never holds the others back. After a run:

- success: the next run comes `every` after this one started;
- a transient failure (network, server restart, lock timeout): retries after `retry_after`,
  doubling up to `max_backoff`, each wait with jitter, until a run succeeds;
- a permanent failure (a mapping against a changed schema, a missing privilege): logged
  loudly, shown in `status` and `/health`, retried every `permanent_retry` (with its tables
  reflected again: a fixed schema is picked up by itself);
- another service held the job (its lock in the target): the normal interval.

SIGTERM and SIGINT (and the Windows stop request, through `stop`) end the loop within a few
seconds: a job stops at its next commit; what is still in flight after the grace period is
one open transaction, which the database rolls back whole when the process exits.

A job that makes no progress for `stall` (a link that accepts and then says nothing) has its
database sockets shut from the loop's thread, so the driver's wait ends in an error that is
retried like any transient failure.

With `[service] shared = true`, several processes (on one machine or several) share the jobs
of one server through leases in its database: a process runs a job only once its `next_due`
has come and no other live process holds it; the holder renews its leases while it runs, and
a crashed holder's lease expires after LEASE_SECONDS. The job's own lock in the target stays
what guarantees that two processes never apply the same job at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import schedule
import sqlalchemy as sa
from loguru import logger
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from replicator.config import Job, Settings, load_settings, seconds_of
from replicator.errors import ReplicatorError, TransientError
from replicator.quarantine import Quarantine
from replicator.sync import Databases, JobResult, JobRunner

GRACE_SECONDS = 3.5  # how long a stop waits for jobs to reach a commit
LEASE_SECONDS = 60  # a shared job's lease; renewed every third of it while the job runs
REFRESH_SECONDS = 600  # reflected tables are read again this often (a schema may change)
STATE_EVERY = 2.0  # the state file is rewritten at most this often
IDLE_LINE_SECONDS = 600  # a job with nothing to do logs one INFO line per this many seconds


class AlreadyRunning(ReplicatorError):
    """Another `replicator run` holds this config's lock."""

    exit_code = 6


# --- what the loop knows of each job --------------------------------------------------------
@dataclass
class JobHealth:
    """One job as the loop sees it: written to the state file, served on /health."""

    job: str
    group: str
    source: str
    target: str
    every: int
    max_lag: int
    since: datetime  # when the service started watching it
    state: str = "starting"  # starting | ok | retrying | failing | busy
    running: bool = False
    last_start: datetime | None = None
    last_end: datetime | None = None
    last_ok: datetime | None = None
    caught_up_at: datetime | None = None  # every change committed before this is delivered
    failures: int = 0  # consecutive failed runs
    last_error: str | None = None
    error_kind: str | None = None  # transient | permanent
    next_run: datetime | None = None
    last_rows: int = 0
    last_seconds: float = 0.0
    held: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> state -> rows
    blocked: str | None = None  # a long source transaction holding replication back
    totals: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> counters
    runs: int = 0
    errors: int = 0

    def lag(self, at: datetime) -> float | None:
        """Seconds since the last moment everything was delivered (None: not since the
        service started)."""
        if self.caught_up_at is None:
            return None
        return max(0.0, (at - self.caught_up_at).total_seconds())

    def quarantined(self) -> int:
        return sum(
            n for states in self.held.values() for s, n in states.items() if s != "dismissed"
        )

    def verdict(self, at: datetime) -> tuple[str, list[str]]:
        """ok, degraded or failing, with the reasons a person reads."""
        reasons: list[str] = []
        level = "ok"
        if self.error_kind == "permanent":
            level = "failing"
            reasons.append(f"failing: {self.last_error}")
        elif self.error_kind == "transient":
            level = "degraded"
            failing_since = (at - (self.last_ok or self.since)).total_seconds()
            if failing_since > self.max_lag:
                level = "failing"  # an outage longer than the alarm: a person must know
            reasons.append(
                f"retrying after {self.failures} failed runs (for {_age(failing_since)}): "
                f"{self.last_error}"
            )
        lag = self.lag(at)
        waited = (at - self.since).total_seconds()
        if lag is None and waited > self.max_lag:
            level = "failing" if level == "failing" else "degraded"
            reasons.append(
                f"changes may be waiting: no run has completed in the {_age(waited)} since "
                "the service started"
            )
        elif lag is not None and lag > self.max_lag:
            level = "failing" if level == "failing" else "degraded"
            reasons.append(
                f"changes may be waiting for {_age(lag)} (alarm at {_age(self.max_lag)})"
            )
        if self.quarantined():
            level = "failing" if level == "failing" else "degraded"
            reasons.append(f"{self.quarantined()} rows held in quarantine")
        if self.blocked:
            level = "failing" if level == "failing" else "degraded"
            reasons.append(self.blocked)
        return level, reasons

    def as_json(self, at: datetime) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        level, reasons = self.verdict(at)
        lag = self.lag(at)
        out.update(
            health=level,
            reasons=reasons,
            lag_seconds=None if lag is None else round(lag, 1),
            quarantined=self.quarantined(),
        )
        return out


def _age(seconds: float) -> str:
    seconds = max(1, round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# --- one process per config -----------------------------------------------------------------
def _state_name(settings: Settings) -> str:
    """`<config stem>-<hash of its absolute path>`: two configs never share a lock."""
    path = str(settings.path.resolve())
    return f"{settings.path.stem}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def _service_folders() -> list[Path]:
    """Where an installed service keeps its state (`service install`: StateDirectory=)."""
    if os.name == "nt":
        base = os.environ.get("PROGRAMDATA")  # winservice.py: STATE_DIRECTORY under it
        return [Path(base) / "replicator" / "replicator"] if base else []
    return [Path("/var/lib/replicator")]


def state_dir(settings: Settings) -> Path:
    """Where the service keeps its lock and state file: `[service] state_dir`; else
    $STATE_DIRECTORY (systemd sets it for the unit); else, for a command typed in a shell,
    the installed service's folder when it holds this config's files; else the config's
    folder."""
    configured = settings.config.service.state_dir
    if configured is not None:
        return configured if configured.is_absolute() else settings.path.parent / configured
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    name = _state_name(settings)
    for folder in _service_folders():
        if (folder / f"{name}.run.lock").exists() or (folder / f"{name}.state.json").exists():
            return folder
    return settings.path.parent


def state_paths(settings: Settings) -> tuple[Path, Path]:
    """The lock file and the state file of this config's service."""
    folder = state_dir(settings)
    name = _state_name(settings)
    return folder / f"{name}.run.lock", folder / f"{name}.state.json"


class InstanceLock:
    """An exclusive lock on a file beside the state: a second `replicator run` on the same
    config refuses to start and names the process that holds it. The OS releases it when the
    process ends, however it ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held open)
        except OSError as exc:
            raise ReplicatorError(
                f"cannot create the service lock {self.path}: {exc.strerror}; set "
                "[service] state_dir to a folder the service account can write"
            ) from None
        try:
            _lock_file(handle)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise AlreadyRunning(
                f"another `replicator run` is already running with this config ({holder}); "
                f"lock file {self.path}. Stop it first (systemctl stop replicator), or give "
                "this one its own config"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {_now().isoformat()}")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.truncate(0)
                self._file.close()
            self._file = None


def _lock_file(handle: Any) -> None:
    if os.name == "nt":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _now() -> datetime:
    return datetime.now(UTC)


# --- the stall guard ------------------------------------------------------------------------
class StallGuard:
    """Knows which database connections each running job holds, and when it last moved; a
    job silent for longer than `limit` has the sockets of its PostgreSQL connections shut,
    so that a read that would wait forever on a link that says nothing fails instead."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._beats: dict[int, tuple[str, float]] = {}  # thread -> (job, last progress)
        self._conns: dict[int, set[Any]] = {}  # thread -> checked-out DBAPI connections

    def watch(self, engine: sa.Engine) -> None:
        # first among the checkout listeners: the liveness check that follows can be cut too
        event.listen(engine, "checkout", self._checkout, insert=True)
        event.listen(engine, "checkin", self._checkin)
        event.listen(engine, "invalidate", self._invalidated)

    def _checkout(self, dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        with self._lock:
            self._conns.setdefault(threading.get_ident(), set()).add(dbapi_conn)

    def _checkin(self, dbapi_conn: Any, _record: Any) -> None:
        with self._lock:
            for conns in self._conns.values():
                conns.discard(dbapi_conn)

    def _invalidated(self, dbapi_conn: Any, _record: Any, _exc: Any) -> None:
        self._checkin(dbapi_conn, _record)

    @contextlib.contextmanager
    def running(self, job: str) -> Iterator[Callable[[], None]]:
        me = threading.get_ident()

        def beat() -> None:
            self._beats[me] = (job, time.monotonic())

        beat()
        try:
            yield beat
        finally:
            self._beats.pop(me, None)

    def check(self) -> list[str]:
        """Cut the connections of stalled jobs; the jobs whose connections were cut."""
        cut = []
        now = time.monotonic()
        with self._lock:
            for thread, (job, at) in list(self._beats.items()):
                if now - at < self.limit:
                    continue
                shut = 0
                for conn in self._conns.get(thread, ()):
                    fd = _socket_of(conn)
                    if fd is None:
                        continue
                    with contextlib.suppress(OSError):
                        sock = socket.socket(fileno=os.dup(fd))
                        with sock:
                            sock.shutdown(socket.SHUT_RDWR)
                            shut += 1
                self._beats[thread] = (job, now)  # give the cut time to take effect
                if shut:  # else it is still connecting: the connect timeout ends that
                    cut.append(job)
        return cut


def _socket_of(dbapi_conn: Any) -> int | None:
    pgconn = getattr(dbapi_conn, "pgconn", None)  # psycopg 3
    if pgconn is None:
        return None
    try:
        return int(pgconn.socket)
    except Exception:  # closed already
        return None


# --- leases: jobs shared by several processes -------------------------------------------------
class Leases:
    """Leases of shared jobs in the server databases (the `lease` control table)."""

    def __init__(self, databases: Databases, holder: str) -> None:
        self.databases = databases
        self.holder = holder
        self._held: dict[str, str] = {}  # job -> server database name
        self._lock = threading.Lock()

    def claim(self, job: Job) -> bool:
        backend = self.databases[job.server]
        lease = backend.ct.lease
        c = lease.c
        at = _now()
        with backend.engine.begin() as conn:
            conn.execute(
                backend.insert_construct(lease)
                .values(job=job.name, next_due=at - timedelta(seconds=1), runs=0)
                .on_conflict_do_nothing(index_elements=["job"])
            )
            taken = conn.execute(
                sa.update(lease)
                .where(
                    c.job == job.name,
                    c.next_due <= at,
                    sa.or_(c.holder.is_(None), c.expires_at < at, c.holder == self.holder),
                )
                .values(
                    holder=self.holder,
                    expires_at=at + timedelta(seconds=LEASE_SECONDS),
                    runs=c.runs + 1,
                )
            ).rowcount
        if taken == 1:
            with self._lock:
                self._held[job.name] = job.server
        return taken == 1

    def release(self, job: Job, next_due: datetime) -> None:
        with self._lock:
            self._held.pop(job.name, None)
        backend = self.databases[job.server]
        c = backend.ct.lease.c
        with backend.engine.begin() as conn:
            conn.execute(
                sa.update(backend.ct.lease)
                .where(c.job == job.name, c.holder == self.holder)
                .values(holder=None, expires_at=None, next_due=next_due)
            )

    def renew(self) -> None:
        with self._lock:
            held = dict(self._held)
        by_server: dict[str, list[str]] = {}
        for job, server in held.items():
            by_server.setdefault(server, []).append(job)
        for server, jobs in by_server.items():
            backend = self.databases[server]
            c = backend.ct.lease.c
            try:
                with backend.engine.begin() as conn:
                    conn.execute(
                        sa.update(backend.ct.lease)
                        .where(c.job.in_(jobs), c.holder == self.holder)
                        .values(expires_at=_now() + timedelta(seconds=LEASE_SECONDS))
                    )
            except sa_exc.SQLAlchemyError as exc:
                logger.warning("could not renew the leases in {}: {}", server, exc)


# --- the loop -------------------------------------------------------------------------------
class Service:
    """The jobs of one config, run on their schedules until `stop` is set."""

    def __init__(
        self,
        settings: Settings,
        stop: threading.Event | None = None,
        on_tick: Callable[[Service], None] | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.config.service
        self.stop = stop or threading.Event()
        self.on_tick = on_tick
        self.jobs = {job.name: job for job in settings.jobs()}
        workers = min(self.cfg.workers, max(1, len(self.jobs)))
        self.workers = workers
        self.databases = Databases(settings, pool_size=workers + 1)
        self.health = {
            job.name: JobHealth(
                job.name, job.group, job.source, job.target, job.every, job.max_lag, _now()
            )
            for job in self.jobs.values()
        }
        self.guard = StallGuard(seconds_of(self.cfg.stall))
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.leases = Leases(self.databases, self.holder) if self.cfg.shared else None
        # A server that runs the jobs of many registers keeps no idle connection to each of
        # them between runs (each would hold a connection slot of the register's server).
        registers = {j.source if j.target == j.server else j.target for j in self.jobs.values()}
        self.close_registers = len(registers) > workers
        self.started = _now()
        self.log_problem: Callable[[], str | None] = lambda: None
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._done: queue.Queue[tuple[str, datetime]] = queue.Queue()
        self._pending: set[str] = set()  # queued or running
        self._runners: dict[str, JobRunner] = {}
        self._born: dict[str, float] = {}  # when each runner reflected its tables
        self._watched: set[int] = set()
        self._scheduler = schedule.Scheduler()
        self._entries: dict[str, schedule.Job] = {}
        self._threads: list[threading.Thread] = []
        self._state_written = 0.0
        self._dirty = True
        self._rng = random.Random()
        self._stopped = False
        self._state_problem: str | None = None
        self._idle_logged: dict[str, float] = {}  # job -> when its last idle line was written

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        for name, job in self.jobs.items():
            entry = self._scheduler.every(job.every).seconds.do(self._due, name)
            self._entries[name] = entry
        # first runs spread over a second, not all at the same instant
        for i, entry in enumerate(self._entries.values()):
            entry.next_run = datetime.now() + timedelta(seconds=i / max(1, len(self._entries)))
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"replicator-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info(
            "service started: {} jobs, {} workers{}",
            len(self.jobs),
            self.workers,
            ", sharing jobs through leases" if self.leases else "",
        )

    def loop(self) -> None:
        """Run until `stop` is set."""
        renew_at = time.monotonic() + LEASE_SECONDS / 3
        while not self.stop.is_set():
            self._collect()
            self._scheduler.run_pending()
            for job in self.guard.check():
                logger.bind(job=job).warning(
                    "no progress for {}: its database connections were cut to retry",
                    self.cfg.stall,
                )
            if self.leases and time.monotonic() >= renew_at:
                self.leases.renew()
                renew_at = time.monotonic() + LEASE_SECONDS / 3
            self._write_state()
            if self.on_tick is not None:
                self.on_tick(self)
            idle = self._scheduler.idle_seconds
            self.stop.wait(0.25 if idle is None else min(0.25, max(0.01, idle)))

    def shutdown(self) -> bool:
        """Let running jobs reach a commit, then close; False when some were still running
        at the end of the grace period (their open transactions roll back at exit)."""
        self.stop.set()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + GRACE_SECONDS
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        whole = not any(t.is_alive() for t in self._threads)
        self._collect()
        self._stopped = True
        self._write_state(force=True)
        if whole:
            self.databases.close()
        return whole

    # --- scheduling ----------------------------------------------------------------------
    def _due(self, name: str) -> None:
        if name in self._pending or self.stop.is_set():
            return
        self._pending.add(name)
        self._queue.put(name)

    def _collect(self) -> None:
        """Apply finished runs to the schedule (the loop's thread owns the scheduler)."""
        while True:
            try:
                name, when = self._done.get_nowait()  # local time, fixed when the run ended
            except queue.Empty:
                return
            self._pending.discard(name)
            self._entries[name].next_run = when
            self.health[name].next_run = when.astimezone(UTC)
            self._dirty = True


    # --- the workers ----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            name = self._queue.get()
            if name is None or self.stop.is_set():
                return
            delay = float(self.jobs[name].every)
            try:
                delay = self._run(name)
            except Exception:  # never lose a worker
                logger.bind(job=name).exception("unexpected error in the service loop")
            finally:
                self._done.put((name, datetime.now() + timedelta(seconds=delay)))

    def _runner(self, job: Job) -> JobRunner:
        runner = self._runners.get(job.name)
        if runner is not None and time.monotonic() - self._born[job.name] > REFRESH_SECONDS:
            # reflect this job's tables again now and then (a schema may have changed), one
            # job at a time, so a service that is never idle refreshes too
            group = self.settings.groups[job.group]
            runner.source.forget_tables([m.source for m in group.tables])
            runner.target.forget_tables([m.target_table for m in group.tables])
            runner = None
        if runner is None:
            self._born[job.name] = time.monotonic()
            runner = JobRunner(self.settings, self.databases, job)
            for backend in (runner.source, runner.target):
                if id(backend.engine) not in self._watched:
                    self._watched.add(id(backend.engine))
                    self.guard.watch(backend.engine)
            self._runners[job.name] = runner
        return runner

    def _run(self, name: str) -> float:
        """Run one job once; the seconds until its next run."""
        job = self.jobs[name]
        h = self.health[name]
        log = logger.bind(job=name)
        start = _now()
        if self.leases is not None:
            try:
                if not self.leases.claim(job):
                    return float(job.every)  # another process has it, or ran it just now
            except sa_exc.SQLAlchemyError as exc:
                error = self.databases[job.server].classify(exc)
                return self._failed(job, h, error, start)
        h.running, h.last_start = True, start
        self._dirty = True
        result: JobResult
        try:
            runner = self._runner(job)
            runner.stop = self.stop
            runner.report = False  # the summary line below says it all
            with self.guard.running(name) as beat:
                runner.heartbeat = beat
                result = runner.run()
        except ReplicatorError as exc:
            result = JobResult(job, error=exc)
        except Exception as exc:  # a bug: keep the traceback, keep the service going
            log.exception("unexpected error")
            result = JobResult(job, error=ReplicatorError(f"unexpected {type(exc).__name__}"))
        finally:
            h.running = False
            if self.close_registers:
                for db in {job.source, job.target} - {job.server}:
                    self.databases[db].engine.dispose()  # idle connections only
        h.last_end = _now()
        h.runs += 1
        h.last_rows, h.last_seconds = result.rows, result.seconds
        h.blocked = result.blocker
        for table, t in result.tables.items():
            tot = h.totals.setdefault(table, {"written": 0, "deleted": 0, "quarantined": 0})
            tot["written"] += t.upserts
            tot["deleted"] += t.deletes
            tot["quarantined"] += t.quarantined
        self._held(job, h)
        if result.skipped:
            h.state = "busy"
            delay = float(job.every)
        elif result.error is not None:
            delay = self._failed(job, h, result.error, start)
        else:
            if not result.stopped:
                h.caught_up_at = start
            h.state, h.failures, h.last_error, h.error_kind = "ok", 0, None, None
            h.last_ok = h.last_end
            delay = max(0.0, job.every - (h.last_end - start).total_seconds())
        level = {"transient": "WARNING", "permanent": "ERROR"}.get(h.error_kind or "", "INFO")
        idle = (
            result.error is None
            and not result.skipped
            and not result.rows
            and not any(t.quarantined or t.conflicts for t in result.tables.values())
        )
        if idle and time.monotonic() - self._idle_logged.get(name, -1e9) < IDLE_LINE_SECONDS:
            log.debug(summary(job, h, result, delay))  # nothing new: one INFO line in ten min
        else:
            log.log(level if result.error else "INFO", summary(job, h, result, delay))
            if idle:
                self._idle_logged[name] = time.monotonic()
            else:
                self._idle_logged.pop(name, None)  # the next idle run says so at once
        if self.leases is not None:
            try:
                self.leases.release(job, _now() + timedelta(seconds=delay))
            except sa_exc.SQLAlchemyError as exc:
                log.warning("could not release the lease: {}", exc)
        self._dirty = True
        return delay

    def _failed(self, job: Job, h: JobHealth, error: ReplicatorError, start: datetime) -> float:
        h.failures += 1
        h.errors += 1
        h.last_error = str(error)
        if isinstance(error, TransientError):
            h.state, h.error_kind = "retrying", "transient"
            first = seconds_of(self.cfg.retry_after)
            cap = seconds_of(self.cfg.max_backoff)
            wait = min(cap, first * 2 ** min(h.failures - 1, 20))
            return float(wait * self._rng.uniform(0.5, 1.0))  # jitter: no stampede
        h.state, h.error_kind = "failing", "permanent"
        self._runners.pop(job.name, None)  # reflect again next time: the fix may be a schema
        self.databases.forget_tables(job.source, job.target)
        return float(seconds_of(self.cfg.permanent_retry))

    def _held(self, job: Job, h: JobHealth) -> None:
        """Rows in the target's quarantine for this job, per table and state."""
        try:
            target = self.databases[job.target]
            with target.engine.connect() as conn:
                h.held = Quarantine(target.ct, job.name).counts(conn)
        except (sa_exc.SQLAlchemyError, ReplicatorError):
            pass  # unreachable: the run's error says so

    # --- the state file ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        at = _now()
        jobs = [h.as_json(at) for h in self.health.values()]
        levels = [j["health"] for j in jobs]
        problems = []
        log_problem = self.log_problem()
        if log_problem:
            problems.append(log_problem)
        if self._state_problem:
            problems.append(self._state_problem)
        overall = "failing" if "failing" in levels else "degraded" if "degraded" in levels else "ok"
        if problems and overall == "ok":
            overall = "degraded"
        return {
            "service": {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "config": str(self.settings.path),
                "started": self.started.isoformat(),
                "updated": at.isoformat(),
                "stopping": self.stop.is_set(),
                "stopped": self._stopped,
                "workers": self.workers,
                "health": overall,
                "problems": problems,
            },
            "jobs": jobs,
        }

    def _write_state(self, force: bool = False) -> None:
        if not force and (
            (not self._dirty and time.monotonic() - self._state_written < 30)
            or time.monotonic() - self._state_written < STATE_EVERY
        ):
            return
        _, path = state_paths(self.settings)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.snapshot(), indent=1, default=str), "utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            if self._state_problem is None:
                logger.warning("cannot write the service state {}: {}", path, exc.strerror)
            self._state_problem = (
                f"cannot write the service state {path}: {exc.strerror}; `status` cannot "
                "see this service (free the disk or set [service] state_dir)"
            )
        else:
            if self._state_problem is not None:
                logger.info("the service state {} can be written again", path)
            self._state_problem = None
        self._state_written = time.monotonic()
        self._dirty = False


def summary(job: Job, h: JobHealth, result: JobResult, delay: float) -> str:
    """The line a store manager reads in the day's log for one run of one job."""
    written = sum(t.upserts for t in result.tables.values())
    deleted = sum(t.deletes for t in result.tables.values())
    quarantined = sum(t.quarantined for t in result.tables.values())
    lag = h.lag(_now())
    if result.skipped:
        outcome = f"skipped: {result.skipped}"
    elif result.error is not None and h.error_kind == "transient":
        outcome = (
            f"FAILED, retrying in {_age(delay)} (failure {h.failures} in a row): {result.error}"
        )
    elif result.error is not None:
        outcome = (
            f"FAILED, NEEDS ATTENTION (next try in {_age(delay)}; `replicator check` helps "
            f"find the cause): {result.error}"
        )
    elif result.stopped:
        outcome = "stopped for shutdown (resumes where it stopped)"
    else:
        outcome = "ok"
    held = h.quarantined()
    return (
        f"{job.group} {job.source} -> {job.target}: {outcome}; {written} rows applied, "
        f"{deleted} deleted, {quarantined} newly quarantined ({held} held), "
        f"lag {'unknown' if lag is None else _age(lag)}, took {result.seconds:.2f}s"
    )


# --- entry point -----------------------------------------------------------------------------
def stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM and SIGINT set `stop` (installed first thing: a stop request that arrives
    while the service is still starting is honoured, not fatal). Returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # the Windows service's thread: its stop request sets `stop`

    def on_signal(signum: int, _frame: Any) -> None:
        if not stop.is_set():
            logger.info("received {}: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def run_service(
    config_path: Path, stop: threading.Event | None = None, settings: Settings | None = None
) -> int:
    """Load the config and run its jobs until `stop` is set or SIGTERM/SIGINT arrive."""
    from replicator import sdnotify
    from replicator.health import HealthServer

    stop = stop or threading.Event()
    restore = stop_on_signals(stop)
    settings = settings or load_settings(config_path)
    service = Service(settings, stop)
    lock_path, _ = state_paths(settings)
    lock = InstanceLock(lock_path)
    http = None
    try:
        lock.acquire()
        from replicator.log import log_problem

        service.log_problem = log_problem
        if service.cfg.http:
            http = HealthServer(service, service.cfg.http)
            http.start()
        service.start()
        watchdog = sdnotify.watchdog_seconds()
        sdnotify.notify("READY=1", f"STATUS=running {len(service.jobs)} jobs")
        if watchdog:
            beat_every = watchdog / 3
            last = [0.0]

            def tick(svc: Service) -> None:
                if time.monotonic() - last[0] >= beat_every:
                    sdnotify.notify("WATCHDOG=1")
                    last[0] = time.monotonic()

            service.on_tick = tick
        if not stop.is_set():
            service.loop()
        sdnotify.notify("STOPPING=1")
        whole = service.shutdown()
        if not whole:
            logger.warning("stopped with a job still running: its open transaction is rolled back")
        logger.info("service stopped")
        return 0
    finally:
        if http is not None:
            http.stop()
        restore()
        lock.release()
        sys.stderr.flush()


__all__ = ["AlreadyRunning", "JobHealth", "Service", "run_service", "state_paths", "summary"]
