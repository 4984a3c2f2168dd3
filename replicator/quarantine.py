"""The quarantine: rows a target held back, each with its state and reason.

States:
- ``waiting``: refused because a row it refers to is missing (a foreign key); retried with
  every batch, so it goes through with its parent.
- ``refused``: refused by the target for its own values (too long, out of range, a check, a
  unique constraint...); retried with every batch (oldest attempt first, a page at a time).
- ``conflict``: kept back on purpose (the table's ``keep_target`` rule, or a row written by an
  earlier incarnation of a register that the incoming row would overwrite); not retried,
  waits for an operator.
- ``dismissed``: an operator decided to drop it; kept for the record, not retried.

A batch counts only *new* refusals against its budget (rows already waiting or refused that
fail again do not count), so parked rows can never stop a job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator.state import ControlTables, now

WAITING = "waiting"
REFUSED = "refused"
CONFLICT = "conflict"
DISMISSED = "dismissed"
RETRIED = (WAITING, REFUSED)
HELD = (WAITING, REFUSED, CONFLICT)
STATES = (WAITING, REFUSED, CONFLICT, DISMISSED)

MAX_NEW_REFUSALS = 200  # new refusals of one table in one batch before the table stops
RETRY_PAGE = 1000  # quarantined keys retried per table and batch, least recently tried first


class TableStopped(Exception):
    """Too many new refusals for one table: its batch stops, the rest goes on."""


class Budget:
    """Bounds the search for refused rows of one table in one batch."""

    def __init__(self, table: str, seconds: float) -> None:
        self.table = table
        self.seconds = seconds
        self.new = 0
        self.started: float | None = None
        self.first: str | None = None

    def tick(self, reason: str) -> None:
        """A write failed for some row: keep the clock; past the time budget, stop."""
        if self.first is None:
            self.first = reason
        if self.started is None:
            self.started = time.monotonic()
        elif time.monotonic() - self.started > self.seconds:
            self.stop(f"searching for refused rows took longer than {self.seconds:.0f}s")

    def new_transaction(self) -> None:
        """The time bound is about holding the target's lock: it restarts with each one."""
        self.started = None

    def refused(self, new: bool) -> None:
        if new:
            self.new += 1
        if self.new > MAX_NEW_REFUSALS:
            self.stop(f"{self.new} rows refused in one batch")

    def stop(self, what: str) -> None:
        raise TableStopped(
            f"table {self.table!r}: {what}, which looks like a target table that does not "
            f"match the mapping rather than a few bad rows; first reason: {self.first} -- fix "
            "the target table or the mapping; this table waits, the other tables go on"
        )


@dataclass(frozen=True)
class Held:
    row_key: str
    source_key: str | None
    status: str


class Quarantine:
    """The quarantine of one job on its target, used inside the target's transaction."""

    def __init__(self, ct: ControlTables, job: str) -> None:
        self.ct = ct
        self.job = job

    def record(
        self,
        conn: Connection,
        table: str,
        row_key: str,
        source_key: str | None,
        row: dict[str, Any] | None,
        reason: str,
        status: str,
        version: int = 0,
    ) -> bool:
        """Hold a row; True when it was not held already (a new refusal)."""
        stamp = now()
        data = json.dumps(row, default=str, ensure_ascii=True) if row is not None else None
        q = self.ct.quarantine.c
        old = conn.execute(
            sa.select(q.status).where(
                q.job == self.job, q.table_name == table, q.row_key == row_key
            )
        ).first()
        values = {
            "row_data": data,
            "reason": reason,
            "last_seen": stamp,
            "status": status,
            "version": version,
        }
        if source_key is not None:
            values["source_key"] = source_key
        if old is not None:
            conn.execute(
                sa.update(self.ct.quarantine)
                .where(q.job == self.job, q.table_name == table, q.row_key == row_key)
                .values(attempts=q.attempts + 1, **values)
            )
            return bool(old[0] == DISMISSED)
        conn.execute(
            sa.insert(self.ct.quarantine).values(
                job=self.job,
                table_name=table,
                row_key=row_key,
                source_key=source_key,
                first_seen=stamp,
                **{k: v for k, v in values.items() if k != "source_key"},
            )
        )
        return True

    def resolve(self, conn: Connection, table: str, keys: Sequence[str]) -> int:
        """Rows that went through (or have nothing left to send) leave the quarantine."""
        q = self.ct.quarantine.c
        done = 0
        keys = list(keys)
        for start in range(0, len(keys), 500):
            done += (
                conn.execute(
                    sa.delete(self.ct.quarantine).where(
                        q.job == self.job,
                        q.table_name == table,
                        q.status.in_(RETRIED),
                        q.row_key.in_(keys[start : start + 500]),
                    )
                ).rowcount
                or 0
            )
        return done

    def tables_held(self, conn: Connection) -> set[str]:
        q = self.ct.quarantine.c
        stmt = sa.select(q.table_name).where(q.job == self.job, q.status.in_(HELD)).distinct()
        return {r[0] for r in conn.execute(stmt)}

    def retry_page(self, conn: Connection, limit: int = RETRY_PAGE) -> dict[str, list[Held]]:
        """Per table, the held rows to retry in this batch, least recently tried first."""
        q = self.ct.quarantine.c
        out: dict[str, list[Held]] = {}
        tables = conn.execute(
            sa.select(q.table_name).where(q.job == self.job, q.status.in_(RETRIED)).distinct()
        ).scalars()
        for table in list(tables):
            stmt = (
                sa.select(q.row_key, q.source_key, q.status)
                .where(q.job == self.job, q.table_name == table, q.status.in_(RETRIED))
                .order_by(q.last_seen, q.id)
                .limit(limit)
            )
            out[table] = [Held(*r) for r in conn.execute(stmt)]
        return out

    def counts(self, conn: Connection) -> dict[str, dict[str, int]]:
        """Per table and state, the number of rows (for status)."""
        q = self.ct.quarantine.c
        out: dict[str, dict[str, int]] = {}
        stmt = (
            sa.select(q.table_name, q.status, sa.func.count())
            .where(q.job == self.job)
            .group_by(q.table_name, q.status)
        )
        for table, status, n in conn.execute(stmt):
            out.setdefault(table, {})[status] = int(n)
        return out
