"""Logging through loguru: the console for whoever runs a command, daily files for the person
who reads them at closing (JSON lines for log shippers), the context (job, table, database)
on every line, and passwords never written by any sink.

A log disk that is full, unwritable or gone never stops replication: the file sink reports it
once on standard error, retries every 30 s and says what is wrong through `log_problem()`.
"""

from __future__ import annotations

import contextlib
import gzip
import json as jsonlib
import logging
import os
import re
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypedDict

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

    from replicator.config import Settings

Clock = Callable[[], datetime]

FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[ctx]}{message}"
CONTEXT = ("job", "table", "database")  # bound with logger.bind(...), shown on every line
RETRY_SECONDS = 30.0  # a failed log folder is tried again at most this often
STALE_SECONDS = 3600.0  # a compression left behind by a killed process is redone after this

# --- secrets ---------------------------------------------------------------------------------
_URL_SECRET = re.compile(
    r"(?P<pre>://[^:/@\s]+:)[^@\s]+(?P<post>@)|(?P<kw>password=)\S+", re.IGNORECASE
)
_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secret_pattern: re.Pattern[str] | None = None


def mask(text: str) -> str:
    """Hide passwords in URLs (user:secret@host) and key=value strings."""
    return _URL_SECRET.sub(
        lambda m: f"{m['pre']}***{m['post']}" if m["pre"] else f"{m['kw']}***", text
    )


def add_secret(value: str) -> None:
    """Register a known secret (a password read from password_env or password_file): every
    sink writes `***` in its place, in messages and in exception texts. Any non-empty value
    counts, however short: a short password replaces innocent text too, and is still never
    written. Its escaped forms (as repr() and JSON write it) are registered as well."""
    global _secret_pattern
    if not value:
        return
    forms = {value, repr(value)[1:-1], jsonlib.dumps(value, ensure_ascii=False)[1:-1]}
    with _secrets_lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        ordered = sorted(_secrets, key=len, reverse=True)  # the longest first: no tail is left
        _secret_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def scrub(text: str) -> str:
    """`text` with the registered secrets and the passwords of URLs replaced by `***`."""
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub("***", text)
    return mask(text)


def _patch(record: Record) -> None:
    record["message"] = scrub(record["message"])
    extra = record["extra"]
    ctx = " ".join(f"{k}={extra[k]}" for k in CONTEXT if k in extra)
    extra["ctx"] = f"[{ctx}] " if ctx else ""


def _report(text: str) -> None:
    """A line on standard error that must never fail (a closed or missing stderr)."""
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass


# --- the daily files -------------------------------------------------------------------------
_DAY = r"replicator-(?P<day>\d{4}-\d{2}-\d{2})\.log"
_OURS = re.compile(rf"^{_DAY}(?P<kind>|\.gz|\.[\w-]+\.compressing|\.gz\.[\w-]+\.tmp)$")


def _text_note(now: datetime, message: str) -> str:
    return f"{now:%Y-%m-%d %H:%M:%S}.{now.microsecond // 1000:03d} | WARNING | {message}\n"


def _json_note(now: datetime, message: str) -> str:
    doc = {"time": now.isoformat(timespec="milliseconds"), "level": "WARNING", "message": message}
    return jsonlib.dumps(doc, ensure_ascii=False) + "\n"


class DailyLogFile:
    """Lines appended to `replicator-YYYY-MM-DD.log` in `directory`, the day read from `clock`
    at each write (in `tz` when given, else in the clock's own zone; default clock: now in
    this machine's zone): the first line after local midnight opens the new day's file.

    At open and at each new day a background thread gzips the files of earlier days
    (`replicator-YYYY-MM-DD.log.gz`; today's file is never touched) and deletes files whose
    day is more than `retention_days` before today. Processes sharing the folder are safe:
    a file is first renamed to a name of its compressor's own (one process wins), compressed
    to a temporary name, then renamed into place; a file that disappears is skipped.

    An OSError (disk full, folder unwritable or removed) never reaches the caller: it is
    reported once on standard error, kept in `problem`, and the folder is tried again at most
    every `retry_seconds`; the first line written after a recovery says what is missing.
    Thread-safe."""

    def __init__(
        self,
        directory: Path,
        *,
        retention_days: int = 90,
        clock: Clock | None = None,
        tz: tzinfo | None = None,
        retry_seconds: float = RETRY_SECONDS,
        note: Callable[[datetime, str], str] = _text_note,
    ) -> None:
        self.directory = directory
        self.retention_days = retention_days
        self.retry_seconds = retry_seconds
        self._clock: Clock = clock or (lambda: datetime.now(tz).astimezone(tz))
        self._tz = tz
        self._note = note
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._day: date | None = None
        self._problem: str | None = None
        self._failed_at: datetime | None = None
        self._retry_at = 0.0
        self._housekept: date | None = None  # the last day housekeeping was started for
        self._pending: date | None = None
        self._worker: threading.Thread | None = None

    @property
    def problem(self) -> str | None:
        """Why the folder cannot be written now, e.g. `cannot write the log folder
        /var/log/replicator: No space left on device`; None when all is well."""
        return self._problem

    def path(self, day: date) -> Path:
        return self.directory / f"replicator-{day.isoformat()}.log"

    def today(self) -> date:
        now = self._clock()
        return (now.astimezone(self._tz) if self._tz is not None else now).date()

    def open(self) -> bool:
        """Open today's file now (so that a bad folder is reported at start); True if it is."""
        with self._lock:
            try:
                self._open(self.today())
            except OSError as exc:
                self._fail(exc)
                return False
            return True

    def write(self, text: str) -> bool:
        """Append `text` to today's file; False when it could not be written (not raised)."""
        with self._lock:
            if self._problem is not None and time.monotonic() < self._retry_at:
                return False
            day = self.today()
            try:
                file = self._file if self._file is not None and day == self._day else None
                file = file or self._open(day)
                if self._problem is not None:
                    file.write(self._note(self._clock(), self._recovery_note()))
                file.write(text)
                file.flush()
            except OSError as exc:
                self._fail(exc)
                return False
            if self._problem is not None:
                _report(f"replicator: the log folder {self.directory} can be written again")
                self._problem = self._failed_at = None
            return True

    def stop(self) -> None:
        with self._lock:
            self._close()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the background compression and clean-up (tests, a clean exit)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def housekeep(self, today: date) -> None:
        """Compress the files of days before `today`, delete those past the retention."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        oldest = today - timedelta(days=self.retention_days)
        for name in sorted(names):
            match = _OURS.match(name)
            if match is None:
                continue
            try:
                day = date.fromisoformat(match["day"])
            except ValueError:
                continue
            path = self.directory / name
            kind = match["kind"]
            if day < oldest:
                _remove(path)
            elif kind.endswith(".tmp"):
                if _age(path) > STALE_SECONDS:
                    _remove(path)  # a killed compressor's output; its source is still there
            elif day < today and (kind == "" or (kind != ".gz" and _age(path) > STALE_SECONDS)):
                # a day's file, or one a killed compressor had claimed
                self._compress(path, self.directory / f"replicator-{day.isoformat()}.log.gz")

    # -- inside the lock --
    def _open(self, day: date) -> TextIO:
        self._close()
        self.directory.mkdir(parents=True, exist_ok=True)
        # backslashreplace: a lone surrogate in a message is written, not an error
        file = open(self.path(day), "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        self._file, self._day = file, day
        if self._housekept != day:
            self._housekept = day
            self._pending = day
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._housekeeping, name="replicator-log-housekeeping", daemon=True
                )
                self._worker.start()
        return file

    def _close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):  # its last lines are lost with the disk
                file.close()

    def _fail(self, exc: OSError) -> None:
        self._close()
        self._retry_at = time.monotonic() + self.retry_seconds
        if self._problem is None:
            self._problem = f"cannot write the log folder {self.directory}: {exc.strerror or exc}"
            self._failed_at = self._clock()
            _report(
                f"replicator: {self._problem}; logging goes on without the file "
                f"(tried again every {self.retry_seconds:g} s)"
            )

    def _recovery_note(self) -> str:
        since = f"{self._failed_at:%Y-%m-%d %H:%M:%S}" if self._failed_at else "?"
        return f"{self._problem} since {since}; the lines of that time are missing here"

    # -- the background thread --
    def _housekeeping(self) -> None:
        while True:
            with self._lock:
                today, self._pending = self._pending, None
                if today is None:
                    self._worker = None
                    return
            self.housekeep(today)

    def _compress(self, source: Path, target: Path) -> None:
        token = f"{os.getpid()}-{threading.get_ident()}"
        claimed = source.with_name(f"{target.name[:-3]}.{token}.compressing")
        temp = target.with_name(f"{target.name}.{token}.tmp")
        try:
            os.replace(source, claimed)  # the process whose rename succeeds does the work
        except OSError:
            return  # gone (another process has it) or still open on Windows: next time
        try:
            os.utime(claimed)  # fresh, so that nobody takes it for a killed compressor's
            with open(temp, "wb") as raw:
                try:
                    with open(target, "rb") as earlier:  # lines of that day compressed before
                        shutil.copyfileobj(earlier, raw)
                except FileNotFoundError:
                    pass
                with open(claimed, "rb") as src, gzip.GzipFile(source.name, "wb", 6, raw) as gz:
                    shutil.copyfileobj(src, gz, 1 << 20)  # a gzip member appended: one stream
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(temp, target)
            _remove(claimed)
        except OSError:
            _remove(temp)  # the claimed file stays and is compressed again later


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):  # gone, or open elsewhere: the next housekeeping
        path.unlink()


# --- sinks -----------------------------------------------------------------------------------
class _Console:
    """Standard error, looked up at each write (a redirected or captured stderr gets lines)."""

    def write(self, message: Message) -> None:
        try:
            sys.stderr.write(scrub(str(message)))
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass


class _FileSink:
    """A DailyLogFile as a loguru sink, in text or JSON lines. When the file cannot be
    written and there is no console, the lines go to standard error instead (the journal)."""

    def __init__(self, file: DailyLogFile, as_json: bool, fallback: bool) -> None:
        self.file = file
        self.as_json = as_json
        self.fallback = fallback

    def write(self, message: Message) -> None:
        text = json_line(message.record) if self.as_json else scrub(str(message))
        if not self.file.write(text) and self.fallback:
            _Console().write(message)

    def stop(self) -> None:
        self.file.stop()


def json_line(record: Record) -> str:
    """One JSON object and a newline: time (ISO-8601 with offset), level, message, the
    context fields that are bound, and the exception's traceback when there is one."""
    doc: dict[str, str] = {
        "time": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "message": scrub(record["message"]),
    }
    for key in CONTEXT:
        if key in record["extra"]:
            doc[key] = scrub(str(record["extra"][key]))
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        text = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
        doc["exception"] = scrub(text.rstrip("\n"))
    return jsonlib.dumps(doc, ensure_ascii=False) + "\n"


class _InterceptHandler(logging.Handler):
    """Route the stdlib loggers of SQLAlchemy and the drivers into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


# --- setup -----------------------------------------------------------------------------------
_active: DailyLogFile | None = None


def log_problem() -> str | None:
    """What keeps the log files from being written now (for `status` and /health), e.g.
    `cannot write the log folder /var/log/replicator: No space left on device`; else None."""
    active = _active
    return active.problem if active is not None else None


def setup_logging(
    level: str = "INFO",
    directory: Path | None = None,
    *,
    retention_days: int = 90,
    json: bool = False,
    console: bool = True,
    clock: Clock | None = None,
) -> DailyLogFile | None:
    """Replace every sink: standard error (human lines) when `console`; the daily files in
    `directory` when set, as JSON lines when `json`. Stdlib loggers go in at WARNING. Never
    raises for a bad folder: see `log_problem()`. Returns the file sink, if any."""
    global _active
    logger.remove()  # stops the previous file sink
    _active = None
    logger.configure(patcher=_patch)
    # diagnose=False: a traceback shows no variable values (they hold passwords, customers).
    options: dict[str, Any] = {
        "level": level,
        "format": FORMAT,
        "colorize": False,
        "backtrace": True,
        "diagnose": False,
    }
    if console:
        logger.add(_Console(), **options)
    daily = None
    if directory is not None:
        daily = DailyLogFile(
            directory,
            retention_days=retention_days,
            clock=clock,
            note=_json_note if json else _text_note,
        )
        daily.open()
        _active = daily
        logger.add(_FileSink(daily, as_json=json, fallback=not console), **options)
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
    return daily


class LogSettings(TypedDict):
    level: str
    directory: Path | None
    retention_days: int
    json: bool
    console: bool


def log_settings(
    settings: Settings, *, for_service: bool = False, level: str | None = None
) -> LogSettings:
    """setup_logging's arguments for a loaded config: `setup_logging(**log_settings(...))`.
    `level` overrides the config's (--log-level). The console is always on for a command
    (`for_service=False`); for the service (`replicator run`) it follows `[log] console`,
    by default on when standard error is a terminal or when there is no log folder, so a
    service under systemd with a folder does not write every line twice."""
    log = settings.config.log
    directory = log.folder(settings.path.parent)
    console = True
    if for_service:
        console = log.console if log.console is not None else directory is None or _is_tty()
    return LogSettings(
        level=level or log.level,
        directory=directory,
        retention_days=log.retention_days,
        json=log.format == "json",
        console=console,
    )


def _is_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, OSError, ValueError):
        return False
