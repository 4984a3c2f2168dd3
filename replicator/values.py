"""Values on their way to a target: time zones, and the form each target column declares.

A naive timestamp means local time in the zone of the database it was read from (its
`timezone`); an aware one is an instant. Rows are adapted once per table and batch by an
adapter built from the target's column types (`Backend.row_adapter`), so a value is written
in the form its target column declares: an exact decimal into a TEXT column is the decimal's
text, never a float.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import time
import zoneinfo
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, tzinfo
from datetime import time as clock
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from loguru import logger

Row = tuple[Any, ...]
Converter = Callable[[Any], Any]
RowAdapter = Callable[[Row], Row]

UTC_NAME = "UTC"
# Names of zones that are UTC all year: their naive values already mean what a PostgreSQL
# session of ours (TimeZone=UTC) takes them for.
UTC_NAMES = frozenset(
    {"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"}
)


# --- time zones ----------------------------------------------------------------------------
def check_timezone(name: str) -> str:
    """An IANA time zone name that this machine knows, or ValueError with the fix."""
    if name == "localtime" or not name:
        raise ValueError(
            'write the zone\'s IANA name, e.g. "America/Sao_Paulo", or leave timezone out '
            "to use this machine's zone"
        )
    try:
        zoneinfo.ZoneInfo(name)
        return name
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        pass
    known = zoneinfo.available_timezones()
    if not known:
        raise ValueError(
            f"unknown time zone {name!r}: this machine has no time zone database; install "
            "the tzdata package (pip install tzdata) or set TZ data for Python"
        )
    close = difflib.get_close_matches(name, sorted(known), n=1) or [
        k for k in sorted(known) if k.lower() == name.lower()
    ]
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(
        f'unknown time zone {name!r}; {hint}write an IANA name such as "America/Sao_Paulo" or "UTC"'
    )


@cache
def zone(name: str | None) -> tzinfo:
    """The tzinfo of a checked zone name; None (no zone known) is UTC."""
    if name is None or name in UTC_NAMES:
        return UTC
    return zoneinfo.ZoneInfo(name)


def _valid(name: str) -> bool:
    try:
        check_timezone(name)
    except ValueError:
        return False
    return True


@cache
def local_timezone() -> str:
    """This machine's time zone as an IANA name: $TZ, then the /etc/localtime link, then
    /etc/timezone, then time.tzname; UTC (with a warning) when none of them names a zone."""
    candidates = [os.environ.get("TZ", "").removeprefix(":")]
    try:
        link = os.readlink("/etc/localtime")
        if "zoneinfo/" in link:
            name = link.split("zoneinfo/", 1)[1]
            candidates.append(name.removeprefix("posix/").removeprefix("right/"))
    except OSError:
        pass
    with contextlib.suppress(OSError, UnicodeDecodeError):
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    candidates.append(time.tzname[0])
    for name in candidates:
        if name and _valid(name):
            return name
    logger.warning(
        "cannot tell this machine's time zone (time.tzname = {}); SQLite timestamps without "
        'a zone are taken as UTC; set timezone = "..." under [node] in replicator.toml',
        time.tzname,
    )
    return UTC_NAME


# --- value forms ---------------------------------------------------------------------------
def decimal_text(value: Decimal) -> str:
    """The exact text of a decimal, at its own scale, never in exponent notation
    (Decimal('12.5000') -> '12.5000', Decimal('1E+3') -> '1000')."""
    return format(value, "f")


def timestamp_text(value: datetime, target: tzinfo) -> str:
    """ISO-8601: an aware timestamp as local time of the target's zone with its offset
    (2024-03-01T00:30:00-03:00), a naive one as it is (2024-03-01T00:30:00)."""
    if value.tzinfo is not None:
        value = value.astimezone(target)
    return value.isoformat()


def local(value: datetime, target: tzinfo) -> datetime:
    """An aware timestamp as naive local time of the target's zone; naive ones unchanged."""
    if value.tzinfo is None:
        return value
    return value.astimezone(target).replace(tzinfo=None)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


_PLAIN = (str, int, float, bytes, Decimal, date, type(None))  # datetime is a date


def storable(value: Any, target: tzinfo) -> Any:
    """A value SQLite can store whatever the column: aware timestamps as local time of the
    target's zone, dicts and lists as JSON text, time and other objects as text."""
    if isinstance(value, datetime):
        return local(value, target)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict | list):
        return _json(value)
    if isinstance(value, clock):
        return value.isoformat()
    return str(value)


# --- converters per target column ------------------------------------------------------------
def _to_text(target: tzinfo) -> Converter:
    """TEXT columns (SQLite): exact decimals, ISO-8601 timestamps, dates and times, JSON."""

    def convert(value: Any) -> Any:
        if isinstance(value, str | int | float | bytes) or value is None:
            return value
        if isinstance(value, Decimal):
            return decimal_text(value)
        if isinstance(value, datetime):
            return timestamp_text(value, target)
        if isinstance(value, date | clock):
            return value.isoformat()
        return storable(value, target)

    return convert


def _to_datetime(target: tzinfo) -> Converter:
    """DATETIME/TIMESTAMP and DATE columns (SQLite): ISO text parsed, aware timestamps as
    local time of the target's zone, without a zone."""

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return value  # refused by the driver: that row is quarantined with the reason
        return storable(value, target)

    return convert


def _to_integer(target: tzinfo) -> Converter:
    """INTEGER columns (SQLite): whole decimals as integers, others as their exact text
    (SQLite's INTEGER affinity then stores a number)."""

    def convert(value: Any) -> Any:
        if isinstance(value, Decimal):
            whole = value.is_finite() and value == value.to_integral_value()
            return int(value) if whole else decimal_text(value)
        return storable(value, target)

    return convert


def _to_json(target: tzinfo) -> Converter:
    """JSON-declared columns: SQLAlchemy serialises dicts and lists itself."""

    def convert(value: Any) -> Any:
        if isinstance(value, dict | list):
            return value
        return storable(value, target)

    return convert


def _to_any(target: tzinfo) -> Converter:
    def convert(value: Any) -> Any:
        return storable(value, target)

    return convert


def sqlite_converter(column: sa.Column[Any], target: tzinfo) -> Converter:
    """How a value is written to a SQLite column, from its declared type (reflected by
    SQLAlchemy after SQLite's affinity rules: TEXT/CHAR/CLOB are text, INT integer,
    REAL/FLOA/DOUB and NUMERIC-like names numbers, DATETIME/TIMESTAMP/DATE by name)."""
    kind = column.type
    if isinstance(kind, sa.JSON):
        return _to_json(target)
    if isinstance(kind, sa.String):
        return _to_text(target)
    if isinstance(kind, sa.DateTime):
        return _to_datetime(target)
    if isinstance(kind, sa.Date):
        return _to_datetime(target)
    if isinstance(kind, sa.Integer):
        return _to_integer(target)
    return _to_any(target)


def sqlite_adapter(table: sa.Table, columns: Sequence[str], target: tzinfo) -> RowAdapter:
    """Rows as a SQLite target table stores them (see `sqlite_converter`)."""
    converters = [sqlite_converter(table.c[c], target) for c in columns]

    def adapt(row: Row) -> Row:
        return tuple(f(v) for f, v in zip(converters, row, strict=True))

    return adapt


def _with_zone(source: tzinfo, parse_text: bool) -> Converter:
    def convert(value: Any) -> Any:
        if isinstance(value, datetime):
            return value if value.tzinfo is not None else value.replace(tzinfo=source)
        if parse_text and isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                return value  # the target parses it, or refuses that row
            return value if parsed.tzinfo is not None else parsed.replace(tzinfo=source)
        return value

    return convert


def _has_zone(kind: sa.types.TypeEngine[Any]) -> bool:
    return isinstance(kind, sa.DateTime) and bool(kind.timezone)


def zone_adapter(
    table: sa.Table, columns: Sequence[str], source_timezone: str | None
) -> RowAdapter | None:
    """Naive timestamps bound for columns with a time zone (PostgreSQL timestamptz) get the
    source's zone: they are local time there. None when nothing needs it."""
    if source_timezone is None or source_timezone in UTC_NAMES:
        return None  # our PostgreSQL sessions read a naive timestamp as UTC already
    positions = [i for i, c in enumerate(columns) if _has_zone(table.c[c].type)]
    if not positions:
        return None
    # Text without an offset is parsed here only when the zone is not UTC: a PostgreSQL
    # session of ours reads it as UTC anyway (and PostgreSQL-to-PostgreSQL text stays text).
    convert = _with_zone(zone(source_timezone), source_timezone not in UTC_NAMES)

    def adapt(row: Row) -> Row:
        values = list(row)
        for i in positions:
            values[i] = convert(values[i])
        return tuple(values)

    return adapt


__all__ = [
    "UTC_NAME",
    "check_timezone",
    "decimal_text",
    "local_timezone",
    "sqlite_adapter",
    "storable",
    "timestamp_text",
    "zone",
    "zone_adapter",
]


def scale_check(
    table: sa.Table,
    columns: Sequence[str],
    source_types: Sequence[sa.types.TypeEngine[Any]],
) -> Callable[[Row], None] | None:
    """Exact decimals stay exact: a value with more decimal places than its target numeric
    column keeps (TEXT money '0.105' into numeric(12,2)) would be rounded by the database
    without a word, so the row is refused instead (ValueError, quarantined with the reason).
    Columns whose source cannot carry more places (integers, numerics of a smaller or equal
    scale) are not checked."""
    checks: list[tuple[int, str, int, Decimal]] = []
    for i, (name, kind) in enumerate(zip(columns, source_types, strict=True)):
        target = table.c[name].type
        scale = getattr(target, "scale", None)
        if not isinstance(target, sa.Numeric) or isinstance(target, sa.Float) or scale is None:
            continue
        if isinstance(kind, sa.Integer) or (
            isinstance(kind, sa.Numeric)
            and not isinstance(kind, sa.Float)
            and kind.scale is not None
            and kind.scale <= scale
        ):
            continue
        checks.append((i, name, scale, Decimal(1).scaleb(-scale)))
    if not checks:
        return None

    def check(row: Row) -> None:
        for i, name, scale, quantum in checks:
            value = row[i]
            if value is None or isinstance(value, int):
                continue
            try:
                exact = value if isinstance(value, Decimal) else Decimal(str(value).strip())
                rounded = exact.quantize(quantum, rounding=ROUND_HALF_EVEN)
            except ArithmeticError:
                continue  # not a number, or too large: the target refuses it with its reason
            if exact != rounded:
                raise ValueError(
                    f"column {name!r}: {value} has more decimal places than the target keeps "
                    f"({scale}) and would be rounded; correct the value at the source or widen "
                    "the target column"
                )

    return check


# --- values a source could not read -----------------------------------------------------------
class Unreadable(str):
    """A stored value the driver could not parse as its column's type: it travels as its text
    so the reader goes on, and the apply path holds its row with the reason."""

    reason: str = ""

    def __new__(cls, raw: object, reason: str) -> Unreadable:
        out = super().__new__(cls, raw if isinstance(raw, str) else repr(raw))
        out.reason = reason
        return out


class Lenient:
    """Result processing that turns a parse failure into an `Unreadable` value."""

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        inner = super().result_processor(dialect, coltype)  # type: ignore[misc]
        if inner is None:
            return None

        def process(value: Any) -> Any:
            try:
                return inner(value)
            except (ValueError, TypeError) as exc:
                return Unreadable(value, str(exc))

        return process


def unreadable_check(
    columns: Sequence[str],
    source_types: Sequence[sa.types.TypeEngine[Any]],
    check: Callable[[Row], None] | None,
) -> Callable[[Row], None] | None:
    """`check`, plus a refusal of any row that carries an `Unreadable` value in a column a
    source reads leniently (its row alone is held, with the column and the value)."""
    positions = [i for i, t in enumerate(source_types) if isinstance(t, Lenient)]
    if not positions:
        return check

    def unreadable(row: Row) -> None:
        for i in positions:
            value = row[i]
            if isinstance(value, Unreadable):
                raise ValueError(
                    f"column {columns[i]!r}: the source holds {str(value)!r}, which cannot be "
                    f"read as its column's type ({value.reason}); correct it at the source"
                )
        if check is not None:
            check(row)

    return unreadable
