"""Reading a batch from the source: the cut, the changed rows, the deletes, the retries.

Everything here runs inside one source snapshot (`Backend.read_snapshot`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator.backends import Backend
from replicator.backends.base import ORIGIN_COLUMN, Row, chunks
from replicator.errors import PermanentError
from replicator.state import key_text
from replicator.transform import TablePlan, decode_key

RETRY_LIMIT = 1000  # quarantined keys retried per table and batch


@dataclass
class Changes:
    """What one table contributes to a batch."""

    plan: TablePlan
    low: int
    rows: list[Row] = field(default_factory=list)
    deleted: list[Row] = field(default_factory=list)  # target keys
    open_keys: set[str] = field(default_factory=set)  # quarantined keys (key_text) retried
    settled: set[str] = field(default_factory=set)  # quarantined keys with nothing to send


class Reader:
    def __init__(
        self,
        source: Backend,
        target_node: str,
        batch_rows: int,
        page_rows: int,
        same_kind: bool = False,
    ):
        self.source = source
        self.same_kind = same_kind
        self.target_node = target_node
        self.batch_rows = batch_rows
        self.page_rows = page_rows

    def _as_text(self, plan: TablePlan) -> bool:
        """Values may stay text when the target parses the same text (same kind of database)
        and the apply never compares them in Python (keep_target does)."""
        return self.same_kind and plan.conflict.rule != "keep_target"

    def _not_echo(self, plan: TablePlan) -> sa.ColumnElement[bool]:
        origin = plan.source.c[ORIGIN_COLUMN]
        return sa.or_(origin.is_(None), origin != self.target_node)

    def _tombstones(self, plan: TablePlan, low: int) -> sa.Select[Any]:
        """The table's tombstones after `low` that are not echoes of the target's own writes."""
        tomb = self.source.ct.tombstone
        return sa.select(tomb.c.version, tomb.c.key).where(
            tomb.c.table_name == plan.mapping.source,
            tomb.c.version > low,
            sa.or_(tomb.c.origin.is_(None), tomb.c.origin != self.target_node),
        )

    def pending(self, conn: Connection, plan: TablePlan, low: int, cap: int) -> int:
        """Changes this job would still send for one table (counted up to cap each)."""
        probes: list[sa.Select[Any]] = [
            sa.select(plan.version).where(plan.version > low, self._not_echo(plan), *plan.filters)
        ]
        if plan.deletes:
            probes.append(self._tombstones(plan, low))
        return sum(
            int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(p.limit(cap).subquery())
                ).scalar()
                or 0
            )
            for p in probes
        )

    def cut(
        self, conn: Connection, plans: Sequence[TablePlan], marks: dict[str, int], high: int
    ) -> int | None:
        """The end of the next batch: `high`, or lower so that no table brings much more than
        batch_rows changes. None when no table has changes below `high`."""
        cut = high
        pending = False
        tomb = self.source.ct.tombstone
        for plan in plans:
            low = marks.get(plan.label, 0)
            if low >= high:
                continue
            probes = [
                sa.select(plan.version.label("v"))
                .where(plan.version > low, plan.version <= high)
                .order_by(plan.version)
                .limit(self.batch_rows),
            ]
            if plan.deletes:
                probes.append(
                    sa.select(tomb.c.version.label("v"))
                    .where(
                        tomb.c.table_name == plan.mapping.source,
                        tomb.c.version > low,
                        tomb.c.version <= high,
                    )
                    .order_by(tomb.c.version)
                    .limit(self.batch_rows)
                )
            for probe in probes:
                sub = probe.subquery()
                count, last = conn.execute(sa.select(sa.func.count(), sa.func.max(sub.c.v))).one()
                if count:
                    pending = True
                if count >= self.batch_rows:
                    cut = min(cut, int(last))
        return cut if pending else None

    def read(
        self, conn: Connection, plan: TablePlan, low: int, cut: int, retry: list[Row]
    ) -> Changes:
        """Rows changed in (low, cut], deleted keys, and the quarantined keys to retry."""
        try:
            return self._read(conn, plan, low, cut, retry)
        except (ValueError, TypeError) as exc:  # a stored value the driver cannot convert
            raise PermanentError(
                f"{self.source.display_url}: table {plan.mapping.source!r}: a value could not "
                f"be read ({exc}); correct that row at the source"
            ) from exc

    def _read(
        self, conn: Connection, plan: TablePlan, low: int, cut: int, retry: list[Row]
    ) -> Changes:
        changes = Changes(plan, low)
        if low < cut:
            stmt = (
                sa.select(*plan.select)
                .where(plan.version > low, plan.version <= cut, self._not_echo(plan))
                .where(*plan.filters)
                .order_by(plan.version, *plan.source_key)
            )
            for page in self.source.stream(conn, stmt, self.page_rows, self._as_text(plan)):
                changes.rows.extend(page)  # rows are tuples already: no per-row copy
            if plan.deletes:
                changes.deleted = self._deleted(conn, plan, low, cut)
        if retry:
            self._retry(conn, changes, retry, cut)
        return changes

    def _deleted(self, conn: Connection, plan: TablePlan, low: int, cut: int) -> list[Row]:
        tomb = self.source.ct.tombstone
        stmt = self._tombstones(plan, low).where(tomb.c.version <= cut).order_by(tomb.c.version)
        keys = list(dict.fromkeys(decode_key(k) for _, k in conn.execute(stmt)))
        if not keys:
            return []
        # A key deleted and inserted again is alive: the row stream carries it.
        alive: set[str] = set()
        width = len(plan.source_key)
        for part in chunks(keys, max(1, self.source.capabilities.max_bind_params // width - 1)):
            found = conn.execute(
                sa.select(*plan.source_key).where(
                    sa.tuple_(*plan.source_key).in_([tuple(k) for k in part])
                )
            )
            alive.update(key_text(r) for r in found)
        return [plan.target_key_from_tombstone(k) for k in keys if key_text(k) not in alive]

    def _retry(self, conn: Connection, changes: Changes, keys: list[Row], cut: int) -> None:
        """Read the current source rows of quarantined keys (parked for a missing parent, a
        target constraint since fixed...). They are applied again with this batch."""
        plan = changes.plan
        changes.open_keys = {key_text(k) for k in keys}
        have = {key_text(plan.key_of(r)) for r in changes.rows}
        sent_deletes = {key_text(k) for k in changes.deleted}
        exprs = [plan.expression(k) for k in plan.target_key]
        found: set[str] = set()
        wanted = sa.case((sa.and_(self._not_echo(plan), *plan.filters), 1), else_=0)
        size = max(1, self.source.capabilities.max_bind_params // 2 // len(exprs))
        for part in chunks(keys, size):
            stmt = sa.select(*plan.select, plan.version, wanted).where(
                sa.tuple_(*exprs).in_([tuple(k) for k in part])
            )
            records = (
                r
                for page in self.source.stream(conn, stmt, self.page_rows, self._as_text(plan))
                for r in page
            )
            for record in records:
                row, version, send = tuple(record[:-2]), record[-2], record[-1]
                text = key_text(plan.key_of(row))
                found.add(text)  # alive at the source: never a delete
                if not send:
                    changes.settled.add(text)  # filtered out, or came from the target
                elif text not in have and version is not None and version <= cut:
                    changes.rows.append(row)
                    have.add(text)
        for key in keys:
            text = key_text(key)
            if text in found or text in sent_deletes:
                continue
            if plan.deletes:
                changes.deleted.append(tuple(key))
            else:
                changes.settled.add(text)
