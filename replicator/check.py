"""`replicator check`: config and mappings against the live catalogs, like `nginx -t`."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from replicator.config import Settings
from replicator.errors import ReplicatorError
from replicator.mapping import FromColumn
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
            with backend.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            reachable.add(name)
            report.checked.append(f"database {name}: {backend.display_url} reachable")
        except sa_exc.SQLAlchemyError as exc:
            report.errors.append(f"database {name!r}: cannot connect: {backend.classify(exc)}")
    for job in settings.jobs(list(settings.groups)):
        if not {job.source, job.target} <= reachable:
            continue
        runner = JobRunner(settings, databases, job)
        try:
            plans = runner.plans()
        except ReplicatorError as exc:
            report.errors.extend(str(exc).splitlines())
            continue
        target = databases[job.target]
        with target.engine.connect() as conn, databases[job.source].engine.connect() as sconn:
            if not target.has_table(conn, target.ct.state.fullname):
                report.errors.append(
                    f"database {job.target!r}: control tables missing; run `replicator setup`"
                )
            for plan in plans:
                _check_table(report, runner.where, plan, conn, sconn)
        report.checked.append(f"job {job.name}: {len(plans)} tables")
    return report


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
        a, b = _category(source_type), _category(target_type)
        spec = plan.mapping.columns.get(tcol)
        mapped = isinstance(spec, FromColumn) and spec.map is not None
        if a and b and a != b and not mapped and not (a == "number" and b == "text"):
            report.errors.append(
                f"{prefix}: column {tcol!r}: source type {source_type} does not fit target "
                f"type {target_type}; map it through a value map or change a column type"
            )
        elif a == b == "text" and not mapped and _length(source_type) > _length(target_type):
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
    try:
        kind = t.python_type
    except NotImplementedError:
        return None
    if kind is bool:
        return "bool"
    if kind in (int, float) or kind.__name__ == "Decimal":
        return "number"
    if kind is str:
        return "text"
    return kind.__name__


def _length(t: sa.types.TypeEngine[object]) -> int:
    return getattr(t, "length", None) or 1 << 30
