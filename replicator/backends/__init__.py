"""One module per dialect behind the small interface of `base.Backend`."""

from __future__ import annotations

import importlib

from sqlalchemy.engine import URL

from replicator.backends.base import Backend
from replicator.errors import ConfigError

# kind (SQLAlchemy backend name) -> (module, class, the packages it needs, how to install them)
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "postgresql": ("postgresql", "PostgreSQLBackend", "pip install 'psycopg[binary]'"),
    "sqlite": ("sqlite", "SQLiteBackend", ""),
    "mariadb": (
        "mariadb",
        "MariaDBBackend",
        "pip install pyodbc, and the ODBC driver: apt install unixodbc odbc-mariadb",
    ),
    "mysql": (
        "mariadb",
        "MariaDBBackend",
        "pip install pyodbc, and the ODBC driver: apt install unixodbc odbc-mariadb",
    ),
    "firebird": (
        "firebird",
        "FirebirdBackend",
        "pip install 'replicator[firebird]' (firebird-driver, sqlalchemy-firebird), and the "
        "Firebird client library: apt install libfbclient2",
    ),
    "mssql": (
        "mssql",
        "SQLServerBackend",
        "pip install pyodbc, and Microsoft's ODBC Driver 18 for SQL Server",
    ),
}


def open_backend(
    url: URL,
    node: str,
    lock_timeout_ms: int = 2000,
    timezone: str | None = None,
    pool_size: int = 5,
) -> Backend:
    """The backend for a database URL (the password stays inside the URL object).

    `timezone`: the zone of the database's naive timestamps (`Settings.timezone`)."""
    kind = url.get_backend_name()
    if kind not in _BACKENDS:
        raise ConfigError(
            f"database kind {kind!r} is not supported; use one of {', '.join(sorted(_BACKENDS))}"
        )
    module_name, class_name, install = _BACKENDS[kind]
    try:
        module = importlib.import_module(f"replicator.backends.{module_name}")
        backend_class: type[Backend] = getattr(module, class_name)
        return backend_class(url, node, lock_timeout_ms, timezone=timezone, pool_size=pool_size)
    except ImportError as exc:
        raise ConfigError(
            f"{kind} databases need a driver that is not installed ({exc}); {install}"
        ) from None


__all__ = ["Backend", "open_backend"]
