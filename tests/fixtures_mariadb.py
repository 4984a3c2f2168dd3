"""MariaDB fixtures: a fresh database per use on the server at 127.0.0.1:3306 (user root, no
password; REPLICATOR_TEST_MARIADB overrides the URL), reached through pyodbc and Connector/ODBC
like the backend does. With CI=true an unreachable server or a missing driver fails the run
instead of skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

MARIADB_URL = os.environ.get(
    "REPLICATOR_TEST_MARIADB", "mariadb+pyodbc://root@127.0.0.1:3306/?driver=MariaDB+Unicode"
)


def _admin_string() -> str:
    from replicator.backends.mariadb import odbc_string

    return odbc_string(sa.engine.make_url(MARIADB_URL))


def _admin(sql: str) -> None:
    import pyodbc

    conn = pyodbc.connect(_admin_string(), autocommit=True, timeout=5)
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


def _mariadb_problem() -> str | None:
    try:
        import pyodbc
    except ImportError as exc:  # libodbc.so.2 missing: apt install unixodbc
        return f"pyodbc cannot load ({exc}); apt install unixodbc odbc-mariadb"
    try:
        _admin("SELECT 1")
    except pyodbc.Error as exc:
        return str(exc).strip().splitlines()[0]
    return None


@pytest.fixture(scope="session")
def mariadb_admin() -> str:
    problem = _mariadb_problem()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but MariaDB is not usable at {MARIADB_URL}: {problem}")
        pytest.skip(f"MariaDB not usable at {MARIADB_URL}: {problem}")
    return MARIADB_URL


@pytest.fixture
def mariadb_database(mariadb_admin: str) -> Iterator[Callable[[], str]]:
    """Factory of fresh, empty MariaDB databases; returns SQLAlchemy URLs (no password)."""
    created: list[str] = []
    base = sa.engine.make_url(mariadb_admin)

    def make() -> str:
        name = f"repl_mdb_{uuid.uuid4().hex[:12]}"
        _admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        created.append(name)
        return base.set(database=name).render_as_string(hide_password=False)

    yield make
    for name in created:
        _admin(f"DROP DATABASE IF EXISTS `{name}`")


@dataclass(frozen=True)
class Backup:
    database: str
    dump: bytes


def _client_args(url: str) -> list[str]:
    u = sa.engine.make_url(url)
    return [f"--host={u.host or '127.0.0.1'}", f"--port={u.port or 3306}", f"--user={u.username}"]


def backup(url: str) -> Backup:
    """A register's backup: mariadb-dump of the whole database, triggers included."""
    dump = shutil.which("mariadb-dump") or shutil.which("mysqldump") or "mariadb-dump"
    name = sa.engine.make_url(url).database or ""
    out = subprocess.run(
        [dump, *_client_args(url), "--single-transaction", "--routines", "--triggers", name],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return Backup(name, out.stdout)


def restore(url: str, saved: object) -> None:
    """The register restored from `saved`: the database dropped, created again and loaded."""
    assert isinstance(saved, Backup)
    client = shutil.which("mariadb") or shutil.which("mysql") or "mariadb"
    _admin(f"DROP DATABASE IF EXISTS `{saved.database}`")
    _admin(f"CREATE DATABASE `{saved.database}` CHARACTER SET utf8mb4")
    subprocess.run(
        [client, *_client_args(url), saved.database],
        input=saved.dump,
        check=True,
        capture_output=True,
        timeout=60,
    )


__all__ = ["backup", "mariadb_admin", "mariadb_database", "restore"]
