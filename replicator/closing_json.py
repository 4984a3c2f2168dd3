"""The closing report as one JSON document (`replicator closing --json`), for scripts.

The same content as the terminal report: the verdict's texts in the current language, beside
stable codes; amounts as exact decimal strings; row times with their offset (the store's local
time), control-table times in UTC."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from replicator.closing_model import Action, RegisterDay, Report, Side, Totals
from replicator.closing_report import action_text, title, verdict
from replicator.i18n import language


def as_json(report: Report) -> dict[str, Any]:
    return {
        "day": report.day.isoformat(),
        "timezone": report.timezone,
        "generated": report.generated.isoformat(),
        "language": language(),
        "ok": report.ok,
        "exit_code": report.exit_code,
        "verdict": verdict(report),
        "actions": [_action(a) for a in report.actions],
        "registers": [_register(r, report) for r in report.registers],
        "log": {
            "folder": str(report.log.folder) if report.log.folder else None,
            "files": [str(p) for p in report.log.files],
            "errors": report.log.errors,
            "warnings": report.log.warnings,
            "lines": [_line(ln) for ln in report.log.lines],
        },
        "service_state": str(report.state_file) if report.state_file else None,
        "service_updated": _iso(report.state_updated),
        "fixed": None
        if report.fixed is None
        else [{"job": f.job, "rows": f.rows, "error": f.error} for f in report.fixed],
    }


def _iso(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _action(a: Action) -> dict[str, Any]:
    return {
        "code": a.code,
        "register": a.register,
        "count": a.count,
        "table": a.table,
        "age_seconds": None if a.age_seconds is None else round(a.age_seconds),
        "detail": a.detail,
        "text": action_text(a),
    }


def _totals(t: Totals) -> dict[str, Any]:
    return {"count": t.count, "sums": {k: str(v) for k, v in t.sums.items()}}


def _side(side: Side | None) -> dict[str, Any] | None:
    if side is None:
        return None
    return {
        "rows": side.rows,
        "keysum": list(side.keysum) if side.keysum is not None else None,
        **_totals(side.total),
        "groups": {g: _totals(t) for g, t in sorted(side.groups.items())},
    }


def _row(row: Any) -> dict[str, Any]:
    out = {
        "key": list(row.key),
        "when": _iso(row.when),
        "amounts": {k: _iso(v) for k, v in row.amounts.items()},
    }
    if hasattr(row, "columns"):
        out["columns"] = [
            {"column": d.column, "register": _iso(d.register), "server": _iso(d.server)}
            for d in row.columns
        ]
    else:
        out["shown"] = {k: _iso(v) for k, v in row.shown.items()}
    return out


def _register(reg: RegisterDay, report: Report) -> dict[str, Any]:
    return {
        "database": reg.database,
        "node": reg.node,
        "register_id": reg.register_id,
        "timezone": reg.timezone,
        "ok": not reg.actions,
        "tables": [
            {
                "table": t.table,
                "title": title(t),
                "by": t.closing.by,
                "agree": t.agree,
                "rows_compared": t.rows_compared,
                "register": _side(t.register),
                "server": _side(t.server),
                "missing": [_row(r) for r in t.missing],
                "different": [_row(r) for r in t.different],
                "extra": [_row(r) for r in t.extra],
                "error": t.error,
            }
            for t in reg.tables
        ],
        "pending": [
            {
                "job": p.job,
                "group": p.group,
                "table": p.table,
                "title": title(p),
                "direction": "to_register" if p.to_register else "to_server",
                "count": p.count,
                "capped": p.capped,
                "oldest": _iso(p.oldest),
                "age_seconds": round((report.generated - p.oldest).total_seconds())
                if isinstance(p.oldest, datetime)
                else None,
                "rows": [
                    {
                        "key": list(r.key),
                        "deleted": r.deleted,
                        "changed": _iso(r.changed),
                        "shown": {k: _iso(v) for k, v in r.shown.items()},
                    }
                    for r in p.rows
                ],
            }
            for p in reg.pending
        ],
        "held": [
            {
                "job": h.job,
                "table": h.table,
                "key": h.key,
                "state": h.state,
                "reason": h.reason,
                "first_seen": _iso(h.first_seen),
                "attempts": h.attempts,
            }
            for h in reg.held
        ],
        "held_counts": reg.held_counts,
        "dismissals": [
            {
                "job": d.job,
                "table": d.table,
                "key": d.key,
                "reason": d.reason,
                "by": d.by,
                "at": _iso(d.at),
            }
            for d in reg.dismissals
        ],
        "runs": [
            {
                "job": r.job,
                "group": r.group,
                "direction": "to_register" if r.to_register else "to_server",
                "last_run": _iso(r.last_run),
                "last_ok": _iso(r.last_ok),
                "last_error": r.last_error,
                "health": r.health,
                "lag_seconds": r.lag_seconds,
            }
            for r in reg.runs
        ],
        "log": [_line(ln) for ln in reg.log],
        "problems": [
            {"database": p.database, "message": p.message, "exit_code": p.exit_code}
            for p in reg.problems
        ],
    }


def _line(ln: Any) -> dict[str, Any]:
    return {"at": _iso(ln.at), "level": ln.level, "job": ln.job, "message": ln.message}
