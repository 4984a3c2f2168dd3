"""Compile a table mapping against the live catalogs into a plan: what to select, where to write.

The transform runs inside the source SELECT (renames, constants, node variables and value maps
become SQL expressions with bound values), so rows need no per-row Python work on the way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from replicator.backends.base import ORIGIN_COLUMN, Conflict, Row
from replicator.codec import Codec
from replicator.errors import ConfigError
from replicator.mapping import VAR_RE, Const, FromColumn, SoftDelete, TableMapping


@dataclass(frozen=True)
class TablePlan:
    mapping: TableMapping
    source: sa.Table
    target: sa.Table
    columns: list[str]  # target columns, in row order
    select: list[sa.ColumnElement[Any]]  # one source expression per target column
    filters: list[sa.ColumnElement[bool]]
    target_key: list[str]
    key_from_source: list[int | None]  # per target key column: index in the source key
    key_constants: list[Any]  # per target key column: value when not from the key
    conflict: Conflict
    soft_delete: str | None
    deletes: bool

    @property
    def label(self) -> str:
        return self.mapping.label

    @property
    def version(self) -> sa.Column[Any]:
        return self.source.c[self.mapping.change_column]

    @property
    def source_key(self) -> list[sa.Column[Any]]:
        return [self.source.c[k] for k in self.mapping.key]

    @cached_property
    def source_codec(self) -> Codec:
        """Canonical form of the source key (positions, tombstones, retries)."""
        return Codec.of(self.source_key)

    @cached_property
    def target_codec(self) -> Codec:
        """Canonical form of the target key (quarantine, fence)."""
        return Codec.of([self.target.c[k] for k in self.target_key])

    @cached_property
    def row_codec(self) -> Codec:
        """Canonical form of a whole mapped row, typed by the target's columns."""
        return Codec.of([self.target.c[c] for c in self.columns])

    @cached_property
    def key_index(self) -> list[int]:
        return [self.columns.index(k) for k in self.target_key]

    @property
    def keyed_select(self) -> list[sa.ColumnElement[Any]]:
        """The mapped columns, then the source key (rows carry their own position)."""
        return [
            *self.select,
            *[c.label(f"repl_key_{i}") for i, c in enumerate(self.source_key)],
        ]

    @property
    def width(self) -> int:
        return len(self.columns)

    def target_key_text(self, row: Row) -> str:
        return self.target_codec.text([row[i] for i in self.key_index])

    def expression(self, column: str) -> sa.ColumnElement[Any]:
        """The source-side expression that yields a target column."""
        label = self.select[self.columns.index(column)]
        return label.element if isinstance(label, sa.Label) else label

    def key_of(self, row: Row) -> Row:
        return tuple(row[self.columns.index(k)] for k in self.target_key)

    def target_key_from_tombstone(self, source_key: Row) -> Row:
        return tuple(
            source_key[i] if i is not None else const
            for i, const in zip(self.key_from_source, self.key_constants, strict=True)
        )


def _flag_as_number(expr: sa.ColumnElement[Any], target: sa.Column[Any]) -> Any:
    """A boolean source into an integer target column (SMALLINT 0/1 flags) is read as 1/0, in
    the source's SQL: its text ('t'/'f' from PostgreSQL) or a Python bool would not parse as a
    number in every target. MariaDB's BOOLEAN (TINYINT(1)) takes booleans as they are."""
    kind = target.type
    flag_column = type(kind).__name__ == "TINYINT" and getattr(kind, "display_width", 0) == 1
    if isinstance(expr.type, sa.Boolean) and (
        isinstance(kind, sa.Integer) and not isinstance(kind, sa.Boolean) and not flag_column
    ):
        return sa.case((expr == sa.true(), 1), (expr == sa.false(), 0), else_=sa.null())
    return expr


def build_plan(
    mapping: TableMapping,
    source: sa.Table,
    target: sa.Table,
    variables: dict[str, Any],
    where: str,
) -> TablePlan:
    """Resolve a mapping against reflected tables; errors name the group file and fix."""
    problems: list[str] = []

    def src_col(name: str, role: str) -> sa.Column[Any] | None:
        if name not in source.c:
            problems.append(f"{role} {name!r} is not a column of source table {source.name!r}")
            return None
        return source.c[name]

    def value(raw: Any) -> Any:
        if isinstance(raw, str):
            m = VAR_RE.match(raw)
            if m:
                if m.group(1) not in variables:
                    problems.append(f"node variable {{{m.group(1)}}} is not set")
                    return None
                return variables[m.group(1)]
        return raw

    tracking = {mapping.change_column, ORIGIN_COLUMN}
    for col in tracking:
        if col not in source.c:
            problems.append(
                f"source table {source.name!r} has no column {col!r}: change tracking is not "
                "installed; run `replicator setup`"
            )
    columns: list[str] = []
    select: list[sa.ColumnElement[Any]] = []
    used_sources: set[str] = set()
    key_from_source: list[int | None] = []
    key_constants: list[Any] = []
    for tcol, spec in mapping.columns.items():
        if tcol not in target.c:
            problems.append(f"columns.{tcol}: no column {tcol!r} in target table {target.name!r}")
            continue
        expr = _expression(spec, src_col, value, target.c[tcol])
        if expr is None:
            continue
        columns.append(tcol)
        select.append(_flag_as_number(expr, target.c[tcol]).label(tcol))
        if isinstance(spec, FromColumn):
            used_sources.add(spec.from_)
        elif isinstance(spec, str) and not VAR_RE.match(spec):
            used_sources.add(spec)
    if mapping.copy_other_columns:
        for column in source.c:
            name = column.name
            if (
                name in tracking
                or name in mapping.exclude
                or name in used_sources
                or name in columns
                or name not in target.c
            ):
                continue
            columns.append(name)
            select.append(_flag_as_number(column, target.c[name]).label(name))
    for name in mapping.exclude:
        src_col(name, "exclude:")
    target_key = mapping.resolved_target_key()
    for tcol in target_key:
        if tcol not in columns:
            problems.append(f"target key column {tcol!r} is not mapped; add it to columns")
            continue
        spec = mapping.columns.get(tcol, tcol)
        source_name = spec.from_ if isinstance(spec, FromColumn) else spec
        if isinstance(source_name, str) and source_name in mapping.key:
            key_from_source.append(mapping.key.index(source_name))
            key_constants.append(None)
        else:
            key_from_source.append(None)
            key_constants.append(value(spec.const if isinstance(spec, Const) else spec))
    for k in mapping.key:
        src_col(k, "key column")
    filters: list[sa.ColumnElement[bool]] = []
    for name, raw in mapping.where.items():
        where_col = src_col(name, "where:")
        if where_col is None:
            continue
        if isinstance(raw, list):
            filters.append(where_col.in_([value(v) for v in raw]))
        else:
            v = value(raw)
            filters.append(where_col.is_(None) if v is None else where_col == v)
    conflict = Conflict("source_wins")
    if mapping.conflict == "keep_target":
        conflict = Conflict("keep_target")
    elif not isinstance(mapping.conflict, str):
        name = mapping.conflict.newer_wins
        if name not in columns:
            problems.append(f"conflict.newer_wins: {name!r} is not a replicated column")
        conflict = Conflict("newer_wins", name)
    soft = mapping.deletes.soft if isinstance(mapping.deletes, SoftDelete) else None
    if soft and soft not in target.c:
        problems.append(f"deletes.soft: no column {soft!r} in target table {target.name!r}")
    if soft and soft in target.c and soft not in columns:
        columns.append(soft)  # a row that comes back is no longer marked deleted
        select.append(sa.false().label(soft))
    if problems:
        raise ConfigError("\n".join(f"{where}: table {mapping.label!r}: {p}" for p in problems))
    return TablePlan(
        mapping=mapping,
        source=source,
        target=target,
        columns=columns,
        select=select,
        filters=filters,
        target_key=target_key,
        key_from_source=key_from_source,
        key_constants=key_constants,
        conflict=conflict,
        soft_delete=soft,
        deletes=mapping.deletes != "ignore",
    )


def _expression(spec: Any, src_col: Any, value: Any, target_col: sa.Column[Any]) -> Any:
    if isinstance(spec, Const):
        return _literal(spec.const)
    if isinstance(spec, FromColumn):
        col = src_col(spec.from_, "from:")
        if col is None or spec.map is None:
            return col
        whens = {_key_as(col, k): _literal(v) for k, v in spec.map.items()}
        other = _literal(spec.default) if spec.has_default else col
        return sa.case(whens, value=col, else_=other)
    if isinstance(spec, str) and not VAR_RE.match(spec):
        return src_col(spec, "columns:")
    return _literal(value(spec))


def _literal(v: Any) -> Any:
    return sa.null() if v is None else sa.literal(v)


def _key_as(col: sa.Column[Any], key: str) -> Any:
    """Map keys are text in YAML; compare them as the column's type."""
    try:
        kind = col.type.python_type
    except NotImplementedError:
        return key
    if kind is int:
        try:
            return int(key)
        except ValueError:
            return key
    return key


def decode_key(text: str) -> Row:
    return tuple(json.loads(text))
