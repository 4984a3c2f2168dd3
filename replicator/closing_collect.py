"""The closing report's content: for one business day and each register, what both sides
hold and what the jobs say, read register by register (a register's database is let go once
its part is read), the server's totals of every register in as few queries as it allows.
See `replicator.closing` (the command) and docs/closing.md."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc

from replicator import closing_state as state
from replicator.closing_day import batch_key, batch_totals, compare, snapshot, totals
from replicator.closing_log import read_day
from replicator.closing_model import (
    Action,
    Dismissal,
    Problem,
    RegisterDay,
    Report,
    Run,
    Side,
    TableDay,
)
from replicator.closing_sides import Day, Sides, SideSpec
from replicator.config import Job, Settings
from replicator.errors import ConfigError, ReplicatorError
from replicator.quarantine import CONFLICT, REFUSED, WAITING
from replicator.state import TableState
from replicator.sync import Databases, JobRunner
from replicator.transform import TablePlan
from replicator.values import local_timezone, zone

T = TypeVar("T")
BATCH = 500  # registers totalled in one query on the server


# --- zones and days ------------------------------------------------------------------------------
def store_zone(settings: Settings, register: str | None = None) -> str:
    """The zone of the business day: the register database's `timezone`, else `[node]
    timezone`, else this machine's."""
    db = settings.config.databases.get(register) if register else None
    return (db.timezone if db else None) or settings.config.node.timezone or local_timezone()


def naive_zone(settings: Settings, database: str, business: tzinfo) -> tzinfo:
    """What a database's naive timestamps mean: SQLite, its own zone; PostgreSQL, its
    `timezone` when set, else the store's (registers' naive timestamps arrive unchanged)."""
    db = settings.config.databases[database]
    if db.url.startswith("sqlite") or db.timezone:
        return zone(settings.timezone(database))
    return business


def pick_registers(settings: Settings, wanted: Sequence[str]) -> list[str]:
    """Register databases by name, node identity or register_id; all when none given."""
    registers = [n for n, d in settings.config.databases.items() if d.role == "register"]
    if not wanted:
        return registers
    out = []
    for want in wanted:
        found = [
            n
            for n in registers
            if want in (n, settings.node(n), str(settings._vars(n).get("register_id")))
        ]
        if not found:
            raise ConfigError(
                f"--register {want!r}: no register database with that name, node or "
                f"register_id in {settings.path}; registers: {', '.join(registers)}"
            )
        out += [n for n in found if n not in out]
    return out


# --- the report ----------------------------------------------------------------------------------
def collect(
    settings: Settings,
    databases: Databases,
    day: date | None = None,
    registers: Sequence[str] = (),
    full: bool = False,
    now: datetime | None = None,
) -> Report:
    now = now or datetime.now(UTC)
    main_zone = store_zone(settings)
    the_day = day or now.astimezone(zone(main_zone)).date()
    chosen = pick_registers(settings, registers)
    jobs = [j for j in settings.jobs() if j.source in chosen or j.target in chosen]
    from replicator.scheduler import state_paths

    state_file = state_paths(settings)[1]
    service, updated = state.service_state(state_file)
    summary, lines = read_day(settings.config.log.folder(settings.path.parent), the_day)
    report = Report(
        the_day,
        main_zone,
        now,
        [],
        summary,
        state_file=state_file if updated else None,
        state_updated=updated,
    )
    by_target: dict[str, list[Job]] = {}
    for job in jobs:
        by_target.setdefault(job.target, []).append(job)
    found = _Targets(databases)
    for target, target_jobs in by_target.items():
        if target not in chosen:  # the server: every register's movement jobs at once
            found.read(target, target_jobs)
    owner = {job.name: job for job in jobs}
    days: list[_TableWork] = []
    for name in chosen:
        mine = [j for j in jobs if name in (j.source, j.target)]
        found.read(name, by_target.get(name, []))  # the catalog jobs writing this register
        business = zone(store_zone(settings, name))
        reg = RegisterDay(
            database=name,
            node=settings.node(name),
            register_id=settings._vars(name).get("register_id"),
            timezone=store_zone(settings, name),
        )
        report.registers.append(reg)
        found.tell(reg, mine, service)
        names = {j.name for j in mine}
        dismissed = _dismissals(settings, databases, the_day, main_zone, [name], names)
        reg.dismissals = [d for d in dismissed if owner.get(d.job) in mine]
        reg.log = [ln for ln in lines if ln.job in names]
        readable = [j for j in mine if j.target not in found.failed]
        rows = full or len(chosen) == 1
        days += _register_day(
            settings, databases, reg, readable, Day(the_day, business), rows, found.positions
        )
        if isinstance(databases, ClosingDatabases) and len(chosen) > 1:
            databases.release(name)
    _server_totals(databases, days)
    again: dict[str, list[_TableWork]] = {}
    for work in days:
        table = work.table
        if table.register is not None and table.server is not None and not table.totals_agree:
            again.setdefault(work.job.name, []).append(work)
    for works in again.values():  # the totals differ: compare that register's rows
        job = works[0].job
        _guard(works[0].reg, databases, job, partial(_rows, settings, databases, works))
        if isinstance(databases, ClosingDatabases) and len(chosen) > 1:
            databases.release(works[0].reg.database)
    for reg in report.registers:
        reg.actions = actions_of(reg, now)
    for line in lines:
        line.message = state.without_urls(line.message, databases)
    names = {j.name for j in jobs}
    everyone = {j.name for j in settings.jobs()}
    report.log.lines = [ln for ln in lines if ln.job is None or ln.job not in everyone | names]
    return report


class _Targets:
    """What the jobs' targets hold about them (positions, held rows, last runs), read one
    target at a time, in one query per kind over all the jobs writing it."""

    def __init__(self, databases: Databases) -> None:
        self.databases = databases
        self.held: dict[str, list[Any]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.runs: dict[str, Run] = {}
        self.positions: dict[str, dict[str, TableState]] = {}
        self.failed: dict[str, ReplicatorError] = {}

    def read(self, target: str, jobs: list[Job]) -> None:
        if not jobs:
            return
        dbs = self.databases
        try:
            self.positions.update(state.all_positions(dbs, target, jobs))
            for row in state.held_rows(dbs, target, jobs):
                self.held.setdefault(row.job, []).append(row)
            self.counts.update(state.held_counts(dbs, target, jobs))
            self.runs.update(state.runs(dbs, target, jobs))
        except (ReplicatorError, sa_exc.SQLAlchemyError) as exc:
            self.failed[target] = _error(dbs, target, exc)

    def tell(self, reg: RegisterDay, jobs: list[Job], service: dict[str, dict[str, Any]]) -> None:
        """A register's part: its jobs' held rows, last runs (and what the service saw of
        them), and the targets that could not be read."""
        for target, error in self.failed.items():
            if any(j.target == target for j in jobs):
                _problem(reg, target, error)
        for job in jobs:
            reg.held += self.held.get(job.name, [])
            for st, n in self.counts.get(job.name, {}).items():
                reg.held_counts[st] = reg.held_counts.get(st, 0) + n
            run = self.runs.get(job.name, Run(job.name, job.group, job.target == reg.database))
            seen = service.get(job.name, {})
            run.health = seen.get("health")
            run.lag_seconds = seen.get("lag_seconds")
            reg.runs.append(run)


@dataclass
class _TableWork:
    """One table of one register's day, between its register's totals and the server's
    (rows not compared yet). It keeps the server's side only: the register's database may be
    let go meanwhile."""

    reg: RegisterDay
    job: Job
    server: SideSpec
    table: TableDay
    day: Day


def _register_day(
    settings: Settings,
    databases: Databases,
    reg: RegisterDay,
    jobs: Sequence[Job],
    day: Day,
    rows: bool,
    positions: dict[str, dict[str, TableState]],
) -> list[_TableWork]:
    """What a register's own jobs say (waiting changes) and its side of the day's totals."""
    runners: list[tuple[JobRunner, dict[str, TableState]]] = []
    for job in jobs:
        runner = JobRunner(settings, databases, job)
        if _guard(reg, databases, job, runner.plans) is not None:
            runners.append((runner, positions.get(job.name, {})))
    for flow in state.flows(runners):
        job = flow.runner.job
        source_zone = naive_zone(settings, job.source, day.zone)
        found = _guard(reg, databases, job, partial(state.pending, flow, source_zone, day.zone))
        if found is not None and found.count:
            reg.pending.append(found)
    busy = {p.job for p in reg.pending} | {h.job for h in reg.held}
    out = []
    for runner, _ in runners:
        for plan, sides in day_sides(settings, runner, day.zone):
            closing = plan.mapping.closing
            assert closing is not None
            table = TableDay(plan.label, closing, list(plan.mapping.key))
            reg.tables.append(table)
            job = runner.job
            if rows or job.name in busy:  # its rows are compared: both sides now
                _guard(reg, databases, job, partial(_fill, sides, table, day))
                continue
            mine = _guard(reg, databases, job, partial(_register_totals, sides, day))
            if mine is not None:
                table.register = mine
                out.append(_TableWork(reg, job, sides.server, table, day))
    return out


def day_sides(
    settings: Settings, runner: JobRunner, business: tzinfo
) -> list[tuple[TablePlan, Sides]]:
    """Both sides of every table of a movement job with a closing `date`. A closing that does
    not fit the live tables raises CheckError with the mapping file, line and fix."""
    if runner.split:
        return []
    job = runner.job
    scoped = len([n for n, d in settings.config.databases.items() if d.role == "register"]) > 1
    plans = {p.label: p for p in runner.plans()}
    zones = (
        business,
        naive_zone(settings, job.source, business),
        naive_zone(settings, job.target, business),
    )
    out = []
    for index, plan in enumerate(runner.plans()):
        closing = plan.mapping.closing
        if closing is None or closing.date is None:
            continue
        date_plan = plans[closing.via] if closing.via else plan
        where = settings.where(job.group, index)
        sides = Sides(plan, date_plan, job.vars, runner.source, runner.target, zones, where, scoped)
        out.append((plan, sides))
    return out


def closing_problems(settings: Settings, databases: Databases) -> list[str]:
    """What `replicator check` can say about the closing entries of the mappings against the
    live tables: one message per problem (file, line, table, fix); none when they fit. One
    register's jobs are enough: every register's tables come from the same mappings."""
    problems: list[str] = []
    registers = pick_registers(settings, [])[:1]
    business = zone(store_zone(settings))
    for job in settings.jobs():
        if job.source not in registers:
            continue
        try:
            day_sides(settings, JobRunner(settings, databases, job), business)
        except ReplicatorError as exc:
            problems += str(exc).splitlines()
    return problems


def _register_totals(sides: Sides, day: Day) -> Side:
    with snapshot(sides.register.backend) as conn:
        return totals(conn, sides.register, day)


def _server_totals(databases: Databases, days: list[_TableWork]) -> None:
    """The server's side of every register's tables, one query per table and server."""
    batches: dict[tuple[Any, ...], list[_TableWork]] = {}
    for work in days:
        key = (work.job.target, work.day, batch_key(work.server))
        batches.setdefault(key, []).append(work)
    for (target, day, _), works in batches.items():
        backend = databases[target]
        for start in range(0, len(works), BATCH):
            part = works[start : start + BATCH]
            try:
                with snapshot(backend) as conn:
                    found = batch_totals(conn, [w.server for w in part], day)
            except (ReplicatorError, sa_exc.SQLAlchemyError) as exc:
                for w in part:
                    _fail(w.reg, databases, w.job, exc)
                continue
            for w, side in zip(part, found, strict=True):
                w.table.server = side


def _rows(settings: Settings, databases: Databases, works: list[_TableWork]) -> None:
    """Compare the rows of these tables of one job: both sides' totals read again (the
    register first), then the rows of the day."""
    runner = JobRunner(settings, databases, works[0].job)
    by_label = {plan.label: s for plan, s in day_sides(settings, runner, works[0].day.zone)}
    for work in works:
        _fill(by_label[work.table.table], work.table, work.day)


def _fill(sides: Sides, table: TableDay, day: Day) -> None:
    with (
        snapshot(sides.register.backend) as rconn,
        snapshot(sides.server.backend) as sconn,
    ):
        table.register = totals(rconn, sides.register, day)
        table.server = totals(sconn, sides.server, day)
        compare(table, sides, rconn, sconn, day)


def _guard(reg: RegisterDay, databases: Databases, job: Job, step: Callable[[], T]) -> T | None:
    """Run one step of a job's report; a database that cannot be read becomes a problem of
    the register (the rest of the report goes on). A mapping that does not fit the live
    tables is not a step: it stops the command (see `Sides`)."""
    try:
        return step()
    except (ReplicatorError, sa_exc.SQLAlchemyError) as exc:
        _fail(reg, databases, job, exc)
        return None


def _fail(reg: RegisterDay, databases: Databases, job: Job, exc: BaseException) -> None:
    from replicator.preflight import Diagnosis

    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    error = Diagnosis(databases).of(job, reason)
    _problem(reg, _which(databases, job, error), error)


def _which(databases: Databases, job: Job, error: ReplicatorError) -> str:
    text = str(error)
    for name in (job.source, job.target):
        if f"database {name!r}" in text or databases[name].display_url in text:
            return name
    return job.target


def _error(databases: Databases, target: str, exc: BaseException) -> ReplicatorError:
    if isinstance(exc, ReplicatorError):
        return exc
    return databases[target].classify(exc)


def _problem(reg: RegisterDay, database: str, error: ReplicatorError) -> None:
    if not any(p.database == database for p in reg.problems):  # the first says why
        reg.problems.append(Problem(database, str(error), error.exit_code))


def _dismissals(
    settings: Settings,
    databases: Databases,
    day: date,
    tz: str,
    registers: list[str],
    jobs: set[str],
) -> list[Dismissal]:
    from replicator.dismissals import dismissals_of_day

    try:
        found = dismissals_of_day(only(settings, registers), databases, day, tz)
    except ReplicatorError:
        return []  # an unreachable target: its problem is reported with its register
    return [Dismissal(d.job, d.table, d.key, d.reason, d.by, d.at) for d in found if d.job in jobs]


def only(settings: Settings, registers: list[str]) -> Settings:
    """The same node with its jobs restricted to these registers (so that what visits every
    job's target visits theirs only)."""
    every = [n for n, d in settings.config.databases.items() if d.role == "register"]
    if set(registers) >= set(every):
        return settings
    from replicator.config import JobConfig

    configured = settings.config.jobs or [JobConfig(group=g) for g in settings.groups]
    jobs = [
        j.model_copy(update={"registers": [r for r in (j.registers or every) if r in registers]})
        for j in configured
    ]
    config = settings.config.model_copy(update={"jobs": [j for j in jobs if j.registers]})
    out = Settings(settings.path, config, settings.groups)
    out.sources = settings.sources
    return out


class ClosingDatabases(Databases):
    """The node's databases for a closing: a register's database is let go (connections,
    reflected tables) once its part of the report is read, so that memory stays flat over
    hundreds of registers; it is opened again if its rows must be compared."""

    def release(self, name: str) -> None:
        with self._lock:
            backend = self._open.pop(name, None)
        if backend is not None:
            backend.dispose()


# --- the verdict ---------------------------------------------------------------------------------
def actions_of(reg: RegisterDay, now: datetime) -> list[Action]:
    """What staff must do for one register, most urgent first."""
    out: list[Action] = []
    who = reg.label
    for problem in reg.problems:
        out.append(Action("unreadable", who, table=problem.database, detail=problem.message))
    explained = False
    for t in reg.tables:
        for code, rows in (("missing", t.missing), ("different", t.different), ("extra", t.extra)):
            if rows:
                out.append(Action(code, who, len(rows), t.table, t.closing))
                explained = True
        listed = t.missing or t.different or t.extra
        if t.register is not None and t.server is not None and not t.totals_agree and not listed:
            out.append(Action("totals", who, 0, t.table, t.closing))
    down = [p for p in reg.pending if p.to_register]
    up = [p for p in reg.pending if not p.to_register]
    if down:
        out.append(
            Action("catalog", who, sum(p.count for p in down), age_seconds=_oldest(down, now))
        )
    if up and not explained:
        out.append(Action("waiting", who, sum(p.count for p in up), age_seconds=_oldest(up, now)))
    held = reg.held_counts.get(WAITING, 0) + reg.held_counts.get(REFUSED, 0)
    if held:
        out.append(Action("held", who, held))
    if reg.held_counts.get(CONFLICT, 0):
        out.append(Action("conflicts", who, reg.held_counts[CONFLICT]))
    return out


def _oldest(pending: Sequence[Any], now: datetime) -> float | None:
    stamps = [p.oldest for p in pending if isinstance(p.oldest, datetime)]
    if not stamps:
        return None
    return max(0.0, (now - min(stamps)).total_seconds())
