"""One database's view of a table's mapped rows for `replicator resync`, over ranges of the
range key (the source key, or the target columns it becomes): the key's extent, chunk bounds,
per-bucket checksums, per-row hashes and rows, each computed inside the database in one query
(PostgreSQL, MariaDB: SQL; SQLite: registered Python functions), or, where the database cannot
build the same row hash (Firebird 3: no MD5), from its rows streamed in key ranges and hashed
here (`resync_stream`).

Buckets of a single integer key are equal spans of its values (`value_buckets`, and
`span_buckets` for many small spans at once on PostgreSQL, joined with arrays of bounds), the
same on both sides whatever rows each holds. Buckets of other keys are runs of `size`
consecutive rows of a range in key order (`row_number()`), so both sides compute theirs at
the same time, each without the other's keys; `marks` gives the last key of each full
bucket. Two such buckets agree when their counts, sums and both end keys agree; a missing or
extra row shifts the buckets after it within its chunk, which then only costs per-row hashes
of the rest of that chunk, never a wrong answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import Grouping

from replicator.backends import Backend
from replicator.backends.base import Row
from replicator.resync_hash import (
    MASK,
    FieldSpec,
    HashKind,
    checksum_of,
    field_text,
    postgresql_fields,
    postgresql_row_hash,
    sqlite_bucket_sums,
    sqlite_row_hash,
    sqlite_sum,
)
from replicator.resync_mariadb import mariadb_fields, mariadb_row_hash, utf8_bytes
from replicator.resync_stream import (
    CODE_POINT_ORDER,
    FbUtf8,
    client_values,
    streamed_buckets,
    streamed_hashes,
    streamed_value_buckets,
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
        hash_kind: HashKind = "md5",
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
        self.hash_kind: HashKind = hash_kind if self.pg else "md5"
        self._name = f"repl_resync_{id(self) & 0xFFFFFF}"
        self.mariadb = backend.dialect == "mariadb"
        self.firebird = backend.dialect == "firebird"
        # MariaDB: the row texts and md5 row hashes in SQL, unless some column's text is only
        # built in Python (a double, a naive timestamp of a named zone into an instant)
        self._my_fields = (
            mariadb_fields(self.specs, self._plain(), self.zone) if self.mariadb else None
        )
        # Firebird (no MD5 in SQL before Firebird 4) and the cases above: the rows' values are
        # streamed in key ranges and hashed here, with the judge's own code (`row_hasher`)
        self.client = not self.pg and backend.dialect != "sqlite" and self._my_fields is None
        self._selected, self._hasher = client_values(
            self.specs, self._plain(), self.zone, self.firebird
        )

    def ordered(self) -> list[Any]:
        """The range columns, text in code point order on every backend."""
        out: list[Any] = []
        for col in self.range_cols:
            if isinstance(col.type, sa.String) and self.pg:
                out.append(col.collate("C"))
            elif isinstance(col.type, sa.String) and self.mariadb:
                out.append(utf8_bytes(col))  # UTF-8 bytes: code point order, no padding
            elif isinstance(col.type, sa.String) and self.firebird:
                charset = str(getattr(col.type, "charset", None) or "").upper()
                # UTF8's own order is code point order; WIN1252's is its bytes' (`Ž`, 0x8E,
                # before `é`, 0xE9): such keys are compared as UTF8 (no index range scans)
                out.append(col if charset in CODE_POINT_ORDER else FbUtf8(col, col.type))
            else:
                out.append(col)
        return out

    def in_range(self, lo: Key | None, hi: Key | None) -> list[sa.ColumnElement[bool]]:
        cols = self.ordered()
        cond: list[sa.ColumnElement[bool]] = []
        for bound, after in ((lo, True), (hi, False)):
            if bound is None:
                continue
            values = [
                sa.literal(v, type_=o.type if isinstance(o, FbUtf8) else c.type)
                for v, c, o in zip(bound, self.range_cols, cols, strict=True)
            ]
            if len(cols) == 1:  # the cheaper construct (many ranges go in one query)
                cond.append(cols[0] > values[0] if after else cols[0] <= values[0])
                continue
            left, right = sa.tuple_(*cols), sa.tuple_(*values)
            cond.append(left > right if after else left <= right)
        return cond

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A short read transaction (read only on PostgreSQL)."""
        with self.backend.engine.connect() as conn, conn.begin():
            if self.pg:  # short queries whose row estimates mislead the JIT
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                conn.exec_driver_sql("SET LOCAL jit = off")
            yield conn

    def extent(self) -> tuple[int | None, int | None, int]:
        """The smallest and largest value of a single integer range key, and how many rows
        there are: on PostgreSQL the planner's estimate (it only sizes the chunks; an exact
        count would cost a scan), on SQLite a count."""
        with self.connect() as conn:
            col = self.range_cols[0]
            ends = sa.select(sa.func.min(col), sa.func.max(col)).where(*self.where)
            lo, hi = conn.execute(ends).one()
            estimate = self._estimate(conn) if self.pg else None
            if estimate is None:
                count = sa.select(sa.func.count()).select_from(self.table).where(*self.where)
                estimate = int(conn.execute(count).scalar() or 0)
            return (None if lo is None else int(lo), None if hi is None else int(hi), estimate)

    def _estimate(self, conn: Connection) -> int | None:
        """PostgreSQL's estimate of the rows of this side (None: the restriction does not
        render as literal SQL, so it is counted instead)."""
        probe = sa.select(sa.literal(1)).select_from(self.table).where(*self.where)
        try:
            sql = str(probe.compile(conn, compile_kwargs={"literal_binds": True}))
        except sa_exc.CompileError:
            return None
        found: Any = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql).scalar()
        plan = json.loads(found) if isinstance(found, str) else found
        return int(plan[0]["Plan"]["Plan Rows"])

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
        if self.client:
            return self._client_buckets(lo, hi, size)
        with self.connect() as conn:
            keys = [c.label(f"k{i}") for i, c in enumerate(self.range_cols)]
            rn = sa.func.row_number(type_=sa.BigInteger).over(order_by=self.ordered())
            if self.pg:
                values = [f.label(f"f{i}") for i, f in enumerate(self._pg_fields())]
            elif self._my_fields is not None:
                values = [f.label(f"f{i}") for i, f in enumerate(self._my_fields)]
            else:
                values = [e.label(f"f{i}") for i, e in enumerate(self._plain())]
            sub = (
                sa.select(self._div(rn - 1, size).label("b"), *values)
                .where(*self.where, *self.in_range(lo, hi))
                .subquery()
            )
            fields = [sub.c[f"f{i}"] for i in range(len(values))]
            if self.pg:
                total: Any = sa.func.sum(postgresql_row_hash(self.specs, fields, self.hash_kind))
            elif self.mariadb:
                total = sa.func.sum(mariadb_row_hash(self.specs, fields))
            else:
                total = sqlite_sum(conn, self._name, self.specs, fields, self.zone)
            stmt = sa.select(sub.c.b, sa.func.count(), total).group_by(sub.c.b).order_by(sub.c.b)
            sums = [Checksum(int(n), checksum_of(v)) for _, n, v in conn.execute(stmt).all()]
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

    def _div(self, a: Any, b: Any) -> Any:
        """Integer division of non-negative integers (MariaDB's `/` is a rounded decimal)."""
        if not self.mariadb:
            return a // b
        return Grouping(a).op("DIV", precedence=8)(b)

    def _client_buckets(
        self, lo: Key | None, hi: Key | None, size: int
    ) -> tuple[list[Checksum], list[Key], list[Key]]:
        """`buckets`, the rows streamed in key order and hashed here."""
        stmt = (
            sa.select(*self.range_cols, *self._selected)
            .where(*self.where, *self.in_range(lo, hi))
            .order_by(*self.ordered())
        )
        with self.connect() as conn:
            found, marks = streamed_buckets(conn, stmt, len(self.range_cols), size, self._hasher)
        sums = [Checksum(n, total) for n, total in found]
        return sums, marks, [self.key_text(m) for m in marks]

    def value_buckets(self, lo: int, hi: int, count: int) -> dict[int, Checksum]:
        """Per bucket of an integer range key's values: (lo, hi] cut into `count` equal spans
        (the same cut on both sides, whatever rows each holds); buckets without rows are
        left out."""
        with self.connect() as conn:
            if self.pg:  # a range of the key: the heap read in page order, not key order
                conn.exec_driver_sql("SET LOCAL enable_indexscan = off")
            key = sa.cast(self.range_cols[0], sa.BigInteger)
            bucket = self._div((key - (lo + 1)) * count, hi - lo)
            within = [*self.where, *self.in_range((lo,), (hi,))]
            total: Any
            if self.client:  # streamed, summed here
                stmt = sa.select(self.range_cols[0], *self._selected).where(*within)
                found = streamed_value_buckets(conn, stmt, lo, hi, count, self._hasher)
                return {b: Checksum(n, total) for b, (n, total) in found.items()}
            if self.mariadb:  # no subquery: MariaDB merges it anyway
                total = sa.func.sum(mariadb_row_hash(self.specs, self._my_fields or []))
                stmt = (
                    sa.select(bucket.label("b"), sa.func.count(), total)
                    .where(*within)
                    .group_by(sa.literal_column("1"))
                )
            elif self.pg and self.hash_kind == "md5":  # each field's text is computed once
                values = self._pg_fields()
                sub = (
                    sa.select(bucket.label("b"), *[v.label(f"f{i}") for i, v in enumerate(values)])
                    .where(*within)
                    .offset(0)
                    .subquery()
                )
                fields = [sub.c[f"f{i}"] for i in range(len(values))]
                total = sa.func.sum(postgresql_row_hash(self.specs, fields, self.hash_kind))
                stmt = sa.select(sub.c.b, sa.func.count(), total).group_by(sub.c.b)
            elif self.pg:  # no subquery: a text cast read twice costs less than one
                total = sa.func.sum(postgresql_row_hash(self.specs, self._pg_fields(), "pg"))
                stmt = (
                    sa.select(bucket.label("b"), sa.func.count(), total)
                    .where(*within)
                    .group_by(sa.literal_column("1"))
                )
            else:  # SQLite: the buckets are summed in Python as the rows go by
                call, totals = sqlite_bucket_sums(
                    conn, self._name + "_b", self.specs, bucket, self._plain(), self.zone
                )
                try:
                    conn.execute(sa.select(sa.func.sum(call)).where(*within)).all()
                finally:  # the pooled connection keeps no reference to the sums
                    raw: Any = conn.connection.driver_connection
                    raw.create_function(self._name + "_b", len(self.specs) + 1, None)
                return {b: Checksum(n, t & MASK) for b, (n, t) in totals.items()}
            return {
                int(b): Checksum(int(n), checksum_of(v)) for b, n, v in conn.execute(stmt).all()
            }

    def _pg_fields(self) -> list[sa.ColumnElement[Any]]:
        return postgresql_fields(self.specs, self.exprs, self.zone)

    def _plain(self) -> list[sa.ColumnElement[Any]]:
        return [e.element if isinstance(e, sa.Label) else e for e in self.exprs]

    # --- rows --------------------------------------------------------------------------------
    @property
    def max_ranges(self) -> int:
        """Key ranges per `hashes` query: PostgreSQL joins a single integer key with arrays of
        bounds (index range scans, any number); otherwise an OR of ranges, which costs the
        database more per row the longer it is."""
        return 10_000 if self._spans else 64

    @property
    def sub_buckets(self) -> bool:
        """`span_buckets` works here (PostgreSQL, one integer key)."""
        return self._spans

    def span_buckets(
        self, spans: Sequence[tuple[int, int]], parts: int
    ) -> dict[tuple[int, int], Checksum]:
        """Per span (lo, hi] (by its index) cut into min(parts, hi - lo) equal sub-spans:
        each sub-span's checksum, all spans in one query (a join with arrays of bounds)."""
        bounds = ARRAY(sa.BigInteger)
        joined = (
            sa.func.unnest(
                sa.bindparam(None, [lo for lo, _ in spans], type_=bounds),
                sa.bindparam(None, [hi for _, hi in spans], type_=bounds),
            )
            .table_valued(
                sa.column("lo", sa.BigInteger), sa.column("hi", sa.BigInteger), with_ordinality="i"
            )
            .render_derived(name="spans")
        )
        col = sa.cast(self.range_cols[0], sa.BigInteger)
        width = joined.c.hi - joined.c.lo
        sub = ((col - joined.c.lo - 1) * sa.func.least(parts, width)) // width
        total = sa.func.sum(postgresql_row_hash(self.specs, self._pg_fields(), self.hash_kind))
        stmt = (
            sa.select(joined.c.i, sub, sa.func.count(), total)
            .select_from(
                self.table.join(
                    joined,
                    sa.and_(self.range_cols[0] > joined.c.lo, self.range_cols[0] <= joined.c.hi),
                )
            )
            .where(*self.where)
            .group_by(sa.literal_column("1"), sa.literal_column("2"))
        )
        with self.connect() as conn:
            return {
                (int(i) - 1, int(j)): Checksum(int(n), checksum_of(v))
                for i, j, n, v in conn.execute(stmt).all()
            }

    @property
    def _spans(self) -> bool:
        if not self.pg or len(self.range_cols) != 1:
            return False
        kind = self.range_cols[0].type
        return isinstance(kind, sa.Integer) and not isinstance(kind, sa.Boolean)

    def _from_ranges(
        self, ranges: Sequence[tuple[Key | None, Key | None]]
    ) -> tuple[Any, list[sa.ColumnElement[bool]]]:
        """The FROM and WHERE that select the rows of these ranges (lo, hi]."""
        if self._spans and all(lo is not None and hi is not None for lo, hi in ranges):
            bounds = ARRAY(sa.BigInteger)
            spans = (
                sa.func.unnest(
                    sa.bindparam(None, [int(lo[0]) for lo, _ in ranges if lo], type_=bounds),
                    sa.bindparam(None, [int(hi[0]) for _, hi in ranges if hi], type_=bounds),
                )
                .table_valued(sa.column("lo", sa.BigInteger), sa.column("hi", sa.BigInteger))
                .render_derived(name="spans")
            )
            col = self.range_cols[0]
            return self.table.join(spans, sa.and_(col > spans.c.lo, col <= spans.c.hi)), []
        parts = [sa.and_(*cond) for cond in (self.in_range(lo, hi) for lo, hi in ranges) if cond]
        return self.table, [sa.or_(*parts)] if len(parts) == len(ranges) else []

    def hashes(self, ranges: Sequence[tuple[Key | None, Key | None]]) -> list[tuple[Key, Key, int]]:
        """(range key, extra columns, row hash) of each row of these ranges (lo, hi]."""
        source, within = self._from_ranges(ranges)
        with self.connect() as conn:
            if self.pg:
                values = [f.label(f"f{i}") for i, f in enumerate(self._pg_fields())]
                sub = (
                    sa.select(*self.range_cols, *self.extra, *values)
                    .select_from(source)
                    .where(*self.where, *within)
                    .subquery()
                )
                fields = [sub.c[f"f{i}"] for i in range(len(values))]
                front = list(sub.c)[: len(self.range_cols) + len(self.extra)]
                stmt = sa.select(*front, postgresql_row_hash(self.specs, fields, self.hash_kind))
            elif self.client:  # streamed, hashed here
                stmt = (
                    sa.select(*self.range_cols, *self.extra, *self._selected)
                    .select_from(source)
                    .where(*self.where, *within)
                )
                n, m = len(self.range_cols), len(self.extra)
                return streamed_hashes(conn, stmt, n, m, self._hasher)
            elif self.mariadb:
                h = mariadb_row_hash(self.specs, self._my_fields or [])
                stmt = (
                    sa.select(*self.range_cols, *self.extra, h)
                    .select_from(source)
                    .where(*self.where, *within)
                )
            else:
                h = sqlite_row_hash(conn, self._name + "_h", self.specs, self.exprs, self.zone)
                stmt = (
                    sa.select(*self.range_cols, *self.extra, h)
                    .select_from(source)
                    .where(*self.where, *within)
                )
            n, m = len(self.range_cols), len(self.extra)
            found = [tuple(r) for r in conn.execute(stmt).all()]  # plain tuples slice fast
            return [(r[:n], r[n : n + m], int(r[n + m]) & (2**64 - 1)) for r in found]

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
            return [tuple(r) for r in conn.execute(stmt).all()]

    def key_text(self, values: Sequence[Any]) -> tuple[Any, ...]:
        out: list[Any] = []
        for spec, v in zip(self.key_specs, values, strict=True):
            if type(v) is int and spec.kind in ("int", "dec"):
                out.append(v)  # equal to (and hashing as) Decimal(v)
                continue
            text = field_text(spec, v, self.zone)
            if spec.kind in ("int", "dec") and text is not None:
                try:
                    out.append(Decimal(text))
                    continue
                except ArithmeticError:
                    pass
            out.append(text)
        return tuple(out)
