"""Firebird's SQL for the backend (replicator/backends/firebird.py): what the dialect lacks
(row values, an upsert construct, typed parameters in select lists), fixes of
sqlalchemy-firebird, and isql scripts (SET TERM) read from sql/firebird/ and printed for a DBA.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

import sqlalchemy as sa
from loguru import logger
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, reflection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import elements, operators
from sqlalchemy_firebird.base import FBCompiler, FBDialect
from sqlalchemy_firebird.firebird import FBDialect_firebird
from sqlalchemy_firebird.types import FBBLOB

from replicator.values import local, zone


@reflection.cache
def _table_comment(
    self: FBDialect, connection: Connection, table_name: str, schema: str | None = None, **kw: Any
) -> dict[str, Any]:
    """sqlalchemy-firebird's own leaves its cursor open (a ResourceWarning per reflected
    table): the same query, with the result closed."""
    row = connection.exec_driver_sql(
        "SELECT TRIM(RDB$DESCRIPTION) FROM RDB$RELATIONS WHERE RDB$RELATION_NAME = ?",
        (self.denormalize_name(table_name),),
    ).first()
    if row is None:
        raise sa_exc.NoSuchTableError(table_name)
    return {"text": row[0]}


FBDialect.get_table_comment = _table_comment


def _blob_bind_processor(self: FBBLOB, dialect: Any) -> Callable[[Any], Any]:
    """sqlalchemy-firebird's turns NULL into bytes(None) (TypeError): NULL stays NULL."""

    def process(value: Any) -> Any:
        return None if value is None else bytes(value)

    return process


FBBLOB.bind_processor = _blob_bind_processor


def _close(self: FBDialect_firebird, dbapi_connection: Any) -> None:
    """sqlalchemy-firebird's `do_terminate` calls `terminate()`, which firebird-driver's
    connections do not have, and a detach of an attachment already gone (link lost, attachment
    ended, server restarted) raises: the pool logged an ERROR with a traceback for every
    connection it dropped after a network blip. Closed here; one already gone has nothing to
    close."""
    from firebird.driver import DatabaseError

    try:
        dbapi_connection.close()
    except DatabaseError as exc:
        logger.debug("closing a Firebird connection: {}", str(exc).splitlines()[0])


FBDialect_firebird.do_terminate = _close
FBDialect_firebird.do_close = _close


class FirebirdCompiler(FBCompiler):  # type: ignore[misc]
    """Firebird has no row values: `(a, b) > (x, y)` and `(a, b) IN ((x, y), ...)` are
    written out as ANDs and ORs; a parameter in a select list gets a CAST (Firebird must know
    its type). Statements of this backend are not cached (the engine's query cache is off), as
    the IN lists are written out with their values."""

    def visit_binary(self, binary: Any, override_operator: Any = None, **kw: Any) -> str:
        left = binary.left
        if isinstance(left, elements.Grouping):
            left = left.element
        if isinstance(left, elements.Tuple):
            expanded = _expand_tuple(list(left.clauses), binary.operator, binary.right)
            if expanded is not None:
                return str(self.process(expanded.self_group(), **kw))
        return str(super().visit_binary(binary, override_operator=override_operator, **kw))

    def visit_bindparam(
        self, bindparam: Any, within_columns_clause: bool = False, **kw: Any
    ) -> str:
        text = str(super().visit_bindparam(bindparam, within_columns_clause=False, **kw))
        if within_columns_clause and not kw.get("literal_binds") and text == "?":
            kind = bindparam.type
            if isinstance(kind, sa.types.NullType):
                kind = sa.String(255)
            return f"CAST(? AS {self.dialect.type_compiler_instance.process(kind)})"
        return text


def _expand_tuple(cols: list[Any], op: Any, right: Any) -> Any:
    if op in (operators.in_op, operators.not_in_op) and isinstance(right, elements.BindParameter):
        values = [tuple(v) for v in (right.value or [])]
        if len(cols) == 1:
            only = cols[0].in_([v[0] for v in values])
            return only if op is operators.in_op else sa.not_(only)
        if not values:
            cond: Any = sa.false()
        else:
            cond = sa.or_(
                *[
                    sa.and_(*[c == sa.literal(v, c.type) for c, v in zip(cols, row, strict=True)])
                    for row in values
                ]
            )
        return cond if op is operators.in_op else sa.not_(cond)
    if isinstance(right, elements.Grouping):
        right = right.element
    if not isinstance(right, elements.Tuple):
        return None
    others = list(right.clauses)
    if op is operators.eq:
        return sa.and_(*[a == b for a, b in zip(cols, others, strict=True)])
    if op is operators.ne:
        return sa.or_(*[a != b for a, b in zip(cols, others, strict=True)])
    if op in (operators.gt, operators.ge, operators.lt, operators.le):
        strict = operators.gt if op in (operators.gt, operators.ge) else operators.lt
        last = op
        out: Any = None
        for a, b in reversed(list(zip(cols, others, strict=True))):
            here = last(a, b) if out is None else sa.or_(strict(a, b), sa.and_(a == b, out))
            out = here
        return out
    return None


class FBUpsert(sa.sql.expression.Insert):
    """INSERT .. ON CONFLICT for Firebird, written as MERGE: `on_conflict_do_nothing` and
    `on_conflict_do_update(index_elements, set_, where)` like PostgreSQL's construct, so the
    shared code (upserts, acknowledgements, fences, leases) builds one statement for all."""

    inherit_cache = False
    _conflict: tuple[str, list[str] | None, dict[str, Any] | None, Any] | None = None

    @property
    def excluded(self) -> Any:
        return sa.table("repl_src", *[sa.column(c.name, c.type) for c in self.table.c]).c

    def on_conflict_do_nothing(self, index_elements: Sequence[str] | None = None) -> FBUpsert:
        new = self._clone()
        new._conflict = ("nothing", list(index_elements) if index_elements else None, None, None)
        return new

    def on_conflict_do_update(
        self,
        index_elements: Sequence[str] | None = None,
        set_: dict[str, Any] | None = None,
        where: Any = None,
    ) -> FBUpsert:
        new = self._clone()
        new._conflict = ("update", list(index_elements) if index_elements else None, set_, where)
        return new


@compiles(FBUpsert)  # only this backend builds it (its dialect is named "firebird.firebird")
def _compile_upsert(stmt: FBUpsert, compiler: Any, **kw: Any) -> str:
    table: Any = stmt.table
    prep = compiler.preparer
    types = compiler.dialect.type_compiler_instance
    given: dict[str, Any] = {str(getattr(k, "key", k)): v for k, v in (stmt._values or {}).items()}
    names: list[str] = (
        list(given) if given else list(compiler.column_keys or [c.name for c in table.c])
    )
    kind, index, set_, where = stmt._conflict or ("insert", None, None, None)
    key = index or [c.name for c in table.primary_key.columns]
    parts = []
    for name in names:
        col = table.c[name]
        value = given.get(name)
        if value is None:
            value = sa.bindparam(name, type_=col.type)
        elif not isinstance(value, elements.ClauseElement):
            value = sa.literal(value, col.type)
        bound = compiler.process(value, **{**kw, "within_columns_clause": False})
        parts.append(f"CAST({bound} AS {types.process(col.type)}) AS {prep.quote(name)}")
    target = prep.format_table(table)
    src = "repl_src"
    on = " AND ".join(f"{target}.{prep.quote(k)} = {src}.{prep.quote(k)}" for k in key)
    text = (
        f"MERGE INTO {target} USING (SELECT {', '.join(parts)} FROM RDB$DATABASE) {src} ON ({on})"
    )
    if kind == "update" and set_:
        sets = []
        for name, value in set_.items():
            name = getattr(name, "key", name)
            expr = value if isinstance(value, elements.ClauseElement) else sa.literal(value)
            sets.append(f"{prep.quote(name)} = {compiler.process(expr, **kw)}")
        cond = f" AND ({compiler.process(where, **kw)})" if where is not None else ""
        text += f" WHEN MATCHED{cond} THEN UPDATE SET {', '.join(sets)}"
    columns = ", ".join(prep.quote(n) for n in names)
    values = ", ".join(f"{src}.{prep.quote(n)}" for n in names)
    return text + f" WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({values})"


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Control tables' aware timestamps on Firebird 3 (TIMESTAMP has no zone): stored as
    naive UTC, read back aware."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            return local(value, zone(None))
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=zone(None))
        return value


SCRIPT_HEADER = """\
-- An isql script (isql-fb -i this.sql host:/path/db.fdb). Run it as SYSDBA or the database
-- owner: it creates a database trigger (ON TRANSACTION COMMIT) and grants the tracking
-- triggers what they write. The replicator's own user then needs, if it is not the owner:
--   GRANT SELECT, INSERT, UPDATE, DELETE ON <each mapped table> TO USER <replicator>;
--   GRANT ALL ON REPLICATOR_INFLIGHT TO USER <replicator>; (and on each replicator_* table)
--   GRANT USAGE ON SEQUENCE REPLICATOR_VERSION TO USER <replicator>;
-- and, to tell ended transactions by MON$TRANSACTIONS rather than by the oldest active one,
-- the RDB$ADMIN role (GRANT RDB$ADMIN TO <replicator>; connect with role RDB$ADMIN)."""


# Control characters a key may hold that JSON must escape (the others below 0x20 as \u00XX).
_JSON_CONTROLS = [(9, "\\t"), (10, "\\n"), (13, "\\r")] + [
    (c, f"\\u{c:04x}") for c in range(1, 32) if c not in (9, 10, 13)
]


def json_text(expr: str) -> str:
    """A JSON string (or null) of a column's value, in SQL: its text with `\\`, `"` and
    control characters (tab, newline...) escaped."""
    text = f"CAST({expr} AS VARCHAR(8000))"
    escaped = f"REPLACE(REPLACE({text}, '\\', '\\\\'), '\"', '\\\"')"
    for code, escape in _JSON_CONTROLS:
        escaped = f"REPLACE({escaped}, ASCII_CHAR({code}), '{escape}')"
    return f"COALESCE('\"' || {escaped} || '\"', 'null')"


def guard(catalog: str, column: str, name: str, ddl: str) -> str:
    """DDL run only when the object does not exist (Firebird 3 has no IF NOT EXISTS)."""
    upper = name.upper() if name == name.lower() else name
    literal = upper.replace("'", "''")
    body = ddl.replace("'", "''")
    return (
        "EXECUTE BLOCK AS\nBEGIN\n"
        f"    IF (NOT EXISTS (SELECT 1 FROM {catalog} WHERE {column} = '{literal}')) THEN\n"
        f"        EXECUTE STATEMENT '{body}';\nEND"
    )


def is_psql(text: str) -> bool:
    head = text.lstrip().upper()
    return head.startswith(("EXECUTE BLOCK", "CREATE OR ALTER TRIGGER", "CREATE TRIGGER")) or (
        head.startswith(("CREATE OR ALTER PROCEDURE", "CREATE PROCEDURE"))
    )


def template(name: str) -> str:
    return resources.files("replicator.sql").joinpath("firebird", name).read_text("utf-8")


def is_ddl(statement: str) -> bool:
    """Whether a statement changes metadata (Firebird uses it only once committed)."""
    return _DDL.match(statement) is not None


_DDL = re.compile(
    r"\s*(CREATE|ALTER|DROP|RECREATE|GRANT|REVOKE|COMMENT|EXECUTE\s+BLOCK)\b", re.IGNORECASE
)
_SET_TERM = re.compile(r"^\s*SET\s+TERM\s+(\S+)\s+(\S+)\s*$", re.IGNORECASE)


def split_script(script: str) -> list[str]:
    """The statements of an isql script, split by its terminators (SET TERM), without them;
    comment lines dropped."""
    out: list[str] = []
    term = ";"
    current: list[str] = []
    for line in script.splitlines():
        match = _SET_TERM.match(line)
        if match and match.group(2) == term:
            term = match.group(1)
            continue
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current.append(line)
        if line.rstrip().endswith(term):
            text = "\n".join(current).rstrip()
            out.append(text[: -len(term)].rstrip())
            current = []
    if "\n".join(current).strip():
        out.append("\n".join(current).strip())
    return out


__all__ = [
    "SCRIPT_HEADER",
    "FBUpsert",
    "FirebirdCompiler",
    "UTCDateTime",
    "guard",
    "is_ddl",
    "is_psql",
    "json_text",
    "split_script",
    "template",
]
