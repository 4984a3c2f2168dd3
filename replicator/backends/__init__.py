"""One module per dialect behind the small interface of `base.Backend`."""

from __future__ import annotations

from sqlalchemy.engine import URL

from replicator.backends.base import Backend
from replicator.errors import ConfigError


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
    if kind == "postgresql":
        from replicator.backends.postgresql import PostgreSQLBackend

        return PostgreSQLBackend(url, node, lock_timeout_ms, timezone=timezone, pool_size=pool_size)
    if kind == "sqlite":
        from replicator.backends.sqlite import SQLiteBackend

        return SQLiteBackend(url, node, lock_timeout_ms, timezone=timezone, pool_size=pool_size)
    raise ConfigError(f"database kind {kind!r} is not supported yet; use postgresql or sqlite")


__all__ = ["Backend", "open_backend"]
