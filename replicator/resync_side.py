"""One database's view of a table's mapped rows for `replicator resync`, over ranges of the
range key (the source key, or the target columns it becomes): chunk bounds, per-bucket
checksums, per-row hashes and rows, each computed inside the database in one query.

Buckets are runs of `size` consecutive rows of a range in key order (`row_number()`), so
both sides compute theirs at the same time, each without the other's keys; `marks` gives the
last key of each full bucket. Two buckets agree when their counts, sums and both end keys
agree; a missing or extra row shifts the buckets after it within its chunk, which then only
costs per-row hashes of the rest of that chunk, never a wrong answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator.backends import Backend
from replicator.backends.base import Row
from replicator.resync_hash import (
    FieldSpec,
    checksum_of,
    field_text,
    postgresql_fields,
    postgresql_row_hash,
    sqlite_row_hash,
    sqlite_sum,
)

Key = tuple[Any, ...]


@dataclass
class Checksum:
    count: int
    total: int


class Side:
    """One database's view of a table's mapped rows, over ranges of the range key."""

    def __init__(
        self,
        backend: Backend,
        table: sa.Table,
        exprs: Sequence[sa.ColumnElement[Any]],
        where: Sequence[sa.ColumnElement[bool]],
        range_cols: Sequence[sa.Column[Any]],
        specs: Sequence[FieldSpec],
        key_specs: Sequence[FieldSpec],
        extra: Sequence[sa.ColumnElement[Any]] = (),
    ) -> None:
        self.backend = backend
        self.table = table
        self.exprs = list(exprs)
        self.where = list(where)
        self.range_cols = list(range_cols)
        self.specs = list(specs)
        self.key_specs = list(key_specs)
        self.extra = list(extra)  # selected after the range key by `hashes` and `rows`
        self.zone = backend.timezone
        self.pg = backend.dialect == "postgresql"
        self._name = f"repl_resync_{id(self) & 0xFFFFFF}"

    def ordered(self) -> list[Any]:
        """The range columns, text in code point order on every backend."""
        out: list[Any] = []
        for col in self.range_cols:
            text = isinstance(col.type, sa.String) and self.pg
            out.append(col.collate("C") if text else col)
        return out

    def in_range(self, lo: Key | None, hi: Key | None) -> list[sa.ColumnElement[bool]]:
        cols = self.ordered()
        cond: list[sa.ColumnElement[bool]] = []
        for bound, after in ((lo, True), (hi, False)):
            if bound is None:
                continue
            values = [
                sa.literal(v, type_=c.type) for v, c in zip(bound, self.range_cols, strict=True)
            ]
            left, right = sa.tuple_(*cols), sa.tuple_(*values)
            cond.append(left > right if after else left <= right)
        return cond

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A short read transaction (read only on PostgreSQL)."""
        with self.backend.engine.connect() as conn, conn.begin():
            if self.pg:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            yield conn

    def next_bound(self, after: Key | None, hi: Key | None, step: int) -> Key | None:
        """The `step`-th range key after `after` (within `hi`), or None."""
        with self.connect() as conn:
            stmt = (
                sa.select(*self.range_cols)
                .where(*self.where, *self.in_range(after, hi))
                .order_by(*self.ordered())
                .offset(step - 1)
                .limit(1)
            )
            row = conn.execute(stmt).first()
            return tuple(row) if row is not None else None

    # --- buckets ---------------------------------------------------------------------------
    def buckets(
        self, lo: Key | None, hi: Key | None, size: int
    ) -> tuple[list[Checksum], list[Key], list[Key]]:
        """Per bucket of `size` rows of (lo, hi] in key order: its checksum; the last range
        key of each full bucket, raw and canonical."""
        with self.connect() as conn:
            keys = [c.label(f"k{i}") for i, c in enumerate(self.range_cols)]
            rn = sa.func.row_number(type_=sa.BigInteger).over(order_by=self.ordered())
            if self.pg:
                values = [f.label(f"f{i}") for i, f in enumerate(self._pg_fields())]
            else:
                values = [e.label(f"f{i}") for i, e in enumerate(self._plain())]
            sub = (
                sa.select(((rn - 1) // size).label("b"), *values)
                .where(*self.where, *self.in_range(lo, hi))
                .subquery()
            )
            fields = [sub.c[f"f{i}"] for i in range(len(values))]
            if self.pg:
                total: Any = sa.func.sum(postgresql_row_hash(self.specs, fields))
            else:
                total = sqlite_sum(conn, self._name, self.specs, fields, self.zone)
            stmt = sa.select(sub.c.b, sa.func.count(), total).group_by(sub.c.b).order_by(sub.c.b)
            sums = [Checksum(int(n), checksum_of(v)) for _, n, v in conn.execute(stmt)]
            ranked = (
                sa.select(*keys, rn.label("rn"))
                .where(*self.where, *self.in_range(lo, hi))
                .subquery()
            )
            cols = [ranked.c[f"k{i}"] for i in range(len(keys))]
            marks = [
                tuple(r)
                for r in conn.execute(
                    sa.select(*cols).where(ranked.c.rn % size == 0).order_by(ranked.c.rn)
                )
            ]
        return sums, marks, [self.key_text(m) for m in marks]

    def value_buckets(self, lo: int, hi: int, count: int) -> dict[int, Checksum]:
        """Per bucket of an integer range key's values: (lo, hi] cut into `count` equal spans
        (the same cut on both sides, whatever rows each holds); buckets without rows are
        left out."""
        with self.connect() as conn:
            key = sa.cast(self.range_cols[0], sa.BigInteger)
            bucket = ((key - (lo + 1)) * count) // (hi - lo)
            values = self._pg_fields() if self.pg else self._plain()
            sub = (
                sa.select(bucket.label("b"), *[v.label(f"f{i}") for i, v in enumerate(values)])
                .where(*self.where, *self.in_range((lo,), (hi,)))
                .offset(0)  # each field's text is computed once
                .subquery()
            )
            fields = [sub.c[f"f{i}"] for i in range(len(values))]
            if self.pg:
                total: Any = sa.func.sum(postgresql_row_hash(self.specs, fields))
            else:
                total = sqlite_sum(conn, self._name, self.specs, fields, self.zone)
            stmt = sa.select(sub.c.b, sa.func.count(), total).group_by(sub.c.b)
            return {int(b): Checksum(int(n), checksum_of(v)) for b, n, v in conn.execute(stmt)}

    def _pg_fields(self) -> list[sa.ColumnElement[Any]]:
        return postgresql_fields(self.specs, self.exprs, self.zone)

    def _plain(self) -> list[sa.ColumnElement[Any]]:
        return [e.element if isinstance(e, sa.Label) else e for e in self.exprs]

    # --- rows --------------------------------------------------------------------------------
    def hashes(self, ranges: Sequence[tuple[Key | None, Key | None]]) -> list[tuple[Key, Key, int]]:
        """(range key, extra columns, row hash) of each row of these ranges (lo, hi]."""
        parts = [sa.and_(*cond) for cond in (self.in_range(lo, hi) for lo, hi in ranges) if cond]
        within = [sa.or_(*parts)] if len(parts) == len(ranges) else []
        with self.connect() as conn:
            if self.pg:
                values = [f.label(f"f{i}") for i, f in enumerate(self._pg_fields())]
                sub = (
                    sa.select(*self.range_cols, *self.extra, *values)
                    .where(*self.where, *within)
                    .subquery()
                )
                fields = [sub.c[f"f{i}"] for i in range(len(values))]
                front = list(sub.c)[: len(self.range_cols) + len(self.extra)]
                stmt = sa.select(*front, postgresql_row_hash(self.specs, fields))
            else:
                h = sqlite_row_hash(conn, self._name + "_h", self.specs, self.exprs, self.zone)
                stmt = sa.select(*self.range_cols, *self.extra, h).where(*self.where, *within)
            n, m = len(self.range_cols), len(self.extra)
            return [
                (tuple(r[:n]), tuple(r[n : n + m]), int(r[n + m]) & (2**64 - 1))
                for r in conn.execute(stmt)
            ]

    def rows_of(self, keys: Sequence[Key]) -> list[Row]:
        """The mapped rows (then the extra columns) of these range keys."""
        if not keys:
            return []
        with self.connect() as conn:
            match = (
                self.range_cols[0].in_([k[0] for k in keys])
                if len(self.range_cols) == 1
                else sa.tuple_(*self.range_cols).in_([tuple(k) for k in keys])
            )
            stmt = sa.select(*self.exprs, *self.extra).where(*self.where, match)
            return [tuple(r) for r in conn.execute(stmt)]

    def key_text(self, values: Sequence[Any]) -> tuple[Any, ...]:
        out: list[Any] = []
        for spec, v in zip(self.key_specs, values, strict=True):
            text = field_text(spec, v, self.zone)
            if spec.kind in ("int", "dec") and text is not None:
                try:
                    out.append(Decimal(text))
                    continue
                except ArithmeticError:
                    pass
            out.append(text)
        return tuple(out)
