"""Helpers of the shared backend suite (tests/test_backends.py, tests/test_backend_types.py):
portable schemas, writes and reads through SQLAlchemy, and a register's backup and restore,
for every kind of register database (sqlite, postgresql, mariadb, firebird).

The kinds beyond SQLite and PostgreSQL bring their own helpers in tests/fixtures_<kind>.py,
looked up lazily (the first use of a kind imports them): `backup(url) -> object` and
`restore(url, backup)`, and optionally `engine(url) -> Engine` (a test-side engine, e.g. with
the password a URL never carries) and `register_extra()` or `<kind>_password_setting()`
(-> str: lines for the register's [databases.caixa] section of replicator.toml, e.g.
`password_env = "..."`). A missing function
fails the test that needs it: it is a missing piece of that kind's suite, never a skip.
"""

from __future__ import annotations

import importlib
import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from conftest import PG_ADMIN
from sqlalchemy.dialects import mysql
from support import TRACKING, Node, write_node

from replicator.backends import open_backend

# --- portable column types ----------------------------------------------------------------
# MariaDB's defaults are narrower than the other kinds': DATETIME keeps whole seconds, TEXT
# and BLOB hold 64 KB. The variants give every kind the same range.
_MYSQL = ("mysql", "mariadb")


def timestamp(timezone: bool = False) -> sa.types.TypeEngine[Any]:
    """A timestamp with microseconds where the kind has them."""
    return sa.DateTime(timezone=timezone).with_variant(mysql.DATETIME(fsp=6), *_MYSQL)


def long_text() -> sa.types.TypeEngine[Any]:
    return sa.Text().with_variant(mysql.LONGTEXT(), *_MYSQL)


def blob() -> sa.types.TypeEngine[Any]:
    return sa.LargeBinary().with_variant(mysql.LONGBLOB(), *_MYSQL)


class ExactDecimal(sa.types.TypeDecorator[Decimal]):
    """NUMERIC(p, s), kept as its exact text on SQLite: SQLite's NUMERIC affinity stores a
    REAL (15 significant digits), so a POS on SQLite keeps wide money in TEXT columns."""

    impl = sa.Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(40))
        return dialect.type_descriptor(self.impl_instance)

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if dialect.name == "sqlite" and isinstance(value, Decimal):
            return format(value, "f")
        return value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        if dialect.name == "sqlite" and value is not None:
            return Decimal(str(value))
        return value


def key(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.Integer, primary_key=True, autoincrement=False)


# --- kinds ---------------------------------------------------------------------------------
def kind_of(url: str) -> str:
    name = sa.make_url(url).get_backend_name()
    return "mariadb" if name == "mysql" else name


def _kind_function(kind: str, name: str, required: bool = True) -> Callable[..., Any] | None:
    """`name` from tests/fixtures_<kind>.py; a required one that is missing fails the test."""
    try:
        module = importlib.import_module(f"fixtures_{kind}")
    except ImportError as exc:
        pytest.fail(f"tests/fixtures_{kind}.py cannot be imported: {exc}")
    function = getattr(module, name, None)
    if function is None and required:
        pytest.fail(f"tests/fixtures_{kind}.py has no {name}() (needed by the backend suite)")
    return function


def engine(url: str) -> sa.Engine:
    """A test-side engine: the application's connection, not the replicator's (it marks no
    origin, so the triggers take its writes for a sale's). For other kinds than SQLite and
    PostgreSQL: the fixture's `engine(url)`, else the engine the backend builds (drivers
    that need its connection string or binding fixes, e.g. MariaDB over ODBC)."""
    kind = kind_of(url)
    if kind in ("sqlite", "postgresql"):
        return sa.create_engine(url)
    custom = _kind_function(kind, "engine", required=False)
    if custom:
        return custom(url)  # type: ignore[no-any-return]
    return open_backend(sa.make_url(url), "application").engine


def register_extra(kind: str) -> str:
    """Lines for the register's section of replicator.toml (a password by reference)."""
    if kind in ("sqlite", "postgresql"):
        return ""
    for name in ("register_extra", f"{kind}_password_setting"):
        custom = _kind_function(kind, name, required=False)
        if custom:
            return str(custom())
    return ""


@contextmanager
def connect(url: str) -> Iterator[sa.Connection]:
    """One transaction on `url`, committed at the end."""
    eng = engine(url)
    try:
        with eng.begin() as conn:
            yield conn
    finally:
        eng.dispose()


def create(url: str, metadata: sa.MetaData) -> None:
    eng = engine(url)
    try:
        metadata.create_all(eng)
    finally:
        eng.dispose()


def reflect(conn: sa.Connection, name: str) -> sa.Table:
    return sa.Table(name, sa.MetaData(), autoload_with=conn)


def insert(url: str, table: str | sa.Table, values: list[dict[str, Any]]) -> None:
    """Rows written by the application, in one transaction (`table`: a name, reflected, or
    the test's own Table)."""
    with connect(url) as conn:
        t = reflect(conn, table) if isinstance(table, str) else table
        conn.execute(t.insert(), values)


def normalize(value: Any) -> Any:
    """One form per value whatever the kind returned: aware UTC timestamps (naive ones are
    UTC, the zone of the test machine and of our PostgreSQL sessions), normalised exact
    decimals (never a float: a float would hide a lost digit), bytes for memoryviews."""
    if isinstance(value, datetime):
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    if isinstance(value, Decimal):
        return value.normalize()
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    assert not isinstance(value, float), f"{value!r}: an exact value came back as a float"
    return value


def rows(url: str, table: str | sa.Table, where: str | None = None) -> list[tuple[Any, ...]]:
    """Every row without the tracking columns, in key order, values normalised. Columns are
    in the table's order: give both sides' tables the same shape to compare them. `table`:
    a name (reflected) or the test's own Table (read with its types, e.g. ExactDecimal)."""
    eng = engine(url)
    try:
        with eng.connect() as conn:
            t = reflect(conn, table) if isinstance(table, str) else table
            cols = [c for c in t.c if c.name.lower() not in TRACKING]
            stmt = sa.select(*cols).order_by(*t.primary_key.columns)
            if where:
                stmt = stmt.where(sa.text(where))
            return [tuple(normalize(v) for v in r) for r in conn.execute(stmt)]
    finally:
        eng.dispose()


def ids(url: str, table: str, column: str = "id") -> list[int]:
    eng = engine(url)
    try:
        with eng.connect() as conn:
            t = reflect(conn, table)
            return list(conn.execute(sa.select(t.c[column]).order_by(t.c[column])).scalars())
    finally:
        eng.dispose()


def count(url: str, table: str, column: str | None = None, distinct: bool = False) -> int:
    """count(*) of a table, or of distinct values of one column."""
    eng = engine(url)
    try:
        with eng.connect() as conn:
            t = reflect(conn, table)
            what = sa.func.count(sa.distinct(t.c[column])) if column else sa.func.count()
            return int(conn.execute(sa.select(what).select_from(t)).scalar() or 0)
    finally:
        eng.dispose()


# --- a register and its server -------------------------------------------------------------
@dataclass
class Store:
    """One register (of `kind`) and its PostgreSQL server, with the node that replicates."""

    kind: str
    register: str
    server: str
    path: Path
    nodes: list[Node] = field(default_factory=list)

    def node(self, mappings: dict[str, str], sync: str = "", setup: bool = True) -> Node:
        """Write the config and mappings (again), load the node, set it up."""
        extra = register_extra(self.kind)
        if extra and not extra.endswith("\n"):
            extra += "\n"
        if sync:
            extra += "\n[sync]\n" + sync + "\n"
        node = Node(write_node(self.path, self.server, self.register, mappings, extra=extra))
        self.nodes.append(node)
        if setup:
            node.setup()
        return node

    def close(self) -> None:
        """Close every node (a failed test leaves no open connection behind)."""
        for node in self.nodes:
            node.close()


@contextmanager
def make_store(
    register_database: Callable[[], str], pg_database: Callable[[], str], tmp_path: Path
) -> Iterator[Store]:
    register = register_database()
    store = Store(kind_of(register), register, pg_database(), tmp_path)
    try:
        yield store
    finally:
        store.close()


# --- backup and restore of a register --------------------------------------------------------
def backup(url: str) -> object:
    """A backup of the register database at `url` (no replicator connection may be open)."""
    kind = kind_of(url)
    if kind == "sqlite":
        return _sqlite_backup(url)
    if kind == "postgresql":
        return _pg_backup(url)
    function = _kind_function(kind, "backup")
    assert function is not None
    return function(url)


def restore(url: str, saved: object) -> None:
    """Put the database at `url` back in the state of `saved` (a backup of it)."""
    kind = kind_of(url)
    if kind == "sqlite":
        return _sqlite_restore(url, saved)
    if kind == "postgresql":
        return _pg_restore(url, saved)
    function = _kind_function(kind, "restore")
    assert function is not None
    function(url, saved)
    return None


def _sqlite_path(url: str) -> Path:
    database = sa.make_url(url).database
    assert database, url
    return Path(database)


def _sqlite_backup(url: str) -> bytes:
    """The whole database as one consistent image (what the WAL holds included)."""
    conn = sqlite3.connect(_sqlite_path(url))
    try:
        return conn.serialize()
    finally:
        conn.close()


def _sqlite_restore(url: str, saved: object) -> None:
    assert isinstance(saved, bytes)
    path = _sqlite_path(url)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.unlink()  # a new file, as a restore on a replaced disk writes
    path.write_bytes(saved)


def _libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_backup(url: str) -> bytes:
    """pg_dump in its custom format."""
    done = subprocess.run(
        ["pg_dump", "--format=custom", "--dbname", _libpq(url)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def _pg_restore(url: str, saved: object) -> None:
    """The database dropped and created again, then pg_restore of the dump."""
    assert isinstance(saved, bytes)
    name = sa.make_url(url).database
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run(
        ["pg_restore", "--exit-on-error", "--dbname", _libpq(url)],
        input=saved,
        capture_output=True,
        check=True,
        timeout=60,
    )


# --- databases that live as long as a module's fixture ----------------------------------------
@contextmanager
def module_databases(
    kind: str, request: pytest.FixtureRequest, directory: Path
) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty databases of `kind` for a module-scoped fixture (the
    `<kind>_database` fixtures are per test): one setup shared by many small tests. Uses the
    session fixtures of each kind (server reachable, password) and its own create/drop."""
    made: list[str] = []
    drop: Callable[[str], None]
    if kind == "sqlite":

        def make() -> str:
            return f"sqlite:///{directory / f'm{len(made)}.db'}"

        def drop(url: str) -> None:
            return None

    elif kind == "postgresql":
        admin = request.getfixturevalue("pg_admin")

        def make() -> str:
            name = f"repl_test_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

        def drop(url: str) -> None:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{sa.make_url(url).database}" WITH (FORCE)')

    elif kind == "mariadb":
        import pyodbc

        from replicator.backends.mariadb import odbc_string

        base = sa.make_url(request.getfixturevalue("mariadb_admin"))

        def admin(sql: str) -> None:
            conn = pyodbc.connect(odbc_string(base), autocommit=True, timeout=5)
            try:
                conn.cursor().execute(sql)
            finally:
                conn.close()

        def make() -> str:
            name = f"repl_mdb_{uuid.uuid4().hex[:12]}"
            admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            return base.set(database=name).render_as_string(hide_password=False)

        def drop(url: str) -> None:
            admin(f"DROP DATABASE IF EXISTS `{sa.make_url(url).database}`")

    elif kind == "firebird":
        password = request.getfixturevalue("firebird_admin")
        module = importlib.import_module("fixtures_firebird")
        missing = [
            n for n in ("FB_DIR", "FB_HOST", "FB_PORT", "create", "drop") if not hasattr(module, n)
        ]
        if missing:
            pytest.fail(f"tests/fixtures_firebird.py has no {', '.join(missing)} (used here)")

        def make() -> str:
            path = module.FB_DIR / f"repl_test_{uuid.uuid4().hex[:12]}.fdb"
            module.create(path, password)
            return f"firebird+firebird://SYSDBA@{module.FB_HOST}:{module.FB_PORT}/{path}"

        def drop(url: str) -> None:
            module.drop(str(sa.make_url(url).database), password)

    else:
        pytest.fail(f"no module-scoped databases for kind {kind!r}")

    def factory() -> str:
        made.append(make())
        return made[-1]

    try:
        yield factory
    finally:
        for url in made:
            drop(url)
