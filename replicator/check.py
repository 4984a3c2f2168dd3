"""`replicator check`: config and mappings against the live catalogs, like `nginx -t`."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from replicator.backends import Backend
from replicator.backends.base import first_line
from replicator.config import Job, Settings
from replicator.errors import ConfigError, ReplicatorError
from replicator.mapping import FromColumn
from replicator.preflight import cannot_connect, connect_problem
from replicator.resync_drift import drift_of
from replicator.sync import Databases, JobRunner
from replicator.transform import TablePlan


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def run_check(settings: Settings, databases: Databases) -> Report:
    report = Report()
    reachable = set()
    for name in settings.config.databases:
        backend = databases[name]
        try:
            problem = connect_problem(backend)
        except ConfigError as exc:  # a driver or data source that is not there
            report.errors.append(f"database {name!r}: {exc}")
            continue
        if problem:
            report.errors.append(str(cannot_connect(name, backend, problem)))
        else:
            reachable.add(name)
            report.checked.append(f"database {name}: {backend.display_url} reachable")
    grants = Grants()
    for job in settings.jobs(list(settings.groups)):
        if not {job.source, job.target} <= reachable:
            continue
        runner = JobRunner(settings, databases, job)
        try:
            indexed = list(enumerate(runner.plans()))
        except ReplicatorError as exc:
            indexed, errors = runner.plans_each()  # every table's mistakes, not the first one's
            report.errors.extend(errors or str(exc).splitlines())
            if not indexed:
                continue
        plans = [plan for _, plan in indexed]
        target = databases[job.target]
        with target.engine.connect() as conn, databases[job.source].engine.connect() as sconn:
            set_up = target.has_table(conn, target.ct.state.fullname)
            if not set_up:
                report.errors.append(
                    f"database {job.target!r}: control tables missing; run `replicator setup`"
                )
            for index, plan in indexed:
                _check_table(report, settings.where(job.group, index), plan, conn, sconn)
            try:
                drift = drift_of(target, conn, job, plans) if set_up else {}
            except sa_exc.SQLAlchemyError:
                drift = {}  # not readable by this role: the grants check below names it
        if drift is None:
            report.warnings.append(
                f"database {job.target!r}: set up by an earlier version (no table "
                f"{target.ct.mapping_print.fullname}): mapping changes are not detected; run "
                "`replicator setup` once to add it"
            )
        for index, plan in indexed:
            if drift and plan.label in drift:
                report.warnings.append(
                    f"{settings.where(job.group, index)}: table {plan.label!r}: {drift[plan.label]}"
                )
        grants.need(settings, databases, job, plans)
        report.checked.append(f"job {job.name}: {len(plans)} tables")
    grants.check(report, databases)
    return report


# --- privileges (PostgreSQL) -----------------------------------------------------------------
WRITE = ("SELECT", "INSERT", "UPDATE", "DELETE")

# One relation by schema and name, read from the catalogs: has_*_privilege on its oid needs no
# privilege itself (a regclass cast of a qualified name would fail without USAGE on the schema).
RELATION = """
SELECT n.nspname, c.relname, c.oid, has_schema_privilege(n.oid, 'USAGE') AS usage
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = :schema AND c.relname = :name
"""
# An unqualified name: the first schema of the search path that has it, as the replicator's
# own statements resolve it.
RELATION_IN_PATH = """
SELECT n.nspname, c.relname, c.oid, has_schema_privilege(n.oid, 'USAGE') AS usage
  FROM unnest(current_schemas(true)) WITH ORDINALITY AS p(name, i)
  JOIN pg_namespace n ON n.nspname = p.name
  JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = :name
 ORDER BY p.i LIMIT 1
"""
# Sequences behind serial columns (their defaults call nextval, which needs USAGE).
SEQUENCES = """
SELECT n.nspname, s.relname, a.attname, has_sequence_privilege(s.oid, 'USAGE') AS usage
  FROM pg_depend d
  JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_namespace n ON n.oid = s.relnamespace
  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
   AND d.refobjid = CAST(:oid AS oid) AND d.deptype = 'a'
"""


# The control tables a job uses in its source database (the others are the target's), and
# what it does with them: reads the tombstones and the database's identity, records what it
# has applied.
SOURCE_CONTROLS: dict[str, tuple[str, ...]] = {
    "tombstone": ("SELECT", "DELETE"),  # deleted keys are read, then purged once applied
    "incarnation": ("SELECT", "INSERT", "UPDATE"),  # renewed when a restore is found
    "ack": WRITE,
}


def _source_controls(backend: Backend) -> list[tuple[sa.Table, tuple[str, ...]]]:
    found = ((getattr(backend.ct, name, None), privs) for name, privs in SOURCE_CONTROLS.items())
    return [(table, privs) for table, privs in found if table is not None]


@dataclass
class _Need:
    privileges: set[str] = field(default_factory=set)
    unmapped: set[str] | None = None  # serial columns the replicator leaves to their default
    why: set[str] = field(default_factory=set)


class Grants:
    """The privileges the replicator's role needs, per PostgreSQL database, and their check.

    Target: write on the mapped target tables and on the control tables (state, quarantine,
    and the tombstone table when a target table is itself tracked, since its triggers write
    there), USAGE on the sequences of serial columns it does not fill, TEMPORARY on the
    database (batches are staged in temporary tables). Source: SELECT on the source tables
    and on the tombstone table. Both: USAGE on the schemas of those tables."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[tuple[str | None, str], _Need]] = {}
        self.temporary: dict[str, set[str]] = {}

    def _add(
        self,
        db: str,
        schema: str | None,
        name: str,
        privileges: tuple[str, ...],
        why: str,
        unmapped: set[str] | None = None,
    ) -> None:
        need = self.tables.setdefault(db, {}).setdefault((schema, name), _Need())
        need.privileges.update(privileges)
        need.why.add(why)
        if unmapped is not None:
            need.unmapped = (need.unmapped or set()) | unmapped

    def need(
        self, settings: Settings, databases: Databases, job: Job, plans: list[TablePlan]
    ) -> None:
        from replicator.tracking import tracked_tables

        source, target = databases[job.source], databases[job.target]
        if target.dialect == "postgresql":
            tracked = {t.name for t in tracked_tables(settings)[job.target].tables}
            for plan in plans:
                t = plan.target
                unmapped = {c.name for c in t.c} - set(plan.columns)
                self._add(job.target, t.schema, t.name, WRITE, "mapped target table", unmapped)
                if plan.mapping.target_table in tracked:
                    tomb = target.ct.tombstone
                    self._add(
                        job.target,
                        tomb.schema,
                        tomb.name,
                        ("INSERT",),
                        "written by the triggers of tracked target tables",
                    )
            # the target side's control tables: all but the source side's (watermarks, jobs,
            # quarantine...)
            source_side = {t.name for t, _ in _source_controls(target)}
            controls = [t for t in target.ct.metadata.sorted_tables if t.name not in source_side]
            for control in controls:
                serial = {c.name for c in control.c}  # e.g. quarantine.id, from its sequence
                self._add(job.target, control.schema, control.name, WRITE, "control table", serial)
            self.temporary.setdefault(job.target, set()).add(job.name)
        server = databases[job.server] if job.server else None
        if settings.config.service.shared and server and server.dialect == "postgresql":
            lease = server.ct.lease
            self._add(job.server, lease.schema, lease.name, WRITE, "leases of shared jobs")
        if source.dialect == "postgresql":
            for plan in plans:
                self._add(
                    job.source,
                    plan.source.schema,
                    plan.source.name,
                    ("SELECT",),
                    "mapped source table",
                )
            for control, privileges in _source_controls(source):
                self._add(job.source, control.schema, control.name, privileges, "control table")

    def check(self, report: Report, databases: Databases) -> None:
        for db, tables in self.tables.items():
            backend = databases[db]
            try:
                with backend.engine.connect() as conn:
                    self._check_database(report, db, backend, conn, tables)
            except sa_exc.SQLAlchemyError as exc:
                report.errors.append(
                    f"database {db!r} ({backend.display_url}): cannot read its privileges: "
                    f"{first_line(exc)}"
                )

    def _check_database(
        self,
        report: Report,
        db: str,
        backend: Backend,
        conn: sa.Connection,
        tables: dict[tuple[str | None, str], _Need],
    ) -> None:
        role, database, temporary = conn.execute(
            sa.text(
                "SELECT current_user, current_database(), "
                "has_database_privilege(current_database(), 'TEMPORARY')"
            )
        ).one()
        q = backend.quote
        where = f"database {db!r} ({backend.display_url}): role {role!r}"
        grantee = q(role)
        if db in self.temporary and not temporary:
            report.errors.append(
                f"{where} lacks TEMPORARY on database {database!r} (batches are staged in "
                f"temporary tables); run as a superuser or the database's owner: "
                f"GRANT TEMPORARY ON DATABASE {q(database)} TO {grantee};"
            )
        schemas_reported: set[str] = set()
        for (schema, name), need in tables.items():
            sql, params = (RELATION, {"schema": schema}) if schema else (RELATION_IN_PATH, {})
            found = conn.execute(sa.text(sql), {**params, "name": name}).first()
            if found is None:
                continue  # a missing table is reported elsewhere (mapping or setup)
            nspname, relname, oid, usage = found
            if not usage and nspname not in schemas_reported:
                schemas_reported.add(nspname)
                report.errors.append(
                    f"{where} lacks USAGE on schema {nspname!r}; run as its owner: "
                    f"GRANT USAGE ON SCHEMA {q(nspname)} TO {grantee};"
                )
            order = [p for p in WRITE if p in need.privileges]
            checks = ", ".join(f"has_table_privilege(CAST(:oid AS oid), '{p}')" for p in order)
            granted = conn.execute(sa.text(f"SELECT {checks}"), {"oid": oid}).one()
            lacking = [p for p, ok in zip(order, granted, strict=True) if not ok]
            full = f"{q(nspname)}.{q(relname)}"
            if lacking:
                privileges = ", ".join(lacking)
                report.errors.append(
                    f"{where} lacks {privileges} on table {nspname}.{relname} "
                    f"({', '.join(sorted(need.why))}); run as its owner: "
                    f"GRANT {privileges} ON {full} TO {grantee};"
                )
            if need.unmapped is None:
                continue
            for seq_schema, seq, column, ok in conn.execute(sa.text(SEQUENCES), {"oid": oid}):
                if not ok and column in need.unmapped:
                    report.errors.append(
                        f"{where} lacks USAGE on sequence {seq_schema}.{seq} (the default of "
                        f"{nspname}.{relname}.{column}); run as its owner: "
                        f"GRANT USAGE ON SEQUENCE {q(seq_schema)}.{q(seq)} TO {grantee};"
                    )


def _check_table(
    report: Report, where: str, plan: TablePlan, conn: sa.Connection, sconn: sa.Connection
) -> None:
    prefix = f"{where}: table {plan.label!r}"
    target, source = plan.target, plan.source
    if not _is_unique(sconn, source, plan.mapping.key):
        report.errors.append(
            f"{prefix}: key {plan.mapping.key} is not the primary key or a unique constraint "
            f"of source table {source.name!r}; rows with equal keys would collide; set key to "
            f"{list(source.primary_key.columns.keys()) or 'a unique column set'}"
        )
    if not _is_unique(conn, target, plan.target_key):
        report.errors.append(
            f"{prefix}: target key {plan.target_key} is not the primary key or a unique "
            f"constraint of {target.name!r}; add one, or set target_key to its primary key "
            f"{list(target.primary_key.columns.keys())}"
        )
    for tcol, expr in zip(plan.columns, plan.select, strict=True):
        source_type = expr.type
        target_type = target.c[tcol].type
        b = _category(target_type)
        spec = plan.mapping.columns.get(tcol)
        mapped = isinstance(spec, FromColumn) and spec.map is not None
        for what, a, shown in _column_inputs(plan, spec, source_type):
            problem = _type_rule(a, b)
            if problem is None:
                continue
            level, note = problem
            if what.startswith("value map"):  # one value: it fits or it never does
                level, note = "error", "write the map's values in the target column's type"
            if level == "error":
                report.errors.append(
                    f"{prefix}: column {tcol!r}: {what} {shown} does not fit target type "
                    f"{target_type}: sync would refuse every such row; {note}"
                )
            else:
                report.warnings.append(
                    f"{prefix}: column {tcol!r}: {what} {shown} into target type "
                    f"{target_type}: {note}"
                )
        a = _category(source_type)
        if a == b == "text" and not mapped and _length(source_type) > _length(target_type):
            report.warnings.append(
                f"{prefix}: column {tcol!r}: source {source_type} may not fit target "
                f"{target_type}; long values will be quarantined"
            )
        precision = getattr(target_type, "precision", None) or 0
        if (
            conn.dialect.name == "sqlite"
            and isinstance(target_type, sa.Numeric)
            and (precision > 15)
        ):
            report.warnings.append(
                f"{prefix}: column {tcol!r}: SQLite keeps numbers as 64-bit floats; values "
                f"with more than 15 digits ({target_type}) lose precision"
            )
        if not target.c[tcol].nullable and isinstance(expr, sa.Null):
            report.errors.append(
                f"{prefix}: column {tcol!r} is NOT NULL on the target but mapped to null"
            )
    skipped = [
        c.name
        for c in plan.source.c
        if c.name not in plan.columns
        and c.name not in plan.mapping.exclude
        and c.name not in {plan.mapping.change_column, "repl_origin"}
        and c.name not in _sources(plan)
    ]
    if skipped and plan.mapping.copy_other_columns:
        report.warnings.append(
            f"{prefix}: source columns {skipped} have no target column and are not "
            "copied; add them to exclude to silence this"
        )
    missing = [
        c.name
        for c in target.c
        if not c.nullable
        and c.server_default is None
        and c.name not in plan.columns
        and c.autoincrement is not True
    ]
    if missing:
        report.errors.append(
            f"{prefix}: target columns {missing} are NOT NULL without "
            "default and receive no value; map them in columns"
        )


def _is_unique(conn: sa.Connection, table: sa.Table, columns: list[str]) -> bool:
    """Whether the columns are the primary key, a unique constraint or a unique index."""
    insp = sa.inspect(conn)
    sets = [list(table.primary_key.columns.keys())]
    sets += [u["column_names"] for u in insp.get_unique_constraints(table.name, table.schema)]
    sets += [
        [c for c in i["column_names"] if c]
        for i in insp.get_indexes(table.name, table.schema)
        if i.get("unique")
    ]
    return any(sorted(s) == sorted(columns) for s in sets if s)


def _sources(plan: TablePlan) -> set[str]:
    out = set()
    for spec in plan.mapping.columns.values():
        if isinstance(spec, FromColumn):
            out.add(spec.from_)
        elif isinstance(spec, str):
            out.add(spec)
    return out


def _category(t: sa.types.TypeEngine[object]) -> str | None:
    """What kind of value a column holds, as sync treats it: SQLite columns after their
    affinity as SQLAlchemy reflects it (TEXT, CHAR, CLOB: text; INT: number; REAL, NUMERIC
    and unknown names: number; DATETIME, TIMESTAMP, DATE by name); None: not known."""
    try:
        kind = t.python_type
    except NotImplementedError:
        return None
    # MariaDB's and MySQL's BOOLEAN is TINYINT(1): the driver writes True/False as 1/0
    if kind is bool or (type(t).__name__ == "TINYINT" and getattr(t, "display_width", 0) == 1):
        return "bool"
    if kind in (int, float) or kind.__name__ == "Decimal":
        return "number"
    if kind is str:
        return "text"
    return kind.__name__


def _value_category(value: object) -> str | None:
    """The category of a literal (a value map's value or default)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        try:
            Decimal(value)
        except InvalidOperation:
            return "text"
        return "number"
    return type(value).__name__


def _column_inputs(
    plan: TablePlan, spec: object, source_type: sa.types.TypeEngine[object]
) -> list[tuple[str, str | None, str]]:
    """What can reach a target column, as (what, category, shown): the source expression;
    for a value map, its values (and default) and, without a default, the source values it
    passes through unchanged."""
    if not (isinstance(spec, FromColumn) and spec.map is not None):
        return [("source type", _category(source_type), str(source_type))]
    out = []
    literals = [*spec.map.values(), *([spec.default] if spec.has_default else [])]
    for value in dict.fromkeys(v for v in literals if v is not None):
        out.append(("value map value", _value_category(value), repr(value)))
    if not spec.has_default and spec.from_ in plan.source.c:
        through = plan.source.c[spec.from_].type
        out.append(("source type (values not in the map)", _category(through), str(through)))
    return out


# Sync copies a value whose kind differs from its target column's in these cases: into TEXT
# as its exact text (decimals at their scale, ISO-8601 timestamps, dates and times); text
# into numbers and timestamps as the target parses it, refusing (quarantining) the rows
# whose text is not one.
_AS_TEXT = {"number", "datetime", "date", "time"}
_PARSED = {
    "number": "non-numeric text will be quarantined",
    "datetime": "text that is not an ISO-8601 timestamp will be quarantined; text without an "
    "offset is taken as local time of the source database's timezone",
    "date": "text that is not an ISO-8601 date will be quarantined",
}


_FIX = (
    "change the column type on one side so that they match (a value map, map:, only "
    "translates codes such as {O: open}; it converts no other value)"
)


def _type_rule(a: str | None, b: str | None) -> tuple[str, str] | None:
    """None when sync copies every value of category `a` into a column of category `b`;
    ("warning", note) when only some of them; ("error", fix) when none."""
    if a is None or b is None or a == b:
        return None
    if b == "text" and a in _AS_TEXT:
        return None
    if a == "text" and b in _PARSED:
        return "warning", _PARSED[b]
    return "error", _FIX


def _length(t: sa.types.TypeEngine[object]) -> int:
    return getattr(t, "length", None) or 1 << 30
