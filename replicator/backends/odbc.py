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
    `[HY000] [ma-3.1.15][10.11]Lock wait timeout exceeded... (1205) (SQLExecDirectW)`."""
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    if len(args) > 1 and _STATE.match(str(args[1])) and not _STATE.match(str(args[0])):
        args = (args[1], args[0], *args[2:])  # pyodbc's own errors: (message, SQLSTATE)
    state = str(args[0]) if args and _STATE.match(str(args[0])) else ""
    text = str(args[1]) if len(args) > 1 else ""
    found = _NATIVE.search(text)
    if not found:
        return state, None, ""
    return state, int(found.group(1)), found.group(2)


def braced(value: str) -> str:
    """An ODBC connection string value, braced when it holds a separator or a brace."""
    if re.search(r"[;{}=\s]", value):
        return "{" + value.replace("}", "}}") + "}"
    return value
