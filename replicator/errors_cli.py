"""`replicator errors`: the rows the targets hold back (the quarantine), as store staff and
their scripts read them: `list`, `show ID`, `retry [ID...]`, `dismiss ID --reason TEXT`.

A row's ID is ``<target database>:<quarantine id>``, e.g. ``server:12`` (replicator/held.py
reads the quarantines).

Exit codes: `list` exits 7 (ROWS_HELD) when it lists a row still held (waiting, refused or
conflict), 0 otherwise; `retry` exits 7 when a row it retried is still held. An unknown ID, or
a row the command cannot act on, exits 2; a database without the quarantine or dismissal
table exits 3 (run `replicator setup`); the others are those of every command.

This module imports nothing from replicator.cli at import time (cli.py imports it to add the
group): the CLI's helpers are imported when a command runs.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich import box
from rich.table import Table
from sqlalchemy import exc as sa_exc

from replicator import dismissals
from replicator.config import Settings
from replicator.errors import ReplicatorError
from replicator.held import (
    HeldRow,
    RowError,
    cell,
    find,
    jobs_named,
    mark_due,
    parse_ids,
    read_rows,
    side_by_side,
    target_side,
)
from replicator.i18n import LANG_OPTION, _, datetime_, ngettext, set_language
from replicator.quarantine import CONFLICT, DISMISSED, HELD, REFUSED, RETRIED, STATES, WAITING
from replicator.sync import Databases

if TYPE_CHECKING:
    from replicator.cli import Ctx

F = TypeVar("F", bound=Callable[..., Any])
ROWS_HELD = 7  # exit code of `list` and `retry` while rows are held
STATE_CHOICES = {"waiting": WAITING, "refused": REFUSED, "conflict": CONFLICT, DISMISSED: DISMISSED}


def failing_loud(fn: F) -> F:
    """replicator.cli.failing_loud, looked up when the command runs (no import cycle)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from replicator.cli import failing_loud as loud

        return loud(fn)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


JSON_OPTION = click.option(
    "--json", "as_json", is_flag=True, help="print one JSON document on standard output"
)


# --- the commands -------------------------------------------------------------------------
def _start(ctx: Ctx, lang: str | None) -> tuple[Settings, Databases]:
    from replicator.preflight import sqlite_files

    settings = ctx.settings()
    set_language(lang or settings.config.node.lang)
    dbs = Databases(settings)
    try:
        sqlite_files(settings, dbs, dismissals.targets(settings))
    except BaseException:
        dbs.close()
        raise
    return settings, dbs


def _raise_first(errors: Sequence[ReplicatorError]) -> None:
    from replicator.cli import err
    from replicator.log import mask

    for error in errors[1:]:
        err.print(mask(str(error)), markup=False)
    if errors:
        raise errors[0]


def state_text(state: str) -> str:
    """A quarantine state as staff read it."""
    texts = {
        WAITING: _("waiting for its parent"),
        REFUSED: _("refused by the database"),
        CONFLICT: _("conflict"),
        DISMISSED: _("dismissed"),
    }
    return texts.get(state, state)


def _when(stamp: datetime, settings: Settings) -> str:
    return datetime_(stamp, settings.config.node.timezone)


@click.group("errors")
def errors_group() -> None:
    """Rows the targets hold back: list, show, retry, dismiss (`replicator errors list`)."""


@errors_group.command("list")
@click.option("--job", default=None, help="only this job (its name, or its group)")
@click.option("--table", default=None, help="only this table (its label in the mapping)")
@click.option(
    "--state",
    "state",
    type=click.Choice(list(STATE_CHOICES)),
    default=None,
    help="only rows in this state",
)
@click.option("--all", "show_all", is_flag=True, help="dismissed rows too")
@LANG_OPTION
@JSON_OPTION
@click.pass_obj
@failing_loud
def list_command(
    ctx: Ctx,
    job: str | None,
    table: str | None,
    state: str | None,
    show_all: bool,
    lang: str | None,
    as_json: bool,
) -> None:
    """One line per held row; exits 7 when a row is still held, 0 when none is."""
    from replicator.cli import _emit_json, out

    settings, dbs = _start(ctx, lang)
    try:
        states = [STATE_CHOICES[state]] if state else (list(STATES) if show_all else list(HELD))
        found = read_rows(settings, dbs, jobs_named(settings, job), states, table)
    finally:
        dbs.close()
    if as_json:
        _emit_json({"rows": [r.as_json() for r in found.rows]})
    elif found.rows:
        out.print(list_table(found.rows, settings))
    elif not found.errors:
        out.print(_("No rows held."))
    _raise_first(found.errors)
    if any(r.held for r in found.rows):
        sys.exit(ROWS_HELD)


def list_table(rows: Sequence[HeldRow], settings: Settings) -> Table:
    table = Table(title=_("held rows"), box=box.SIMPLE_HEAD)
    heads = [
        _("ID"),
        _("job"),
        _("table"),
        _("key"),
        _("state"),
        _("message"),
        _("first seen"),
        _("last seen"),
        _("attempts"),
    ]
    for n, head in enumerate(heads):
        table.add_column(head, justify="right" if n == len(heads) - 1 else "left")
    for r in rows:
        message = r.reason.strip().splitlines()[0] if r.reason.strip() else ""
        if r.dismissal is not None:
            message = _("dismissed by {by}: {reason}").format(**r.dismissal)
        table.add_row(
            r.id,
            r.job,
            r.table,
            r.key,
            state_text(r.state),
            message,
            _when(r.first_seen, settings),
            _when(r.last_seen, settings),
            str(r.attempts),
        )
    return table


@errors_group.command("show")
@click.argument("row_id", metavar="ID")
@LANG_OPTION
@JSON_OPTION
@click.pass_obj
@failing_loud
def show_command(ctx: Ctx, row_id: str, lang: str | None, as_json: bool) -> None:
    """Everything about one row, and its values next to the target's current row."""
    from replicator.cli import _emit_json, out

    settings, dbs = _start(ctx, lang)
    try:
        (row,) = find(settings, dbs, [row_id])
        target = target_side(settings, dbs, row)
    finally:
        dbs.close()
    columns = side_by_side(row, target)
    if as_json:
        _emit_json(
            {
                "row": row.as_json(),
                "target": {"database": row.database, "row": target.row, "error": target.error},
                "columns": columns,
            }
        )
        return
    facts = Table(box=None, show_header=False, title=_("held row {id}").format(id=row.id))
    facts.add_column(style="bold")
    facts.add_column()
    for name, value in (
        (_("job"), row.job),
        (_("table"), row.table),
        (_("key"), row.key),
        (_("state"), state_text(row.state)),
        (_("message"), row.reason.strip()),
        (_("first seen"), _when(row.first_seen, settings)),
        (_("last seen"), _when(row.last_seen, settings)),
        (_("attempts"), str(row.attempts)),
    ):
        facts.add_row(name, value)
    if row.dismissal is not None:
        facts.add_row(_("dismissed by"), str(row.dismissal["by"]))
        facts.add_row(_("why"), str(row.dismissal["reason"]))
    out.print(facts, markup=False)
    values = Table(box=box.SIMPLE_HEAD)
    for head in (_("column"), _("held row"), _("now on {database}").format(database=row.database)):
        values.add_column(head)
    values.add_column("")
    for c in columns:
        there = cell(c["target"]) if target.row is not None else ""
        values.add_row(c["column"], cell(c["held"]), there, "≠" if c["differs"] else "")
    out.print(values)
    if target.error is not None:
        out.print(_("The target's row could not be read: {error}").format(error=target.error))
    elif target.row is None:
        out.print(
            _("{database} has no row with this key.").format(database=row.database), markup=False
        )


@errors_group.command("retry")
@click.argument("row_ids", nargs=-1, metavar="[ID]...")
@LANG_OPTION
@JSON_OPTION
@click.pass_obj
@failing_loud
def retry_command(ctx: Ctx, row_ids: tuple[str, ...], lang: str | None, as_json: bool) -> None:
    """Send these rows again now (all waiting and refused rows when no ID is given): they
    go first in one sync of their jobs. Exits 7 when one is still held."""
    from replicator.cli import _emit_json, out
    from replicator.sync import run_jobs

    settings, dbs = _start(ctx, lang)
    try:
        if row_ids:
            chosen = find(settings, dbs, row_ids)
            for r in chosen:
                if r.state not in RETRIED:
                    raise RowError(_not_retried(r))
        else:
            found = read_rows(settings, dbs, settings.jobs(), RETRIED)
            _raise_first(found.errors)
            chosen = found.rows
        if not chosen:
            if as_json:
                _emit_json({"retried": [], "through": [], "held": [], "jobs": []})
            else:
                out.print(_("Nothing to retry: no row is waiting or refused."))
            return
        mark_due(dbs, chosen)
        names = {r.job for r in chosen}
        jobs = [j for j in settings.jobs() if j.name in names]
        results = run_jobs(settings, jobs, dbs)
        after = read_rows(
            settings, dbs, jobs, STATES, ids=parse_ids(settings, [r.id for r in chosen])
        )
    finally:
        dbs.close()
    now = {r.id: r for r in after.rows}
    through = [r for r in chosen if r.id not in now]
    held = [now[r.id] for r in chosen if r.id in now and now[r.id].held]
    failed = [res.error for res in results if res.error] + after.errors
    if as_json:
        _emit_json(
            {
                "retried": [r.id for r in chosen],
                "through": [r.id for r in through],
                "held": [r.as_json() for r in held],
                "jobs": [
                    {"job": res.job.name, "error": str(res.error) if res.error else None}
                    for res in results
                ],
            }
        )
    else:
        for r in through:
            out.print(
                _("{id} went through: {table} {key}").format(id=r.id, table=r.table, key=r.key),
                markup=False,
            )
        for r in held:
            out.print(
                _("{id} is still held ({state}): {message}").format(
                    id=r.id, state=state_text(r.state), message=r.reason.strip().splitlines()[0]
                ),
                markup=False,
            )
        out.print(
            ngettext(
                "{through} of {count} row went through.",
                "{through} of {count} rows went through.",
                len(chosen),
            ).format(through=len(through), count=len(chosen))
        )
    _raise_first([e for e in failed if e is not None])
    if held:
        sys.exit(ROWS_HELD)


def _not_retried(row: HeldRow) -> str:
    if row.state == CONFLICT:
        return _(
            "{id} is a conflict: the sync keeps it back on purpose and would hold it again; "
            "`replicator errors show {id}` shows both rows; `replicator errors dismiss {id}` "
            "keeps the target's row"
        ).format(id=row.id)
    return _("{id} is dismissed: it is not sent again").format(id=row.id)


@errors_group.command("dismiss")
@click.argument("row_id", metavar="ID")
@click.option("--reason", required=True, help="why it is dismissed (shown in the closing report)")
@click.option("--by", "by", default=None, help="who dismisses it (default: this OS user)")
@LANG_OPTION
@JSON_OPTION
@click.pass_obj
@failing_loud
def dismiss_command(
    ctx: Ctx, row_id: str, reason: str, by: str | None, lang: str | None, as_json: bool
) -> None:
    """Drop a held row for good: never retried nor sent again, recorded with who and why,
    and listed in that day's closing report."""
    from replicator.cli import _emit_json, out

    settings, dbs = _start(ctx, lang)
    reason = reason.strip()
    if not reason:
        raise RowError(_("--reason must say why the row is dismissed"))
    who = (by or _os_user()).strip() or _os_user()
    try:
        (row,) = find(settings, dbs, [row_id])
        if row.state == DISMISSED:
            raise RowError(_("{id} is already dismissed").format(id=row.id))
        backend = dbs[row.database]
        try:
            with backend.engine.begin() as conn:
                dismissals.require_table(backend, conn, row.database)
                at = dismissals.record(conn, backend, row.number, row.state, reason, who)
        except sa_exc.SQLAlchemyError as exc:
            raise backend.classify(exc) from exc
    finally:
        dbs.close()
    if at is None:
        raise RowError(
            _(
                "{id} changed meanwhile (a sync retried it); look again with `errors show {id}`"
            ).format(id=row.id)
        )
    if as_json:
        document = row.as_json()
        document["state"] = DISMISSED
        document["dismissal"] = {"by": who, "reason": reason, "at": at.isoformat()}
        _emit_json({"dismissed": document})
        return
    out.print(
        _("{id} dismissed: {table} {key} ({state}) is not sent again; by {by}: {reason}").format(
            id=row.id,
            table=row.table,
            key=row.key,
            state=state_text(row.state),
            by=who,
            reason=reason,
        ),
        markup=False,
    )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a service account without one)
        return "unknown"


__all__ = ["ROWS_HELD", "errors_group", "state_text"]
