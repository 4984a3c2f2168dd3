"""`replicator status`: per job and table, progress, pending changes, held rows, last error."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from rich import box
from rich.table import Table
from sqlalchemy import exc as sa_exc

from replicator.config import Settings
from replicator.errors import TransientError
from replicator.position import Position
from replicator.quarantine import CONFLICT, REFUSED, WAITING, Quarantine
from replicator.resync_drift import drift_of
from replicator.state import read_positions
from replicator.sync import Databases, JobRunner

PENDING_CAP = 100_000


@dataclass
class TableStatus:
    job: str
    table: str
    watermark: int
    rows_applied: int
    deletes_applied: int
    last_batch_at: datetime | None
    pending: int | None  # changes waiting at the source (capped), None when unknown
    quarantined: int  # held rows: waiting + refused + conflicts
    error: str | None = None  # the job or table could not be read, or its last run failed
    held: dict[str, int] = field(default_factory=dict)  # per quarantine state
    warning: str | None = None  # e.g. a long transaction holding the source back
    service: dict[str, Any] | None = None  # what a running `replicator run` says of the job
    register: str = ""  # the register database of the job

    @property
    def conflicts(self) -> int:
        return self.held.get(CONFLICT, 0)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        stamp = self.last_batch_at
        if stamp is not None and stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)  # SQLite keeps our UTC stamps without a zone
        out["last_batch_at"] = stamp.isoformat() if stamp else None
        out["conflicts"] = self.conflicts
        out["pending_capped"] = self.pending is not None and self.pending >= PENDING_CAP
        return out


def collect(
    settings: Settings,
    databases: Databases,
    groups: list[str] | None = None,
) -> list[TableStatus]:
    out: list[TableStatus] = []
    # Databases that could not be reached in this call: later jobs on them say so at once
    # instead of waiting for the connect timeout again (a stalled server and 30 jobs).
    unreachable: dict[str, str] = {}
    for job in settings.jobs(groups):
        runner = JobRunner(settings, databases, job)
        labels = [t.label for t in settings.groups[job.group].tables]
        register = job.target if job.source == job.server else job.source
        down = next((unreachable[d] for d in (job.target, job.source) if d in unreachable), None)
        if down is not None:
            out += [
                TableStatus(job.name, t, 0, 0, 0, None, None, 0, down, register=register)
                for t in labels
            ]
            continue
        trying = job.target
        try:
            target = databases[job.target]
            ct = target.ct
            st, j = ct.state.c, ct.job.c
            with target.engine.connect() as conn:
                state = {
                    r.table_name: r
                    for r in conn.execute(sa.select(ct.state).where(st.job == job.name))
                }
                positions = read_positions(conn, ct, job.name)
                held = Quarantine(ct, job.name).counts(conn)
                job_row = conn.execute(sa.select(ct.job).where(j.job == job.name)).first()
                drift = drift_of(target, conn, job, runner.plans()) or {}
            trying = job.source
            pending, warning = _pending(runner, positions)
        except (sa_exc.SQLAlchemyError, Exception) as exc:  # status reports, never crashes
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            if _unreachable(databases, trying, exc):
                unreachable[trying] = f"{trying} not reached: {reason}"
            out += [
                TableStatus(job.name, t, 0, 0, 0, None, None, 0, reason, register=register)
                for t in labels
            ]
            continue
        job_error = job_row.last_error if job_row is not None else None
        for label in labels:
            row = state.get(label)
            counts = held.get(label, {})
            table_error = row.last_error if row is not None else None
            out.append(
                TableStatus(
                    job=job.name,
                    table=label,
                    watermark=int(row.version) if row else 0,
                    rows_applied=int(row.rows_applied) if row else 0,
                    deletes_applied=int(row.deletes_applied) if row else 0,
                    last_batch_at=row.last_batch_at if row else None,
                    pending=pending.get(label),
                    quarantined=sum(counts.get(s, 0) for s in (WAITING, REFUSED, CONFLICT)),
                    error=table_error or job_error,
                    held=counts,
                    warning="; ".join(w for w in (warning, drift.get(label)) if w) or None,
                    register=register,
                )
            )
    return out


def _unreachable(databases: Databases, name: str, exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached now (not: a table is missing)."""
    if not isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return False
    try:
        return isinstance(databases[name].classify(exc), TransientError)
    except Exception:  # status reports, never crashes
        return False


def _pending(runner: JobRunner, positions: dict[str, Any]) -> tuple[dict[str, int], str | None]:
    source = runner.source
    with source.read_snapshot() as conn:
        blocker = source.blocker(conn)
        out = {}
        for plan in runner.plans():
            st = positions.get(plan.label)
            rows = st.rows if st else Position()
            tombs = st.tombs if st else Position()
            out[plan.label] = runner.reader.pending(conn, plan, rows, tombs, PENDING_CAP)
    return out, str(blocker) if blocker else None


def service_view(settings: Settings) -> dict[str, Any] | None:
    """The state file of this config's `replicator run`, with `running` telling whether its
    process is alive (None: no service has run with this config here)."""
    import json
    import os
    import socket

    from replicator.scheduler import state_paths

    _, path = state_paths(settings)
    try:
        doc: dict[str, Any] = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    svc = doc.get("service", {})
    running = False
    if svc.get("host") == socket.gethostname() and not svc.get("stopped"):
        try:
            os.kill(int(svc.get("pid", 0)), 0)
            running = True
        except (OSError, ValueError):
            running = False
    svc["running"] = running
    svc["path"] = str(path)
    return doc


def attach_service(rows: list[TableStatus], doc: dict[str, Any] | None) -> None:
    if not doc or not doc["service"].get("running"):
        return
    jobs = {j["job"]: j for j in doc.get("jobs", [])}
    for r in rows:
        job = jobs.get(r.job)
        if job is not None:
            r.service = {
                k: job.get(k)
                for k in (
                    "state",
                    "health",
                    "reasons",
                    "lag_seconds",
                    "failures",
                    "last_ok",
                    "next_run",
                    "error_kind",
                )
            }


def status_table(rows: list[TableStatus]) -> Table:
    errors = any(r.error for r in rows)
    table = Table(title="status", box=box.SIMPLE_HEAD)
    for col in ("job", "table", "last", "rows", "pending", "held", "conflicts"):
        table.add_column(
            col,
            no_wrap=col in ("job", "table", "last"),
            justify="left" if col in ("job", "table") else "right",
        )
    if errors:
        table.add_column("error")
    today = datetime.now(UTC).date()
    for r in rows:
        when = "never"
        if r.last_batch_at:
            stamp = r.last_batch_at.replace(tzinfo=r.last_batch_at.tzinfo or UTC)
            when = stamp.strftime("%H:%M:%S" if stamp.date() == today else "%Y-%m-%d")
        waiting, refused = r.held.get(WAITING, 0), r.held.get(REFUSED, 0)
        held = str(waiting + refused)
        if waiting and refused:
            held = f"{waiting}w+{refused}r"
        elif waiting:
            held = f"{waiting} waiting"
        cells = [
            r.job,
            r.table,
            when,
            f"{r.rows_applied}+{r.deletes_applied}d" if r.deletes_applied else str(r.rows_applied),
            "?"
            if r.pending is None
            else (f"{r.pending}+" if r.pending >= PENDING_CAP else str(r.pending)),
            held,
            str(r.conflicts),
        ]
        table.add_row(*cells, *([r.error or ""] if errors else []))
    return table


SEVERITY = {"error": 3, "failing": 3, "degraded": 2, "held": 1, "ok": 0}


@dataclass
class RegisterStatus:
    """One register of a server's config, over all its jobs: the worst first."""

    register: str
    verdict: str  # ok | held | degraded | failing | error
    pending: int | None
    held: int
    conflicts: int
    lag_seconds: float | None
    last_batch_at: datetime | None
    problem: str | None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["last_batch_at"] = self.last_batch_at.isoformat() if self.last_batch_at else None
        return out


def by_register(rows: list[TableStatus]) -> list[RegisterStatus]:
    groups: dict[str, list[TableStatus]] = {}
    for r in rows:
        groups.setdefault(r.register, []).append(r)
    out = []
    for register, rs in groups.items():
        pending = [r.pending for r in rs]
        held = sum(r.quarantined for r in rs)
        conflicts = sum(r.conflicts for r in rs)
        lags = [r.service.get("lag_seconds") for r in rs if r.service]
        healths = [r.service.get("health") for r in rs if r.service]
        error = next((r.error for r in rs if r.error), None)
        verdict = "ok"
        if held or conflicts:
            verdict = "held"
        for h in healths:
            if h and SEVERITY.get(h, 0) > SEVERITY[verdict]:
                verdict = h
        if error:
            verdict = "error"
        reasons = [x for r in rs if r.service for x in r.service.get("reasons") or []]
        stamps = [
            r.last_batch_at.replace(tzinfo=r.last_batch_at.tzinfo or UTC)
            for r in rs
            if r.last_batch_at
        ]
        out.append(
            RegisterStatus(
                register=register,
                verdict=verdict,
                pending=None if None in pending else sum(p or 0 for p in pending),
                held=held,
                conflicts=conflicts,
                lag_seconds=max((x for x in lags if x is not None), default=None),
                last_batch_at=max(stamps, default=None),
                problem=error or (reasons[0] if reasons else None),
            )
        )
    out.sort(key=lambda r: (-SEVERITY[r.verdict], -(r.lag_seconds or 0), r.register))
    return out


def register_table(registers: list[RegisterStatus]) -> Table:
    table = Table(title="registers (worst first)", box=box.SIMPLE_HEAD)
    for col in ("register", "state", "pending", "held", "conflicts", "lag", "last", "problem"):
        table.add_column(
            col, justify="left" if col in ("register", "state", "problem") else "right"
        )
    today = datetime.now(UTC).date()
    for r in registers:
        when = "never"
        if r.last_batch_at:
            when = r.last_batch_at.strftime(
                "%H:%M:%S" if r.last_batch_at.date() == today else "%Y-%m-%d"
            )
        table.add_row(
            r.register,
            r.verdict,
            "?" if r.pending is None else str(r.pending),
            str(r.held),
            str(r.conflicts),
            "?" if r.lag_seconds is None else f"{int(r.lag_seconds)}s",
            when,
            r.problem or "",
        )
    return table
