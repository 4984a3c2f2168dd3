"""`replicator resync`: the forced full resync. Compares both sides of each table by chunk
checksums computed inside the databases, and repairs only the rows that differ through the
same transform and apply path as incremental sync (see resync_compare and resync_hash).

Exit codes: 0 when both sides agree (or every difference was repaired); 8 when `--dry-run`
finds differences, or when a repair left rows held in the quarantine or extra rows that the
table's delete rule keeps (the same code as `closing` when its two sides differ); the usual
codes of the failure (2 config, 3 not set up, 4 transient, 5 permanent) otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click
from loguru import logger

from replicator.config import Job, Settings
from replicator.errors import ConfigError, ReplicatorError
from replicator.resync_compare import LEAF_ROWS, TableReport, TableResync, source_rows
from replicator.resync_hash import HashKind
from replicator.sync import Databases, JobRunner

EXIT_DIFFERENT = 8


@dataclass
class ResyncResult:
    dry_run: bool
    tables: list[TableReport] = field(default_factory=list)
    errors: list[ReplicatorError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def differences(self) -> int:
        return sum(t.differences for t in self.tables)

    @property
    def exit_code(self) -> int:
        if self.errors:
            return self.errors[0].exit_code
        return EXIT_DIFFERENT if (self.differences if self.dry_run else self.held) else 0

    @property
    def held(self) -> int:
        return sum(t.held for t in self.tables)

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
            "differences": self.differences,
            "exit_code": self.exit_code,
            "tables": [t.as_json() for t in self.tables],
            "errors": [str(e) for e in self.errors],
        }


def select_jobs(
    settings: Settings, targets: Sequence[str], register: str | None
) -> list[tuple[Job, set[str] | None]]:
    """The jobs to compare and, per job, the table labels (None: all of its group)."""
    wanted: dict[str, set[str] | None] = {}
    for item in targets:
        group, _, table = item.partition(".")
        if group not in settings.groups:
            raise ConfigError(
                f"resync {item}: no mapping group {group!r}; groups: "
                + ", ".join(sorted(settings.groups))
            )
        labels = [m.label for m in settings.groups[group].tables]
        if table and table not in labels:
            raise ConfigError(
                f"resync {item}: group {group!r} has no table {table!r}; tables: "
                + ", ".join(labels)
            )
        if not table:
            wanted[group] = None
        elif group not in wanted or wanted[group] is not None:
            wanted.setdefault(group, set()).add(table)  # type: ignore[union-attr]
    jobs = settings.jobs(list(wanted) or None)
    if register is not None:
        names = {register}
        jobs = [j for j in jobs if names & {j.source, j.target, j.source_node, j.target_node}]
        if not jobs:
            registers = [n for n, d in settings.config.databases.items() if d.role == "register"]
            raise ConfigError(
                f"--register {register}: no job of the chosen groups reads or writes it; "
                f"registers in {settings.path}: {', '.join(registers) or 'none'}"
            )
    return [(j, wanted.get(j.group)) for j in jobs]


Progress = Callable[[str, int], Callable[[TableReport, int], None]]


def run_resync(
    settings: Settings,
    dbs: Databases,
    selection: Sequence[tuple[Job, set[str] | None]],
    *,
    dry_run: bool,
    delete_extra: bool = False,
    progress: Progress | None = None,
    chunk_rows: int | None = None,
    leaf_rows: int | None = None,
    hash_kind: HashKind | None = None,
) -> ResyncResult:
    """Compare (and repair) each selected table of each job; a failing table is reported and
    the others go on. `chunk_rows`, `leaf_rows` and `hash_kind` (tests, benchmarks): the
    chunk and bucket sizes, and the row hash (None: `pg` when both sides are PostgreSQL)."""
    result = ResyncResult(dry_run)
    started = time.perf_counter()
    for job, tables in selection:
        log = logger.bind(job=job.name)
        try:
            runner = JobRunner(settings, dbs, job)
            plans = [p for p in runner.plans() if tables is None or p.label in tables]
        except ReplicatorError as exc:
            log.error("resync failed: {}", exc)
            result.errors.append(exc)
            continue
        for plan in plans:
            tlog = log.bind(table=plan.label)
            try:
                tick = (
                    progress(f"{job.name} {plan.label}", source_rows(runner, plan))
                    if progress
                    else None
                )
                report = TableResync(
                    runner,
                    plan,
                    dry_run=dry_run,
                    delete_extra=delete_extra,
                    progress=tick,
                    chunk_rows=chunk_rows,
                    leaf_rows=leaf_rows or LEAF_ROWS,
                    hash_kind=hash_kind,
                ).run()
            except ReplicatorError as exc:
                tlog.error("resync failed: {}", exc)
                result.errors.append(exc)
                report = TableReport(job.name, plan.label, error=str(exc))
            result.tables.append(report)
            tlog.info(
                "resync{}: {} rows compared in {} chunks, {} rows and {} row hashes fetched; "
                "missing on target {}, "
                "extra on target {}, different {}; repaired {}, deleted {}, held {}{}",
                " (dry run)" if dry_run else "",
                report.rows,
                report.chunks,
                report.fetched,
                report.hashes,
                report.missing,
                report.extra,
                report.different,
                report.repaired,
                report.deleted,
                report.held,
                f"; stopped: {report.error}" if report.error else "",
            )
    result.seconds = time.perf_counter() - started
    return result


# --- the command ----------------------------------------------------------------------------
@click.command("resync")
@click.argument("targets", nargs=-1, metavar="[GROUP | GROUP.TABLE]...")
@click.option("--register", default=None, help="only the jobs of this register (database name)")
@click.option("--dry-run", is_flag=True, help="compare only: change nothing anywhere")
@click.option(
    "--delete-extra",
    is_flag=True,
    help="also delete rows found only on the target of tables whose deletes are ignored",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON document on standard output")
@click.pass_obj
def _resync(
    ctx: Any,
    targets: tuple[str, ...],
    register: str | None,
    dry_run: bool,
    delete_extra: bool,
    as_json: bool,
) -> None:
    """Forced full resync: compare both sides by chunk checksums, repair only what differs.

    Exits 8 when --dry-run finds differences (or a repair leaves rows held), 0 when both
    sides agree."""
    _command(ctx, targets, register, dry_run, delete_extra, as_json)


def _command(
    ctx: Any,
    targets: tuple[str, ...],
    register: str | None,
    dry_run: bool,
    delete_extra: bool,
    as_json: bool,
) -> None:
    import sys

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from replicator.cli import _emit_json, err, out
    from replicator.log import mask
    from replicator.preflight import sqlite_files, used_databases

    settings = ctx.settings()
    selection = select_jobs(settings, targets, register)
    dbs = Databases(settings)
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows, {task.fields[chunks]} chunks, {task.fields[diffs]} differences"),
        TextColumn("{task.fields[rate]} rows/s"),
        TimeRemainingColumn(),
        console=err,
        disable=as_json or not err.is_terminal,
    )

    def progress(name: str, total: int) -> Callable[[TableReport, int], None]:
        task = bars.add_task(name, total=total, chunks=0, diffs=0, rate="-")
        started = time.perf_counter()

        def tick(report: TableReport, rows: int) -> None:
            rate = report.rows / max(time.perf_counter() - started, 1e-6)
            bars.update(
                task,
                completed=report.rows,
                chunks=report.chunks,
                diffs=report.differences,
                rate=f"{rate:,.0f}",
            )

        return tick

    try:
        sqlite_files(settings, dbs, used_databases([j for j, _ in selection]))
        with bars:
            result = run_resync(
                settings,
                dbs,
                selection,
                dry_run=dry_run,
                delete_extra=delete_extra,
                progress=progress,
            )
    finally:
        dbs.close()
    if as_json:
        _emit_json(result.as_json())
    else:
        table = Table(title="resync (dry run)" if dry_run else "resync")
        columns = ["job", "table", "rows compared", "missing on target", "extra on target"]
        columns += ["different", "repaired", "deleted", "held"]
        for col in columns:
            table.add_column(col, justify="left" if col in ("job", "table") else "right")
        for t in result.tables:
            table.add_row(
                t.job,
                t.table,
                *(str(v) for v in (t.rows, t.missing, t.extra, t.different, t.repaired, t.deleted)),
                str(t.held) if not t.error else "stopped",
            )
        out.print(table)
        for t in result.tables:
            for s in t.samples[:5]:
                cols = f" ({', '.join(s['columns'])})" if s.get("columns") else ""
                out.print(f"  {t.table}: {s['kind']} {s['key']}{cols}", markup=False)
        if dry_run and result.differences:
            command = " ".join(
                ["replicator resync", *targets, *(["--register", register] if register else [])]
            )
            out.print(
                f"{result.differences} difference(s) found; run `{command}` (without "
                "--dry-run) to repair them",
                markup=False,
            )
        for t in result.tables:
            if not dry_run and t.extra > t.deleted and not t.error:
                out.print(
                    f"  {t.table}: {t.extra - t.deleted} extra row(s) kept on the target (its "
                    "deletes are ignored; --delete-extra deletes them)",
                    markup=False,
                )
    for exc in result.errors[1:]:
        err.print(f"FAILED: {mask(str(exc))}", markup=False)
    if result.errors:
        raise result.errors[0]
    if result.exit_code:
        sys.exit(result.exit_code)


class _LazyLoud(click.Command):
    """The command, with cli.failing_loud applied at invocation (imported lazily)."""

    def invoke(self, ctx: click.Context) -> Any:
        from replicator.cli import failing_loud

        if self.callback is not None and not getattr(self.callback, "_loud", False):
            loud = failing_loud(self.callback)
            loud._loud = True  # type: ignore[attr-defined]
            self.callback = loud
        return super().invoke(ctx)


resync_command = _LazyLoud(
    name="resync",
    params=_resync.params,
    callback=_resync.callback,
    help=_resync.help,
)
