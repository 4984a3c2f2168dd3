"""Logging through loguru, with context (job, table) and passwords masked."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

from loguru import logger

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
        file.parent.mkdir(parents=True, exist_ok=True)
        logger.add(
            file,
            level=level,
            format=FORMAT,
            rotation=rotation,
            retention=retention,
            encoding="utf-8",
            enqueue=False,
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
