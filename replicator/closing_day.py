"""Reading one table's business day on one side, and comparing both sides' rows.

Counts and sums are computed by each database (`totals`; one query for the registers of a
table the server holds together, `batch_totals`). Rows are fetched only where they are
compared: `(key, date, amounts, ...)` tuples of one day of one register, canonical forms of
the codec on both sides. See `replicator.closing_sides` for how each side says "the day".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator.backends import Backend
from replicator.backends.base import chunks, key_chunk
from replicator.closing_model import Difference, RowDiff, RowRef, Side, TableDay, Totals
from replicator.closing_sides import Column, Day, Sides, SideSpec
from replicator.codec import Kind, canon_value, kind_of


@contextmanager
def snapshot(backend: Backend) -> Iterator[Connection]:
    """A read snapshot for the closing's queries. On PostgreSQL without JIT compilation: the
    day's aggregates are short queries whose estimated cost can still trigger it, and
    compiling them takes longer than running them."""
    with backend.read_snapshot() as conn:
        if backend.dialect == "postgresql":
            conn.exec_driver_sql("SET LOCAL jit = off")
        yield conn


# --- reading a day -------------------------------------------------------------------------------
def totals(conn: Connection, side: SideSpec, day: Day) -> Side:
    """Counts and sums of a side's day, computed by its database."""
    return batch_totals(conn, [side], day)[0]


def batch_key(side: SideSpec) -> tuple[Any, ...]:
    """Sides that one query can total together: the same tables and the same `where`; they
    differ only in the register their `part` columns select."""
    where = tuple((str(w), tuple(sorted(w.compile().params.items()))) for w in side.where)
    return (str(side.source), tuple(str(c) for c in side.part), where)


def batch_totals(conn: Connection, sides: Sequence[SideSpec], day: Day) -> list[Side]:
    """The totals of several registers' rows of one table in one query, grouped by the
    columns that tell the registers apart (the server holds them all); `sides` share their
    `batch_key`. One side, a side without such columns, and a table joined to the one that
    holds the date (`via`) are each their own query: for one register PostgreSQL probes the
    joined table's key per row of the day, for all of them at once it would hash the whole
    joined table (every payment of every day, to total one day)."""
    first = sides[0]
    if len(sides) > 1 and first.part and isinstance(first.source, sa.Table):
        part = first.part
        if len(part) == 1:
            choose = part[0].in_([s.part_values[0] for s in sides])
        else:
            choose = sa.tuple_(*part).in_([tuple(s.part_values) for s in sides])
        found = _totals(conn, first, day, part, [choose])
        kinds = [kind_of(c.type) for c in part]
        return [found.get(_canon_part(kinds, s.part_values), _empty(s)) for s in sides]
    return [_totals(conn, s, day, [], s.scope).get((), _empty(s)) for s in sides]


def _canon_part(kinds: list[Kind], values: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(canon_value(k, v) for k, v in zip(kinds, values, strict=True))


def _empty(side: SideSpec) -> Side:
    keysum = tuple(0 for _ in side.key) if side.keysum else None
    return Side(0, keysum, Totals(0, {n: Decimal(0) for n in side.sums}), {})


def _totals(
    conn: Connection,
    side: SideSpec,
    day: Day,
    part: list[sa.ColumnElement[Any]],
    scope: list[sa.ColumnElement[bool]],
) -> dict[tuple[Any, ...], Side]:
    match = sa.and_(*side.where) if side.where else None
    cols: list[sa.ColumnElement[Any]] = [sa.func.count()]
    if side.keysum:
        cols += [sa.func.sum(k) for k in side.key]
    cols.append(sa.func.count(sa.case((match, 1))) if match is not None else sa.func.count())
    for name in side.sums:
        exact = side.exact(name)
        cols.append(sa.func.sum(sa.case((match, exact)) if match is not None else exact))
    by = side.by
    heads = [*part, *([by.expr] if by else [])]
    stmt = sa.select(*heads, *cols).select_from(side.source).where(*scope, side.in_day(day))
    if heads:
        stmt = stmt.group_by(*heads)
    kinds = [kind_of(c.type) for c in part]
    width = len(side.key) if side.keysum else 0
    out: dict[tuple[Any, ...], Side] = {}
    for record in conn.execute(stmt):
        values = list(record)
        who = _canon_part(kinds, values[: len(part)])
        values = values[len(part) :]
        found = out.setdefault(who, _empty(side))
        label = group_label(side, by, values.pop(0)) if by else None
        found.rows += int(values[0] or 0)
        if found.keysum is not None:
            found.keysum = tuple(
                a + int(v or 0) for a, v in zip(found.keysum, values[1 : 1 + width], strict=True)
            )
        count = int(values[1 + width] or 0)
        sums = {n: side.decimal(n, v) for n, v in zip(side.sums, values[2 + width :], strict=True)}
        found.total.count += count
        for n, v in sums.items():
            found.total.sums[n] += v
        if label is not None and count:
            group = found.groups.setdefault(label, Totals(0, {n: Decimal(0) for n in side.sums}))
            group.count += count
            for n, v in sums.items():
                group.sums[n] += v
    return out


def group_label(side: SideSpec, by: Column, value: Any) -> str:
    canon = side.canon(by, value)
    return "" if canon is None else str(canon)


@dataclass
class _Row:
    key: tuple[Any, ...]  # as read (bound again for lookups)
    when: datetime | date | None
    values: dict[str, Any]  # canonical, for comparing
    raw: dict[str, Any]  # as read, for showing


def day_rows(conn: Connection, side: SideSpec, day: Day) -> dict[tuple[Any, ...], _Row]:
    return _rows(conn, side, side.in_day(day))


def _rows(
    conn: Connection, side: SideSpec, condition: sa.ColumnElement[bool]
) -> dict[tuple[Any, ...], _Row]:
    names = list(side.compared)
    stmt = (
        sa.select(*side.key, *[side.compared[n].expr for n in names])
        .select_from(side.source)
        .where(*side.scope, condition)
    )
    width = len(side.key)
    out = {}
    for record in conn.execute(stmt):
        key = tuple(record[:width])
        canon_key = tuple(canon_value(k, v) for k, v in zip(side.key_kinds, key, strict=True))
        read = dict(zip(names, record[width:], strict=True))
        values = {n: side.canon(side.compared[n], read[n]) for n in names}
        raw = {n: side.shown(v) for n, v in read.items()}
        out[canon_key] = _Row(key, side.when(read[side.date_name]), values, raw)
    return out


def lookup(
    conn: Connection, side: SideSpec, keys: Iterable[tuple[Any, ...]]
) -> dict[tuple[Any, ...], _Row]:
    """Rows of a side by key, whatever their day (a row that moved to another day)."""
    out: dict[tuple[Any, ...], _Row] = {}
    keys = list(keys)
    size = key_chunk(side.backend.capabilities.max_bind_params, len(side.key))
    for part in chunks(keys, size):
        if len(side.key) == 1:
            cond = side.key[0].in_([k[0] for k in part])
        else:
            cond = sa.tuple_(*side.key).in_([tuple(k) for k in part])
        out.update(_rows(conn, side, cond))
    return out


def compare(
    table: TableDay,
    sides: Sides,
    reg_conn: Connection,
    srv_conn: Connection,
    day: Day,
) -> None:
    """Fill the table's missing, different and extra rows from both sides' rows of the day."""
    reg, srv = sides.register, sides.server
    mine = day_rows(reg_conn, reg, day)
    theirs = day_rows(srv_conn, srv, day)
    sums = list(sides.closing.sums)
    table.rows_compared = True
    lost = [k for k in mine if k not in theirs]
    found = lookup(srv_conn, srv, [mine[k].key for k in lost]) if lost else {}
    for k in lost:
        row = mine[k]
        if k in found:
            table.different.append(_diff(k, row, found[k], sums))
        else:
            table.missing.append(RowRef(k, row.when, _amounts(row, sums), _shown(row, sides)))
    for k, row in mine.items():
        other = theirs.get(k)
        if other is not None and other.values != row.values:
            table.different.append(_diff(k, row, other, sums))
    gone = [k for k in theirs if k not in mine]
    back = lookup(reg_conn, reg, [theirs[k].key for k in gone]) if gone else {}
    for k in gone:
        row = theirs[k]
        if k in back:
            table.different.append(_diff(k, back[k], row, sums))
        else:
            table.extra.append(RowRef(k, row.when, _amounts(row, sums), _shown(row, sides)))
    table.missing.sort(key=_order)
    table.extra.sort(key=_order)
    table.different.sort(key=_order)


def _order(row: RowRef | RowDiff) -> tuple[str, str]:
    return (str(row.when or ""), repr(row.key))


def _amounts(row: _Row, sums: list[str]) -> dict[str, Decimal | None]:
    return {n: _as_decimal(row.raw.get(n)) for n in sums}


def _as_decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    return Decimal(str(value))


def _shown(row: _Row, sides: Sides) -> dict[str, Any]:
    return {n: row.raw.get(n) for n in sides.closing.show}


def _diff(key: tuple[Any, ...], mine: _Row, theirs: _Row, sums: list[str]) -> RowDiff:
    columns = [
        Difference(name, mine.raw.get(name), theirs.raw.get(name))
        for name, value in mine.values.items()
        if theirs.values.get(name) != value
    ]
    return RowDiff(key, mine.when, _amounts(mine, sums), columns)
