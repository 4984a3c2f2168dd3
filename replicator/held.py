"""Held rows across the targets of a node's jobs: the quarantines read as one list with
unambiguous IDs, a row's current version on the target, and marking rows due for the next
retry. What `replicator errors` shows and acts on (replicator/errors_cli.py).

A row's ID is ``<target database>:<quarantine id>`` (the database's name in the node config,
e.g. ``server:12``): the quarantine ids of two databases overlap, the pair does not.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from replicator import dismissals
from replicator.backends.base import Backend
from replicator.codec import Codec, canon_value, kind_of
from replicator.config import Job, Settings
from replicator.errors import CheckError, ReplicatorError
from replicator.i18n import _
from replicator.log import mask
from replicator.quarantine import DISMISSED, HELD, RETRIED, STATES
from replicator.sync import Databases


class RowError(ReplicatorError):
    """An unknown ID, or a row the command cannot act on (exit 2, as a wrong option)."""

    exit_code = 2


# --- reading the quarantines --------------------------------------------------------------
@dataclass(frozen=True)
class HeldRow:
    database: str  # the target database, by its name in the node config
    number: int  # the quarantine id in that database
    job: str
    table: str
    row_key: str  # canonical JSON target key
    key: str  # readable: id=5
    state: str
    reason: str  # the database's message
    first_seen: datetime  # aware, UTC
    last_seen: datetime
    attempts: int
    data: dict[str, Any] | None  # the row as sent (for a conflict: the version held back)
    dismissal: dict[str, Any] | None = None  # by, reason, at: a dismissed row's record

    @property
    def id(self) -> str:
        return f"{self.database}:{self.number}"

    @property
    def held(self) -> bool:
        return self.state in HELD

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "database": self.database,
            "job": self.job,
            "table": self.table,
            "key": json.loads(self.row_key),
            "key_text": self.key,
            "state": self.state,
            "message": self.reason,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "attempts": self.attempts,
            "data": self.data,
            "dismissal": self.dismissal,
        }


@dataclass
class Found:
    rows: list[HeldRow] = field(default_factory=list)
    errors: list[ReplicatorError] = field(default_factory=list)  # per database that failed


def jobs_named(settings: Settings, job: str | None) -> list[Job]:
    """The configured jobs, or those named `job` (a job name, or a group: all its jobs)."""
    jobs = settings.jobs()
    if job is None:
        return jobs
    chosen = [j for j in jobs if job in (j.name, j.group)]
    if not chosen:
        raise RowError(
            _("no job {job}; jobs: {jobs}").format(
                job=job, jobs=", ".join(j.name for j in jobs) or "-"
            )
        )
    return chosen


def targets_of(jobs: Iterable[Job]) -> dict[str, dict[str, Job]]:
    out: dict[str, dict[str, Job]] = {}
    for job in jobs:
        out.setdefault(job.target, {})[job.name] = job
    return out


def read_rows(
    settings: Settings,
    databases: Databases,
    jobs: Sequence[Job],
    states: Sequence[str] = HELD,
    table: str | None = None,
    ids: dict[str, list[int]] | None = None,
) -> Found:
    """The quarantined rows of `jobs` in their targets, oldest first; a database that fails
    is reported in `errors` and the others are still read."""
    found = Found()
    for database, by_name in targets_of(jobs).items():
        if ids is not None and database not in ids:
            continue
        backend = databases[database]
        ct = backend.ct
        q = ct.quarantine.c
        stmt = sa.select(ct.quarantine).where(q.job.in_(list(by_name)), q.status.in_(states))
        if table is not None:
            stmt = stmt.where(q.table_name == table)
        if ids is not None:
            stmt = stmt.where(q.id.in_(ids[database]))
        try:
            with backend.engine.connect() as conn:
                if not backend.has_table(conn, ct.quarantine.fullname):
                    raise CheckError(
                        _(
                            "database {database} ({url}) has no quarantine table; run "
                            "`replicator setup`"
                        ).format(database=database, url=backend.display_url)
                    )
                rows = conn.execute(stmt.order_by(q.first_seen, q.id)).all()
                records = _dismissal_records(backend, conn, [r.id for r in rows])
        except ReplicatorError as exc:
            found.errors.append(exc)
            continue
        except sa_exc.SQLAlchemyError as exc:
            found.errors.append(backend.classify(exc))
            continue
        for r in rows:
            found.rows.append(
                HeldRow(
                    database=database,
                    number=int(r.id),
                    job=r.job,
                    table=r.table_name,
                    row_key=r.row_key,
                    key=dismissals.readable_key(
                        settings, by_name.get(r.job), r.table_name, r.row_key
                    ),
                    state=r.status,
                    reason=_message(r.reason, backend.display_url),
                    first_seen=dismissals.aware(r.first_seen),
                    last_seen=dismissals.aware(r.last_seen),
                    attempts=int(r.attempts),
                    data=json.loads(r.row_data) if r.row_data else None,
                    dismissal=records.get(int(r.id)) if r.status == DISMISSED else None,
                )
            )
    return found


def _message(reason: str, url: str) -> str:
    """The database's message, masked, without the database's URL in front (the ID names
    the database)."""
    return mask(reason.removeprefix(f"{url}: "))


def _dismissal_records(
    backend: Backend, conn: Connection, numbers: list[int]
) -> dict[int, dict[str, Any]]:
    """The latest dismissal of each quarantine row (none when the table is missing)."""
    if not numbers or not backend.has_table(conn, backend.ct.dismissal.fullname):
        return {}
    d = backend.ct.dismissal.c
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(numbers), 500):
        stmt = (
            sa.select(d.quarantine_id, d.reason, d.dismissed_by, d.dismissed_at)
            .where(d.quarantine_id.in_(numbers[start : start + 500]))
            .order_by(d.dismissed_at, d.id)
        )
        for number, reason, by, at in conn.execute(stmt):
            out[int(number)] = {"by": by, "reason": reason, "at": dismissals.aware(at).isoformat()}
    return out


def parse_ids(settings: Settings, ids: Iterable[str]) -> dict[str, list[int]]:
    """``server:12`` -> {"server": [12]}; a malformed ID or unknown database is an error."""
    out: dict[str, list[int]] = {}
    for text in ids:
        database, _sep, number = text.rpartition(":")
        if not database or not number.isdigit() or database not in settings.config.databases:
            raise RowError(_unknown(text))
        out.setdefault(database, []).append(int(number))
    return out


def _unknown(text: str) -> str:
    return _(
        "no held row {id}: an ID is <database>:<number>, as `replicator errors list` shows it "
        "(`--all` shows dismissed rows too)"
    ).format(id=text)


def find(settings: Settings, databases: Databases, ids: Sequence[str]) -> list[HeldRow]:
    """The rows of these IDs, in that order; an ID that is not there is an error."""
    wanted = parse_ids(settings, ids)
    found = read_rows(settings, databases, settings.jobs(), STATES, ids=wanted)
    if found.errors:
        raise found.errors[0]
    by_id = {r.id: r for r in found.rows}
    for text in ids:
        database, _sep, number = text.rpartition(":")
        if f"{database}:{int(number)}" not in by_id:
            raise RowError(_unknown(text))
    return [by_id[f"{t.rpartition(':')[0]}:{int(t.rpartition(':')[2])}"] for t in ids]


# --- the target's side of a row -----------------------------------------------------------
@dataclass
class TargetSide:
    row: dict[str, Any] | None = None  # the target's current row, None when it has none
    kinds: dict[str, str] = field(default_factory=dict)  # column -> codec kind
    error: str | None = None  # why it could not be read


def target_side(settings: Settings, databases: Databases, row: HeldRow) -> TargetSide:
    """The row with the same key on the target now, by the mapping's target table and key."""
    job = next((j for j in settings.jobs() if j.name == row.job), None)
    mapping = None
    if job is not None:
        mapping = next((m for m in settings.groups[job.group].tables if m.label == row.table), None)
    if mapping is None:
        return TargetSide(error=_("the mapping has no table {table}").format(table=row.table))
    backend = databases[row.database]
    try:
        with backend.engine.connect() as conn:
            table = backend.table(conn, mapping.target_table)
            key = list(mapping.resolved_target_key())
            values = Codec.of([table.c[k] for k in key]).from_text(row.row_key)
            found = conn.execute(
                sa.select(table).where(*[table.c[k] == v for k, v in zip(key, values, strict=True)])
            ).first()
    except (sa_exc.SQLAlchemyError, KeyError, ValueError) as exc:
        return TargetSide(error=str(getattr(exc, "orig", None) or exc).strip().splitlines()[0])
    kinds = {c.name: kind_of(c.type) for c in table.c}
    return TargetSide(dict(found._mapping) if found is not None else None, kinds)


def cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)


def side_by_side(row: HeldRow, target: TargetSide) -> list[dict[str, Any]]:
    """Per column: the held value, the target's, and whether they differ (canonically)."""
    columns = list(row.data or {})
    if target.row is not None:
        columns += [c for c in target.row if c not in columns and row.data is None]
    out = []
    for col in columns:
        held = (row.data or {}).get(col)
        there = target.row.get(col) if target.row is not None else None
        kind = target.kinds.get(col, "other")
        differs = target.row is not None and canon_value(kind, held) != canon_value(kind, there)
        out.append({"column": col, "held": held, "target": there, "differs": differs})
    return out


# --- retrying ---------------------------------------------------------------------------
def mark_due(databases: Databases, rows: Sequence[HeldRow]) -> None:
    """Put these rows first in their jobs' next retry page (least recently tried first):
    their `last_seen` becomes the earliest of their job's retried rows. The retry itself
    sets it again (or the row leaves the quarantine)."""
    by_db: dict[str, list[HeldRow]] = {}
    for r in rows:
        by_db.setdefault(r.database, []).append(r)
    for database, held in by_db.items():
        backend = databases[database]
        q = backend.ct.quarantine.c
        try:
            with backend.engine.connect() as conn, conn.begin():
                for job in {r.job for r in held}:
                    earliest = conn.execute(
                        sa.select(sa.func.min(q.last_seen)).where(
                            q.job == job, q.status.in_(RETRIED)
                        )
                    ).scalar()
                    numbers = [r.number for r in held if r.job == job]
                    for start in range(0, len(numbers), 500):
                        conn.execute(
                            sa.update(backend.ct.quarantine)
                            .where(q.id.in_(numbers[start : start + 500]))
                            .values(last_seen=earliest)
                        )
        except sa_exc.SQLAlchemyError as exc:
            raise backend.classify(exc) from exc
