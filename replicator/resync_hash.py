"""Portable row hashes for `replicator resync`: the same mapped row hashes the same on every
backend, so a chunk's (count, sum of row hashes) computed inside each database compares.

A row's canonical text is built from one *field text* per target column, typed by the target
column (the mapped row is typed by where it goes):

- int, dec: the number rounded to the target column's scale (when it declares one), then
  without trailing zeros: `10.50` -> `10.5`, `3.00` -> `3`;
- datetime: `YYYY-MM-DD HH:MM:SS.ffffff`; into a column with a time zone, the UTC instant (a
  naive value is local time of its own database's zone); into a naive column, wall-clock
  time in the target's zone;
- date, time: ISO, time at microsecond precision; bool: `0` / `1`; bytes: `\\x` and hex;
  uuid: lower-case; text and anything else: the stored text, as stored (no Unicode
  normalisation).

NULL is the field `N`; a text (or bytes, or any other kind) is `<length>:<text>`, so NULL, the
empty string and the text `N` all differ; numbers, timestamps, dates, times, booleans and
uuids, whose texts never hold `|`, go as they are. Fields are joined with `|`. A row's hash
is the first 64 bits of the MD5 of its UTF-8 text; a chunk's checksum is its row count and
the sum of its row hashes modulo 2**64 (order-free, so each side may read its rows in any
order).

PostgreSQL computes the text in SQL, each field once in a subquery (`postgresql_fields`,
`postgresql_row_hash`); SQLite gets a registered aggregate and a row function (`sqlite_sum`,
`sqlite_row_hash`) that run `field_text` on the values as stored. Fetched rows are compared
with the same `field_text` in Python. Where the two forms disagree for some exotic value (a
float whose PostgreSQL numeric form has fewer digits than Python's repr), the row is only
reported as different at the hash level: it is then fetched and compared in Python, so the
cost is a download, never a wrong answer.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import BIT

from replicator.codec import Kind, kind_of

MASK = 2**64 - 1
DT_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
PG_DT_FORMAT = "YYYY-MM-DD HH24:MI:SS.US"


@dataclass(frozen=True)
class FieldSpec:
    """How one target column's values become text."""

    kind: Kind
    scale: int | None = None  # dec: the target column's declared scale
    aware: bool = False  # datetime: the target column keeps instants (has a time zone)
    target_zone: str = "UTC"  # datetime: the zone of the target's naive timestamps


def field_specs(target: sa.Table, columns: Sequence[str], target_zone: str) -> list[FieldSpec]:
    out = []
    for name in columns:
        kind_type = target.c[name].type
        kind = kind_of(kind_type)
        scale = None
        if kind == "dec" and not isinstance(kind_type, sa.Float):
            scale = getattr(kind_type, "scale", None)
        aware = kind == "datetime" and bool(getattr(kind_type, "timezone", False))
        out.append(FieldSpec(kind, scale, aware, target_zone))
    return out


def _zone(name: str | None) -> Any:
    return UTC if not name or name.upper() == "UTC" else ZoneInfo(name)


def field_text(spec: FieldSpec, value: Any, side_zone: str | None) -> str | None:
    """The canonical text of one value (None for NULL). `side_zone`: the zone of the naive
    timestamps of the database the value was read from."""
    if value is None:
        return None
    kind = spec.kind
    try:
        if kind in ("int", "dec"):
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, int):
                return str(value)
            number = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
            if not number.is_finite():
                return str(number)
            if spec.scale is not None:
                number = number.quantize(Decimal(1).scaleb(-spec.scale), ROUND_HALF_UP)
            if number == number.to_integral_value():
                return str(int(number))
            return format(number.normalize(), "f")
        if kind == "datetime":
            if isinstance(value, str):
                value = datetime.fromisoformat(value.strip())
            if isinstance(value, date) and not isinstance(value, datetime):
                value = datetime(value.year, value.month, value.day)
            if isinstance(value, datetime):
                if spec.aware:
                    if value.tzinfo is None:
                        value = value.replace(tzinfo=_zone(side_zone))
                    value = value.astimezone(UTC)
                elif value.tzinfo is not None:
                    value = value.astimezone(_zone(spec.target_zone)).replace(tzinfo=None)
                return str(value.strftime(DT_FORMAT))
        if kind == "date":
            if isinstance(value, datetime):
                return value.date().isoformat()
            if isinstance(value, date):
                return value.isoformat()
            return date.fromisoformat(str(value).strip()[:10]).isoformat()
        if kind == "time":
            if isinstance(value, str):
                value = time.fromisoformat(value.strip())
            if isinstance(value, time):
                return str(value.replace(tzinfo=None).isoformat(timespec="microseconds"))
        if kind == "bool":
            if isinstance(value, str):
                return "1" if value.strip().lower() in {"t", "true", "1", "y", "yes"} else "0"
            return "1" if value else "0"
        if kind == "bytes" and isinstance(value, bytes | bytearray | memoryview):
            return "\\x" + bytes(value).hex()
        if kind == "uuid":
            return str(uuid.UUID(str(value)))
    except (ValueError, InvalidOperation, TypeError, OverflowError):
        pass  # a value that does not parse as its column's type: compared as its text
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)


# kinds whose canonical text never holds `|` and is never `N` nor starts with `~`: their
# fields go without a length (cheaper to build in SQL); a value of such a column that does not
# parse as its type (only SQLite can hold one) is written `~<length>:<text>` instead
PLAIN: frozenset[str] = frozenset({"int", "dec", "datetime", "date", "time", "bool", "uuid"})


def _piece(spec: FieldSpec, f: str | None) -> str:
    if f is None:
        return "N"
    if spec.kind in PLAIN:
        if "|" in f or f == "N" or f.startswith("~"):
            return f"~{len(f)}:{f}"
        return f
    return f"{len(f)}:{f}"


def row_text(specs: Sequence[FieldSpec], fields: Sequence[str | None]) -> str:
    return "|".join(_piece(s, f) for s, f in zip(specs, fields, strict=True))


def row_hash(text: str) -> int:
    digest = hashlib.md5(text.encode("utf-8", "surrogateescape"), usedforsecurity=False)
    return int(digest.hexdigest()[:16], 16)


def canonical_row(
    specs: Sequence[FieldSpec], values: Sequence[Any], side_zone: str | None
) -> list[str | None]:
    return [field_text(s, v, side_zone) for s, v in zip(specs, values, strict=True)]


# --- PostgreSQL: the same text in SQL ----------------------------------------------------------
def _pg_field(spec: FieldSpec, expr: sa.ColumnElement[Any], side_zone: str | None) -> Any:
    kind, etype = spec.kind, expr.type
    if (
        kind in ("int", "dec")
        and isinstance(etype, sa.Integer)
        and not isinstance(etype, sa.Boolean)
    ):
        return sa.cast(expr, sa.Text)  # an integer's text is already canonical
    if kind in ("int", "dec"):
        number: Any = sa.cast(expr, sa.Numeric)
        if spec.scale is not None:
            number = sa.func.round(number, spec.scale)
        return sa.cast(sa.func.trim_scale(number), sa.Text)
    if kind == "datetime" and isinstance(etype, sa.DateTime):
        local: Any
        if getattr(etype, "timezone", False):  # timestamptz: an instant
            zone = "UTC" if spec.aware else spec.target_zone
            local = sa.func.timezone(zone, expr)
        elif spec.aware:  # naive at this side: local time of its zone, as UTC
            local = sa.func.timezone("UTC", sa.func.timezone(side_zone or "UTC", expr))
        else:
            local = expr
        return sa.func.to_char(local, PG_DT_FORMAT)
    if kind == "date" and isinstance(etype, sa.Date | sa.DateTime):
        return sa.func.to_char(expr, "YYYY-MM-DD")
    if kind == "time" and isinstance(etype, sa.Time):
        return sa.func.to_char(expr, "HH24:MI:SS.US")
    if kind == "bool" and isinstance(etype, sa.Boolean):
        return sa.case((expr, "1"), (sa.not_(expr), "0"))
    if kind == "bytes" and isinstance(etype, sa.LargeBinary | sa.types._Binary):
        return sa.literal("\\x") + sa.func.encode(expr, "hex")
    if kind == "uuid":
        return sa.func.lower(sa.cast(expr, sa.Text))
    return sa.cast(expr, sa.Text)


def postgresql_fields(
    specs: Sequence[FieldSpec], exprs: Sequence[sa.ColumnElement[Any]], side_zone: str | None
) -> list[sa.ColumnElement[Any]]:
    """Each column's canonical text, to select once in a subquery (`postgresql_row_hash`
    then reads each of them twice without computing it again)."""
    out = []
    for spec, expr in zip(specs, exprs, strict=True):
        inner = expr.element if isinstance(expr, sa.Label) else expr
        out.append(_pg_field(spec, inner, side_zone))
    return out


def postgresql_row_hash(
    specs: Sequence[FieldSpec], fields: Sequence[sa.ColumnElement[Any]]
) -> sa.ColumnElement[Any]:
    """The signed 64-bit row hash of field texts (columns of a subquery)."""
    parts: list[Any] = []
    for n, (spec, text) in enumerate(zip(specs, fields, strict=True)):
        if n:
            parts.append(sa.literal("|"))
        if spec.kind in PLAIN:  # PostgreSQL's texts of these always parse
            parts.append(sa.func.coalesce(text, sa.literal("N")))
            continue
        length = sa.cast(sa.func.length(text), sa.Text)
        parts.append(sa.func.coalesce(length + sa.literal(":") + text, sa.literal("N")))
    hex64 = sa.literal("x") + sa.func.substr(sa.func.md5(sa.func.concat(*parts)), 1, 16)
    return sa.cast(sa.cast(hex64, BIT(64)), sa.BigInteger)


# --- SQLite: a registered aggregate -------------------------------------------------------------
class _Sum:
    specs: Sequence[FieldSpec] = ()
    zone: str | None = None

    def __init__(self) -> None:
        self.total = 0

    def step(self, *values: Any) -> None:
        self.total += row_hash(row_text(self.specs, canonical_row(self.specs, values, self.zone)))

    def finalize(self) -> str:  # as text: SQLite integers are 64-bit signed
        return str(self.total & MASK)


def _signed_hash(specs: Sequence[FieldSpec], zone: str | None) -> Any:
    def fn(*values: Any) -> int:
        h = row_hash(row_text(specs, canonical_row(specs, values, zone)))
        return h - (1 << 64) if h >= 1 << 63 else h

    return fn


def sqlite_row_hash(
    conn: Any,
    name: str,
    specs: Sequence[FieldSpec],
    exprs: Sequence[sa.ColumnElement[Any]],
    side_zone: str | None,
) -> sa.ColumnElement[Any]:
    """Register the scalar function `name` (a row's signed 64-bit hash); its call."""
    raw = conn.connection.driver_connection
    raw.create_function(name, len(specs), _signed_hash(list(specs), side_zone), deterministic=True)
    inner = [e.element if isinstance(e, sa.Label) else e for e in exprs]
    call: sa.ColumnElement[Any] = getattr(sa.func, name)(*inner)
    return call


def sqlite_sum(
    conn: Any,
    name: str,
    specs: Sequence[FieldSpec],
    exprs: Sequence[sa.ColumnElement[Any]],
    side_zone: str | None,
) -> sa.ColumnElement[Any]:
    """Register the aggregate `name` on this SQLite connection; the expression that calls it."""
    raw = conn.connection.driver_connection
    cls = type(name, (_Sum,), {"specs": list(specs), "zone": side_zone})
    raw.create_aggregate(name, len(specs), cls)
    inner = [e.element if isinstance(e, sa.Label) else e for e in exprs]
    call: sa.ColumnElement[Any] = getattr(sa.func, name)(*inner)
    return call


def checksum_of(value: Any) -> int:
    return int(Decimal(str(value or 0))) & MASK
