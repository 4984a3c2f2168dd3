"""Row hashes computed by the replicator, for a database that cannot hash in SQL alike:
Firebird 3 (no MD5; its `HASH()` is a 64-bit hash of its own), and a MariaDB table with a
column whose text only Python builds as PostgreSQL does (a double, a naive timestamp of a
named zone into an instant).

On Firebird the row text itself is built in SQL when it can be (`resync_firebird`): one
VARCHAR per row is streamed and hashed with MD5 here. Otherwise the mapped columns of a key
range are streamed (`STREAM_ROWS` per fetch, one range at a time,
so memory stays bounded whatever the table size) and each row is hashed with `row_hasher`,
the judge's own code: the same row text, and so the same md5 row hash, as PostgreSQL's SQL,
MariaDB's SQL and SQLite's aggregate. Constants and node variables of the mapping are not
read back from the database: their values are put in here. On Firebird a text computed in
SQL (a value map) is cast to a VARCHAR: a text parameter is a BLOB there, and each BLOB
value costs round trips to read (1,900 rows/s instead of 14,000).

Text keys of a Firebird column whose character set is not UTF8 are ordered and bounded as
UTF8 (`FbUtf8`): WIN1252's own order puts `Ž` (0x8E) before `é` (0xE9), code points the
other way round.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import BindParameter, False_, Null, True_
from sqlalchemy.sql.functions import FunctionElement

from replicator.resync_hash import MASK, FieldSpec, row_hasher

STREAM_ROWS = 5000  # rows per fetch
FB_TEXT_CHARS = 8191  # the widest VARCHAR of UTF8 characters (32,765 bytes)
CODE_POINT_ORDER = {"UTF8", "UNICODE_FSS", "ASCII"}  # Firebird character sets
Key = tuple[Any, ...]
Hasher = Callable[..., int]


class FbUtf8(FunctionElement[str]):
    """Firebird: `CAST(x AS VARCHAR(n) CHARACTER SET UTF8)`, compared in code point order
    (its type is the type its bounds are bound with)."""

    inherit_cache = False  # its length is not in a cache key
    name = "cast"

    def __init__(self, expr: Any, kind: sa.String) -> None:
        from sqlalchemy_firebird.types import FBVARCHAR

        super().__init__(expr)
        self.length = kind.length or FB_TEXT_CHARS
        self.type = FBVARCHAR(length=self.length, charset="UTF8")


@compiles(FbUtf8)
def _compile_fb_utf8(element: FbUtf8, compiler: Any, **kw: Any) -> str:
    inner = compiler.process(element.clauses, **kw)
    return f"CAST({inner} AS VARCHAR({int(element.length)}) CHARACTER SET UTF8)"


def client_values(
    specs: Sequence[FieldSpec], exprs: Sequence[Any], zone: str | None, firebird: bool
) -> tuple[list[Any], Hasher]:
    """What to select of the mapped expressions, and the row hash of the selected values.
    Firebird: the row text built in its SQL when it can be (`resync_firebird`), hashed here."""
    if firebird:
        from replicator.resync_firebird import firebird_row_text

        text = firebird_row_text(specs, exprs, zone)
        if text is not None:
            md5, from_bytes = hashlib.md5, int.from_bytes

            def text_hash(row: str) -> int:
                return from_bytes(md5(row.encode("utf-8", "surrogateescape")).digest()[:8], "big")

            return [text.label("f0")], text_hash
    whole = row_hasher(specs, zone)
    selected: list[Any] = []
    slots: list[tuple[bool, Any]] = []  # (True, its index) or (False, the constant)
    for e in exprs:
        if isinstance(e, BindParameter) and e.callable is None:
            slots.append((False, e.value))
            continue
        if isinstance(e, Null | True_ | False_):
            slots.append((False, None if isinstance(e, Null) else isinstance(e, True_)))
            continue
        kind = e.type
        computed = not isinstance(e, sa.Column)
        if firebird and computed and isinstance(kind, sa.String) and not kind.length:
            e = sa.cast(e, sa.String(FB_TEXT_CHARS))
        slots.append((True, len(selected)))
        selected.append(e.label(f"f{len(selected)}"))
    if all(chosen for chosen, _ in slots):
        return selected, whole

    def hasher(*values: Any) -> int:
        return whole(*[values[v] if chosen else v for chosen, v in slots])

    return selected, hasher


def _pages(conn: Connection, stmt: Any) -> Iterator[Sequence[Any]]:
    result = conn.execute(stmt)
    try:
        while page := result.fetchmany(STREAM_ROWS):
            yield page
    finally:
        result.close()


def streamed_buckets(
    conn: Connection, stmt: Any, n: int, size: int, hasher: Hasher
) -> tuple[list[tuple[int, int]], list[Key]]:
    """Rows (n key columns, then the values) in key order, in buckets of `size`: each
    bucket's (count, sum of row hashes mod 2**64), and the last key of each full bucket."""
    sums: list[list[int]] = []
    marks: list[Key] = []
    i = 0
    for page in _pages(conn, stmt):
        for row in page:
            if i % size == 0:
                sums.append([0, 0])
            found = sums[-1]
            found[0] += 1
            found[1] += hasher(*row[n:])
            i += 1
            if i % size == 0:
                marks.append(tuple(row[:n]))
    return [(count, total & MASK) for count, total in sums], marks


def streamed_value_buckets(
    conn: Connection, stmt: Any, lo: int, hi: int, count: int, hasher: Hasher
) -> dict[int, tuple[int, int]]:
    """Rows (an integer key in (lo, hi], then the values), in any order: per bucket of
    `count` equal spans of the key, (count, sum of row hashes mod 2**64)."""
    sums: dict[int, list[int]] = {}
    span, first = hi - lo, lo + 1
    for page in _pages(conn, stmt):
        for row in page:
            b = (int(row[0]) - first) * count // span
            found = sums.get(b)
            if found is None:
                sums[b] = [1, hasher(*row[1:])]
            else:
                found[0] += 1
                found[1] += hasher(*row[1:])
    return {b: (n, total & MASK) for b, (n, total) in sums.items()}


def streamed_hashes(
    conn: Connection, stmt: Any, n: int, m: int, hasher: Hasher
) -> list[tuple[Key, Key, int]]:
    """(range key, extra columns, row hash) of each row (n key columns, m extra, values)."""
    return [
        (tuple(r[:n]), tuple(r[n : n + m]), hasher(*r[n + m :]))
        for page in _pages(conn, stmt)
        for r in page
    ]
