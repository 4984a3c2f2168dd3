"""`replicator status`: per job and table, progress, pending changes, quarantine."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from rich import box
from rich.table import Table
from sqlalchemy import exc as sa_exc

from replicator.config import Settings
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
    quarantined: int
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["last_batch_at"] = self.last_batch_at.isoformat() if self.last_batch_at else None
        return out


def collect(
    settings: Settings,
    databases: Databases,
    groups: list[str] | None = None,
) -> list[TableStatus]:
    out: list[TableStatus] = []
    for job in settings.jobs(groups):
        runner = JobRunner(settings, databases, job)
        labels = [t.label for t in settings.groups[job.group].tables]
        try:
            target = databases[job.target]
            st, q = target.ct.state.c, target.ct.quarantine.c
            with target.engine.connect() as conn:
                state = {
                    r.table_name: r
                    for r in conn.execute(sa.select(target.ct.state).where(st.job == job.name))
                }
                quarantined: dict[str, int] = dict(
                    conn.execute(
                        sa.select(q.table_name, sa.func.count())
                        .where(q.job == job.name, q.status.in_(["open", "conflict"]))
                        .group_by(q.table_name)
                    ).all()
                )
            pending = runner.pending({k: int(v.version) for k, v in state.items()}, PENDING_CAP)
        except (sa_exc.SQLAlchemyError, Exception) as exc:  # status reports, never crashes
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            out += [TableStatus(job.name, t, 0, 0, 0, None, None, 0, reason) for t in labels]
            continue
        for label in labels:
            row = state.get(label)
            out.append(
                TableStatus(
                    job=job.name,
                    table=label,
                    watermark=int(row.version) if row else 0,
                    rows_applied=int(row.rows_applied) if row else 0,
                    deletes_applied=int(row.deletes_applied) if row else 0,
                    last_batch_at=row.last_batch_at if row else None,
                    pending=pending.get(label),
                    quarantined=int(quarantined.get(label, 0)),
                )
            )
    return out


def status_table(rows: list[TableStatus]) -> Table:
    errors = any(r.error for r in rows)
    table = Table(title="status", box=box.SIMPLE_HEAD)
    for col in ("job", "table", "last", "rows", "pending", "quarantined"):
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
        cells = [
            r.job,
            r.table,
            when,
            f"{r.rows_applied}+{r.deletes_applied}d" if r.deletes_applied else str(r.rows_applied),
            "?" if r.pending is None else str(r.pending),
            str(r.quarantined),
        ]
        table.add_row(*cells, *([r.error or ""] if errors else []))
    return table
