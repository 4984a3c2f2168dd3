"""Logging through loguru, with context (job, table) and passwords masked."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

from loguru import logger
from loguru._file_sink import FileSink  # the sink loguru builds for a path (rotation...)

_SECRET = re.compile(r"(?P<pre>://[^:/@\s]+:)[^@\s]+(?P<post>@)|(?P<kw>password=)\S+", re.I)


def mask(text: str) -> str:
    """Hide passwords in URLs (user:secret@host) and key=value strings."""
    return _SECRET.sub(lambda m: f"{m['pre']}***{m['post']}" if m["pre"] else f"{m['kw']}***", text)


def _patch(record: Any) -> None:
    record["message"] = mask(record["message"])
    extra = record["extra"]
    ctx = " ".join(f"{k}={extra[k]}" for k in ("job", "table", "database") if k in extra)
    extra["ctx"] = f"[{ctx}] " if ctx else ""


class _InterceptHandler(logging.Handler):
    """Route the stdlib loggers of SQLAlchemy and the drivers into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[ctx]}{message}"


def setup_logging(
    level: str = "INFO",
    file: Path | None = None,
    rotation: str = "10 MB",
    retention: str = "30 days",
) -> None:
    logger.remove()
    logger.configure(patcher=_patch)
    logger.add(sys.stderr, level=level, format=FORMAT, colorize=None)
    if file is not None:
        sink = _LogFile(file, rotation, retention)
        if sink.open():
            # catch=False: loguru's own handler would print a traceback for every failed
            # write; _LogFile reports a write failure once and carries on without the file.
            logger.add(sink, level=level, format=FORMAT, colorize=False, catch=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)


class _LogFile:
    """loguru's file sink (rotation, retention) that survives a failing disk: the first
    OSError (disk full, file removed, permissions) is reported once on stderr, then the file
    is left alone and logging goes on to stderr only."""

    def __init__(self, path: Path, rotation: str, retention: str) -> None:
        self.path = path
        self.rotation = rotation
        self.retention = retention
        self._sink: Any = None
        self._broken = False

    def open(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = FileSink(  # type: ignore[no-untyped-call]
                str(self.path),
                rotation=self.rotation,
                retention=self.retention,
                encoding="utf-8",
            )
        except OSError as exc:
            self._fail(exc)
        return not self._broken

    def write(self, message: Any) -> None:
        if self._broken:
            return
        try:
            self._sink.write(message)
        except OSError as exc:
            self._fail(exc)

    def stop(self) -> None:
        sink, self._sink = self._sink, None
        if sink is None:
            return
        try:
            sink.stop()
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        if self._broken:
            return
        self._broken = True
        reason = exc.strerror or str(exc)
        try:
            sys.stderr.write(
                f"replicator: cannot write the log file {self.path}: {reason}; "
                "logging to stderr only\n"
            )
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
