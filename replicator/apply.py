"""Applying a batch on the target: deletes children first, upserts parents first, bad rows
quarantined (found by bisection) while the rest goes on, all in the caller's transaction."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from loguru import logger
from sqlalchemy.engine import Connection

from replicator.backends import Backend
from replicator.backends.base import Row
from replicator.errors import PermanentError
from replicator.read import Changes
from replicator.state import key_text, quarantine_row, resolve_quarantine, save_progress

T = TypeVar("T")
MAX_BAD_ROWS = 200  # refused rows per table and batch before the batch fails instead


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.bad = 0
        self.started = time.monotonic()
        self.first: str | None = None

    def spend(self, reason: str) -> None:
        if self.first is None:  # the clock runs from the first refusal, not the first write
            self.first, self.started = reason, time.monotonic()
        if self.bad >= MAX_BAD_ROWS or time.monotonic() - self.started > self.seconds:
            raise PermanentError(
                f"the target refuses too many rows ({self.bad}+ in one batch), so this looks "
                f"like a schema mismatch rather than a few bad rows; first reason: {self.first}"
                " -- fix the target table or the mapping, then run again"
            )


CONFLICT = "conflict: the target row differs and the rule is keep_target"


class Applier:
    def __init__(self, target: Backend, job: str, source_node: str) -> None:
        self.target = target
        self.job = job
        self.source_node = source_node
        self.log = logger.bind(job=job)

    def apply(self, conn: Connection, changes: list[Changes], cut: int, counts: Any) -> None:
        self.target.mark_origin(conn, self.source_node)
        failed: dict[str, set[str]] = {ch.plan.label: set() for ch in changes}
        for ch in reversed(changes):  # children first, so foreign keys hold
            if ch.deleted:
                bad = self._deletes(conn, ch)
                failed[ch.plan.label].update(bad)
                counts[ch.plan.label].deletes += len(ch.deleted) - len(bad)
                counts[ch.plan.label].quarantined += len(bad)
        for ch in changes:  # parents first
            if ch.rows:
                bad, conflicts = self._upserts(conn, ch)
                failed[ch.plan.label].update(bad)
                counts[ch.plan.label].upserts += len(ch.rows) - len(bad)
                counts[ch.plan.label].quarantined += len(bad)
                counts[ch.plan.label].conflicts += conflicts
        for ch in changes:
            if ch.open_keys:
                self._settle(conn, ch, failed[ch.plan.label])
            if cut > ch.low:
                save_progress(
                    conn,
                    self.target.ct,
                    self.job,
                    ch.plan.label,
                    cut,
                    len(ch.rows),
                    len(ch.deleted),
                )
        self.target.mark_origin(conn, None)

    def _upserts(self, conn: Connection, ch: Changes) -> tuple[set[str], int]:
        plan = ch.plan
        kept: list[Row] = []

        def write(rows: Sequence[Row]) -> None:
            kept.extend(
                self.target.upsert(
                    conn, plan.target, plan.columns, plan.target_key, rows, plan.conflict
                )
            )

        bad = self._bisect(conn, ch.rows, write)
        for key in kept:
            self._quarantine(conn, plan.label, key, None, CONFLICT, status="conflict")
        out = set()
        for row, reason in bad:
            key = plan.key_of(row)
            out.add(key_text(key))
            self._quarantine(
                conn, plan.label, key, dict(zip(plan.columns, row, strict=True)), reason
            )
        return out, len(kept)

    def _deletes(self, conn: Connection, ch: Changes) -> set[str]:
        plan = ch.plan

        def delete(keys: Sequence[Row]) -> None:
            self.target.delete(conn, plan.target, plan.target_key, keys, plan.soft_delete)

        out = set()
        for key, reason in self._bisect(conn, ch.deleted, delete):
            out.add(key_text(key))
            self._quarantine(conn, plan.label, key, None, f"delete refused: {reason}")
        return out

    def _quarantine(
        self,
        conn: Connection,
        table: str,
        key: Row,
        row: dict[str, Any] | None,
        reason: str,
        status: str = "open",
    ) -> None:
        quarantine_row(conn, self.target.ct, self.job, table, list(key), row, reason, status)
        if status == "open":
            self.log.bind(table=table).warning("quarantined {}: {}", list(key), reason)

    def _bisect(
        self, conn: Connection, items: Sequence[T], fn: Callable[[Sequence[T]], None]
    ) -> list[tuple[T, str]]:
        """Apply `items`; on a row error split in halves until the bad ones are alone.

        Bounded: past MAX_BAD_ROWS refused rows or the backend's bisect_seconds, the batch
        fails loudly (a schema mismatch, not a few bad rows) instead of holding the lock."""
        budget = _Budget(self.target.bisect_seconds)
        return self._split(conn, items, fn, budget)

    def _split(
        self,
        conn: Connection,
        items: Sequence[T],
        fn: Callable[[Sequence[T]], None],
        budget: _Budget,
    ) -> list[tuple[T, str]]:
        try:
            with conn.begin_nested():
                fn(items)
            return []
        except Exception as exc:  # driver, SQLAlchemy or value errors: sorted just below
            if not self.target.is_row_error(exc):
                raise
            reason = str(self.target.classify(exc).args[0])
            budget.spend(reason)
            if len(items) == 1:
                budget.bad += 1
                return [(items[0], reason)]
        mid = len(items) // 2
        return self._split(conn, items[:mid], fn, budget) + self._split(
            conn, items[mid:], fn, budget
        )

    def _settle(self, conn: Connection, ch: Changes, failed: set[str]) -> None:
        """Quarantined keys that went through this time (or have nothing left to send)."""
        plan = ch.plan
        done = {key_text(plan.key_of(r)) for r in ch.rows}
        done |= {key_text(k) for k in ch.deleted}
        settled = ((done & ch.open_keys) | ch.settled) - failed
        if settled:
            resolve_quarantine(conn, self.target.ct, self.job, plan.label, sorted(settled))
            self.log.bind(table=plan.label).info("{} quarantined rows went through", len(settled))
