"""The `replicator` command. Every user mistake ends in `FAILED: <message>` and a non-zero exit;
`--debug` adds the traceback."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console, ConsoleDimensions
from rich.table import Table

from replicator import __version__
from replicator.closing import closing_command
from replicator.config import Settings, load_settings
from replicator.errors import ConfigError, ReplicatorError
from replicator.errors_cli import errors_group
from replicator.init import init_command
from replicator.log import log_settings, mask, setup_logging
from replicator.osservice import service_cli
from replicator.resync import resync_command

F = TypeVar("F", bound=Callable[..., Any])
# Width of standard output when it is not a terminal (a pipe, a file): wide enough that a
# table is never cut or wrapped, so `replicator status | grep` sees whole rows.
PIPE_WIDTH = 10_000


class _Output(Console):
    """A console that keeps every line whole when its output is not a terminal."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(PIPE_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


out = _Output(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _emit_json(document: Any) -> None:
    """One JSON document on standard output (logs and FAILED lines go to standard error)."""
    click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))


class Ctx:
    def __init__(self, config: Path, debug: bool, log_level: str | None) -> None:
        self.config_path = config
        self.debug = debug
        self.log_level = log_level
        self._settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            if not self.config_path.exists():
                raise ConfigError(
                    f"{self.config_path}: config file not found; pass --config PATH or set "
                    "REPLICATOR_CONFIG (try `replicator demo` to see a working one)"
                )
            self._settings = load_settings(self.config_path)
            # A command always logs to the console; `run` calls setup_logging again with
            # log_settings(..., for_service=True). A relative [log] dir is relative to the
            # config file's folder (settings.path is self.config_path).
            setup_logging(**log_settings(self._settings, level=self.log_level))
        return self._settings


def failing_loud(fn: F) -> F:
    """Turn errors into `FAILED: ...` and exit codes; tracebacks only with --debug."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Ctx)
        debug = bool(ctx and ctx.debug)
        try:
            return fn(*args, **kwargs)
        except ReplicatorError as exc:
            if debug:
                err.print_exception()
            err.print(f"FAILED: {mask(str(exc))}", markup=False)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)
        except Exception as exc:  # a bug, not a user mistake: say so plainly
            if debug:
                err.print_exception()
            err.print(
                f"FAILED: unexpected {type(exc).__name__}: {mask(str(exc))} "
                "(run with --debug for the traceback and report it)",
                markup=False,
            )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    type=click.Path(path_type=Path),
    default=lambda: os.environ.get("REPLICATOR_CONFIG", "replicator.toml"),
    show_default="replicator.toml or $REPLICATOR_CONFIG",
    help="node config file",
)
@click.option("--debug", is_flag=True, help="show tracebacks")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    help="override the config's log level",
)
@click.version_option(__version__, prog_name="replicator")
@click.pass_context
def cli(ctx: click.Context, config: Path, debug: bool, log_level: str | None) -> None:
    """Direct database replication between point-of-sale registers and their server.

    Catalog (cadastros) flows server -> registers; sales (movimento) flow registers -> server.
    Start with `replicator demo`; see README.md and docs/ for setting up a store.
    """
    ctx.obj = Ctx(config, debug, log_level)
    setup_logging(log_level or "INFO")


def _databases(ctx: Ctx) -> Any:
    from replicator.sync import Databases

    return Databases(ctx.settings())


JSON_OPTION = click.option(
    "--json", "as_json", is_flag=True, help="print one JSON document on standard output"
)


def _check_after_setup(ctx: Ctx, settings: Settings, dbs: Any) -> None:
    """Setup installs what it can; a mapping that `check` rejects still fails the command."""
    from replicator.check import run_check
    from replicator.errors import CheckError

    report = run_check(settings, dbs)
    if report.ok:
        return
    for line in dict.fromkeys(report.errors):
        err.print(f"error    {mask(line)}", markup=False)
    raise CheckError(
        f"change tracking is installed, but {len(report.errors)} problem(s) remain in "
        f"{ctx.config_path} and its mappings (above); fix them and run `replicator check`"
    )


@cli.command()
@click.option(
    "--print", "print_only", is_flag=True, help="print the SQL for review instead of running it"
)
@click.option("--database", "names", multiple=True, help="only this database (repeatable)")
@JSON_OPTION
@click.option(
    "--new-identity",
    is_flag=True,
    help="give the databases a new incarnation (a backup restored again, a copied file); "
    "needs --database",
)
@click.pass_obj
@failing_loud
def setup(
    ctx: Ctx, print_only: bool, names: tuple[str, ...], as_json: bool, new_identity: bool
) -> None:
    """Install change tracking and control tables (or --print them)."""
    from replicator.preflight import reachable
    from replicator.tracking import install, setup_script

    settings = ctx.settings()
    for name in names:
        if name not in settings.config.databases:
            raise ReplicatorError(
                f"no database {name!r} in {ctx.config_path}; databases: "
                + ", ".join(settings.config.databases)
            )
    dbs = _databases(ctx)
    try:
        targets = list(names) or list(settings.config.databases)
        if print_only:
            scripts = {name: setup_script(settings, dbs, name) for name in targets}
            if as_json:
                _emit_json(
                    {
                        "databases": [
                            {"database": n, "url": dbs[n].display_url, "statements": sql}
                            for n, sql in scripts.items()
                        ]
                    }
                )
                return
            for name, statements in scripts.items():
                click.echo(f"-- database {name}: {dbs[name].display_url}\n")
                click.echo(dbs[name].script(statements))
            return
        if new_identity and not names:
            raise ReplicatorError(
                "--new-identity needs --database NAME: only the database that was copied or "
                "restored again gets a new identity"
            )
        reachable(dbs, targets)
        install(settings, dbs, targets, new_identity=new_identity)
        _check_after_setup(ctx, settings, dbs)
        if as_json:
            _emit_json(
                {
                    "databases": [
                        {"database": n, "url": dbs[n].display_url, "installed": True}
                        for n in targets
                    ]
                }
            )
            return
        out.print(f"change tracking installed on {', '.join(targets)}")
        if new_identity:
            out.print(
                f"new identity given to {', '.join(targets)}: the jobs reading "
                f"{'it' if len(targets) == 1 else 'them'} start over, and rows that would "
                "overwrite what the earlier identity sent are held as conflicts"
            )
    finally:
        dbs.close()


@cli.command()
@JSON_OPTION
@click.pass_obj
@failing_loud
def check(ctx: Ctx, as_json: bool) -> None:
    """Validate config and mappings against the live databases."""
    from replicator.check import run_check
    from replicator.preflight import sqlite_files

    settings = ctx.settings()
    dbs = _databases(ctx)
    try:
        sqlite_files(settings, dbs, settings.config.databases)
        report = run_check(settings, dbs)
    finally:
        dbs.close()
    report.warnings = list(dict.fromkeys(report.warnings))
    report.errors = list(dict.fromkeys(report.errors))
    if as_json:
        _emit_json(
            {
                "valid": report.ok,
                "ok": [mask(line) for line in report.checked],
                "warnings": [mask(line) for line in report.warnings],
                "errors": [mask(line) for line in report.errors],
            }
        )
    else:
        for line in report.checked:
            out.print(f"ok       {mask(line)}", markup=False)
        for line in report.warnings:
            out.print(f"warning  {mask(line)}", markup=False)
        for line in report.errors:
            err.print(f"error    {mask(line)}", markup=False)
    if not report.ok:
        from replicator.errors import CheckError

        raise CheckError(
            f"{len(report.errors)} problem(s) in {ctx.config_path} and its "
            "mappings; fix them and run `replicator check` again"
        )
    if not as_json:
        out.print(f"{ctx.config_path}: configuration is valid")


@cli.command()
@click.argument("groups", nargs=-1)
@click.option(
    "--max-batches",
    type=click.IntRange(min=1),
    default=None,
    help="stop each job after this many batches (at least 1)",
)
@JSON_OPTION
@click.pass_obj
@failing_loud
def sync(ctx: Ctx, groups: tuple[str, ...], max_batches: int | None, as_json: bool) -> None:
    """Run one cycle now for GROUPS (all configured jobs when none).

    `sync cadastros` is the old "Atualização Completa", `sync produtos` "Atualiza
    Produtos", `sync movimento` "Exporta Movimento".
    """
    from replicator.preflight import sqlite_files, used_databases
    from replicator.sync import run_jobs

    settings = ctx.settings()
    jobs = settings.jobs(list(groups) or None)
    dbs = _databases(ctx)
    try:
        sqlite_files(settings, dbs, used_databases(jobs))
        results = run_jobs(settings, jobs, dbs, max_batches=max_batches)
    finally:
        dbs.close()
    if as_json:
        _emit_json({"jobs": [_job_json(res) for res in results]})
    table = Table(title="sync")
    for col in ("job", "table", "rows", "deletes", "quarantined", "conflicts"):
        table.add_column(col, justify="right" if col not in ("job", "table") else "left")
    failed = None
    for res in results:
        if res.error or res.skipped:
            msg = f"{res.job.name}: {'skipped: ' + res.skipped if res.skipped else res.error}"
            if not as_json:
                err.print(mask(msg), markup=False)
            failed = failed or res.error
            if not res.rows:  # what was committed before the stop still shows below
                table.add_row(res.job.name, "-", "-", "-", "-", "-", end_section=True)
                continue
        for name, t in res.tables.items():
            table.add_row(
                res.job.name,
                name,
                str(t.upserts),
                str(t.deletes),
                str(t.quarantined),
                str(t.conflicts),
            )
    if not as_json:
        out.print(table)
    if failed:
        raise failed


def _job_json(res: Any) -> dict[str, Any]:
    return {
        "job": res.job.name,
        "group": res.job.group,
        "source": res.job.source,
        "target": res.job.target,
        "batches": res.batches,
        "seconds": round(res.seconds, 3),
        "rows": res.rows,
        "tables": {
            name: {
                "rows": t.upserts,
                "deletes": t.deletes,
                "quarantined": t.quarantined,
                "conflicts": t.conflicts,
            }
            for name, t in res.tables.items()
        },
        "skipped": mask(res.skipped) if res.skipped else None,
        "error": mask(str(res.error)) if res.error else None,
    }


@cli.command()
@click.argument("groups", nargs=-1)
@JSON_OPTION
@click.option(
    "--watch",
    "watch",
    type=click.IntRange(min=1),
    is_flag=False,
    flag_value=5,
    default=None,
    help="refresh every N seconds (default 5) until Ctrl-C",
)
@click.pass_obj
@failing_loud
def status(ctx: Ctx, groups: tuple[str, ...], as_json: bool, watch: int | None) -> None:
    """Per job and table: progress, pending changes, held rows; what the service says.

    The table comes first (for a server with several registers, then one line per register,
    the worst first); then a job with an error (its status could not be read, or its last
    run failed) makes it exit 4 when one of the job's databases cannot be reached, 3 when one
    is not set up, 5 otherwise; with no error, rows held or conflicts, or a service that is
    degraded, failing or not running, make it exit 7 (needs attention)."""
    if watch is not None and not as_json:
        import time

        from rich.live import Live

        with Live(console=out, auto_refresh=False, screen=out.is_terminal) as live:
            try:
                while True:
                    live.update(_status_view(ctx, groups)[0], refresh=True)
                    time.sleep(watch)
            except KeyboardInterrupt:
                return
    view, document, failed = _status_view(ctx, groups)
    if as_json:
        _emit_json(document)
    else:
        out.print(view)
    if failed:
        for line in failed[1:]:
            err.print(mask(str(line)), markup=False)
        raise failed[0]


def _status_view(ctx: Ctx, groups: tuple[str, ...]) -> tuple[Any, Any, list[ReplicatorError]]:
    """The status as printable tables, as JSON, and the errors that decide the exit code."""
    from rich.console import Group
    from rich.text import Text

    from replicator.errors import AttentionError
    from replicator.preflight import sqlite_files, used_databases
    from replicator.status import (
        attach_service,
        by_register,
        collect,
        register_table,
        service_view,
        status_table,
    )

    settings = ctx.settings()
    jobs = settings.jobs(list(groups) or None)
    dbs = _databases(ctx)
    try:
        sqlite_files(settings, dbs, used_databases(jobs))
        rows = collect(settings, dbs, list(groups) or None)
        service = service_view(settings)
        attach_service(rows, service)
        failed = _status_failures(jobs, rows, dbs)
    finally:
        dbs.close()
    registers = by_register(rows)
    parts: list[Any] = [status_table(rows)]
    parts += [
        Text(f"warning  {mask(w)}") for w in dict.fromkeys(r.warning for r in rows if r.warning)
    ]
    if len(registers) > 1:
        parts.append(register_table(registers))
    parts += [Text(line) for line in _service_lines(service)]
    document = [r.as_json() for r in rows]
    if not failed:
        held = sum(r.quarantined for r in rows)
        svc = service["service"] if service else None
        reasons = []
        if held:
            reasons.append(f"{held} rows held (see `replicator errors list`)")
        if svc is not None and not svc.get("running"):
            reasons.append("the service is not running")
        elif svc is not None and svc.get("health") not in (None, "ok"):
            reasons.append(f"the service is {svc.get('health')}")
        if reasons:
            failed = [AttentionError("needs attention: " + "; ".join(reasons))]
    return Group(*parts), document, failed


def _status_failures(jobs: list[Any], rows: list[Any], dbs: Any) -> list[ReplicatorError]:
    """One error per job with a row that has `error`, diagnosed: the first one decides the
    exit code."""
    from replicator.preflight import Diagnosis

    reasons = {r.job: r.error for r in rows if r.error}
    by_name = {job.name: job for job in jobs}
    diagnose = Diagnosis(dbs)
    errors = []
    for name, reason in reasons.items():
        error = diagnose.of(by_name[name], reason) if name in by_name else ReplicatorError(reason)
        errors.append(type(error)(f"job {name}: {error}"))
    return errors


def _service_lines(doc: dict[str, Any] | None) -> list[str]:
    """What the service (`replicator run`) of this config says, under the status table."""
    if doc is None:
        return ["service  no `replicator run` has run with this config on this machine"]
    svc = doc["service"]
    if not svc.get("running"):
        return [
            f"service  NOT RUNNING (last seen {str(svc.get('updated', '?'))[:19]} UTC, pid "
            f"{svc.get('pid')} on {svc.get('host')}); start it: systemctl start replicator"
        ]
    problems = [f"log: {p}" for p in svc.get("problems", [])]
    for job in doc.get("jobs", []):
        problems += [f"{job['job']}: {reason}" for reason in job.get("reasons", [])]
    head = (
        f"service  {svc.get('health', '?')}: pid {svc.get('pid')} on {svc.get('host')} since "
        f"{str(svc.get('started', '?'))[:19]} UTC, {len(doc.get('jobs', []))} jobs"
    )
    return [head, *(f"  {mask(line)}" for line in problems)]


@cli.command()
@click.pass_obj
@failing_loud
def run(ctx: Ctx) -> None:
    """Run the service loop: every job at its `every`, until SIGTERM or Ctrl-C.

    What the OS service starts (`replicator service install`). Transient failures are
    retried with backoff, permanent ones every `[service] permanent_retry`; one line per job
    run goes to the log; `replicator status` shows what the service sees. Exits 6 when
    another `replicator run` already runs with this config."""
    import threading

    from replicator.preflight import sqlite_files, used_databases
    from replicator.scheduler import run_service, stop_on_signals

    stop = threading.Event()
    restore = stop_on_signals(stop)  # from the first moment: a stop while starting is clean
    settings = ctx.settings()
    setup_logging(**log_settings(settings, for_service=True, level=ctx.log_level))
    jobs = settings.jobs()
    if not jobs:
        raise ConfigError(f"{settings.path}: no jobs to run; add [[jobs]] entries")
    dbs = _databases(ctx)
    try:
        sqlite_files(settings, dbs, used_databases(jobs))  # a typo in a path fails now
    finally:
        dbs.close()
    try:
        code = run_service(ctx.config_path, stop, settings=settings)
    finally:
        restore()
    if code:
        sys.exit(code)


@cli.command()
@click.option("-o", "--output", type=click.Path(path_type=Path), help="write to this file")
@failing_loud
def schema(output: Path | None) -> None:
    """Print the JSON Schema of mapping files (for editors)."""
    from replicator.mapping import MappingFile

    text = (
        json.dumps(MappingFile.model_json_schema(by_alias=True), indent=2, ensure_ascii=False)
        + "\n"
    )
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


@cli.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=None,
    help="where to build the demo store (default: a new temporary folder)",
)
@click.option("--registers", type=click.IntRange(1, 20), default=2, show_default=True)
@click.option(
    "--force",
    is_flag=True,
    help="build in a folder that is not empty, replacing a demo store there (other files stay)",
)
@click.pass_obj
@failing_loud
def demo(ctx: Ctx, directory: Path | None, registers: int, force: bool) -> None:
    """Build an embedded store on SQLite (a server, registers), run a full cycle, show it."""
    from replicator.demo.run import run_demo

    setup_logging(ctx.log_level or "WARNING")
    run_demo(directory, registers, out, force=force)


cli.add_command(service_cli)
cli.add_command(errors_group)
cli.add_command(resync_command)
cli.add_command(init_command)
cli.add_command(closing_command)


def main() -> None:
    cli(prog_name="replicator")


if __name__ == "__main__":
    main()
