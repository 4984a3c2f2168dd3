"""Control tables: job watermarks and quarantined rows (target side), tombstones (source side).

They are SQLAlchemy constructs compiled per dialect, so `setup --print` shows the DDL a DBA
reviews and `setup` installs the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class ControlTables:
    metadata: sa.MetaData
    state: sa.Table
    quarantine: sa.Table
    tombstone: sa.Table


def control_tables(schema: str | None, prefix: str) -> ControlTables:
    """The control tables, in `schema` (PostgreSQL) or with a name prefix (SQLite)."""
    md = sa.MetaData(schema=schema)
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
            comment="every source change with a version <= this one is applied",
        ),
        sa.Column("rows_applied", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("deletes_applied", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_batch_at", sa.DateTime(timezone=True)),
    )
    quarantine = sa.Table(
        f"{prefix}quarantine",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job", sa.String(200), nullable=False),
        sa.Column("table_name", sa.String(200), nullable=False),
        sa.Column("row_key", sa.Text, nullable=False, comment="JSON array of key values"),
        sa.Column("row_data", sa.Text, comment="JSON object of the row as sent"),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column(
            "status",
            sa.String(20),
            nullable=False,
            server_default="open",
            comment="open (retried with every batch) or conflict (kept back by keep_target)",
        ),
        sa.UniqueConstraint("job", "table_name", "row_key", name=f"{prefix}quarantine_row"),
    )
    tombstone = sa.Table(
        f"{prefix}tombstone",
        md,
        sa.Column("table_name", sa.String(200), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("origin", sa.String(200)),
        sa.Column("deleted_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Index(f"{prefix}tombstone_version", "table_name", "version"),
    )
    return ControlTables(md, state, quarantine, tombstone)


def key_text(key: Sequence[Any]) -> str:
    """The one text form of a key, as stored in the quarantine table (ASCII-only JSON, so
    even text that was not valid UTF-8 at the source can be stored and matched)."""
    return json.dumps(list(key), default=str)


def read_watermarks(conn: Connection, ct: ControlTables, job: str) -> dict[str, int]:
    rows = conn.execute(
        sa.select(ct.state.c.table_name, ct.state.c.version).where(ct.state.c.job == job)
    )
    return {name: int(version) for name, version in rows}


def reset_watermarks(conn: Connection, ct: ControlTables, job: str) -> None:
    conn.execute(sa.update(ct.state).where(ct.state.c.job == job).values(version=0))


def save_progress(
    conn: Connection,
    ct: ControlTables,
    job: str,
    table: str,
    version: int,
    upserts: int,
    deletes: int,
) -> None:
    """Advance one table's watermark; runs in the same transaction as the applied rows."""
    now = datetime.now(UTC)
    done = conn.execute(
        sa.update(ct.state)
        .where(ct.state.c.job == job, ct.state.c.table_name == table)
        .values(
            version=version,
            rows_applied=ct.state.c.rows_applied + upserts,
            deletes_applied=ct.state.c.deletes_applied + deletes,
            last_batch_at=now,
        )
    )
    if done.rowcount == 0:
        conn.execute(
            sa.insert(ct.state).values(
                job=job,
                table_name=table,
                version=version,
                rows_applied=upserts,
                deletes_applied=deletes,
                last_batch_at=now,
            )
        )


def quarantine_row(
    conn: Connection,
    ct: ControlTables,
    job: str,
    table: str,
    key: list[Any],
    row: dict[str, Any] | None,
    reason: str,
    status: str = "open",
) -> None:
    """Record a row the target refused (status open: retried with every batch) or a conflict
    kept back by the keep_target rule (status conflict: reported, not retried)."""
    now = datetime.now(UTC)
    text = key_text(key)
    data = json.dumps(row, default=str) if row is not None else None
    q = ct.quarantine.c
    done = conn.execute(
        sa.update(ct.quarantine)
        .where(q.job == job, q.table_name == table, q.row_key == text)
        .values(row_data=data, reason=reason, last_seen=now, attempts=q.attempts + 1, status=status)
    )
    if done.rowcount == 0:
        conn.execute(
            sa.insert(ct.quarantine).values(
                job=job,
                table_name=table,
                row_key=text,
                row_data=data,
                version=0,
                reason=reason,
                first_seen=now,
                last_seen=now,
                status=status,
            )
        )


def open_quarantine(
    conn: Connection, ct: ControlTables, job: str, limit: int
) -> dict[str, list[tuple[Any, ...]]]:
    """Keys of the job's open quarantined rows, per table, oldest first."""
    q = ct.quarantine.c
    out: dict[str, list[tuple[Any, ...]]] = {}
    stmt = (
        sa.select(q.table_name, q.row_key)
        .where(q.job == job, q.status == "open")
        .order_by(q.table_name, q.last_seen)  # least recently tried first: all get a turn
    )
    for table, key in conn.execute(stmt):
        keys = out.setdefault(table, [])
        if len(keys) < limit:
            keys.append(tuple(json.loads(key)))
    return out


def resolve_quarantine(
    conn: Connection, ct: ControlTables, job: str, table: str, keys: list[str]
) -> None:
    q = ct.quarantine.c
    for part in range(0, len(keys), 500):
        conn.execute(
            sa.delete(ct.quarantine).where(
                q.job == job, q.table_name == table, q.row_key.in_(keys[part : part + 500])
            )
        )
