"""Helpers shared by the tests: write a node (config + mappings), compare both sides."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from replicator.config import Settings, load_settings
from replicator.sync import Databases, JobResult, run_jobs
from replicator.tracking import install

TRACKING = {"repl_version", "repl_origin"}

# The smallest register -> server group, used by most engine tests.
ITEMS = """\
group: itens
direction: register_to_server
tables:
  - source: item
    key: [id]
"""
ITEM_DDL = "CREATE TABLE item (id integer PRIMARY KEY, name varchar(20), qty integer)"


def write_node(
    directory: Path,
    server: str,
    register: str,
    mappings: dict[str, str],
    extra: str = "",
    register_vars: str = "{ register_id = 3 }",
) -> Path:
    (directory / "mappings").mkdir(parents=True, exist_ok=True)
    for name, text in mappings.items():
        (directory / "mappings" / f"{name}.yaml").write_text(textwrap.dedent(text), "utf-8")
    config = directory / "replicator.toml"
    config.write_text(
        textwrap.dedent(f"""\
        mappings = "mappings"

        [node]
        name = "test-node"
        store_id = 1

        [databases.server]
        role = "server"
        url = "{server}"

        [databases.caixa]
        role = "register"
        url = "{register}"
        vars = {register_vars}
        """)
        + textwrap.dedent(extra),
        "utf-8",
    )
    return config


class Node:
    """A loaded node with its databases open; `sync()` runs one cycle of the given groups."""

    def __init__(self, config: Path) -> None:
        self.settings: Settings = load_settings(config)
        self.dbs = Databases(self.settings)

    def setup(self) -> None:
        install(self.settings, self.dbs)

    def sync(self, *groups: str, max_batches: int | None = None) -> list[JobResult]:
        results = run_jobs(
            self.settings,
            self.settings.jobs(list(groups) or None),
            self.dbs,
            max_batches=max_batches,
        )
        for r in results:
            if r.error:
                raise r.error
        return results

    def close(self) -> None:
        self.dbs.close()


def quarantined(node: Node, db: str = "server") -> list[tuple[str, str]]:
    """(table, key) of every row in the quarantine table of a target, sorted."""
    backend = node.dbs[db]
    q = backend.ct.quarantine
    with backend.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.select(q.c.table_name, q.c.row_key)))


def moved(results: list[JobResult]) -> int:
    return sum(r.rows for r in results)


def normalize(value: Any) -> Any:
    """One representation per value whatever the backend stored."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # SQLite and our PostgreSQL sessions: UTC
        return value.astimezone(UTC)
    if isinstance(value, float):
        return Decimal(str(value)).normalize()
    if isinstance(value, Decimal):
        return value.normalize()
    return value


def rows(
    url: str, table: str, columns: list[str] | None = None, where: str | None = None
) -> list[tuple[Any, ...]]:
    """All rows of a table as normalised tuples, sorted, without tracking columns."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            t = sa.Table(table, sa.MetaData(), autoload_with=conn)
            cols = (
                [t.c[c] for c in columns] if columns else [c for c in t.c if c.name not in TRACKING]
            )
            stmt = sa.select(*cols)
            if where:
                stmt = stmt.where(sa.text(where))
            out = [tuple(normalize(v) for v in r) for r in conn.execute(stmt)]
    finally:
        engine.dispose()
    return sorted(out, key=repr)


def scalar(url: str, sql: str) -> Any:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar()
    finally:
        engine.dispose()
