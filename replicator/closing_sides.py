"""One table's business day on both sides: counts and exact sums computed inside each
database, then, where they differ (or when asked), the rows of the day compared key by key.

A register's rows of a day are its rows whose `date` column falls inside the local day of
the store; each side says it in its own terms, inside SQL (a range on the column, so an
index on it serves):

- a column with a time zone (PostgreSQL `timestamptz`): the instants of local midnight to
  the next local midnight;
- a timestamp without a zone: the same instants as local time of the zone that database's
  naive timestamps mean (`timezone` of the database; on a SQLite register its own zone);
- SQLite: its timestamps are ISO text, compared as text (`'2024-03-15' <= opened_at <
  '2024-03-16'`), which places `2024-03-15 23:30:00` and `2024-03-15T23:30:00-03:00` alike
  on the 15th;
- a date column: that date.

Sums never pass through a float: PostgreSQL sums `numeric` exactly; SQLite, which keeps
NUMERIC values as 64-bit floats, sums integers of the column's smallest unit
(`CAST(ROUND(amount * 100) AS INTEGER)` at scale 2), which is exact for every value a float
holds to its scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from replicator.backends import Backend
from replicator.codec import Kind, canon_value, kind_of
from replicator.errors import CheckError
from replicator.mapping import VAR_RE, FromColumn, Scalar
from replicator.transform import TablePlan

DEFAULT_SCALE = 2  # money, when neither side declares the column's scale
Translate = Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Day:
    """A business day in the store's zone."""

    day: date
    zone: tzinfo

    @property
    def start(self) -> datetime:
        return datetime.combine(self.day, time(0), tzinfo=self.zone)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.day + timedelta(days=1), time(0), tzinfo=self.zone)


@dataclass
class Column:
    """A column compared on one side: its expression, its canonical kind, and how a value
    becomes the server's (value maps apply on the register's side)."""

    expr: sa.ColumnElement[Any]
    kind: Kind
    translate: Translate = _same


@dataclass
class SideSpec:
    """How one side reads a table's day."""

    backend: Backend
    naive_zone: tzinfo  # what this database's naive timestamps mean
    business: tzinfo
    source: sa.FromClause
    key: list[sa.ColumnElement[Any]]  # in the source key's order
    key_kinds: list[Kind]
    date_col: sa.ColumnElement[Any]
    scope: list[sa.ColumnElement[bool]]  # this register's rows only
    where: list[sa.ColumnElement[bool]]  # the closing's `where`
    sums: dict[str, sa.ColumnElement[Any]]
    scales: dict[str, int]
    by: Column | None
    compared: dict[str, Column]  # source column name -> this side's column
    date_name: str  # the date column's name in `compared`
    keysum: bool = field(default=False)
    part: list[sa.ColumnElement[Any]] = field(default_factory=list)  # tell registers apart
    part_values: tuple[Any, ...] = ()  # this register's values of `part`

    @property
    def sqlite(self) -> bool:
        return self.backend.dialect == "sqlite"

    def in_day(self, day: Day) -> sa.ColumnElement[bool]:
        col = self.date_col
        kind = col.type
        if self.sqlite:
            start, end = _text_bounds(kind, day, self.naive_zone)
            text = sa.type_coerce(col, sa.String())
            return sa.and_(
                text >= sa.literal(start, sa.String()), text < sa.literal(end, sa.String())
            )
        if isinstance(kind, sa.DateTime):
            lo, hi = day.start, day.end
            if not kind.timezone:
                lo = lo.astimezone(self.naive_zone).replace(tzinfo=None)
                hi = hi.astimezone(self.naive_zone).replace(tzinfo=None)
            return sa.and_(col >= sa.literal(lo, kind), col < sa.literal(hi, kind))
        return sa.and_(
            col >= sa.literal(day.day, kind), col < sa.literal(day.day + timedelta(1), kind)
        )

    def exact(self, name: str) -> sa.ColumnElement[Any]:
        """The column as an exact number SUM can add: numeric on PostgreSQL, an integer of the
        smallest unit on SQLite."""
        col = self.sums[name]
        kind = col.type
        if self.sqlite:
            if isinstance(kind, sa.Integer):
                return col
            unit = 10 ** self.scales[name]
            return sa.cast(sa.func.round(col * sa.literal(unit, sa.Integer())), sa.Integer())
        if isinstance(kind, sa.Integer) or (
            isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float)
        ):
            return col
        if isinstance(kind, sa.Float):
            return sa.func.round(sa.cast(col, sa.Numeric()), self.scales[name])
        return sa.cast(col, sa.Numeric())

    def decimal(self, name: str, value: Any) -> Decimal:
        if value is None:
            value = 0
        if self.sqlite and not isinstance(self.sums[name].type, sa.Integer):
            return Decimal(int(value)).scaleb(-self.scales[name])
        return Decimal(value) if not isinstance(value, Decimal) else value

    def when(self, value: Any) -> datetime | date | None:
        """A date column's value for display: a timestamp in the store's zone."""
        if isinstance(value, datetime):
            stamp: datetime = value
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=self.naive_zone)
            return stamp.astimezone(self.business)
        if isinstance(value, date):
            day: date = value
            return day
        if isinstance(value, str):
            try:
                return self.when(datetime.fromisoformat(value))
            except ValueError:
                return None
        return None

    def shown(self, value: Any) -> Any:
        """A value as staff read it: timestamps in the store's zone."""
        if isinstance(value, datetime):
            return self.when(value)
        return value

    def canon(self, column: Column, value: Any) -> Any:
        value = column.translate(value)
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=self.naive_zone)
        return canon_value(column.kind, value)


def _text_bounds(kind: sa.types.TypeEngine[Any], day: Day, naive: tzinfo) -> tuple[str, str]:
    """The day as ISO text bounds for SQLite: dates alone when the day starts at midnight
    there (every form of a timestamp of that day then sorts between them)."""
    lo = day.start.astimezone(naive).replace(tzinfo=None)
    hi = day.end.astimezone(naive).replace(tzinfo=None)
    if isinstance(kind, sa.Date) and not isinstance(kind, sa.DateTime):
        return day.day.isoformat(), (day.day + timedelta(1)).isoformat()
    if lo.time() == time(0) and hi.time() == time(0):
        return lo.date().isoformat(), hi.date().isoformat()
    return lo.isoformat(sep=" "), hi.isoformat(sep=" ")


# --- building both sides from a job's plans ------------------------------------------------------
def target_column(plan: TablePlan, source: str) -> tuple[str, Translate] | None:
    """The target column that receives source column `source`, and the value map on the way."""
    for tcol, spec in plan.mapping.columns.items():
        if tcol not in plan.columns:
            continue
        if isinstance(spec, FromColumn) and spec.from_ == source:
            return tcol, _mapper(spec)
        if isinstance(spec, str) and not VAR_RE.match(spec) and spec == source:
            return tcol, _same
    if (
        plan.mapping.copy_other_columns
        and source in plan.columns
        and source not in plan.mapping.columns
    ):
        return source, _same
    return None


def _mapper(spec: FromColumn) -> Translate:
    if spec.map is None:
        return _same
    table, has_default, default = spec.map, spec.has_default, spec.default

    def translate(value: Any) -> Any:
        if value is not None and str(value) in table:
            return table[str(value)]
        return default if has_default else value

    return translate


class Sides:
    """Both sides of one table of a movement job (register -> server) for the closing."""

    def __init__(
        self,
        plan: TablePlan,
        date_plan: TablePlan,
        variables: dict[str, Any],
        register: Backend,
        server: Backend,
        zones: tuple[tzinfo, tzinfo, tzinfo],  # business, register naive, server naive
        where: str,
        scoped: bool,
    ) -> None:
        closing = plan.mapping.closing
        assert closing is not None and closing.date is not None
        self.plan, self.date_plan, self.closing = plan, date_plan, closing
        self.where_text = where
        self.problems: list[str] = []
        business, reg_zone, srv_zone = zones
        src, dst = plan.source, plan.target
        d_src, d_dst = date_plan.source, date_plan.target
        reg_from: sa.FromClause = src
        srv_from: sa.FromClause = dst
        if date_plan is not plan:
            reg_from = src.join(d_src, sa.and_(*self._on(src, d_src, date_plan.mapping.key)))
            srv_from = dst.join(d_dst, sa.and_(*self._on(dst, d_dst, date_plan.target_key)))
        key_names = plan.mapping.key
        srv_key = [self._target(plan, k, "key") for k in key_names]
        date_dst = self._target(date_plan, closing.date, "closing.date")
        reg_where, srv_where = self._where(date_plan, closing.where, variables)
        # The register's rows on the server: its constant key columns (store, register). With
        # `via`, those of the table that holds the date, so that the day's range and the
        # register narrow the same index (the join carries them to this table).
        scope = []
        part: list[sa.ColumnElement[Any]] = []
        part_values = []
        for name, from_key, const in zip(
            date_plan.target_key, date_plan.key_from_source, date_plan.key_constants, strict=True
        ):
            if from_key is None:
                scope.append(d_dst.c[name] == sa.literal(const, d_dst.c[name].type))
                part.append(d_dst.c[name])
                part_values.append(const)
        if not scope and scoped:
            self.problems.append(
                f"table {plan.label!r}: the server's rows of one register cannot be told "
                "apart (its target_key has no register variable such as {register_id}); "
                "add one to target_key to compare it per register"
            )
        compared_names = list(
            dict.fromkeys([*closing.sums, *([closing.by] if closing.by else []), *closing.show])
        )
        reg_cols: dict[str, Column] = {}
        srv_cols: dict[str, Column] = {}
        for name in compared_names:
            self._pair(plan, src, dst, name, reg_cols, srv_cols, "closing")
        # the date and `where` columns are the `via` table's: their names carry its label
        prefix = "" if date_plan is plan else f"{date_plan.label}."
        for name in dict.fromkeys([closing.date, *closing.where]):
            self._pair(date_plan, d_src, d_dst, name, reg_cols, srv_cols, "closing", prefix)
        date_name = prefix + closing.date
        scales = {}
        for name in closing.sums:
            src_col = self._source(src, name, "closing.sums")
            dst_col = srv_cols[name].expr if name in srv_cols else None
            scales[name] = (
                _scale(src_col.type if src_col is not None else None)
                or _scale(dst_col.type if dst_col is not None else None)
                or DEFAULT_SCALE
            )
        key_kinds = [kind_of(src.c[k].type) if k in src.c else "other" for k in key_names]
        srv_key_kinds = [kind_of(c.type) if c is not None else "other" for c in srv_key]
        ints = key_kinds and all(k == "int" for k in key_kinds + srv_key_kinds)
        if self.problems:
            raise CheckError("\n".join(f"{where}: {p}" for p in dict.fromkeys(self.problems)))
        by = closing.by
        self.register = SideSpec(
            backend=register,
            naive_zone=reg_zone,
            business=business,
            source=reg_from,
            key=[src.c[k] for k in key_names],
            key_kinds=srv_key_kinds,
            date_col=src_col_of(d_src, closing.date),
            scope=list(dict.fromkeys([*plan.filters, *date_plan.filters])),
            where=reg_where,
            sums={n: src.c[n] for n in closing.sums},
            scales=scales,
            by=reg_cols[by] if by else None,
            compared=reg_cols,
            date_name=date_name,
            keysum=bool(ints),
        )
        self.server = SideSpec(
            backend=server,
            naive_zone=srv_zone,
            business=business,
            source=srv_from,
            key=[c for c in srv_key if c is not None],
            key_kinds=srv_key_kinds,
            date_col=date_dst if date_dst is not None else sa.null(),
            scope=scope,
            where=srv_where,
            sums={n: srv_cols[n].expr for n in closing.sums},
            scales=scales,
            by=srv_cols[by] if by else None,
            compared=srv_cols,
            date_name=date_name,
            keysum=bool(ints),
            part=part,
            part_values=tuple(part_values),
        )

    def _on(self, child: sa.Table, parent: sa.Table, columns: Sequence[str]) -> list[Any]:
        out = []
        for name in columns:
            if name not in child.c or name not in parent.c:
                self.problems.append(
                    f"closing.via: table {child.name!r} has no column {name!r} to join "
                    f"{parent.name!r} on (its key); via needs the key columns of the other table"
                )
                continue
            out.append(child.c[name] == parent.c[name])
        return out or [sa.false()]

    def _source(self, table: sa.Table, name: str, role: str) -> sa.Column[Any] | None:
        if name not in table.c:
            self.problems.append(f"{role}: {name!r} is not a column of source table {table.name!r}")
            return None
        return table.c[name]

    def _target(self, plan: TablePlan, name: str, role: str) -> sa.Column[Any] | None:
        found = target_column(plan, name)
        if found is None:
            self.problems.append(
                f"{role}: source column {name!r} of {plan.source.name!r} is not copied to the "
                f"target table {plan.target.name!r}, so the server cannot be compared"
            )
            return None
        return plan.target.c[found[0]]

    def _pair(
        self,
        plan: TablePlan,
        src: sa.Table,
        dst: sa.Table,
        name: str,
        reg: dict[str, Column],
        srv: dict[str, Column],
        role: str,
        prefix: str | None = None,
    ) -> None:
        source = self._source(src, name, role)
        found = target_column(plan, name)
        if found is None:
            self._target(plan, name, role)
            return
        if source is None:
            return
        target = dst.c[found[0]]
        kind = kind_of(target.type)
        if prefix is not None and kind not in ("datetime", "date"):
            kind = kind_of(source.type)
        reg[(prefix or "") + name] = Column(source, kind, found[1])
        srv[(prefix or "") + name] = Column(target, kind)

    def _where(
        self, plan: TablePlan, where: dict[str, Scalar | list[Scalar]], variables: dict[str, Any]
    ) -> tuple[list[sa.ColumnElement[bool]], list[sa.ColumnElement[bool]]]:
        reg: list[sa.ColumnElement[bool]] = []
        srv: list[sa.ColumnElement[bool]] = []
        for name, raw in where.items():
            source = self._source(plan.source, name, "closing.where")
            found = target_column(plan, name)
            if found is None:
                self._target(plan, name, "closing.where")
            if source is None or found is None:
                continue
            target, translate = plan.target.c[found[0]], found[1]
            values = raw if isinstance(raw, list) else [raw]
            resolved = [_resolve(v, variables) for v in values]
            reg.append(_match(source, resolved, isinstance(raw, list)))
            srv.append(_match(target, [translate(v) for v in resolved], isinstance(raw, list)))
        return reg, srv


def src_col_of(table: sa.Table, name: str) -> sa.ColumnElement[Any]:
    return table.c[name] if name in table.c else sa.null()


def _resolve(value: Scalar, variables: dict[str, Any]) -> Any:
    if isinstance(value, str):
        m = VAR_RE.match(value)
        if m and m.group(1) in variables:
            return variables[m.group(1)]
    return value


def _match(col: sa.ColumnElement[Any], values: list[Any], many: bool) -> sa.ColumnElement[bool]:
    if not many:
        return col.is_(None) if values[0] is None else col == values[0]
    return col.in_([v for v in values if v is not None])


def _scale(kind: sa.types.TypeEngine[Any] | None) -> int | None:
    if isinstance(kind, sa.Integer):
        return 0
    if isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float):
        return kind.scale
    return None
