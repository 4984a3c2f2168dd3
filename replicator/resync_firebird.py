"""The canonical row text of `resync_hash`, built in Firebird's SQL: one VARCHAR per row,
which the replicator hashes with MD5 (Firebird 3 has none). Fetching one text instead of the
typed values halves the driver's work (firebird-driver unpacks each value in Python), and
Python then only hashes it.

- numbers: `CAST(x AS VARCHAR(40))` of a NUMERIC at the target column's scale (Firebird writes
  exactly its scale: `0.50`, `-12.35`); a smaller scale or an INTEGER is first cast to
  `NUMERIC(18, s)` (exact: only zeros are added); without a target scale, the trailing zeros
  and the point trimmed;
- timestamps and times: their text (`2024-01-01 10:00:00.1234`, 1/10000 s) with the trailing
  zeros of the fraction and the point trimmed; dates as they are;
- booleans `1`/`0`; texts as they are, their length by `CHAR_LENGTH` (characters).

`firebird_row_text` answers None when some column is not built here alike: a float, a scale
that would round, a naive timestamp into an instant with a register zone other than UTC
(Firebird 3 has no time zones), BLOBs, texts of unknown or too wide a length (a VARCHAR holds
32,765 bytes). The side then streams the typed values and hashes them in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.functions import FunctionElement

from replicator.resync_hash import PLAIN, FieldSpec

ROW_CHARS = 8000  # the widest row text (UTF8: 4 bytes a character in 32,765 bytes)


class _TrimFraction(FunctionElement[str]):
    """`10:00:00.5000` -> `10:00:00.5`, `10:00:00.0000` -> `10:00:00` (also for numbers)."""

    inherit_cache = True
    type = sa.String()
    name = "trim"


@compiles(_TrimFraction)
def _compile_trim(element: _TrimFraction, compiler: Any, **kw: Any) -> str:
    inner = compiler.process(element.clauses, **kw)
    return f"TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM {inner}))"


def _lit(text: str) -> Any:
    return sa.literal_column("'" + text.replace("'", "''") + "'", sa.String(len(text)))


def _varchar(expr: Any, n: int) -> Any:
    return sa.cast(expr, sa.String(n))


def _sized(expr: Any) -> tuple[Any, int] | None:
    """A text expression with its text parameters as VARCHARs (a text parameter is a BLOB in
    Firebird's select lists), and its widest length; None: not known."""
    widest = [0]
    unknown = [False]

    def replace(element: Any) -> Any:
        if isinstance(element, BindParameter):
            value = element.value
            text = "" if value is None else str(value)
            widest[0] = max(widest[0], len(text))
            if isinstance(element.type, sa.String):
                return sa.bindparam(None, value, type_=sa.String(max(1, len(text))))
            return None
        kind = getattr(element, "type", None)
        if isinstance(element, sa.ColumnClause) and isinstance(kind, sa.String):
            if not kind.length:
                unknown[0] = True
            else:
                widest[0] = max(widest[0], int(kind.length))
        return None

    out: Any = visitors.replacement_traverse(expr, {}, replace)  # type: ignore[call-overload]
    if unknown[0]:
        return None
    return out, max(1, widest[0])


def _field(spec: FieldSpec, expr: Any, side_zone: str | None) -> tuple[Any, int] | None:
    """One field text in Firebird's SQL and its widest length, or None."""
    kind, etype = spec.kind, expr.type
    if isinstance(etype, sa.Boolean):
        if kind in ("int", "dec", "bool"):
            return sa.case((expr, _lit("1")), (sa.not_(expr), _lit("0"))), 1
        return None
    integer = isinstance(etype, sa.Integer) and not isinstance(etype, sa.BigInteger)
    numeric = isinstance(etype, sa.Numeric) and not isinstance(etype, sa.Float)
    scale = int(getattr(etype, "scale", None) or 0) if numeric else 0
    if kind in ("int", "dec"):
        if isinstance(etype, sa.BigInteger) and not spec.scale:
            return _varchar(expr, 21), 21
        if not (integer or numeric):
            return None
        if spec.scale is not None:
            if scale > spec.scale or spec.scale > 8:
                return None  # would round (Python's rounding is the judge's)
            if scale != spec.scale or integer:
                expr = sa.cast(expr, sa.Numeric(18, spec.scale))
            return _varchar(expr, 40), 40
        if integer or scale == 0:
            return _varchar(expr, 40), 40
        return _TrimFraction(_varchar(expr, 40)), 40
    if kind == "bool":
        if integer:
            return sa.case((expr != 0, _lit("1")), (expr == 0, _lit("0"))), 1
        return None
    if kind == "datetime" and isinstance(etype, sa.DateTime):
        if spec.aware and (side_zone or "UTC").upper() not in ("UTC", "ETC/UTC"):
            return None
        return _TrimFraction(_varchar(expr, 30)), 30
    if kind == "datetime" and isinstance(etype, sa.Date):
        if spec.aware and (side_zone or "UTC").upper() not in ("UTC", "ETC/UTC"):
            return None
        return _varchar(expr, 10) + _lit(" 00:00:00"), 19
    if kind == "date" and isinstance(etype, sa.Date | sa.DateTime):
        day = sa.cast(expr, sa.Date) if isinstance(etype, sa.DateTime) else expr
        return _varchar(day, 10), 10
    if kind == "time" and isinstance(etype, sa.Time):
        return _TrimFraction(_varchar(expr, 20)), 20
    if kind == "text" and isinstance(etype, sa.String):
        sized = _sized(expr)
        if sized is None:
            return None
        text, n = sized
        if not isinstance(expr, sa.ColumnClause):
            text = _varchar(text, n)
        return text, n
    return None


def firebird_row_text(
    specs: Sequence[FieldSpec], exprs: Sequence[Any], side_zone: str | None
) -> Any | None:
    """The row text Python builds (`row_hasher`), in Firebird's SQL; None: not built here."""
    parts: list[Any] = []
    total = 0
    for spec, expr in zip(specs, exprs, strict=True):
        if isinstance(expr, BindParameter) and isinstance(expr.type, sa.String):
            text = "" if expr.value is None else str(expr.value)
            expr = sa.bindparam(None, expr.value, type_=sa.String(max(1, len(text))))
        found = _field(spec, expr, side_zone)
        if found is None:
            return None
        field, n = found
        if parts:
            parts.append(_lit("|"))
        if spec.kind in PLAIN:
            parts.append(sa.func.coalesce(field, _lit("N")))
            total += n + 1
        else:
            piece = _varchar(sa.func.char_length(field), 11) + _lit(":") + field
            parts.append(sa.func.coalesce(piece, _lit("N")))
            total += n + 13
    if total > ROW_CHARS or not parts:
        return None
    row = parts[0]
    for part in parts[1:]:
        row = row + part
    return row
