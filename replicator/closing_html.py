"""The closing report as one self-contained HTML file: no network assets, readable on a phone,
printable on an A4 page, the verdict at the top, the same content as the terminal report.

Every total is a cell that carries its exact value and what it is (`data-register`,
`data-table`, `data-group`, `data-side`, `data-measure`, `data-value`), so a script, or a
test in a real browser, reads the numbers from the page itself.
"""

from __future__ import annotations

from decimal import Decimal
from html import escape
from typing import Any

from replicator.closing_model import Pending, RegisterDay, Report, RowDiff, RowRef, TableDay
from replicator.closing_report import (
    SHOWN,
    action_text,
    health_text,
    held_key,
    key_text,
    label,
    log_summary,
    mark,
    pending_head,
    pending_row,
    register_heading,
    state_text,
    title,
    total_lines,
    value_text,
    verdict,
    when_text,
)
from replicator.i18n import _, language, money, ngettext, number
from replicator.i18n import date as fmt_date
from replicator.i18n import datetime_ as fmt_datetime

LISTED = 500  # rows listed per list (the JSON has them all)

STYLE = """
:root { color-scheme: light; --ok: #1b6e33; --bad: #b00020; --line: #d0d4d9; --soft: #f4f6f8; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
       color: #1d1f21; margin: 0 auto; padding: 12px; max-width: 60rem; }
h1 { font-size: 1.35rem; margin: 0 0 .3rem; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .4rem; padding-bottom: .2rem;
     border-bottom: 2px solid var(--line); }
h3 { font-size: 1rem; margin: 1rem 0 .3rem; }
p, li { overflow-wrap: anywhere; }
.meta { color: #555; margin: 0 0 .8rem; }
.verdict { border-left: 8px solid var(--ok); background: #e7f4ea; padding: .6rem .9rem;
           margin: .6rem 0 1rem; }
.verdict.fail { border-left-color: var(--bad); background: #fbe9ec; }
.verdict.fail strong { color: var(--bad); }
.verdict strong { font-size: 1.1rem; }
.verdict ol { margin: .4rem 0 0; padding-left: 1.4rem; }
table { border-collapse: collapse; width: 100%; max-width: 40rem; margin: .2rem 0 .6rem; }
th, td { padding: .25rem .4rem; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tbody.group th { background: var(--soft); }
.ok { color: var(--ok); font-weight: 600; }
.bad { color: var(--bad); font-weight: 700; }
ul.rows { margin: .2rem 0 .6rem; padding-left: 1.2rem; }
code { font-size: .92em; background: var(--soft); padding: 0 .2rem; }
footer { color: #666; font-size: .85rem; margin-top: 2rem; }
@media (max-width: 30rem) { body { font-size: 14px; padding: 8px; } th, td { padding: .2rem; } }
@page { size: A4; margin: 12mm; }
@media print {
  body { font-size: 10pt; max-width: none; padding: 0; }
  .verdict { break-inside: avoid; }
  table, ul.rows { break-inside: avoid; }
  h2 { break-after: avoid; }
}
"""


def render_html(report: Report) -> str:
    lang = language()
    heading = ngettext(
        "Closing of {day} (store time {zone}), {count} register",
        "Closing of {day} (store time {zone}), {count} registers",
        len(report.registers),
    ).format(day=fmt_date(report.day), zone=report.timezone, count=number(len(report.registers)))
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="{escape(lang)}">',
        '<head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(heading)}</title>",
        f"<style>{STYLE}</style></head>",
        f'<body data-day="{report.day.isoformat()}" data-exit-code="{report.exit_code}">',
        f"<h1>{escape(heading)}</h1>",
        _verdict(report),
    ]
    if report.fixed is not None:
        parts.append("<ul class='rows'>")
        for run in report.fixed:
            text = ngettext(
                "integration {job}: {rows} row", "integration {job}: {rows} rows", run.rows
            ).format(job=run.job, rows=run.rows)
            if run.error:
                text += " - " + _("failed: {error}").format(error=run.error)
            parts.append(f"<li>{escape(text)}</li>")
        parts.append("</ul>")
    for reg in report.registers:
        parts.append(_register(reg, report))
    if report.log.lines:
        parts.append(f"<h2>{escape(_('Log lines of no register:'))}</h2>")
        parts.append(_log(report.log.lines))
    parts.append(f"<p>{escape(log_summary(report))}</p>")
    parts.append(
        "<footer>"
        + escape(
            _("Written {when} by replicator closing.").format(
                when=fmt_datetime(report.generated, report.timezone)
            )
        )
        + "</footer></body></html>"
    )
    return "\n".join(parts) + "\n"


def _verdict(report: Report) -> str:
    kind = "verdict" if report.ok else "verdict fail"
    items = "".join(f"<li>{_code(action_text(a))}</li>" for a in report.actions)
    body = f"<ol>{items}</ol>" if items else ""
    return (
        f'<div class="{kind}" id="verdict"><strong>{escape(verdict(report))}</strong>{body}</div>'
    )


def _code(text: str) -> str:
    """Escaped text whose `commands` are set as code."""
    pieces = escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


def _register(reg: RegisterDay, report: Report) -> str:
    tz = report.timezone
    out = [f'<section data-register="{escape(reg.database)}">']
    out.append(f"<h2>{escape(register_heading(reg))}</h2>")
    for problem in reg.problems:
        out.append(f'<p class="bad">{escape(problem.database)}: {escape(problem.message)}</p>')
    for table in reg.tables:
        out.append(_totals(reg, table))
        out.append(_lists(table, tz))
    out.append(_pending(reg, report))
    out.append(_held(reg, tz))
    out.append(_runs(reg, tz))
    if reg.log:
        out.append(f"<h3>{escape(_('Warnings and errors of the day:'))}</h3>")
        out.append(_log(reg.log))
    out.append("</section>")
    return "\n".join(out)


def _totals(reg: RegisterDay, table: TableDay) -> str:
    sums = table.closing.sums
    by = label(table.closing, table.closing.by) if table.closing.by else ""
    head = (
        f"<thead><tr><th>{escape(by)}</th><th class='num'>{escape(_('on the register'))}</th>"
        f"<th class='num'>{escape(_('on the server'))}</th><th></th></tr></thead>"
    )
    out = [f"<h3>{escape(title(table))}</h3>", f'<table class="totals">{head}']
    for line in total_lines(table):
        group = "" if line.group is None else line.group
        out.append(f'<tbody class="group" data-group="{escape(group)}">')
        if table.closing.by:
            out.append(f"<tr><th colspan='4'>{escape(line.label)}</th></tr>")
        measures: list[tuple[str, str, Any, Any]] = [
            ("count", _("count"), _get(line.register, None), _get(line.server, None))
        ]
        for name in sums:
            measures.append(
                (
                    f"sum:{name}",
                    label(table.closing, name),
                    _get(line.register, name),
                    _get(line.server, name),
                )
            )
        for measure, name, mine, theirs in measures:
            same = mine == theirs and line.ok is not None
            cells = [f"<td>{escape(name)}</td>"]
            for side, value in (("register", mine), ("server", theirs)):
                cells.append(_cell(reg, table, group, side, measure, value))
            status = "" if line.ok is None else mark(same)
            cells.append(f"<td class='{'ok' if same else 'bad'}'>{escape(status)}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody>")
    r, s = table.register, table.server
    if r is not None and s is not None and r.rows != s.rows:
        out.append(
            f"<tbody><tr><td>{escape(_('rows of the day (all)'))}</td>"
            f"<td class='num'>{number(r.rows)}</td><td class='num'>{number(s.rows)}</td>"
            f"<td class='bad'>{escape(mark(False))}</td></tr></tbody>"
        )
    out.append("</table>")
    return "\n".join(out)


def _get(totals: Any, name: str | None) -> Any:
    if totals is None:
        return None
    return totals.count if name is None else totals.sums.get(name, Decimal(0))


def _cell(
    reg: RegisterDay, table: TableDay, group: str, side: str, measure: str, value: Any
) -> str:
    if value is None:
        return "<td class='num'>?</td>"
    shown = number(value) if measure == "count" else money(value)
    attrs = (
        f'data-register="{escape(reg.database)}" data-table="{escape(table.table)}" '
        f'data-group="{escape(group)}" data-side="{side}" data-measure="{escape(measure)}" '
        f'data-value="{escape(str(value))}"'
    )
    return f"<td class='num' {attrs}>{escape(shown)}</td>"


def _lists(table: TableDay, tz: str) -> str:
    out = []
    heads: list[tuple[str, list[RowRef] | list[RowDiff], str]] = [
        ("missing", table.missing, _("Not on the server:")),
        ("different", table.different, _("Different on the server:")),
        ("extra", table.extra, _("On the server, no longer on the register:")),
    ]
    for kind, rows, head in heads:
        if not rows:
            continue
        out.append(f"<p><strong>{escape(head)}</strong></p><ul class='rows' data-list='{kind}'>")
        for row in rows[:LISTED]:
            amounts = " ".join(money(v) for v in row.amounts.values() if v is not None)
            text = f"{key_text(row.key, table.key_names)} — {when_text(row.when, tz)} {amounts}"
            if isinstance(row, RowDiff):
                for d in row.columns:
                    text += "; " + _(
                        "{column}: {register} on the register, {server} on the server"
                    ).format(
                        column=label(table.closing, d.column),
                        register=value_text(d.register, tz),
                        server=value_text(d.server, tz),
                    )
            out.append(f"<li>{escape(text)}</li>")
        if len(rows) > LISTED:
            more = _("... and {count} more (see --html or --json)").format(count=len(rows) - LISTED)
            out.append(f"<li>{escape(more)}</li>")
        out.append("</ul>")
    return "\n".join(out)


def _pending(reg: RegisterDay, report: Report) -> str:
    if not reg.pending:
        return f"<p>{escape(_('Nothing waiting to be sent, either way.'))}</p>"
    out = [f"<h3>{escape(_('Waiting to be sent:'))}</h3>"]
    for p in reg.pending:
        out.append(_one_pending(p, report))
    return "\n".join(out)


def _one_pending(p: Pending, report: Report) -> str:
    out = [f"<p>{escape(pending_head(p, report))}</p><ul class='rows'>"]
    for row in p.rows:
        out.append(f"<li>{escape(pending_row(row, p, report.timezone))}</li>")
    out.append("</ul>")
    return "".join(out)


def _held(reg: RegisterDay, tz: str) -> str:
    if not reg.held and not reg.dismissals:
        return f"<p>{escape(_('No held rows.'))}</p>"
    out = []
    if reg.held:
        out.append(
            f"<h3>{escape(_('Held rows (quarantine and conflicts):'))}</h3><ul class='rows'>"
        )
        for h in reg.held[: SHOWN * 10]:
            since = _("since {when}").format(when=when_text(h.first_seen, tz))
            out.append(
                f"<li>{escape(h.table)} {escape(held_key(h))} — {escape(state_text(h.state))}: "
                f"{escape(h.reason)} ({escape(since)})</li>"
            )
        out.append("</ul>")
    if reg.dismissals:
        out.append("<ul class='rows'>")
        for d in reg.dismissals:
            text = _("Dismissed {when} by {by}: {table} {key}: {reason}").format(
                when=when_text(d.at, tz), by=d.by, table=d.table, key=d.key, reason=d.reason
            )
            out.append(f"<li>{escape(text)}</li>")
        out.append("</ul>")
    return "\n".join(out)


def _runs(reg: RegisterDay, tz: str) -> str:
    out = [f"<h3>{escape(_('Last successful run of each group:'))}</h3><ul class='rows'>"]
    for run in reg.runs:
        way = _("catalog to the register") if run.to_register else _("sales to the server")
        when = when_text(run.last_ok, tz) if run.last_ok else _("never")
        text = f"{run.job.split(':', 1)[0]} ({way}): {when}"
        if run.health:
            text += f" [{health_text(run.health)}]"
        if run.last_error:
            text += " — " + _("last error: {error}").format(error=run.last_error)
        out.append(f"<li>{escape(text)}</li>")
    out.append("</ul>")
    return "".join(out)


def _log(lines: list[Any]) -> str:
    out = ["<ul class='rows'>"]
    for ln in lines[-LISTED:]:
        at = ln.at.strftime("%H:%M:%S") if ln.at else ""
        level = "bad" if ln.level != "WARNING" else ""
        out.append(
            f"<li><span class='{level}'>{escape(at)} {escape(ln.level)}</span> "
            f"{escape(ln.message)}</li>"
        )
    out.append("</ul>")
    return "".join(out)
