"""Checks at the start of a command, over the databases it uses, so that a wrong path or an
unreachable server is named plainly instead of surfacing later as a driver error."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import exc as sa_exc

from replicator.backends import Backend
from replicator.backends.base import first_line
from replicator.config import Job, Settings
from replicator.errors import (
    CheckError,
    ConfigError,
    PermanentError,
    ReplicatorError,
    TransientError,
)
from replicator.sync import Databases


def used_databases(jobs: Iterable[Job]) -> list[str]:
    """The databases the jobs read or write, in the order they first appear."""
    return list(dict.fromkeys(name for job in jobs for name in (job.source, job.target)))


def sqlite_files(settings: Settings, databases: Databases, names: Iterable[str]) -> None:
    """Refuse a SQLite database whose file does not exist: connecting would create an empty
    one (a typo in the path would go unnoticed). Only `setup` creates them."""
    for name in names:
        backend = databases[name]
        if not backend.exists():
            raise ConfigError(
                f"database {name!r}: SQLite file {backend.url.database} does not exist; "
                f"check the path in {settings.path} (setup creates it)"
            )


def connect_problem(backend: Backend) -> str | None:
    """The first line of the driver's error when the database cannot be reached, else None.
    A failure the backend sorts as a configuration mistake (an ODBC driver or data source
    that does not exist) is raised as it is: retrying would not help, the config must change."""
    try:
        with backend.engine.connect() as conn:
            backend.ping(conn)
    except sa_exc.SQLAlchemyError as exc:
        sorted_ = backend.classify(exc)
        if isinstance(sorted_, ConfigError):
            raise sorted_ from None
        return first_line(exc)
    return None


def cannot_connect(name: str, backend: Backend, problem: str) -> TransientError:
    if backend.dialect == "sqlite":
        hint = "check that the file's folder exists and that this user may write there"
    else:
        hint = "check that the server runs and the URL (host, port, database name)"
    return TransientError(
        f"database {name!r} ({backend.display_url}): cannot connect: {problem}; {hint}"
    )


def reachable(databases: Databases, names: Sequence[str]) -> None:
    """Connect to each database once; raise TransientError (exit 4) for the first that fails."""
    for name in names:
        problem = connect_problem(databases[name])
        if problem:
            raise cannot_connect(name, databases[name], problem)


class Diagnosis:
    """Why a job's status could not be read, as an error with its exit code: a database that
    cannot be reached (4), one that is not set up (3), anything else (5). Each database is
    connected to at most once."""

    def __init__(self, databases: Databases) -> None:
        self.databases = databases
        self._problems: dict[str, str | None] = {}

    def _problem(self, name: str) -> str | None:
        if name not in self._problems:
            self._problems[name] = connect_problem(self.databases[name])
        return self._problems[name]

    def of(self, job: Job, reason: str) -> ReplicatorError:
        for name in (job.target, job.source):
            problem = self._problem(name)
            if problem:
                return cannot_connect(name, self.databases[name], problem)
        missing = []
        try:
            for name, table in ((job.target, "state"), (job.source, "tombstone")):
                backend = self.databases[name]
                with backend.engine.connect() as conn:
                    if not backend.has_table(conn, getattr(backend.ct, table).fullname):
                        missing.append(name)
        except sa_exc.SQLAlchemyError:
            pass
        if missing:
            names = [repr(n) for n in dict.fromkeys(missing)]
            which = (
                f"database {names[0]}" if len(names) == 1 else f"databases {' and '.join(names)}"
            )
            return CheckError(
                f"{which}: change tracking or control tables are not installed; "
                f"run `replicator setup`, then `replicator check`"
            )
        return PermanentError(f"{reason}; run `replicator check` to find the cause")
