"""The closing report as store staff read it (the terminal) and as a script reads it (JSON).

Every text is translated (`replicator.i18n`); amounts are formatted from exact decimals. The
verdict comes first: "closing OK", or the numbered list of what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from replicator.closing_model import (
    Action,
    HeldRow,
    Pending,
    RegisterDay,
    Report,
    TableDay,
    Totals,
)
from replicator.i18n import _, age, language, money, ngettext, number
from replicator.i18n import date as fmt_date
from replicator.i18n import datetime_ as fmt_datetime
from replicator.mapping import Closing

SHOWN = 20  # rows listed per list in the terminal (all of them in --json and --html)


# --- words ---------------------------------------------------------------------------------------
def title(table: TableDay | Pending) -> str:
    return title_of(table.closing, table.table)


def title_of(closing: Closing | None, table: str) -> str:
    """The name staff read for a table: its closing title in their language, else its name."""
    found = closing.title_in(language()) if closing is not None else None
    return found or table


def label(closing: Closing | None, column: str) -> str:
    """What staff read for a column: its closing label in their language, else its name."""
    return closing.label_in(column, language()) if closing is not None else column


def key_text(key: tuple[Any, ...] | list[Any], names: list[str] | None = None) -> str:
    """`sale_id 100`, `store_id 1, product_id 7`: a key with its columns' names."""
    if names and len(names) == len(key):
        return ", ".join(f"{n} {v}" for n, v in zip(names, key, strict=True))
    return " / ".join(str(v) for v in key)


def when_text(value: datetime | date | None, tz: str) -> str:
    if isinstance(value, datetime):
        return fmt_datetime(value, tz)
    if isinstance(value, date):
        return fmt_date(value)
    return "-"


def value_text(value: Any, tz: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime | date):
        return when_text(value, tz)
    if isinstance(value, Decimal):
        return number(value)
    return str(value)


def fixing() -> str:
    return _("Running the manual integration (sales to the server, catalog to the registers)...")


def verdict(report: Report) -> str:
    if report.ok:
        return _(
            "Closing OK: every sale reached the server and every catalog change reached the "
            "registers."
        )
    n = len(report.actions)
    return ngettext(
        "Closing NOT OK: {count} thing to do", "Closing NOT OK: {count} things to do", n
    ).format(count=n)


def action_text(a: Action) -> str:
    """One thing to do, as staff read it."""
    n, who, table = a.count, a.register, title_of(a.closing, a.table or "")
    if a.code == "unreadable":
        return _(
            "Register {register}: database {database} could not be read ({detail}). Check that "
            "it is on and connected, then run the closing again."
        ).format(register=who, database=a.table, detail=a.detail)
    if a.code == "missing":
        return ngettext(
            "Register {register}: {count} row of {table} has not reached the server. Run "
            "`replicator closing --fix`.",
            "Register {register}: {count} rows of {table} have not reached the server. Run "
            "`replicator closing --fix`.",
            n,
        ).format(register=who, count=n, table=table)
    if a.code == "different":
        return ngettext(
            "Register {register}: {count} row of {table} differs from the server. Run "
            "`replicator closing --fix`; if it stays, call support.",
            "Register {register}: {count} rows of {table} differ from the server. Run "
            "`replicator closing --fix`; if they stay, call support.",
            n,
        ).format(register=who, count=n, table=table)
    if a.code == "extra":
        return ngettext(
            "Register {register}: {count} row of {table} is on the server but no longer on "
            "the register (was it restored from a backup?). Call support.",
            "Register {register}: {count} rows of {table} are on the server but no longer on "
            "the register (was it restored from a backup?). Call support.",
            n,
        ).format(register=who, count=n, table=table)
    if a.code == "totals":
        return _(
            "Register {register}: the totals of {table} differ between the register and the "
            "server. Call support."
        ).format(register=who, table=table)
    if a.code == "catalog":
        if a.age_seconds is not None:
            return ngettext(
                "Register {register}: {count} catalog change has not reached the register "
                "(waiting for {age}). Run `replicator closing --fix`.",
                "Register {register}: {count} catalog changes have not reached the register "
                "(the oldest waiting for {age}). Run `replicator closing --fix`.",
                n,
            ).format(register=who, count=n, age=age(a.age_seconds))
        return ngettext(
            "Register {register}: {count} catalog change has not reached the register. Run "
            "`replicator closing --fix`.",
            "Register {register}: {count} catalog changes have not reached the register. Run "
            "`replicator closing --fix`.",
            n,
        ).format(register=who, count=n)
    if a.code == "waiting":
        return ngettext(
            "Register {register}: {count} change is waiting to be sent to the server. Run "
            "`replicator closing --fix`.",
            "Register {register}: {count} changes are waiting to be sent to the server. Run "
            "`replicator closing --fix`.",
            n,
        ).format(register=who, count=n)
    if a.code == "held":
        return ngettext(
            "Register {register}: {count} row is held in quarantine. See `replicator errors`, "
            "fix the cause, then run `replicator closing --fix`.",
            "Register {register}: {count} rows are held in quarantine. See `replicator "
            "errors`, fix the cause, then run `replicator closing --fix`.",
            n,
        ).format(register=who, count=n)
    if a.code == "conflicts":
        return ngettext(
            "Register {register}: {count} conflict waits for a decision. See `replicator errors`.",
            "Register {register}: {count} conflicts wait for a decision. See `replicator errors`.",
            n,
        ).format(register=who, count=n)
    return f"{who}: {a.code}"


def held_key(row: HeldRow) -> str:
    """A held row's canonical JSON key as staff read it."""
    try:
        values = json.loads(row.key)
    except ValueError:
        return row.key
    return key_text(values) if isinstance(values, list) else row.key


def state_text(state: str) -> str:
    return {
        "waiting": _("waiting for its parent"),
        "refused": _("refused by the database"),
        "conflict": _("conflict"),
    }.get(state, state)


def health_text(health: str | None) -> str:
    return {
        "ok": _("ok"),
        "degraded": _("degraded"),
        "failing": _("failing"),
    }.get(health or "", "")


def register_heading(reg: RegisterDay) -> str:
    return _("Register {register} ({database})").format(register=reg.label, database=reg.database)


# --- the terminal --------------------------------------------------------------------------------
def print_report(out: Console, report: Report) -> None:
    tz = report.timezone
    out.print(
        ngettext(
            "Closing of {day} (store time {zone}), {count} register",
            "Closing of {day} (store time {zone}), {count} registers",
            len(report.registers),
        ).format(day=fmt_date(report.day), zone=tz, count=number(len(report.registers))),
        markup=False,
        style="bold",
    )
    if report.fixed is not None:
        for run in report.fixed:
            line = "  " + ngettext(
                "integration {job}: {rows} row", "integration {job}: {rows} rows", run.rows
            ).format(job=run.job, rows=run.rows)
            if run.error:
                line += " - " + _("failed: {error}").format(error=run.error)
            out.print(line, markup=False)
    out.print()
    out.print(verdict(report), markup=False, style="bold green" if report.ok else "bold red")
    for n, a in enumerate(report.actions, start=1):
        out.print(f"  {n}. {action_text(a)}", markup=False)
    for reg in report.registers:
        out.print()
        heading = register_heading(reg)
        out.print(heading, markup=False, style="bold")
        out.print("=" * len(heading), markup=False)
        for table in reg.tables:
            out.print(totals_table(table))
            _lists(out, table, tz)
        _pending(out, reg, report)
        _held(out, reg, tz)
        _runs(out, reg, tz)
        _log(out, reg.log, tz)
    if report.log.lines:
        out.print()
        out.print(_("Log lines of no register:"), markup=False, style="bold")
        _log(out, report.log.lines, tz, heading=False)
    out.print()
    out.print(log_summary(report), markup=False)


def log_summary(report: Report) -> str:
    log = report.log
    if log.folder is None:
        return _("No log folder is configured ([log] dir), so the day's log was not read.")
    if not log.files:
        return _("No log file for {day} in {folder}.").format(
            day=fmt_date(report.day), folder=log.folder
        )
    return _("Log of {day}: errors {errors}, warnings {warnings} ({files}).").format(
        day=fmt_date(report.day),
        errors=number(log.errors),
        warnings=number(log.warnings),
        files=", ".join(p.name for p in log.files),
    )


def mark(ok: bool) -> str:
    return _("ok") if ok else _("DIFFERENT")


@dataclass
class Line:
    """One line of the side-by-side totals: the whole table (group None) or one value of
    its `by` column."""

    label: str
    group: str | None
    register: Totals | None
    server: Totals | None

    @property
    def ok(self) -> bool | None:
        if self.register is None or self.server is None:
            return None
        return self.register.count == self.server.count and self.register.sums == self.server.sums


def total_lines(table: TableDay) -> list[Line]:
    r, s = table.register, table.server
    lines = [Line(_("all"), None, r.total if r else None, s.total if s else None)]
    if table.closing.by and r is not None and s is not None:
        empty = Totals(0, {n: Decimal(0) for n in table.closing.sums})
        for group in sorted(set(r.groups) | set(s.groups)):
            lines.append(
                Line(
                    group or _("(none)"),
                    group,
                    r.groups.get(group, empty),
                    s.groups.get(group, empty),
                )
            )
    return lines


def totals_table(table: TableDay) -> Table:
    """Count and sums on the register and on the server, side by side; with `by`, for the
    whole table and then for each value (each payment type)."""
    sums = table.closing.sums
    by = table.closing.by
    out = Table(title=title(table), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    if by:
        out.add_column(label(table.closing, by))
    out.add_column("")
    out.add_column(_("on the register"), justify="right")
    out.add_column(_("on the server"), justify="right")
    out.add_column("")
    for line in total_lines(table):
        measures = [(_("count"), _measure(line.register, None), _measure(line.server, None))]
        measures += [
            (label(table.closing, n), _measure(line.register, n), _measure(line.server, n))
            for n in sums
        ]
        for index, (name, mine, theirs) in enumerate(measures):
            cells = [line.label if index == 0 else ""] if by else []
            status = "" if line.ok is None else mark(mine == theirs)
            cells += [name, mine, theirs, status]
            out.add_row(*cells, end_section=bool(by) and index == len(measures) - 1)
    r, s = table.register, table.server
    if r is not None and s is not None and r.rows != s.rows:
        cells = [""] if by else []
        out.add_row(*cells, _("rows of the day (all)"), number(r.rows), number(s.rows), mark(False))
    return out


def _measure(totals: Totals | None, name: str | None) -> str:
    if totals is None:
        return "?"
    if name is None:
        return number(totals.count)
    return money(totals.sums.get(name, Decimal(0)))


def _lists(out: Console, table: TableDay, tz: str) -> None:
    heads = (
        (table.missing, _("Not on the server:")),
        (table.different, _("Different on the server:")),
        (table.extra, _("On the server, no longer on the register:")),
    )
    for rows, head in heads:
        if not rows:
            continue
        out.print(f"  {head}", markup=False, style="bold")
        for row in rows[:SHOWN]:
            amounts = "  ".join(money(v) for v in row.amounts.values() if v is not None)
            line = f"    {key_text(row.key, table.key_names)}  {when_text(row.when, tz)}  {amounts}"
            for diff in getattr(row, "columns", []):
                line += "  " + _(
                    "{column}: {register} on the register, {server} on the server"
                ).format(
                    column=label(table.closing, diff.column),
                    register=value_text(diff.register, tz),
                    server=value_text(diff.server, tz),
                )
            out.print(line.rstrip(), markup=False)
        if len(rows) > SHOWN:
            out.print(
                "    "
                + _("... and {count} more (see --html or --json)").format(count=len(rows) - SHOWN),
                markup=False,
            )


def pending_head(p: Pending, report: Report) -> str:
    if p.to_register:
        text = ngettext(
            "{table}: {count} change has not reached the register",
            "{table}: {count} changes have not reached the register",
            p.count,
        )
    else:
        text = ngettext(
            "{table}: {count} change waits to be sent to the server",
            "{table}: {count} changes wait to be sent to the server",
            p.count,
        )
    head = text.format(table=title(p), count=number(p.count) + ("+" if p.capped else ""))
    if isinstance(p.oldest, datetime):
        seconds = (report.generated - p.oldest).total_seconds()
        head += " (" + _("oldest {age} ago").format(age=age(seconds)) + ")"
    return head


def _pending(out: Console, reg: RegisterDay, report: Report) -> None:
    if not reg.pending:
        out.print(_("Nothing waiting to be sent, either way."), markup=False)
        return
    out.print(_("Waiting to be sent:"), markup=False, style="bold")
    for p in reg.pending:
        out.print(f"  {pending_head(p, report)}", markup=False)
        for row in p.rows[:SHOWN]:
            out.print(f"    {pending_row(row, p, report.timezone)}", markup=False)


def pending_row(row: Any, pending: Pending, tz: str) -> str:
    parts = [key_text(row.key, pending.key_names)]
    if row.deleted:
        parts.append(_("deleted"))
    parts += [
        f"{label(pending.closing, name)} {value_text(v, tz)}" for name, v in row.shown.items()
    ]
    if row.changed is not None:
        parts.append(_("changed {when}").format(when=when_text(row.changed, tz)))
    return "  ".join(parts)


def _held(out: Console, reg: RegisterDay, tz: str) -> None:
    if reg.held:
        out.print(_("Held rows (quarantine and conflicts):"), markup=False, style="bold")
        for h in reg.held[:SHOWN]:
            out.print(
                f"  {h.table} {held_key(h)}  {state_text(h.state)}  {h.reason}  "
                + _("since {when}").format(when=when_text(h.first_seen, tz)),
                markup=False,
            )
    else:
        out.print(_("No held rows."), markup=False)
    for d in reg.dismissals:
        out.print(
            "  "
            + _("Dismissed {when} by {by}: {table} {key}: {reason}").format(
                when=when_text(d.at, tz), by=d.by, table=d.table, key=d.key, reason=d.reason
            ),
            markup=False,
        )


def _runs(out: Console, reg: RegisterDay, tz: str) -> None:
    out.print(_("Last successful run of each group:"), markup=False, style="bold")
    for run in reg.runs:
        way = _("catalog to the register") if run.to_register else _("sales to the server")
        when = when_text(run.last_ok, tz) if run.last_ok else _("never")
        line = f"  {run.job.split(':', 1)[0]} ({way}): {when}"
        if run.health:
            line += f"  [{health_text(run.health)}]"
        if run.last_error:
            line += "  " + _("last error: {error}").format(error=run.last_error)
        out.print(line, markup=False)


def _log(out: Console, lines: list[Any], tz: str, heading: bool = True) -> None:
    if not lines:
        return
    if heading:
        out.print(_("Warnings and errors of the day:"), markup=False, style="bold")
    for ln in lines[-SHOWN:]:
        at = ln.at.strftime("%H:%M:%S") if ln.at else ""
        out.print(f"  {at} {ln.level} {ln.message}", markup=False)
