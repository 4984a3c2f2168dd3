"""Dismissed rows: a held row an operator decided to drop (`replicator errors dismiss`), kept
with who, why and when in the target's `dismissal` control table, for the record and for the
day's closing report (:func:`dismissals_of_day`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from replicator.backends.base import Backend
from replicator.config import Job, Settings
from replicator.errors import CheckError
from replicator.quarantine import DISMISSED
from replicator.sync import Databases


@dataclass(frozen=True)
class Dismissal:
    """One dismissed row. `key` is readable (``id=5``); `row_key` the canonical JSON."""

    job: str
    table: str
    key: str
    reason: str  # why the operator dismissed it
    by: str
    at: datetime  # aware, UTC
    database: str  # the target database (its name in the node config)
    row_key: str
    held_state: str  # waiting, refused or conflict: what it was before
    held_reason: str  # the database's message
    data: dict[str, Any] | None  # the row as sent

    def as_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "job": self.job,
            "table": self.table,
            "key": json.loads(self.row_key),
            "key_text": self.key,
            "state": self.held_state,
            "message": self.held_reason,
            "reason": self.reason,
            "by": self.by,
            "at": self.at.isoformat(),
            "data": self.data,
        }


def aware(stamp: datetime) -> datetime:
    """A control-table timestamp as an aware UTC one (SQLite keeps them without a zone)."""
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def readable_key(settings: Settings, job: Job | None, table: str, row_key: str) -> str:
    """``id=5`` or ``store=1, sale=7`` from a canonical JSON key and the mapping's key
    columns; the JSON itself when the mapping does not say."""
    try:
        values = json.loads(row_key)
    except ValueError:
        return row_key
    names: list[str] = []
    if job is not None and job.group in settings.groups:
        mapping = next((m for m in settings.groups[job.group].tables if m.label == table), None)
        if mapping is not None:
            names = list(mapping.resolved_target_key())
    if not isinstance(values, list) or len(names) != len(values):
        return row_key
    return ", ".join(f"{n}={v}" for n, v in zip(names, values, strict=True))


def require_table(backend: Backend, conn: Connection, database: str) -> None:
    """The dismissal table exists, else a clear exit-3 error (a database set up before it)."""
    if not backend.has_table(conn, backend.ct.dismissal.fullname):
        raise CheckError(
            f"database {database} ({backend.display_url}) has no table "
            f"{backend.ct.dismissal.fullname}: it was set up by an earlier version; run "
            "`replicator setup` to add the table"
        )


def record(
    conn: Connection,
    backend: Backend,
    number: int,
    expected_state: str,
    reason: str,
    by: str,
) -> datetime | None:
    """Dismiss quarantine row `number` if it is still in `expected_state`: its status turns
    `dismissed` and the dismissal is recorded. Runs in the caller's transaction. Returns the
    time, or None when the row changed meanwhile (gone, or another state)."""
    ct = backend.ct
    q = ct.quarantine.c
    row = conn.execute(sa.select(ct.quarantine).where(q.id == number)).first()
    if row is None or row.status != expected_state:
        return None
    stamp = datetime.now(UTC)
    done = conn.execute(
        sa.update(ct.quarantine)
        .where(q.id == number, q.status == expected_state)
        .values(status=DISMISSED)
    )
    if not done.rowcount:
        return None
    conn.execute(
        sa.insert(ct.dismissal).values(
            quarantine_id=number,
            job=row.job,
            table_name=row.table_name,
            row_key=row.row_key,
            row_data=row.row_data,
            held_state=row.status,
            held_reason=row.reason,
            reason=reason,
            dismissed_by=by,
            dismissed_at=stamp,
        )
    )
    return stamp


def targets(settings: Settings) -> dict[str, list[Job]]:
    """Per target database (its name in the node config), the configured jobs writing it."""
    out: dict[str, list[Job]] = {}
    for job in settings.jobs():
        out.setdefault(job.target, []).append(job)
    return out


def dismissals_of_day(
    settings: Settings, databases: Databases, day: date, tz: str | None
) -> list[Dismissal]:
    """Rows dismissed on `day` (from its midnight to the next in zone `tz`, an IANA name;
    None: this machine's zone) in the targets of the configured jobs, oldest first. A target
    without the dismissal table (set up before it existed) has none. Database errors are
    raised as the backend classifies them (TransientError, PermanentError)."""
    zone = ZoneInfo(tz) if tz else datetime.now().astimezone().tzinfo
    start = datetime.combine(day, time(), zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(), zone).astimezone(UTC)
    out: list[Dismissal] = []
    for database, jobs in targets(settings).items():
        backend = databases[database]
        by_name = {job.name: job for job in jobs}
        d = backend.ct.dismissal.c
        # SQLite keeps the UTC stamps without their zone: compare like with like
        low, high = (
            (start.replace(tzinfo=None), end.replace(tzinfo=None))
            if backend.dialect == "sqlite"
            else (start, end)
        )
        try:
            with backend.engine.connect() as conn:
                if not backend.has_table(conn, backend.ct.dismissal.fullname):
                    continue
                found = conn.execute(
                    sa.select(backend.ct.dismissal)
                    .where(
                        d.job.in_(list(by_name)),
                        d.dismissed_at >= low,
                        d.dismissed_at < high,
                    )
                    .order_by(d.dismissed_at, d.id)
                ).all()
        except sa_exc.SQLAlchemyError as exc:
            raise backend.classify(exc) from exc
        for r in found:
            out.append(
                Dismissal(
                    job=r.job,
                    table=r.table_name,
                    key=readable_key(settings, by_name.get(r.job), r.table_name, r.row_key),
                    reason=r.reason,
                    by=r.dismissed_by,
                    at=aware(r.dismissed_at),
                    database=database,
                    row_key=r.row_key,
                    held_state=r.held_state,
                    held_reason=r.held_reason,
                    data=json.loads(r.row_data) if r.row_data else None,
                )
            )
    out.sort(key=lambda x: x.at)
    return out
