"""Mapping drift: a fingerprint of each table's mapping, recorded with its progress, so that
`check`, `sync` and `status` can say when rows already replicated were written by another
mapping (a column added, or its transform changed) and name the `replicator resync` to run.

The fingerprint covers what shapes the target rows: the plan's mapped target columns and, per
column, its transform as written in the mapping (a source column, a node variable, a constant,
a value map and its default). Reflected types are left out: a DBA widening a column does not
make the replicated rows stale.

Only additions and changed transforms are drift: a column dropped from a mapping leaves the
target's values as they were, which is what the rows looked like anyway. Sync records the
current fingerprint when a table has no stored one, when none of its rows were replicated yet,
or when the change is no drift; otherwise it keeps the old one, so the warning stays until a
resync of the table completes (which records the current one).
"""

from __future__ import annotations

import hashlib
import json
import weakref
from typing import Any

from sqlalchemy.engine import Connection

from replicator.backends import Backend
from replicator.config import Job
from replicator.mapping import Const, FromColumn
from replicator.state import MappingPrint, read_prints, write_print
from replicator.transform import TablePlan

# Backends whose database has the mapping_print table (checked once, not at every run).
_HAS_PRINTS: weakref.WeakSet[Backend] = weakref.WeakSet()


def _transform(plan: TablePlan, column: str) -> str:
    """How the mapping fills one target column, as a short stable text."""
    mapping = plan.mapping
    if column == plan.soft_delete and column not in mapping.columns:
        return "false (not deleted)"
    spec: Any = mapping.columns.get(column, column)  # copied columns come from their name
    if isinstance(spec, FromColumn):
        text = f"from {spec.from_}"
        if spec.map is not None:
            text += " map " + json.dumps(spec.map, sort_keys=True)
            if spec.has_default:
                text += " default " + json.dumps(spec.default)
        return text
    if isinstance(spec, Const):
        return "const " + json.dumps(spec.const)
    if isinstance(spec, str):
        return spec if spec.startswith("{") else f"from {spec}"
    return "const " + json.dumps(spec)


def table_print(plan: TablePlan) -> MappingPrint:
    columns = {c: _transform(plan, c) for c in plan.columns}
    text = json.dumps(columns, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
    return MappingPrint(digest, columns)


def changes(stored: MappingPrint, current: MappingPrint) -> list[str]:
    """What changed in a way that affects rows already replicated ([]: nothing does)."""
    if stored.fingerprint == current.fingerprint:
        return []
    out = []
    for column, now in current.columns.items():
        before = stored.columns.get(column)
        if before is None:
            out.append(f"column {column} added")
        elif before != now:
            out.append(f"column {column} changed ({before} -> {now})")
    return out


def register_of(job: Job) -> str:
    """The register database of a job (its name in replicator.toml)."""
    return job.target if job.source == job.server else job.source


def resync_hint(job: Job, plan: TablePlan) -> str:
    return f"replicator resync {job.group}.{plan.label} --register {register_of(job)}"


def drift_message(job: Job, plan: TablePlan, stored: MappingPrint | None) -> str | None:
    """The warning for a table whose replicated rows follow an older mapping, or None."""
    if stored is None:
        return None
    found = changes(stored, table_print(plan))
    if not found:
        return None
    return (
        f"mapping changed since rows were replicated ({', '.join(found)}): those rows lack "
        f"it until `{resync_hint(job, plan)}` runs"
    )


def stored_prints(backend: Backend, conn: Connection, job: str) -> dict[str, MappingPrint] | None:
    """The job's recorded fingerprints; None when the target was set up before the table
    existed (no drift check until `replicator setup` runs once more)."""
    if backend not in _HAS_PRINTS:
        if not backend.has_table(conn, backend.ct.mapping_print.fullname):
            return None  # asked again next run: `setup` may add it meanwhile
        _HAS_PRINTS.add(backend)  # a database does not lose its control tables
    return read_prints(conn, backend.ct, job)


def drift_of(
    backend: Backend, conn: Connection, job: Job, plans: list[TablePlan]
) -> dict[str, str] | None:
    """Per table label, its drift warning (only tables that drifted); None: not set up."""
    stored = stored_prints(backend, conn, job.name)
    if stored is None:
        return None
    out = {}
    for plan in plans:
        message = drift_message(job, plan, stored.get(plan.label))
        if message:
            out[plan.label] = message
    return out


def record(backend: Backend, conn: Connection, job: str, plan: TablePlan) -> None:
    """After a completed resync: the table's rows now follow the current mapping."""
    if backend.has_table(conn, backend.ct.mapping_print.fullname):
        write_print(conn, backend.ct, job, plan.label, table_print(plan))
