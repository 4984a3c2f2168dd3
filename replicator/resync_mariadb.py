"""Row hashes for `replicator resync` inside MariaDB: the canonical field texts of
`resync_hash` built in MariaDB's SQL, and the portable `md5` row hash over them, so a bucket's
sum computed in MariaDB equals the one PostgreSQL (or SQLite's aggregate, or Python) computes
for the same mapped rows.

- numbers: `CAST(CAST(x AS DECIMAL(65, s)) AS CHAR)` for a target scale s (rounded half away
  from zero, as Python's ROUND_HALF_UP; MariaDB never writes a negative zero); without a scale
  the text with its trailing zeros (and point) trimmed;
- timestamps: `DATE_FORMAT(x, '%Y-%m-%d %H:%i:%s.%f')` with the trailing zeros of the
  microseconds (and the point) trimmed: PostgreSQL's ISO text. A naive MariaDB timestamp
  into a column with a time zone is local time of the database's `timezone`: only UTC is
  converted here (CONVERT_TZ with named zones needs the server's time zone tables, which
  are often not loaded): `fields` answers None otherwise and the side hashes in Python;
- text: `CONVERT(x USING utf8mb4)`, its length counted in characters (`CHAR_LENGTH`), so the
  bytes hashed are the UTF-8 of the stored text whatever the column's character set;
- booleans (MariaDB's BOOLEAN is a TINYINT(1)): `1` for any non-zero value, `0`; bytes:
  `\\x` and lower-case hex; uuids lower-case.

The row hash is the first 64 bits of `MD5()` of the row text (`CONCAT_WS('|', ...)` of the
pieces, NULL as `N`), as an unsigned integer (`CONV(LEFT(md5, 16), 16, 10)`); a bucket sums
them with `SUM()`, exact in MariaDB (a DECIMAL), reduced modulo 2**64 by the caller as it
does for PostgreSQL's sum of signed hashes (the same value modulo 2**64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from replicator.resync_hash import PLAIN, FieldSpec

_UNSIGNED = mysql.BIGINT(unsigned=True)


class _Utf8(FunctionElement[str]):
    """`CONVERT(x USING utf8mb4)`: a text in UTF-8, whatever the column's character set."""

    inherit_cache = True
    type = sa.String()
    name = "convert"


@compiles(_Utf8)
def _compile_utf8(element: _Utf8, compiler: Any, **kw: Any) -> str:
    return f"CONVERT({compiler.process(element.clauses, **kw)} USING utf8mb4)"


def _lit(text: str) -> Any:
    return sa.literal_column("'" + text.replace("'", "''") + "'", sa.String)


def _char(expr: Any) -> Any:
    return sa.cast(expr, sa.String)  # CAST(x AS CHAR): the connection's utf8mb4


class _TrimFraction(FunctionElement[str]):
    """`10:00:00.500000` -> `10:00:00.5`, `10:00:00.000000` -> `10:00:00`."""

    inherit_cache = True
    type = sa.String()
    name = "trim"


@compiles(_TrimFraction)
def _compile_trim_fraction(element: _TrimFraction, compiler: Any, **kw: Any) -> str:
    inner = compiler.process(element.clauses, **kw)
    return f"TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM {inner}))"


class _TrimNumber(FunctionElement[str]):
    """A number's text without trailing zeros (only when it has a point), never `-0`."""

    inherit_cache = True
    type = sa.String()
    name = "trim"


@compiles(_TrimNumber)
def _compile_trim_number(element: _TrimNumber, compiler: Any, **kw: Any) -> str:
    t = compiler.process(element.clauses, **kw)
    trimmed = f"TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM {t}))"
    return (
        f"(CASE WHEN LOCATE('.', {t}) = 0 THEN {t} WHEN {trimmed} = '-0' THEN '0' "
        f"ELSE {trimmed} END)"
    )


def _is_integer(etype: Any) -> bool:
    return isinstance(etype, sa.Integer) and not isinstance(etype, sa.Boolean)


def _is_decimal(etype: Any) -> bool:
    return isinstance(etype, sa.Numeric) and not isinstance(etype, sa.Float)


def _field(spec: FieldSpec, expr: Any, side_zone: str | None) -> Any | None:
    """One field text in MariaDB's SQL (None: not built here)."""
    kind, etype = spec.kind, expr.type
    if kind in ("int", "dec"):
        if isinstance(etype, sa.Boolean):
            return sa.case((expr, _lit("1")), (sa.not_(expr), _lit("0")))
        if spec.scale is not None:  # exactly `scale` decimals (0: none)
            if _is_decimal(etype) and getattr(etype, "scale", None) == spec.scale:
                return _char(expr)
            if _is_integer(etype) and spec.scale == 0:
                return _char(expr)
            return _char(sa.cast(expr, sa.Numeric(65, spec.scale)))
        if _is_integer(etype):
            return _char(expr)
        if _is_decimal(etype):
            if not getattr(etype, "scale", None):
                return _char(expr)
            return _TrimNumber(_char(expr))
        if isinstance(etype, sa.Float):
            return None  # a double's shortest text (`1e300`) is not Python's: hashed there
        return _TrimNumber(_char(sa.cast(expr, sa.Numeric(65, 30))))
    if kind == "datetime" and isinstance(etype, sa.DateTime | sa.Date):
        if spec.aware and (side_zone or "UTC").upper() not in ("UTC", "ETC/UTC"):
            return None  # local time of a named zone: converted in Python
        return _TrimFraction(sa.func.date_format(expr, _lit("%Y-%m-%d %H:%i:%s.%f")))
    if kind == "date" and isinstance(etype, sa.Date | sa.DateTime):
        return sa.func.date_format(expr, _lit("%Y-%m-%d"))
    if kind == "time" and isinstance(etype, sa.Time):
        return _TrimFraction(sa.func.time_format(expr, _lit("%H:%i:%s.%f")))
    if kind == "bool":
        if isinstance(etype, sa.Boolean):
            return sa.case((expr, _lit("1")), (sa.not_(expr), _lit("0")))
        if _is_integer(etype) or _is_decimal(etype):
            return sa.case((expr != 0, _lit("1")), (expr == 0, _lit("0")))
        return None
    if kind == "bytes" and isinstance(etype, sa.LargeBinary | sa.types._Binary):
        return sa.func.concat(_lit("\\\\x"), sa.func.lower(sa.func.hex(expr)))
    if kind == "uuid":
        return sa.func.lower(_char(expr))
    if kind in PLAIN:
        return None  # a text into a typed column: parsed in Python
    if isinstance(etype, sa.String | sa.types.NullType):
        return _Utf8(expr)
    if isinstance(etype, sa.LargeBinary | sa.types._Binary):
        return None
    return _Utf8(_char(expr))


def mariadb_fields(
    specs: Sequence[FieldSpec], exprs: Sequence[ColumnElement[Any]], side_zone: str | None
) -> list[Any] | None:
    """Each column's canonical text in MariaDB's SQL, or None when some column's text is
    only built in Python (the side then hashes its rows there)."""
    out = []
    for spec, expr in zip(specs, exprs, strict=True):
        inner = expr.element if isinstance(expr, sa.Label) else expr
        field = _field(spec, inner, side_zone)
        if field is None:
            return None
        out.append(field)
    return out


def mariadb_row_hash(specs: Sequence[FieldSpec], fields: Sequence[Any]) -> Any:
    """The unsigned first 64 bits of the MD5 of the row text Python builds (`row_hasher`)."""
    parts: list[Any] = []
    for spec, text in zip(specs, fields, strict=True):
        if spec.kind in PLAIN:
            parts.append(sa.func.coalesce(text, _lit("N")))
        else:
            piece = sa.func.concat(sa.func.char_length(text), _lit(":"), text)
            parts.append(sa.func.coalesce(piece, _lit("N")))
    row = sa.func.concat_ws(_lit("|"), *parts)
    hex64 = sa.func.left(sa.func.md5(row), 16)
    return sa.cast(sa.func.conv(hex64, 16, 10), _UNSIGNED)


def utf8_bytes(col: Any) -> Any:
    """A text key as its UTF-8 bytes, `CAST(CONVERT(x USING utf8mb4) AS BINARY)`: compared
    and sorted in code point order without the collation's case folding or space padding."""
    return sa.cast(_Utf8(col), mysql.BINARY())
