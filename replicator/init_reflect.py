"""`replicator init`, step 1: what the two databases hold (SQLAlchemy's inspector), and which
register table is which server table.

Only the default schema of a PostgreSQL database is read; the replicator's own control tables
(schema `replicator`, or the `replicator_` prefix on SQLite) and tracking columns are left out.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from replicator.backends.base import ORIGIN_COLUMN
from replicator.mapping import DEFAULT_CHANGE_COLUMN

TRACKING = {DEFAULT_CHANGE_COLUMN, ORIGIN_COLUMN}
CONTROL_PREFIX = "replicator_"

# Columns that look like an application's own change stamp (updated_at, DT_ALTERACAO,
# rowversion...). The replicator does not track by them yet: they are named in a comment.
CHANGE_HINT = re.compile(
    r"(updated|modified|changed|last_?mod|alterac|alterad|atualiz|dt_?alt|dh_?alt|"
    r"rowversion|row_?version|versao)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: sa.types.TypeEngine[Any]
    nullable: bool
    has_default: bool
    autoincrement: bool

    @property
    def required(self) -> bool:
        """NOT NULL without a default: a target column that must receive a value."""
        return not self.nullable and not self.has_default and not self.autoincrement

    @property
    def known_type(self) -> bool:
        return not isinstance(self.type, sa.types.NullType)


@dataclass(frozen=True)
class ForeignKeyInfo:
    columns: tuple[str, ...]
    table: str
    referred: tuple[str, ...]


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: tuple[ColumnInfo, ...]
    primary_key: tuple[str, ...]
    uniques: tuple[tuple[str, ...], ...]  # unique constraints and unique indexes
    foreign_keys: tuple[ForeignKeyInfo, ...]

    def column(self, name: str) -> ColumnInfo | None:
        """A column by name, in any letter case (SQLite and PostgreSQL spell them apart)."""
        for col in self.columns:
            if col.name == name:
                return col
        lowered = name.lower()
        return next((c for c in self.columns if c.name.lower() == lowered), None)

    @property
    def lower_names(self) -> set[str]:
        return {c.name.lower() for c in self.columns}

    def is_unique(self, columns: list[str]) -> bool:
        wanted = sorted(c.lower() for c in columns)
        sets = [self.primary_key, *self.uniques]
        return any(sorted(c.lower() for c in s) == wanted for s in sets if s)

    def best_key(self) -> tuple[tuple[str, ...], str | None]:
        """The key to replicate by and, when it is not the primary key, why it was chosen."""
        if self.primary_key:
            return self.primary_key, None
        for unique in self.uniques:
            cols = [self.column(c) for c in unique]
            if all(c is not None and not c.nullable for c in cols):
                return unique, f"no primary key; the unique columns {list(unique)} are used"
        for unique in self.uniques:
            return unique, (
                f"no primary key; the unique columns {list(unique)} are used, but they allow "
                "NULL, and rows with NULL there cannot be told apart"
            )
        return (), None

    def change_hints(self) -> list[str]:
        return [c.name for c in self.columns if CHANGE_HINT.search(c.name)]


@dataclass
class Schema:
    dialect: str
    tables: dict[str, TableInfo] = field(default_factory=dict)


def reflect(conn: sa.Connection, patterns: list[str]) -> Schema:
    """Every table of the default schema (those matching one of `patterns`, when given)."""
    insp = sa.inspect(conn)
    schema = Schema(conn.dialect.name)
    with warnings.catch_warnings():
        # a type SQLAlchemy does not know (PostgreSQL `point`, a domain...) is reflected as
        # NullType with a warning; init reports such columns itself
        warnings.simplefilter("ignore", sa_exc.SAWarning)
        for name in sorted(insp.get_table_names()):
            if name.lower().startswith(CONTROL_PREFIX) or not _wanted(name, patterns):
                continue
            schema.tables[name] = _table(insp, name)
    return schema


def _wanted(name: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatch(name.lower(), p.lower()) for p in patterns)


def _table(insp: sa.Inspector, name: str) -> TableInfo:
    columns = tuple(
        ColumnInfo(
            name=c["name"],
            type=c["type"],
            nullable=bool(c.get("nullable", True)),
            has_default=c.get("default") is not None,
            autoincrement=c.get("autoincrement") is True,
        )
        for c in insp.get_columns(name)
        if c["name"] not in TRACKING
    )
    pk = tuple(insp.get_pk_constraint(name).get("constrained_columns") or ())
    uniques = [tuple(u["column_names"]) for u in insp.get_unique_constraints(name)]
    uniques += [
        tuple(c for c in i["column_names"] if c)
        for i in insp.get_indexes(name)
        if i.get("unique") and all(i["column_names"])
    ]
    fks = tuple(
        ForeignKeyInfo(
            tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"])
        )
        for f in insp.get_foreign_keys(name)
        if f.get("referred_table")
    )
    return TableInfo(name, columns, pk, tuple(dict.fromkeys(uniques)), fks)


@dataclass(frozen=True)
class Match:
    register: TableInfo
    server: TableInfo
    by_columns: float | None  # None: matched by name; else the share of common columns


def match_tables(
    register: Schema, server: Schema
) -> tuple[list[Match], list[TableInfo], list[TableInfo]]:
    """Pairs of (register table, server table): by name in any letter case, then by their
    columns (at least 60 % in common, the register's key among them). Also the tables of
    each side that match nothing."""
    matches: list[Match] = []
    by_lower = {name.lower(): t for name, t in server.tables.items()}
    left: list[TableInfo] = []
    taken: set[str] = set()
    for name, table in register.tables.items():
        other = by_lower.get(name.lower())
        if other is not None and other.name not in taken:
            matches.append(Match(table, other, None))
            taken.add(other.name)
        else:
            left.append(table)
    unmatched_register: list[TableInfo] = []
    for table in left:
        best: tuple[float, TableInfo] | None = None
        for other in server.tables.values():
            if other.name in taken:
                continue
            score = _similarity(table, other)
            if score >= 0.6 and (best is None or score > best[0]):
                best = (score, other)
        if best is None:
            unmatched_register.append(table)
        else:
            matches.append(Match(table, best[1], round(best[0], 2)))
            taken.add(best[1].name)
    unmatched_server = [t for n, t in server.tables.items() if n not in taken]
    return matches, unmatched_register, unmatched_server


def _similarity(a: TableInfo, b: TableInfo) -> float:
    names_a, names_b = a.lower_names, b.lower_names
    if not names_a or not {k.lower() for k in a.primary_key} <= names_b:
        return 0.0
    return len(names_a & names_b) / len(names_a | names_b)
