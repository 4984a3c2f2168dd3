"""`replicator closing`: the cash-closing reconciliation ("fechamento de caixa").

For one business day (default today, in the store's zone) and each register: the counts and
totals of the day on the register and on the server side by side (computed inside each
database), the rows missing, different or extra, the catalog changes that have not reached
the register and the changes still waiting either way, held rows and conflicts, the day's
dismissals, the last runs and the day's log warnings and errors, then one verdict. `--fix`
runs the manual integration (movement, then catalog, which also retries held rows) and
reports again. See docs/closing.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from replicator.closing_collect import (
    ClosingDatabases,
    closing_problems,
    collect,
    pick_registers,
    store_zone,
)
from replicator.closing_model import FixRun
from replicator.config import Settings
from replicator.errors import ConfigError
from replicator.i18n import LANG_OPTION
from replicator.sync import Databases, run_jobs
from replicator.values import zone

if TYPE_CHECKING:
    from replicator.cli import Ctx

__all__ = ["ClosingDatabases", "closing_command", "closing_problems", "collect", "fix"]


# --- the day -----------------------------------------------------------------------------------
def parse_day(text: str | None, today: date) -> date:
    """`2026-03-15`, `15/03/2026`, `today`/`hoje` or `yesterday`/`ontem`."""
    if text is None or text.lower() in ("today", "hoje"):
        return today
    if text.lower() in ("yesterday", "ontem"):
        return today - timedelta(days=1)
    for form in ("%Y-%m-%d", "%d/%m/%Y"):
        try:
            return datetime.strptime(text, form).date()
        except ValueError:
            continue
    raise ConfigError(f"--date {text!r}: write the day as 2026-03-15 or 15/03/2026 (or today)")


# --- --fix ---------------------------------------------------------------------------------------
def fix(settings: Settings, databases: Databases, registers: Sequence[str]) -> list[FixRun]:
    """The manual integration for these registers: movement up first (sales reach the server),
    then the catalog down; every job also retries its held rows."""
    chosen = pick_registers(settings, registers)
    jobs = [j for j in settings.jobs() if j.source in chosen or j.target in chosen]
    down = {g for g, m in settings.groups.items() if m.direction == "server_to_register"}
    ordered = [j for j in jobs if j.group not in down] + [j for j in jobs if j.group in down]
    results = run_jobs(settings, ordered, databases)
    return [FixRun(r.job.name, r.rows, str(r.error) if r.error else None) for r in results]


# --- the command ---------------------------------------------------------------------------------
@click.command("closing")
@click.option("--date", "day", metavar="DAY", help="business day: 2026-03-15 (default: today)")
@click.option(
    "--register", "registers", multiple=True, metavar="R", help="only this register (repeatable)"
)
@click.option("--fix", "run_fix", is_flag=True, help="run the manual integration, then report")
@click.option(
    "--html", "html", type=click.Path(path_type=Path), help="also write the report as HTML"
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON document instead")
@click.option("--full", is_flag=True, help="compare every row, also where the totals agree")
@LANG_OPTION
@click.pass_obj
def closing_command(
    ctx: Ctx,
    day: str | None,
    registers: tuple[str, ...],
    run_fix: bool,
    html: Path | None,
    as_json: bool,
    full: bool,
    lang: str | None,
) -> None:
    """The cash-closing reconciliation of a day: sales, totals per payment type and catalog,
    register by register, with what to do.

    Exit codes: 0 both sides agree; 8 something must be done (the verdict says what); when
    nothing else was found but the report is incomplete: 4 a database could not be reached, 3
    one is not set up, 5 one answered with another error; 2 a config, mapping or option error.
    See docs/closing.md."""
    from replicator.cli import failing_loud

    failing_loud(_closing)(ctx, day, registers, run_fix, html, as_json, full, lang)


def _closing(
    ctx: Ctx,
    day: str | None,
    registers: tuple[str, ...],
    run_fix: bool,
    html: Path | None,
    as_json: bool,
    full: bool,
    lang: str | None,
) -> None:
    import sys

    from replicator import closing_report
    from replicator.cli import err, out
    from replicator.i18n import set_language
    from replicator.preflight import sqlite_files, used_databases

    settings = ctx.settings()
    set_language(lang or settings.config.node.lang)
    today = datetime.now(UTC).astimezone(zone(store_zone(settings))).date()
    wanted = parse_day(day, today)
    chosen = pick_registers(settings, registers)  # a wrong --register fails before any work
    dbs = ClosingDatabases(settings)
    try:
        jobs = [j for j in settings.jobs() if j.source in chosen or j.target in chosen]
        sqlite_files(settings, dbs, used_databases(jobs))
        fixed = None
        if run_fix:
            if not as_json:
                err.print(closing_report.fixing(), markup=False)
            fixed = fix(settings, dbs, registers)
        report = collect(settings, dbs, wanted, registers, full)
        report.fixed = fixed
    finally:
        dbs.close()
    if html is not None:
        from replicator.closing_html import render_html

        html.write_text(render_html(report), "utf-8")
    if as_json:
        from replicator.cli import _emit_json
        from replicator.closing_json import as_json as document

        _emit_json(document(report))
    else:
        closing_report.print_report(out, report)
    sys.exit(report.exit_code)
