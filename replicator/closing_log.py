"""The warnings and errors of one day's log file, for the closing report.

The daily files are `replicator-YYYY-MM-DD.log` in the `[log] dir` folder, gzipped
(`.log.gz`) once the day is over; their lines are text
(`2026-12-02 01:08:11.099 | WARNING | [job=...] message`) or JSON lines
(`[log] format = "json"`). Both forms are read, a line at a time (a day's file may be large);
a traceback's lines after an ERROR line are not repeated.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
from collections import deque
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import IO

from replicator.closing_model import LogLine, LogSummary

LEVELS = {"WARNING", "ERROR", "CRITICAL"}
KEPT = 500  # the latest lines kept (all are counted)
_TEXT = re.compile(
    r"^(?P<at>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?) \| (?P<level>[A-Z]+)\s*\| "
    r"(?:\[(?P<ctx>[^\]]*)\] )?(?P<message>.*)$"
)
_JOB = re.compile(r"(?:^|\s)job=(\S+)")


def day_files(folder: Path, day: date) -> list[Path]:
    """The day's files: the compressed part first (written earlier), one being compressed
    (`.compressing`: another process gzips it right now), then the plain one."""
    stem = f"replicator-{day.isoformat()}.log"
    found = [folder / f"{stem}.gz", *sorted(folder.glob(f"{stem}.*.compressing")), folder / stem]
    return [p for p in found if p.is_file()]


def _signature(paths: list[Path]) -> list[tuple[str, int, int]]:
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p.name, st.st_size, st.st_mtime_ns))
    return out


def read_day(folder: Path | None, day: date) -> tuple[LogSummary, list[LogLine]]:
    """The day's warnings and errors: the summary, and every line kept (newest KEPT). A file
    compressed while it is read (the service gzips earlier days) is read again whole."""
    for _attempt in range(5):
        summary, kept = _read(folder, day)
        if folder is None or _signature(day_files(folder, day)) == _signature(summary.files):
            break
    return summary, kept


def _read(folder: Path | None, day: date) -> tuple[LogSummary, list[LogLine]]:
    summary = LogSummary(folder)
    kept: deque[LogLine] = deque(maxlen=KEPT)
    if folder is None:
        return summary, []
    summary.files = day_files(folder, day)
    for path in summary.files:
        for line in _lines(path):
            parsed = parse(line)
            if parsed is None or parsed.level not in LEVELS:
                continue
            if parsed.level == "WARNING":
                summary.warnings += 1
            else:
                summary.errors += 1
            kept.append(parsed)
    return summary, list(kept)


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _lines(path: Path) -> Iterator[str]:
    try:
        with _open(path) as fh:
            yield from fh
    except (OSError, EOFError):
        return  # a file being compressed or removed meanwhile: what was read stays


def parse(line: str) -> LogLine | None:
    line = line.rstrip("\n")
    if line.startswith("{"):
        try:
            doc = json.loads(line)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        at = None
        with contextlib.suppress(ValueError):
            at = datetime.fromisoformat(str(doc.get("time")))
        job = doc.get("job")
        return LogLine(
            at, str(doc.get("level", "")), str(job) if job else None, str(doc.get("message", ""))
        )
    match = _TEXT.match(line)
    if match is None:
        return None  # a traceback's line, or text that is not ours
    at = None
    with contextlib.suppress(ValueError):  # local time of the machine that wrote it
        at = datetime.fromisoformat(match["at"])
    job_match = _JOB.search(match["ctx"] or "")
    return LogLine(at, match["level"], job_match[1] if job_match else None, match["message"])
