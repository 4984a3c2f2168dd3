"""What the ODBC backends (MariaDB, SQL Server) share: reading pyodbc's errors by their codes,
and writing values into ODBC connection strings."""

from __future__ import annotations

import re
from typing import Any

_STATE = re.compile(r"^[0-9A-Z]{5}$")
_NATIVE = re.compile(r"\((-?\d+)\) \((SQL\w+)\)\s*$")


def odbc_error(orig: BaseException) -> tuple[str, int | None, str]:
    """(SQLSTATE, native error number, ODBC function) of a pyodbc error. pyodbc puts the
    native number and the function at the end of its message in a fixed form:
    `[HY000] [ma-3.1.15][10.11]Lock wait timeout exceeded... (1205) (SQLExecDirectW)`.
    An error whose text a backend rewrote for people (`readable`) keeps them in `odbc`."""
    known = getattr(orig, "odbc", None)
    if isinstance(known, tuple) and len(known) == 3:
        return known
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    if len(args) > 1 and _STATE.match(str(args[1])) and not _STATE.match(str(args[0])):
        args = (args[1], args[0], *args[2:])  # pyodbc's own errors: (message, SQLSTATE)
    state = str(args[0]) if args and _STATE.match(str(args[0])) else ""
    text = str(args[1]) if len(args) > 1 else ""
    found = _NATIVE.search(text)
    if not found:
        return state, None, ""
    return state, int(found.group(1)), found.group(2)


_TAGS = re.compile(r"^\s*(?:\[[^\]]*\]\s*)+")


def readable(orig: BaseException, rename: dict[str, str] | None = None) -> None:
    """Rewrite a pyodbc error's text, in place, for a person: pyodbc's own form is a tuple,
    `('22007', "[22007] [ma-3.1.15][10.11.19-MariaDB]Incorrect ... (1366) (SQLExecDirectW)")`;
    it becomes `Incorrect ... (1366) (SQLSTATE 22007)`, with the names in `rename` (a stage
    table's, say) replaced. The codes stay readable by `odbc_error`, and the number by
    SQLAlchemy's own parser (the first `(digits)` of the text: `has_table` reads 1146 so)."""
    if getattr(orig, "odbc", None) is not None:
        return
    state, native, function = odbc_error(orig)
    if not state:
        return
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    text = next((str(a) for a in args if not _STATE.match(str(a))), "")
    text = _NATIVE.sub("", text.strip())
    text = _TAGS.sub("", text).strip() or "the driver gave no message"
    for old, new in (rename or {}).items():
        text = text.replace(old, new)
    code = f"{native}) (SQLSTATE {state}" if native else f"SQLSTATE {state}"
    try:
        orig.odbc = (state, native, function)  # type: ignore[attr-defined]
        orig.args = (f"{text} ({code})",)
    except (AttributeError, TypeError):
        pass  # an error class that takes no attributes keeps pyodbc's text


def braced(value: str) -> str:
    """An ODBC connection string value, braced when it holds a separator or a brace."""
    if re.search(r"[;{}=\s]", value):
        return "{" + value.replace("}", "}}") + "}"
    return value
