"""Writing pages of changes on the target, inside the caller's transaction: upserts and deletes,
refused rows found by bisection and held in the quarantine while the rest goes on, rows that
would overwrite what an earlier incarnation of the source wrote held as conflicts."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.engine import Connection

from replicator.backends import Backend
from replicator.backends.base import Row, chunks, key_chunk
from replicator.codec import Codec
from replicator.position import Position
from replicator.quarantine import CONFLICT, REFUSED, WAITING, Budget, Quarantine
from replicator.transform import TablePlan
from replicator.values import Lenient, Unreadable, unreadable_check

T = TypeVar("T")
ONE_BY_ONE_AFTER = 16  # refused rows found in one page before the rest is tried row by row
KEEP_TARGET = "conflict: the target row differs and the table's rule is keep_target"


@dataclass
class Tally:
    """What one table did in a batch; added to the job's result only after the commit."""

    upserts: int = 0
    deletes: int = 0
    quarantined: int = 0
    conflicts: int = 0
    resolved: int = 0

    def add(self, other: Tally) -> None:
        self.upserts += other.upserts
        self.deletes += other.deletes
        self.quarantined += other.quarantined
        self.conflicts += other.conflicts
        self.resolved += other.resolved


@dataclass
class TableRound:
    """Per table, what the applier must know during one batch."""

    plan: TablePlan
    budget: Budget
    held: dict[str, str] = field(default_factory=dict)  # held row_key -> status
    streamed: set[str] = field(default_factory=set)  # held keys seen in this batch's stream
    fenced: bool = False
    tally: Tally = field(default_factory=Tally)
    # per foreign key to another table of the group: (parent label, parent codec, the
    # positions in this table's rows of the parent's key columns)
    parents: list[tuple[str, Codec, list[int]]] = field(default_factory=list)
    # two-way tables: where the reverse job stands, and the target's change column
    reverse: tuple[Position, str] | None = None


class Applier:
    def __init__(self, target: Backend, job: str, source_node: str, source_zone: Any) -> None:
        self.target = target
        self.job = job
        self.source_node = source_node
        self.source_zone = source_zone
        self.quarantine = Quarantine(target.ct, job)
        self.log = logger.bind(job=job)
        self._adapters: dict[str, Callable[[Row], Row] | None] = {}
        self._checks: dict[str, Callable[[Row], None] | None] = {}
        self._lenient: dict[str, list[int]] = {}  # per table: columns read leniently

    def _adapter(self, plan: TablePlan, key: bool = False) -> Callable[[Row], Row] | None:
        """Values in the form the target's columns declare (time zones, exact text...)."""
        name = f"{plan.label}:{key}"
        if name not in self._adapters:
            columns = plan.target_key if key else plan.columns
            self._adapters[name] = self.target.row_adapter(plan.target, columns, self.source_zone)
        return self._adapters[name]

    def _check(self, plan: TablePlan) -> Callable[[Row], None] | None:
        """Per table: the target's own check (exact decimals) and values the source could
        not read (a date that is not a date): both refuse their row alone."""
        name = f"{plan.label}:check"
        if name not in self._checks:
            types = [expr.type for expr in plan.select]
            target = self.target.row_check(plan.target, plan.columns, types)
            self._checks[name] = unreadable_check(plan.columns, types, target)
            if target is None:  # only unreadable values to look for: see _clean
                self._lenient[plan.label] = [
                    i for i, t in enumerate(types) if isinstance(t, Lenient)
                ]
        return self._checks[name]

    def _clean(self, plan: TablePlan, rows: Sequence[Row]) -> bool:
        """Whether the page has nothing for the check to refuse: its only check looks for
        unreadable values and there is none (one pass in C over the page instead of a
        Python call per row)."""
        positions = self._lenient.get(plan.label)
        if not positions:
            return False
        pick = operator.itemgetter(*positions)
        values = (
            itertools.chain.from_iterable(map(pick, rows))
            if len(positions) > 1
            else map(pick, rows)
        )
        return Unreadable not in set(map(type, values))

    def streamable(self, plan: TablePlan) -> bool:
        """Whether rows of this table can be written as they come, with no work per row in
        Python (no value check, no adapter of time zones or exact text)."""
        return self._check(plan) is None and self._adapter(plan) is None

    def _checked(
        self,
        conn: Connection,
        tr: TableRound,
        check: Callable[[Row], None],
        rows: Sequence[Row],
        source_keys: Sequence[Row],
        versions: Sequence[int | None],
    ) -> tuple[list[Row], list[Row], list[int | None]]:
        """Rows the target would store other than sent are refused here, one by one."""
        keep: tuple[list[Row], list[Row], list[int | None]] = ([], [], [])
        for row, skey, version in zip(rows, source_keys, versions, strict=True):
            try:
                check(row)
            except ValueError as exc:
                key = tr.plan.target_key_text(row)
                if key in tr.held:
                    tr.streamed.add(key)
                new = self._hold(conn, tr.plan, key, skey, row, str(exc), REFUSED, version)
                tr.budget.refused(new and key not in tr.held)
                tr.tally.quarantined += 1
                if new:
                    self.log.bind(table=tr.plan.label).warning("held (refused) {}: {}", key, exc)
                continue
            keep[0].append(row)
            keep[1].append(skey)
            keep[2].append(version)
        return keep

    # --- upserts ---------------------------------------------------------------------------
    def upserts(
        self,
        conn: Connection,
        tr: TableRound,
        rows: Sequence[Row],
        source_keys: Sequence[Row],
        versions: Sequence[int | None],
    ) -> None:
        """Write one page of mapped rows (with their source keys and versions)."""
        plan = tr.plan
        check = self._check(plan)
        if check is not None and not self._clean(plan, rows):
            rows, source_keys, versions = self._checked(
                conn, tr, check, rows, source_keys, versions
            )
        adapt = self._adapter(plan)
        if adapt is not None:
            rows = [adapt(r) for r in rows]
        items = list(zip(rows, source_keys, versions, strict=True))
        if tr.held or tr.fenced:  # key texts only where they are compared
            keys = [plan.target_key_text(r) for r in rows]
            if tr.held:
                tr.streamed.update(k for k in keys if k in tr.held)
            if tr.fenced:
                items = self._unfenced(conn, tr, items, keys)
        if tr.reverse is not None and plan.conflict.rule != "keep_target":
            self._both_changed(conn, tr, items)
        kept: list[Row] = []

        def write(part: Sequence[tuple[Row, Row, int | None]]) -> None:
            data = [r for r, _, _ in part]
            kept.extend(
                self.target.upsert(
                    conn, plan.target, plan.columns, plan.target_key, data, plan.conflict
                )
            )

        def found(item: tuple[Row, Row, int | None], state: str) -> None:
            # counted as soon as found, so a table that refuses everything stops quickly
            tr.budget.refused(state != WAITING and plan.target_key_text(item[0]) not in tr.held)

        bad = self._bisect(conn, items, write, tr.budget, found)
        failed = set()
        for (row, skey, version), reason, state in bad:
            text = plan.target_key_text(row)
            failed.add(text)
            new = self._hold(
                conn,
                plan,
                text,
                skey,
                row,
                reason,
                state,
                version or 0,
            )
            if new:
                self.log.bind(table=plan.label).warning(
                    "held ({}) {}: {}", state, text, reason.splitlines()[0]
                )
        if kept:
            by_key = {plan.target_key_text(r): (r, s, v) for r, s, v in items}
            for key in kept:
                text = plan.target_codec.text(key)
                failed.add(text)
                hit: tuple[Row | None, Row | None, int | None] = by_key.get(
                    text, (None, None, None)
                )
                row_kept, skey_kept, version_kept = hit
                self._hold(
                    conn,
                    plan,
                    text,
                    skey_kept,
                    row_kept,
                    KEEP_TARGET,
                    CONFLICT,
                    version_kept or 0,
                )
        tr.tally.quarantined += len(bad)
        tr.tally.conflicts += len(kept)
        tr.tally.upserts += len(items) - len(bad) - len(kept)
        if tr.held:
            done = [
                k
                for k in (plan.target_key_text(r) for r, _, _ in items)
                if k in tr.held and k not in failed
            ]
            if done:
                tr.tally.resolved += self.quarantine.resolve(conn, plan.label, done)

    def _both_changed(
        self, conn: Connection, tr: TableRound, items: list[tuple[Row, Row, int | None]]
    ) -> None:
        """Two-way tables: a target row changed on the target (by its application or another
        node) after the reverse job last sent this table, that the incoming row would change
        too, was edited on both sides. The table's rule decides which edit stays; the other
        is recorded as a conflict, with the row it had, so no edit is lost silently."""
        assert tr.reverse is not None
        plan = tr.plan
        back, change = tr.reverse
        table = plan.target
        version, origin = table.c[change], table.c["repl_origin"]
        incoming = {plan.target_key_text(r): (r, s, v) for r, s, v in items}
        size = key_chunk(self.target.capabilities.max_bind_params, len(plan.target_key))
        rows = [r for r, _, _ in items]
        for part in chunks(rows, size):
            cond = sa.tuple_(*[table.c[k] for k in plan.target_key]).in_(
                [tuple(r[i] for i in plan.key_index) for r in part]
            )
            stmt = sa.select(*[table.c[c] for c in plan.columns]).where(
                cond,
                version > back.version,
                sa.or_(origin.is_(None), origin != self.source_node),
            )
            for there in conn.execute(stmt):
                key = plan.target_key_text(tuple(there))
                row, skey, ver = incoming[key]
                if plan.row_codec.same(tuple(there), row):
                    continue
                lost, decided = tuple(there), f"{self.source_node}'s row replaced it (source_wins)"
                if plan.conflict.rule == "newer_wins" and plan.conflict.column:
                    i = plan.columns.index(plan.conflict.column)
                    if not _greater(row[i], there[i]):
                        lost = row
                        decided = f"the target's row is newer ({plan.conflict.column}) and stays"
                    else:
                        decided = f"{self.source_node}'s row is newer ({plan.conflict.column})"
                self._hold(
                    conn,
                    plan,
                    key,
                    skey,
                    lost,
                    f"conflict: {plan.label} {key} was changed on both sides since the last "
                    f"sync; {decided}; the version that lost is kept in this record",
                    CONFLICT,
                    ver or 0,
                )
                tr.tally.conflicts += 1
                self.log.bind(table=plan.label).warning(
                    "edited on both sides: {} ({})", key, decided
                )

    def _unfenced(
        self,
        conn: Connection,
        tr: TableRound,
        items: list[tuple[Row, Row, int | None]],
        keys: list[str],
    ) -> list[tuple[Row, Row, int | None]]:
        """Rows whose key an earlier incarnation of the source wrote on the target: equal
        rows are shared history (the fence lifts), different rows are held as conflicts."""
        plan = tr.plan
        fenced = self._fenced(conn, plan, keys)
        if not fenced:
            return self._orphans_of_conflicts(conn, tr, items)
        existing = self._target_rows(
            conn, plan, [items[i][0] for i, k in enumerate(keys) if k in fenced]
        )
        out, lift = [], []
        for (row, skey, version), key in zip(items, keys, strict=True):
            if key not in fenced:
                out.append((row, skey, version))
                continue
            there = existing.get(key)
            if there is None or plan.row_codec.same(there, row):
                lift.append(key)
                if there is None:
                    out.append((row, skey, version))
                continue
            self._hold(
                conn,
                plan,
                key,
                skey,
                row,
                f"conflict: {plan.label} {key} on the target was written by an earlier "
                f"incarnation of {self.source_node} (before it was restored from a backup or "
                "replaced); the incoming row differs and was held back, the target keeps its "
                "row; an operator decides which one stays",
                CONFLICT,
                version or 0,
            )
            tr.tally.conflicts += 1
        self._lift(conn, plan, lift)
        return self._orphans_of_conflicts(conn, tr, out)

    def _orphans_of_conflicts(
        self, conn: Connection, tr: TableRound, items: list[tuple[Row, Row, int | None]]
    ) -> list[tuple[Row, Row, int | None]]:
        """Rows whose parent (a foreign key to another table of the group) is held as a
        conflict are held with it: a new item never hangs under an archived sale."""
        if not tr.parents or not items:
            return items
        q = self.target.ct.quarantine.c
        held: list[bool] = [False] * len(items)
        for label, codec, index in tr.parents:
            keys = [codec.text([row[i] for i in index]) for row, _, _ in items]
            found: set[str] = set()
            for part in chunks(sorted(set(keys)), 500):
                stmt = sa.select(q.row_key).where(
                    q.job == self.job,
                    q.table_name == label,
                    q.status == CONFLICT,
                    q.row_key.in_(part),
                )
                found.update(conn.execute(stmt).scalars())
            for n, key in enumerate(keys):
                if key in found:
                    held[n] = True
                    row, skey, version = items[n]
                    self._hold(
                        conn,
                        tr.plan,
                        tr.plan.target_key_text(row),
                        skey,
                        row,
                        f"conflict: its parent {label} {key} is held as a conflict (written by "
                        f"an earlier incarnation of {self.source_node}); held with it",
                        CONFLICT,
                        version or 0,
                    )
                    tr.tally.conflicts += 1
        return [item for item, h in zip(items, held, strict=True) if not h]

    def _fenced(self, conn: Connection, plan: TablePlan, keys: Sequence[str]) -> set[str]:
        f = self.target.ct.fence.c
        out: set[str] = set()
        for part in chunks(list(keys), 500):
            stmt = sa.select(f.row_key).where(
                f.job == self.job, f.table_name == plan.label, f.row_key.in_(part)
            )
            out.update(conn.execute(stmt).scalars())
        return out

    def _lift(self, conn: Connection, plan: TablePlan, keys: Sequence[str]) -> None:
        f = self.target.ct.fence.c
        for part in chunks(list(keys), 500):
            conn.execute(
                sa.delete(self.target.ct.fence).where(
                    f.job == self.job, f.table_name == plan.label, f.row_key.in_(part)
                )
            )

    def _target_rows(
        self, conn: Connection, plan: TablePlan, rows: Sequence[Row]
    ) -> dict[str, Row]:
        table = plan.target
        out: dict[str, Row] = {}
        size = key_chunk(self.target.capabilities.max_bind_params, len(plan.target_key))
        for part in chunks(list(rows), size):
            cond = sa.tuple_(*[table.c[k] for k in plan.target_key]).in_(
                [tuple(r[i] for i in plan.key_index) for r in part]
            )
            stmt = sa.select(*[table.c[c] for c in plan.columns]).where(cond)
            for r in conn.execute(stmt):
                out[plan.target_key_text(tuple(r))] = tuple(r)
        return out

    # --- deletes ---------------------------------------------------------------------------
    def deletes(
        self, conn: Connection, tr: TableRound, keys: Sequence[Row], source_keys: Sequence[Row]
    ) -> None:
        """Delete target keys (or mark them with the soft-delete column)."""
        plan = tr.plan
        adapt = self._adapter(plan, key=True)
        if adapt is not None:
            keys = [adapt(k) for k in keys]
        items = list(zip(keys, source_keys, strict=True))
        texts = [plan.target_codec.text(k) for k in keys]
        if tr.held:
            tr.streamed.update(k for k in texts if k in tr.held)
        if tr.fenced:
            fenced = self._fenced(conn, plan, texts)
            kept = []
            for (key, skey), text in zip(items, texts, strict=True):
                if text not in fenced:
                    kept.append((key, skey))
                    continue
                self._hold(
                    conn,
                    plan,
                    text,
                    skey,
                    None,
                    f"conflict: {self.source_node} deleted {plan.label} {text}, which an "
                    "earlier incarnation of it wrote on the target; the target keeps its row",
                    CONFLICT,
                )
                tr.tally.conflicts += 1
            items = kept

        def delete(part: Sequence[tuple[Row, Row]]) -> None:
            self.target.delete(
                conn, plan.target, plan.target_key, [k for k, _ in part], plan.soft_delete
            )

        def found(item: tuple[Row, Row], state: str) -> None:
            tr.budget.refused(state != WAITING and plan.target_codec.text(item[0]) not in tr.held)

        bad = self._bisect(conn, items, delete, tr.budget, found)
        failed = set()
        for (key, skey), reason, _state in bad:
            text = plan.target_codec.text(key)
            failed.add(text)
            # a refused delete is never "waiting": a row that refers to it is what stops it
            self._hold(
                conn,
                plan,
                text,
                skey,
                None,
                f"delete refused: {reason}",
                "refused",
            )
        tr.tally.quarantined += len(bad)
        tr.tally.deletes += len(items) - len(bad)
        if tr.held:
            done = [t for t in texts if t in tr.held and t not in failed]
            if done:
                tr.tally.resolved += self.quarantine.resolve(conn, plan.label, done)

    def settle(self, conn: Connection, tr: TableRound, keys: Sequence[str]) -> None:
        """Held keys with nothing left to send (filtered out, or an echo of the target)."""
        if keys:
            tr.tally.resolved += self.quarantine.resolve(conn, tr.plan.label, keys)

    def _hold(
        self,
        conn: Connection,
        plan: TablePlan,
        key: str,
        source_key: Row | None,
        row: Row | None,
        reason: str,
        status: str,
        version: int | None = 0,
    ) -> bool:
        """Record a row (or a delete, with no row) in the quarantine; True when new."""
        return self.quarantine.record(
            conn,
            plan.label,
            key,
            plan.source_codec.text(source_key) if source_key is not None else None,
            dict(zip(plan.columns, row, strict=True)) if row is not None else None,
            reason,
            status,
            version or 0,
        )

    # --- finding refused rows ---------------------------------------------------------------
    def _bisect(
        self,
        conn: Connection,
        items: Sequence[T],
        fn: Callable[[Sequence[T]], None],
        budget: Budget,
        found: Callable[[T, str], None],
    ) -> list[tuple[T, str, str]]:
        """Apply `items`; on a row error split in halves until the refused ones are alone
        (row by row once many are found in one page). Each attempt is a savepoint."""
        bad: list[tuple[T, str, str]] = []
        stack: list[Sequence[T]] = [items] if items else []
        while stack:
            part = stack.pop()
            try:
                with conn.begin_nested():
                    fn(part)
                continue
            except Exception as exc:  # driver, SQLAlchemy or value errors: sorted just below
                if getattr(exc, "try_again", False):
                    # the backend writes these rows another way next time (PostgreSQL: the
                    # upsert after a direct COPY met an existing key)
                    stack.append(part)
                    continue
                state = self.target.row_error(exc)
                if state is None:
                    raise
                reason = str(self.target.classify(exc).args[0])
                budget.tick(reason)
            if len(part) == 1:
                bad.append((part[0], reason, state))
                found(part[0], state)
            elif len(bad) >= ONE_BY_ONE_AFTER:
                stack.extend([x] for x in reversed(part))
            else:
                mid = len(part) // 2
                stack.append(part[mid:])
                stack.append(part[:mid])
        return bad


def _greater(new: Any, old: Any) -> bool:
    """newer_wins: whether the incoming value wins (as the upsert's SQL decides)."""
    if old is None:
        return True
    if new is None:
        return False
    try:
        return bool(new > old)
    except TypeError:
        return str(new) > str(old)
