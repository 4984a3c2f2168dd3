"""`replicator setup`: control tables and change tracking for every mapped source table."""

from __future__ import annotations

from dataclasses import dataclass, field

from loguru import logger
from sqlalchemy import exc as sa_exc

from replicator.backends.base import TrackedTable
from replicator.config import Settings
from replicator.errors import ReplicatorError
from replicator.sync import Databases


@dataclass
class DatabasePlan:
    name: str
    tables: list[TrackedTable] = field(default_factory=list)


def tracked_tables(settings: Settings) -> dict[str, DatabasePlan]:
    """Per database, the tables it is a source of (and so must track)."""
    plans = {name: DatabasePlan(name) for name in settings.config.databases}
    for job in settings.jobs(list(settings.groups)):
        for table in settings.groups[job.group].tables:
            tracked = TrackedTable(table.source, tuple(table.key), table.change_column)
            if tracked not in plans[job.source].tables:
                plans[job.source].tables.append(tracked)
    return plans


def setup_script(settings: Settings, databases: Databases, name: str) -> list[str]:
    """What `setup` would run on one database. Tailored to the live tables when the database
    can be reached (existing columns, WITHOUT ROWID tables); generic when it cannot."""
    backend = databases[name]
    plan = tracked_tables(settings)[name]
    statements = [*backend.database_ddl(), *backend.prepare_ddl(), *backend.control_ddl()]
    try:
        if backend.exists():
            with backend.engine.connect() as conn:
                return statements + [s for t in plan.tables for s in backend.tracking_ddl(conn, t)]
    except sa_exc.SQLAlchemyError:
        logger.bind(database=name).info("not reachable: printing the generic script")
    return statements + [s for t in plan.tables for s in backend.tracking_ddl(None, t)]


def install(
    settings: Settings,
    databases: Databases,
    names: list[str] | None = None,
    new_identity: bool = False,
) -> None:
    """Install control tables and tracking, one transaction per database. `new_identity`:
    give each database a new incarnation (a backup restored again, a copied file)."""
    for name in names or list(settings.config.databases):
        backend = databases[name]
        plan = tracked_tables(settings)[name]
        log = logger.bind(database=name)
        try:
            raw = backend.engine.raw_connection()
            try:
                for stmt in backend.database_ddl():  # outside any transaction
                    raw.cursor().execute(stmt)
            finally:
                raw.close()
            with backend.setup_connection() as conn:
                for stmt in backend.prepare_ddl():
                    conn.exec_driver_sql(stmt)
                backend.ct.metadata.create_all(conn)
                backend.ensure_incarnation(conn)
                if new_identity:
                    backend.renew_identity(conn, "new identity requested with setup")
                    log.warning("{} has a new identity: its jobs read it again", name)
                for table in plan.tables:
                    if not backend.has_table(conn, table.name):
                        raise ReplicatorError(
                            f"{_where(settings, table.name)}: database {name!r}: source table "
                            f"{table.name!r} does not exist; create "
                            "it or fix the mapping's source"
                        )
                    for stmt in backend.tracking_ddl(conn, table):
                        conn.exec_driver_sql(stmt)
            backend.forget_tables()
            log.info("tracking installed on {} tables of {}", len(plan.tables), backend.display_url)
        except sa_exc.SQLAlchemyError as exc:
            raise backend.classify(exc) from exc
        finally:
            # a server's config lists many registers: keep no idle connection to each one
            # (on one PostgreSQL cluster they would exhaust max_connections)
            backend.engine.dispose()


def printable(statements: list[str]) -> str:
    out = []
    for stmt in statements:
        text = stmt.strip()
        out.append(text if text.endswith(";") else text + ";")
    return "\n\n".join(out) + "\n"


def _where(settings: Settings, source_table: str) -> str:
    """The mapping file and line that names a source table."""
    for group, mapping in settings.groups.items():
        for index, table in enumerate(mapping.tables):
            if table.source == source_table:
                return settings.where(group, index)
    return str(settings.config.mappings)
