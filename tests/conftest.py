"""Fixtures: real databases only. PostgreSQL at 127.0.0.1:5432 (a fresh database per test),
SQLite files in tmp_path. With CI=true a missing PostgreSQL fails the run instead of skipping."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

# The tests' expected values take naive SQLite timestamps as UTC: pin the machine's zone
# (the default zone of SQLite databases) whatever machine runs them.
os.environ["TZ"] = "UTC"
PG_ADMIN = os.environ.get("REPLICATOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_available() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]


@pytest.fixture(scope="session")
def pg_admin() -> str:
    problem = _pg_available()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but PostgreSQL is not reachable at {PG_ADMIN}: {problem}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {problem}")
    return PG_ADMIN


@pytest.fixture
def pg_database(pg_admin: str) -> Iterator[Callable[[], str]]:
    """Factory of fresh, empty PostgreSQL databases; returns SQLAlchemy URLs."""
    created: list[str] = []

    def make() -> str:
        name = f"repl_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    yield make
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Callable[[], str]:
    counter = iter(range(1000))

    def make() -> str:
        return f"sqlite:///{tmp_path / f'db{next(counter)}.db'}"

    return make


# Register databases beyond SQLite and PostgreSQL: each kind's fixtures live in their own file
# (tests/fixtures_<kind>.py: a `<kind>_database` factory like `pg_database`).
from fixtures_firebird import *  # noqa: E402, F403
from fixtures_mariadb import *  # noqa: E402, F403

# Every kind a register can be, for the shared suite (tests/test_backends.py).
REGISTER_KINDS = ["sqlite", "postgresql", "mariadb", "firebird"]


@pytest.fixture(params=REGISTER_KINDS)
def register_database(request: pytest.FixtureRequest) -> Callable[[], str]:
    """Parametrises a test over every kind of register database (ids: the kind)."""
    name = "pg_database" if request.param == "postgresql" else f"{request.param}_database"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database(request: pytest.FixtureRequest) -> Callable[[], str]:
    """Parametrises a test over every backend."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_database")  # type: ignore[no-any-return]
    return request.getfixturevalue("sqlite_database")  # type: ignore[no-any-return]


def execute(url: str, *statements: str, params: dict[str, object] | None = None) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for stmt in statements:
                conn.execute(sa.text(stmt), params or {})
    finally:
        engine.dispose()
