"""One canonical form per key and value, typed by the column it belongs to.

Keys travel between a source's rows (Python values, or PostgreSQL text on the PostgreSQL to
PostgreSQL path), tombstones (JSON written by a trigger), the quarantine and fence tables
(text), and positions (text). Every comparison goes through `Codec.canon`, so `1`, `1.0`,
`Decimal("1.00")`, `"1"` and the JSON `1.00` of an integral numeric key are the same key, and
`2024-01-01T10:00:00+00:00` and `2024-01-01 07:00:00-03:00` are the same instant.

Canonical forms (JSON scalars): integers and integral decimals as JSON integers; other decimals
and floats as fixed-point text without trailing zeros; timestamps with a zone as UTC ISO-8601
at microsecond precision ending in `+00:00`, naive ones without a zone; dates ISO; booleans
0/1; bytes as `\\x<hex>`; uuids lower-case; text as stored. NULL is JSON null, distinct
from the empty string.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

Kind = str  # int | dec | text | datetime | date | time | bool | bytes | uuid | other


def kind_of(column_type: sa.types.TypeEngine[Any]) -> Kind:
    """The codec kind of a column from its (reflected) SQLAlchemy type."""
    if isinstance(column_type, sa.Boolean):
        return "bool"
    if isinstance(column_type, sa.Integer):
        return "int"
    if isinstance(column_type, sa.Numeric):  # Float is a Numeric
        return "dec"
    if isinstance(column_type, sa.DateTime):
        return "datetime"
    if isinstance(column_type, sa.Date):
        return "date"
    if isinstance(column_type, sa.Time):
        return "time"
    if isinstance(column_type, sa.LargeBinary | sa.types._Binary):
        return "bytes"
    if isinstance(column_type, sa.Uuid):
        return "uuid"
    if isinstance(column_type, sa.String):
        return "text"
    return "other"


def _decimal_text(value: Decimal) -> Any:
    if not value.is_finite():
        return str(value)
    if value == value.to_integral_value():
        return int(value)
    text = format(value.normalize(), "f")
    return text


def canon_value(kind: Kind, value: Any) -> Any:
    """The canonical JSON scalar of one value of a column of `kind`."""
    if value is None:
        return None
    try:
        if kind in ("int", "dec"):
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, int):
                return value
            return _decimal_text(Decimal(str(value).strip()))
        if kind == "datetime":
            if isinstance(value, str):
                value = datetime.fromisoformat(value.strip())
            if isinstance(value, datetime):
                if value.tzinfo is not None:
                    value = value.astimezone(UTC)
                return value.isoformat(timespec="microseconds")
            if isinstance(value, date):
                return datetime(value.year, value.month, value.day).isoformat(
                    timespec="microseconds"
                )
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
                return value.isoformat(timespec="microseconds")
        if kind == "bool":
            if isinstance(value, str):
                return 1 if value.strip().lower() in {"t", "true", "1", "y", "yes"} else 0
            return 1 if value else 0
        if kind == "bytes":
            if isinstance(value, bytes | bytearray | memoryview):
                return "\\x" + bytes(value).hex()
            return str(value)
        if kind == "uuid":
            return str(uuid.UUID(str(value)))
    except (ValueError, InvalidOperation, TypeError):
        pass  # a value that does not parse as its column's type: keep its text form
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return _decimal_text(Decimal(repr(value)))
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)


def python_value(kind: Kind, value: Any) -> Any:
    """A canonical scalar back as a Python value the driver binds for a column of `kind`."""
    if value is None:
        return None
    try:
        if kind == "int":
            return int(value) if not isinstance(value, str) else int(Decimal(value))
        if kind == "dec":
            return Decimal(str(value))
        if kind == "datetime":
            return datetime.fromisoformat(str(value))
        if kind == "date":
            return date.fromisoformat(str(value))
        if kind == "time":
            return time.fromisoformat(str(value))
        if kind == "bool":
            return bool(int(value)) if not isinstance(value, bool) else value
        if kind == "bytes" and isinstance(value, str) and value.startswith("\\x"):
            return bytes.fromhex(value[2:])
        if kind == "uuid":
            return uuid.UUID(str(value))
    except (ValueError, InvalidOperation, TypeError):
        pass
    return value


class Codec:
    """The canonical codec of a list of columns (a key, or a whole row)."""

    def __init__(self, kinds: Sequence[Kind]) -> None:
        self.kinds = list(kinds)

    @classmethod
    def of(cls, columns: Sequence[sa.Column[Any]]) -> Codec:
        return cls([kind_of(c.type) for c in columns])

    def canon(self, values: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(canon_value(k, v) for k, v in zip(self.kinds, values, strict=True))

    def text(self, values: Sequence[Any]) -> str:
        """The one stored text form (ASCII JSON), for the quarantine, fence and positions."""
        return json.dumps(list(self.canon(values)), separators=(",", ":"))

    def from_text(self, text: str) -> tuple[Any, ...]:
        """Python values to bind, from `text()` or from a tombstone's JSON array."""
        raw = json.loads(text, parse_float=Decimal)
        if len(raw) != len(self.kinds):
            raise ValueError(f"key {text} has {len(raw)} values, expected {len(self.kinds)}")
        return tuple(python_value(k, v) for k, v in zip(self.kinds, raw, strict=True))

    def same(self, a: Sequence[Any], b: Sequence[Any]) -> bool:
        return self.canon(a) == self.canon(b)
