"""What the closing report holds: one business day, per register, both sides side by side.

Plain data, filled by `replicator.closing` and rendered by `replicator.closing_report`
(terminal, JSON) and `replicator.closing_html`. Amounts are exact `Decimal`s, never floats;
keys are the canonical values of the codec (`replicator.codec`), source key order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from replicator.mapping import Closing

# Exit codes of `replicator closing` (docs/closing.md).
EXIT_OK = 0
EXIT_DIFFERENT = 8  # both sides were read and something must be done


@dataclass
class Totals:
    """Counted and summed rows: the whole table, or one value of its `by` column."""

    count: int = 0
    sums: dict[str, Decimal] = field(default_factory=dict)


@dataclass
class Side:
    """One table's day on one side (register or server), computed inside its database."""

    rows: int  # every row of the day (the `where` of the closing does not apply)
    keysum: tuple[int, ...] | None  # sums of the integer key columns: a cheap fingerprint
    total: Totals  # the rows that match the closing's `where`
    groups: dict[str, Totals] = field(default_factory=dict)  # per value of `by`


@dataclass
class RowRef:
    """A row of the day that is on one side only."""

    key: tuple[Any, ...]
    when: datetime | date | None
    amounts: dict[str, Decimal | None]
    shown: dict[str, Any] = field(default_factory=dict)


@dataclass
class Difference:
    """A column whose value differs between the register and the server."""

    column: str
    register: Any
    server: Any


@dataclass
class RowDiff:
    key: tuple[Any, ...]
    when: datetime | date | None
    amounts: dict[str, Decimal | None]
    columns: list[Difference]


@dataclass
class TableDay:
    """One table with a closing `date`, for one register and day."""

    table: str
    closing: Closing
    key_names: list[str] = field(default_factory=list)  # the source key's columns
    register: Side | None = None
    server: Side | None = None
    missing: list[RowRef] = field(default_factory=list)  # on the register, not on the server
    different: list[RowDiff] = field(default_factory=list)
    extra: list[RowRef] = field(default_factory=list)  # on the server, not on the register
    rows_compared: bool = False  # row by row, not only counts and sums
    error: str | None = None

    @property
    def totals_agree(self) -> bool:
        r, s = self.register, self.server
        if r is None or s is None:
            return False
        return (
            r.rows == s.rows
            and r.keysum == s.keysum
            and _same(r.total, s.total)
            and r.groups.keys() == s.groups.keys()
            and all(_same(r.groups[g], s.groups[g]) for g in r.groups)
        )

    @property
    def agree(self) -> bool:
        return (
            self.error is None
            and self.totals_agree
            and not (self.missing or self.different or self.extra)
        )


def _same(a: Totals, b: Totals) -> bool:
    return a.count == b.count and a.sums == b.sums


@dataclass
class PendingRow:
    key: tuple[Any, ...]
    changed: datetime | date | None = None
    shown: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False  # a delete waiting (a tombstone)


@dataclass
class Pending:
    """Changes of one table that a job has not delivered yet."""

    job: str
    group: str
    table: str
    closing: Closing | None
    to_register: bool  # catalog (server -> register); else movement (register -> server)
    count: int
    key_names: list[str] = field(default_factory=list)
    capped: bool = False
    oldest: datetime | date | None = None  # from the closing's `changed` (or `date`) column
    rows: list[PendingRow] = field(default_factory=list)


@dataclass
class HeldRow:
    job: str
    group: str
    table: str
    key: str
    state: str  # waiting | refused | conflict
    reason: str
    first_seen: datetime | None
    attempts: int


@dataclass
class Dismissal:
    job: str
    table: str
    key: str
    reason: str
    by: str
    at: datetime | None


@dataclass
class Run:
    job: str
    group: str
    to_register: bool
    last_run: datetime | None = None
    last_ok: datetime | None = None
    last_error: str | None = None
    health: str | None = None  # from the service's state file: ok | degraded | failing
    lag_seconds: float | None = None


@dataclass
class LogLine:
    at: datetime | None
    level: str
    job: str | None
    message: str


@dataclass
class Problem:
    """A database that could not be read: the report is incomplete there."""

    database: str
    message: str
    exit_code: int


@dataclass
class Action:
    """One thing staff must do, as a stable code and its parameters (rendered per language)."""

    code: str
    register: str
    count: int = 0
    table: str | None = None
    closing: Closing | None = None  # the table's closing entry (its title)
    age_seconds: float | None = None
    detail: str | None = None


@dataclass
class RegisterDay:
    database: str
    node: str
    register_id: Any
    timezone: str
    tables: list[TableDay] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)
    held: list[HeldRow] = field(default_factory=list)
    held_counts: dict[str, int] = field(default_factory=dict)  # per state
    dismissals: list[Dismissal] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    log: list[LogLine] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)

    @property
    def label(self) -> str:
        return str(self.register_id) if self.register_id is not None else self.database


@dataclass
class LogSummary:
    folder: Path | None
    files: list[Path] = field(default_factory=list)
    errors: int = 0
    warnings: int = 0
    lines: list[LogLine] = field(default_factory=list)  # lines of no register's job


@dataclass
class FixRun:
    """One job run by `--fix`."""

    job: str
    rows: int
    error: str | None


@dataclass
class Report:
    day: date
    timezone: str
    generated: datetime
    registers: list[RegisterDay]
    log: LogSummary
    fixed: list[FixRun] | None = None
    state_file: Path | None = None  # the service's state file, when one was read
    state_updated: datetime | None = None

    @property
    def actions(self) -> list[Action]:
        return [a for r in self.registers for a in r.actions]

    @property
    def problems(self) -> list[Problem]:
        return [p for r in self.registers for p in r.problems]

    @property
    def ok(self) -> bool:
        return not self.actions

    @property
    def exit_code(self) -> int:
        """0 both sides agree; 8 something must be done (whatever else); otherwise the code
        of the first database that could not be read (4 unreachable, 3 not set up)."""
        if any(a.code != "unreadable" for a in self.actions):
            return EXIT_DIFFERENT
        for problem in self.problems:
            return problem.exit_code
        return EXIT_OK
