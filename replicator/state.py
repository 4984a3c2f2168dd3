"""Control tables, built as SQLAlchemy constructs compiled per dialect, so `setup --print` shows
the DDL a DBA reviews and `setup` installs the same thing.

Target side: `state` (per job and table: the row and tombstone positions, counters, last error),
`job` (per job: the source's incarnation, the acknowledged sequence, the last run and error),
`quarantine` (rows held back, with their state), `dismissal` (held rows an operator dismissed,
with who and why), `fence` (target keys written by an earlier incarnation of the source) and
`mapping_print` (per job and table: the fingerprint of the mapping its rows were written by).
Source side: `tombstone` (deleted keys), `incarnation` (this database's identity) and `ack`
(what each job reading this database has applied).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator.position import Position


@dataclass(frozen=True)
class ControlTables:
    metadata: sa.MetaData
    state: sa.Table
    job: sa.Table
    quarantine: sa.Table
    fence: sa.Table
    tombstone: sa.Table
    incarnation: sa.Table
    ack: sa.Table
    lease: sa.Table
    dismissal: sa.Table
    mapping_print: sa.Table


def control_tables(schema: str | None, prefix: str) -> ControlTables:
    """The control tables, in `schema` (PostgreSQL) or with a name prefix (SQLite)."""
    md = sa.MetaData(schema=schema)
    when = sa.DateTime(timezone=True)
    state = sa.Table(
        f"{prefix}state",
        md,
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("table_name", sa.String(200), primary_key=True),
        sa.Column(
            "version",
            sa.BigInteger,
            nullable=False,
            server_default="0",
            comment="rows: every change before (version, row_key) is applied or quarantined",
        ),
        sa.Column("row_key", sa.Text, comment="JSON source key; NULL: all of `version`"),
        sa.Column("tomb_version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("tomb_id", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_applied", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("deletes_applied", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_batch_at", when),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_at", when),
    )
    job = sa.Table(
        f"{prefix}job",
        md,
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("source_incarnation", sa.String(64)),
        sa.Column("retired", sa.Text, comment="JSON list of earlier incarnations of the source"),
        sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("incarnation_since", when),
        sa.Column("last_run_at", when),
        sa.Column("last_ok_at", when),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_at", when),
    )
    quarantine = sa.Table(
        f"{prefix}quarantine",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job", sa.String(200), nullable=False),
        sa.Column("table_name", sa.String(200), nullable=False),
        sa.Column("row_key", sa.Text, nullable=False, comment="canonical JSON target key"),
        sa.Column("source_key", sa.Text, comment="canonical JSON source key"),
        sa.Column("row_data", sa.Text, comment="JSON object of the row as sent"),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("first_seen", when, nullable=False),
        sa.Column("last_seen", when, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column(
            "status",
            sa.String(20),
            nullable=False,
            server_default="refused",
            comment="waiting (for a parent), refused (by the target), conflict, dismissed",
        ),
        sa.UniqueConstraint("job", "table_name", "row_key", name=f"{prefix}quarantine_row"),
        sa.Index(f"{prefix}quarantine_retry", "job", "status", "last_seen"),
    )
    fence = sa.Table(
        f"{prefix}fence",
        md,
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("table_name", sa.String(200), primary_key=True),
        sa.Column("row_key", sa.Text, primary_key=True, comment="canonical JSON target key"),
        sa.Column("incarnation", sa.String(64), nullable=False),
    )
    tombstone = sa.Table(
        f"{prefix}tombstone",
        md,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("table_name", sa.String(200), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("origin", sa.String(200)),
        sa.Column("deleted_at", when, server_default=sa.func.now()),
        sa.Index(f"{prefix}tombstone_version", "table_name", "version", "id"),
    )
    incarnation = sa.Table(
        f"{prefix}incarnation",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("incarnation", sa.String(64), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("reason", sa.Text),
        sa.CheckConstraint("id = 1", name=f"{prefix}incarnation_one"),
    )
    ack = sa.Table(
        f"{prefix}ack",
        md,
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("incarnation", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False, comment="the batch being applied"),
        sa.Column(
            "confirmed",
            sa.BigInteger,
            nullable=False,
            server_default="0",
            comment="every tombstone below this version is applied on the target",
        ),
        sa.Column("at", when, nullable=False),
    )
    lease = sa.Table(
        f"{prefix}lease",
        md,
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("holder", sa.String(200), comment="the `replicator run` process running it"),
        sa.Column("expires_at", when, comment="the holder renews it while it runs"),
        sa.Column("next_due", when, nullable=False, comment="when any process may run it next"),
        sa.Column("runs", sa.BigInteger, nullable=False, server_default="0"),
        comment="jobs shared by several `replicator run` processes ([service] shared = true)",
    )
    dismissal = sa.Table(
        f"{prefix}dismissal",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("quarantine_id", sa.Integer, comment="the quarantine row it dismissed"),
        sa.Column("job", sa.String(200), nullable=False),
        sa.Column("table_name", sa.String(200), nullable=False),
        sa.Column("row_key", sa.Text, nullable=False, comment="canonical JSON target key"),
        sa.Column("row_data", sa.Text, comment="JSON object of the row as sent"),
        sa.Column(
            "held_state", sa.String(20), nullable=False, comment="waiting, refused, conflict"
        ),
        sa.Column("held_reason", sa.Text, nullable=False, comment="the database's message"),
        sa.Column("reason", sa.Text, nullable=False, comment="why the operator dismissed it"),
        sa.Column("dismissed_by", sa.String(200), nullable=False),
        sa.Column("dismissed_at", when, nullable=False),
        sa.Index(f"{prefix}dismissal_at", "dismissed_at"),
        comment="held rows an operator dismissed (`replicator errors dismiss`), for the record "
        "and the closing report",
    )
    mapping_print = sa.Table(
        f"{prefix}mapping_print",
        md,
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("table_name", sa.String(200), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column(
            "columns",
            sa.Text,
            nullable=False,
            comment="JSON object: target column -> its transform (source column, constant, map)",
        ),
        sa.Column("since", when, nullable=False),
        comment="the mapping the replicated rows of each job's table were written by; kept "
        "when the mapping changes until `replicator resync` of the table completes",
    )
    return ControlTables(
        md,
        state,
        job,
        quarantine,
        fence,
        tombstone,
        incarnation,
        ack,
        lease,
        dismissal,
        mapping_print,
    )


def now() -> datetime:
    return datetime.now(UTC)


# --- positions ------------------------------------------------------------------------------
@dataclass
class TableState:
    rows: Position
    tombs: Position
    last_error: str | None = None


def read_positions(conn: Connection, ct: ControlTables, job: str) -> dict[str, TableState]:
    s = ct.state.c
    stmt = sa.select(s.table_name, s.version, s.row_key, s.tomb_version, s.tomb_id, s.last_error)
    out = {}
    for name, version, key, tv, tid, error in conn.execute(stmt.where(s.job == job)):
        out[name] = TableState(
            Position(int(version), key), Position(int(tv), None, int(tid)), error
        )
    return out


def save_position(
    conn: Connection,
    ct: ControlTables,
    job: str,
    table: str,
    state: TableState,
    upserts: int,
    deletes: int,
    error: str | None,
) -> None:
    """Write one table's positions; runs in the same transaction as the applied rows."""
    stamp = now()
    values: dict[str, Any] = {
        "version": state.rows.version,
        "row_key": state.rows.key,
        "tomb_version": state.tombs.version,
        "tomb_id": state.tombs.tie,
        "last_error": error,
        "last_error_at": stamp if error else None,
    }
    s = ct.state.c
    if upserts or deletes:
        values["last_batch_at"] = stamp
    done = conn.execute(
        sa.update(ct.state)
        .where(s.job == job, s.table_name == table)
        .values(
            rows_applied=s.rows_applied + upserts,
            deletes_applied=s.deletes_applied + deletes,
            **values,
        )
    )
    if done.rowcount == 0:
        conn.execute(
            sa.insert(ct.state).values(
                job=job,
                table_name=table,
                rows_applied=upserts,
                deletes_applied=deletes,
                **values,
            )
        )


def reset_positions(conn: Connection, ct: ControlTables, job: str) -> None:
    conn.execute(
        sa.update(ct.state)
        .where(ct.state.c.job == job)
        .values(version=0, row_key=None, tomb_version=0, tomb_id=0)
    )


# --- mapping fingerprints ---------------------------------------------------------------------
@dataclass(frozen=True)
class MappingPrint:
    """A table's mapping as it shapes the target rows: per target column, its transform."""

    fingerprint: str
    columns: dict[str, str]
    since: datetime | None = None


def read_prints(conn: Connection, ct: ControlTables, job: str) -> dict[str, MappingPrint]:
    m = ct.mapping_print.c
    stmt = sa.select(m.table_name, m.fingerprint, m.columns, m.since).where(m.job == job)
    return {
        name: MappingPrint(fingerprint, json.loads(columns or "{}"), since)
        for name, fingerprint, columns, since in conn.execute(stmt)
    }


def write_print(
    conn: Connection, ct: ControlTables, job: str, table: str, mapping: MappingPrint
) -> None:
    """Record the mapping a table's target rows now follow (upsert)."""
    m = ct.mapping_print.c
    values = {
        "fingerprint": mapping.fingerprint,
        "columns": json.dumps(mapping.columns, sort_keys=True),
        "since": now(),
    }
    done = conn.execute(
        sa.update(ct.mapping_print).where(m.job == job, m.table_name == table).values(**values)
    )
    if done.rowcount == 0:
        conn.execute(sa.insert(ct.mapping_print).values(job=job, table_name=table, **values))


# --- jobs -----------------------------------------------------------------------------------
@dataclass
class JobState:
    incarnation: str
    retired: list[str]
    seq: int
    since: datetime | None


def read_job(conn: Connection, ct: ControlTables, job: str) -> JobState | None:
    j = ct.job.c
    row = conn.execute(
        sa.select(j.source_incarnation, j.retired, j.seq, j.incarnation_since).where(j.job == job)
    ).first()
    if row is None or row[0] is None:
        return None
    return JobState(row[0], json.loads(row[1] or "[]"), int(row[2]), row[3])


def write_job(conn: Connection, ct: ControlTables, job: str, state: JobState) -> None:
    j = ct.job.c
    values = {
        "source_incarnation": state.incarnation,
        "retired": json.dumps(state.retired),
        "seq": state.seq,
        "incarnation_since": state.since,
    }
    done = conn.execute(sa.update(ct.job).where(j.job == job).values(**values))
    if done.rowcount == 0:
        conn.execute(sa.insert(ct.job).values(job=job, **values))


def record_run(
    conn: Connection, ct: ControlTables, job: str, error: str | None, ok: bool = True
) -> None:
    """The last run of a job and its error, committed on its own (status shows them)."""
    stamp = now()
    values: dict[str, Any] = {"last_run_at": stamp}
    if error:
        values.update(last_error=error, last_error_at=stamp)
    elif ok:
        values.update(last_ok_at=stamp, last_error=None, last_error_at=None)
    else:  # some tables stopped: their errors are theirs, the job itself did not fail
        values.update(last_error=None, last_error_at=None)
    done = conn.execute(sa.update(ct.job).where(ct.job.c.job == job).values(**values))
    if done.rowcount == 0:
        conn.execute(sa.insert(ct.job).values(job=job, **values))
