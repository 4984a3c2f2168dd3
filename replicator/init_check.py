"""`replicator init`, step 4: the drafts checked against the live databases.

After `replicator setup` this is `replicator check` itself. Before it (the usual case: init
never changes a database), each table is checked by the same rules with the tracking columns
that setup would add assumed, so the verdict says whether the drafts fit the schemas."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from replicator.backends import Backend
from replicator.backends.base import ORIGIN_COLUMN, first_line
from replicator.check import Report, _check_table, run_check
from replicator.config import Settings, load_settings
from replicator.errors import ReplicatorError
from replicator.log import mask
from replicator.sync import Databases
from replicator.transform import build_plan


def verdict(config: Path, out: Any) -> Report | None:
    """Check the drafts and print the verdict; None when they could not be checked."""
    try:
        settings = load_settings(config)
    except ReplicatorError as exc:
        out.print("\ncheck: the drafts do not load yet:", markup=False)
        for line in str(exc).splitlines():
            out.print(f"  error    {mask(line)}", markup=False)
        return None
    dbs = Databases(settings)
    try:
        installed = all(_installed(dbs[name]) for name in settings.config.databases)
        report = run_check(settings, dbs) if installed else preview(settings, dbs)
    except sa_exc.SQLAlchemyError as exc:
        out.print(f"\ncheck: could not run: {mask(first_line(exc))}", markup=False)
        return None
    finally:
        dbs.close()
    how = "replicator check" if installed else "replicator check, before setup"
    out.print(f"\ncheck ({how}):", markup=False)
    for line in dict.fromkeys(report.warnings):
        out.print(f"  warning  {mask(line)}", markup=False)
    for line in dict.fromkeys(report.errors):
        out.print(f"  error    {mask(line)}", markup=False)
    if report.ok:
        tail = "" if installed else " (setup will add their tracking columns and triggers)"
        out.print(f"check: the drafts pass{tail}", markup=False)
    else:
        out.print(
            f"check: {len(set(report.errors))} problem(s) in the drafts; fix them, then run "
            "`replicator check`",
            markup=False,
        )
    return report


def _installed(backend: Backend) -> bool:
    with backend.engine.connect() as conn:
        return backend.has_table(conn, backend.ct.state.fullname)


def preview(settings: Settings, dbs: Databases) -> Report:
    """`check`'s table rules on databases without change tracking yet."""
    report = Report()
    for job in settings.jobs(list(settings.groups)):
        mapping = settings.groups[job.group]
        with (
            dbs[job.source].engine.connect() as sconn,
            dbs[job.target].engine.connect() as tconn,
        ):
            for index, table in enumerate(mapping.tables):
                where = settings.where(job.group, index)
                try:
                    source = _table(sconn, table.source, table.change_column)
                    target = _table(tconn, table.target_table, None)
                except sa_exc.NoSuchTableError as exc:
                    report.errors.append(f"{where}: table {table.label!r}: no table {exc}")
                    continue
                try:
                    plan = build_plan(table, source, target, job.vars, where)
                except ReplicatorError as exc:
                    report.errors.extend(str(exc).splitlines())
                    continue
                _check_table(report, where, plan, tconn, sconn)
        report.checked.append(f"job {job.name}: {len(mapping.tables)} tables")
    return report


def _table(conn: sa.Connection, name: str, change_column: str | None) -> sa.Table:
    schema, _, bare = name.rpartition(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa_exc.SAWarning)  # unknown types: said in the draft
        table = sa.Table(bare, sa.MetaData(), schema=schema or None, autoload_with=conn)
    if change_column is not None:
        for column, kind in ((change_column, sa.BigInteger()), (ORIGIN_COLUMN, sa.Text())):
            if column not in table.c:
                table.append_column(sa.Column(column, kind))
    return table
