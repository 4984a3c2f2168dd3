"""What the jobs of a register say at closing: changes still waiting either way (with the age
of the oldest), held rows and conflicts, the day's dismissals, the last runs, and what the
service (`replicator run`) saw, from its state file.

Waiting changes are counted from the job's own position, never from clocks: a change is
waiting when its `(version, key)` is after what the target has applied. Where a mapping's
`closing` names a `changed` column (or a `date`), the oldest waiting change's value gives its
age. A table that two groups deliver (products in `cadastros` and `produtos`) counts as
delivered once either job has passed the change.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from replicator.closing_day import snapshot
from replicator.closing_model import HeldRow, Pending, PendingRow, Run
from replicator.config import Job
from replicator.position import Position
from replicator.quarantine import HELD
from replicator.state import TableState
from replicator.status import PENDING_CAP
from replicator.sync import Databases, JobRunner
from replicator.transform import TablePlan

LISTED = 50  # waiting rows listed per table (all are counted)
HELD_LISTED = 200  # held rows listed per target database


@dataclass
class Flow:
    """One source table as the jobs of one register deliver it (the furthest position)."""

    runner: JobRunner
    plan: TablePlan
    rows: Position
    tombs: Position


def flows(runners: Sequence[tuple[JobRunner, dict[str, TableState]]]) -> list[Flow]:
    """Per (source, table, target), the furthest position of the jobs that deliver it (each
    job's positions as read from its target)."""
    best: dict[tuple[str, str, str, str], Flow] = {}
    for runner, positions in runners:
        job = runner.job
        for plan in runner.plans():
            st = positions.get(plan.label)
            flow = Flow(runner, plan, st.rows if st else Position(), st.tombs if st else Position())
            key = (job.source, plan.mapping.source, job.target, plan.target.name)
            old = best.get(key)
            if old is None:
                best[key] = flow
                continue
            rows = max(old.rows, flow.rows, key=lambda p: _rank(plan, p))
            tombs = max(old.tombs, flow.tombs, key=lambda p: (p.version, p.tie))
            best[key] = Flow(old.runner, old.plan, rows, tombs)
    return list(best.values())


def all_positions(
    databases: Databases, target: str, jobs: Sequence[Job]
) -> dict[str, dict[str, TableState]]:
    """Where each of these jobs stands, per table, read from their target in one query."""
    backend = databases[target]
    s = backend.ct.state.c
    out: dict[str, dict[str, TableState]] = {job.name: {} for job in jobs}
    with backend.engine.connect() as conn:
        for part in _parts(list(out)):
            stmt = sa.select(
                s.job, s.table_name, s.version, s.row_key, s.tomb_version, s.tomb_id, s.last_error
            ).where(s.job.in_(part))
            for job, name, version, key, tv, tid, error in conn.execute(stmt):
                out[job][name] = TableState(
                    Position(int(version), key), Position(int(tv), None, int(tid)), error
                )
    return out


def _rank(plan: TablePlan, pos: Position) -> tuple[Any, ...]:
    if pos.key is None:
        return (pos.version, 1, ())
    return (pos.version, 0, plan.source_codec.canon(plan.source_codec.from_text(pos.key)))


def pending(flow: Flow, naive: tzinfo, business: tzinfo) -> Pending:
    """The changes of one flow still waiting at its source: counted (up to PENDING_CAP),
    the oldest's age, and the first LISTED of them."""
    runner, plan = flow.runner, flow.plan
    closing = plan.mapping.closing
    job = runner.job
    reader = runner.reader
    source = plan.source
    age_col = None
    if closing is not None:
        name = closing.changed or (closing.date if closing.via is None else None)
        age_col = source.c[name] if name and name in source.c else None
    shown = [source.c[n] for n in (closing.show if closing else []) if n in source.c]
    out = Pending(
        job=job.name,
        group=job.group,
        table=plan.label,
        closing=closing,
        to_register=runner.split,
        count=0,
        key_names=list(plan.mapping.key),
    )
    with snapshot(runner.source) as conn:
        out.count = reader.pending(conn, plan, flow.rows, flow.tombs, PENDING_CAP)
        out.capped = out.count >= PENDING_CAP
        if not out.count:
            return out
        waiting = [reader._after(plan, flow.rows), reader._not_echo(plan), *plan.filters]
        if age_col is not None:
            oldest = conn.execute(sa.select(sa.func.min(age_col)).where(*waiting)).scalar()
            out.oldest = _when(oldest, naive, business)
        extra = [c for c in (age_col, *shown) if c is not None]
        stmt = (
            sa.select(*plan.source_key, *extra)
            .where(*waiting)
            .order_by(plan.version, *plan.source_key)
            .limit(LISTED)
        )
        width = len(plan.source_key)
        for record in conn.execute(stmt):
            values = list(record[width:])
            changed = _when(values.pop(0), naive, business) if age_col is not None else None
            out.rows.append(
                PendingRow(
                    key=plan.source_codec.canon(record[:width]),
                    changed=changed,
                    shown={
                        c.name: _shown(v, naive, business)
                        for c, v in zip(shown, values, strict=True)
                    },
                )
            )
        if plan.deletes and len(out.rows) < LISTED:
            tomb = runner.source.ct.tombstone.c
            stmt = (
                reader._tombs_after(plan, flow.tombs)
                .order_by(tomb.version, tomb.id)
                .limit(LISTED - len(out.rows))
            )
            for _id, _version, key in conn.execute(stmt):
                canon = plan.source_codec.canon(plan.source_codec.from_text(key))
                out.rows.append(PendingRow(key=canon, deleted=True))
    return out


def _when(value: Any, naive: tzinfo, business: tzinfo) -> datetime | date | None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        stamp: datetime = value if value.tzinfo else value.replace(tzinfo=naive)
        return stamp.astimezone(business)
    if isinstance(value, date):
        day: date = value
        return day
    return None


def _shown(value: Any, naive: tzinfo, business: tzinfo) -> Any:
    if isinstance(value, datetime):
        return _when(value, naive, business)
    return value


# --- quarantine and runs, one query per target database ------------------------------------------
def aware(stamp: datetime | None) -> datetime | None:
    """A control-table timestamp, aware (SQLite keeps our UTC stamps without a zone)."""
    if stamp is None:
        return None
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp


def held_rows(databases: Databases, target: str, jobs: Sequence[Job]) -> list[HeldRow]:
    """Rows held (waiting, refused, conflict) for these jobs in one target, oldest first."""
    backend = databases[target]
    q = backend.ct.quarantine.c
    groups = {job.name: job.group for job in jobs}
    out: list[HeldRow] = []
    with backend.engine.connect() as conn:
        for part in _parts(list(groups)):
            stmt = (
                sa.select(
                    q.job, q.table_name, q.row_key, q.status, q.reason, q.first_seen, q.attempts
                )
                .where(q.job.in_(part), q.status.in_(HELD))
                .order_by(q.first_seen, q.id)
                .limit(HELD_LISTED)
            )
            for job, table, key, state, reason, first, attempts in conn.execute(stmt):
                reason = without_urls(reason, databases)
                out.append(
                    HeldRow(job, groups[job], table, key, state, reason, aware(first), attempts)
                )
    return out


def without_urls(text: str, databases: Databases) -> str:
    """A message without the database URLs it names (`postgresql://...: refused`): staff
    read the reason, the URL is for support (in the log, and `replicator errors`)."""
    for backend in databases.opened():
        text = text.replace(f"{backend.display_url}: ", "")
    return text


def held_counts(
    databases: Databases, target: str, jobs: Sequence[Job]
) -> dict[str, dict[str, int]]:
    """Per job, the number of held rows per state (all of them, not only those listed)."""
    backend = databases[target]
    q = backend.ct.quarantine.c
    out: dict[str, dict[str, int]] = {}
    with backend.engine.connect() as conn:
        for part in _parts([job.name for job in jobs]):
            stmt = (
                sa.select(q.job, q.status, sa.func.count())
                .where(q.job.in_(part), q.status.in_(HELD))
                .group_by(q.job, q.status)
            )
            for job, state, n in conn.execute(stmt):
                out.setdefault(job, {})[state] = int(n)
    return out


def runs(databases: Databases, target: str, jobs: Sequence[Job]) -> dict[str, Run]:
    """The last run, last success and last error of each job, from its target's `job` row."""
    backend = databases[target]
    j = backend.ct.job.c
    by_name = {job.name: job for job in jobs}
    out = {job.name: Run(job.name, job.group, _down(databases, job)) for job in by_name.values()}
    with backend.engine.connect() as conn:
        for part in _parts(list(by_name)):
            stmt = sa.select(j.job, j.last_run_at, j.last_ok_at, j.last_error).where(
                j.job.in_(part)
            )
            for name, last_run, last_ok, error in conn.execute(stmt):
                run = out[name]
                run.last_run, run.last_ok, run.last_error = aware(last_run), aware(last_ok), error
    return out


def _down(databases: Databases, job: Job) -> bool:
    return databases.settings.groups[job.group].direction == "server_to_register"


def _parts(names: list[str], size: int = 500) -> list[list[str]]:
    return [names[i : i + size] for i in range(0, len(names), size)] or [[]]


def service_state(path: Path) -> tuple[dict[str, dict[str, Any]], datetime | None]:
    """The service's view of each job (health, lag), from its state file, and when it was
    written; nothing when there is no service (or its file cannot be read)."""
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}, None
    jobs = {j["job"]: j for j in doc.get("jobs", []) if isinstance(j, dict) and "job" in j}
    updated = None
    with contextlib.suppress(TypeError, ValueError):
        updated = datetime.fromisoformat(str(doc.get("service", {}).get("updated")))
    return jobs, updated
