"""Firebird fixtures: fresh databases on the Firebird 3 server at 127.0.0.1:3050, as SYSDBA.

The SYSDBA password lives outside the checkout, in the file .ci/firebird.sh writes
(REPLICATOR_TEST_FB_PASSWORD_FILE, default /var/lib/replicator-test/firebird.password), or in
the environment variable REPLICATOR_TEST_FB_PASSWORD. When the server cannot be reached the
fixture runs .ci/firebird.sh itself (it installs, starts and sets the password). With CI=true a
server that still cannot be reached fails the run; otherwise Firebird tests are skipped.

URLs carry no password. The fixture puts it in the environment of the test process:
REPLICATOR_TEST_FB_PASSWORD (for configs: `firebird_password_setting()` gives the
`password_env` line), and ISC_USER/ISC_PASSWORD, which the Firebird client library uses when a
connection names no password (for the tests' own helpers such as support.rows).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import replicator.backends.firebird  # noqa: F401  (its fix of the dialect's reflection)

FB_HOST = os.environ.get("REPLICATOR_TEST_FB_HOST", "127.0.0.1")
FB_PORT = int(os.environ.get("REPLICATOR_TEST_FB_PORT", "3050"))
FB_DIR = Path(os.environ.get("REPLICATOR_TEST_FB_DIR", "/var/lib/firebird/3.0/data"))
FB_BACKUP_DIR = Path(
    os.environ.get("REPLICATOR_TEST_FB_BACKUP_DIR", "/var/lib/firebird/3.0/backup")
)
PASSWORD_ENV = "REPLICATOR_TEST_FB_PASSWORD"
PASSWORD_FILE = Path(
    os.environ.get("REPLICATOR_TEST_FB_PASSWORD_FILE", "/var/lib/replicator-test/firebird.password")
)
SETUP_SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "firebird.sh"
PAGE_SIZE = 8192  # the smallest page the control tables' indexes fit (docs/firebird.md)


def firebird_password_setting() -> str:
    """The config line that gives a Firebird database its password (after its `url`)."""
    return f'password_env = "{PASSWORD_ENV}"\n'


def _password() -> str | None:
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    try:
        return PASSWORD_FILE.read_text("utf-8").splitlines()[0].strip() or None
    except (OSError, IndexError):
        return None


def _use_password(password: str) -> None:
    os.environ[PASSWORD_ENV] = password
    os.environ["ISC_USER"] = "SYSDBA"
    os.environ["ISC_PASSWORD"] = password
    from firebird.driver import driver_config

    for defaults in (driver_config.server_defaults, driver_config.db_defaults):
        defaults.user.value = "SYSDBA"
        defaults.password.value = password


def _server() -> str:
    """The name of the test server's entry in firebird-driver's configuration (connect_server
    takes a configured name; an unknown one means the embedded engine of this process)."""
    from firebird.driver import driver_config

    name = "replicator_test_fb"
    if driver_config.get_server(name) is None:
        cfg = driver_config.register_server(name)
        cfg.host.value = FB_HOST
        cfg.port.value = str(FB_PORT)
    return name


def _server_problem() -> str | None:
    password = _password()
    if password is None:
        return f"no SYSDBA password in ${PASSWORD_ENV} or {PASSWORD_FILE}"
    try:
        from firebird.driver import DatabaseError, connect_server
    except ImportError as exc:
        return f"firebird-driver cannot load ({exc}); pip install firebird-driver"
    try:
        with connect_server(_server(), user="SYSDBA", password=password) as srv:
            srv.info.get_info  # noqa: B018
    except DatabaseError as exc:
        return str(exc).strip().splitlines()[0]
    _use_password(password)
    return None


@pytest.fixture(scope="session")
def firebird_admin() -> str:
    """The SYSDBA password of the test server (never printed)."""
    problem = _server_problem()
    if problem and SETUP_SCRIPT.exists() and os.geteuid() == 0:
        # started by the tests' setup: install, start, set the password
        done = subprocess.run([str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=600)
        problem = _server_problem() if done.returncode == 0 else (done.stderr.strip() or problem)
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but Firebird is not usable at {FB_HOST}:{FB_PORT}: {problem}")
        pytest.skip(f"Firebird not usable at {FB_HOST}:{FB_PORT}: {problem}")
    password = _password()
    assert password is not None
    return password


def _dsn(path: Path | str) -> str:
    return f"{FB_HOST}/{FB_PORT}:{path}"


def _url(path: Path) -> str:
    return f"firebird+firebird://SYSDBA@{FB_HOST}:{FB_PORT}/{path}"


def _path(url: str) -> str:
    import sqlalchemy as sa

    return str(sa.engine.make_url(url).database)


def create(path: Path, password: str, charset: str = "UTF8", page_size: int = PAGE_SIZE) -> None:
    from firebird.driver import create_database, driver_config

    name = f"repl_{uuid.uuid4().hex[:12]}"
    cfg = driver_config.register_database(name)
    cfg.database.value = _dsn(path)
    cfg.db_charset.value = charset
    cfg.page_size.value = page_size
    conn = create_database(name, user="SYSDBA", password=password, charset="UTF8")
    conn.close()


def _detach_others(path: str, password: str) -> None:
    """End every other attachment to a database (a test's pools, a register's service)."""
    from firebird.driver import connect

    conn = connect(_dsn(path), user="SYSDBA", password=password)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "DELETE FROM MON$ATTACHMENTS WHERE MON$ATTACHMENT_ID <> CURRENT_CONNECTION "
                "AND MON$SYSTEM_FLAG = 0"
            )
        conn.commit()
    finally:
        conn.close()


def drop(path: str, password: str) -> None:
    from firebird.driver import DatabaseError, connect

    for attempt in range(3):  # a pool may attach again between the two steps
        if not Path(path).exists() and os.access(Path(path).parent, os.R_OK):
            return
        try:
            _detach_others(path, password)
            conn = connect(_dsn(path), user="SYSDBA", password=password)
            conn.drop_database()
            return
        except DatabaseError:
            time.sleep(0.2 * (attempt + 1))  # already gone, or still in use: once more


@pytest.fixture
def firebird_database(firebird_admin: str) -> Iterator[Callable[..., str]]:
    """Factory of fresh, empty Firebird databases: `make()` (UTF8) or `make("WIN1252")`,
    `page_size` in bytes; returns SQLAlchemy URLs without a password. Dropped at teardown."""
    created: list[str] = []

    def make(charset: str = "UTF8", page_size: int = PAGE_SIZE) -> str:
        path = FB_DIR / f"repl_test_{uuid.uuid4().hex[:12]}.fdb"
        create(path, firebird_admin, charset, page_size)
        created.append(str(path))
        return _url(path)

    yield make
    for path in created:
        drop(path, firebird_admin)
        for saved in [b for b in _backups if b.database == path]:
            _remove_backup(saved)


@dataclass(frozen=True)
class Backup:
    database: str
    file: str  # on the server's side (written by the server through the services API)


_backups: list[Backup] = []


def _remove_backup(saved: Backup) -> None:
    """A backup file is the server's (it wrote it): removed where this process may."""
    _backups.remove(saved)
    Path(saved.file).unlink(missing_ok=True)


def backup(url: str) -> Backup:
    """A register's backup: gbak (through the services API) of the whole database."""
    from firebird.driver import connect_server

    password = _password() or ""
    path = _path(url)
    file = str(FB_BACKUP_DIR / f"{Path(path).stem}_{uuid.uuid4().hex[:8]}.fbk")
    with connect_server(_server(), user="SYSDBA", password=password) as srv:
        srv.database.backup(database=path, backup=file)
        srv.wait()  # the service runs on: wait for its end
    saved = Backup(path, file)
    _backups.append(saved)
    return saved


def restore(url: str, saved: object) -> None:
    """The register restored from `saved`: every attachment ended, the database replaced."""
    from firebird.driver import SrvRestoreFlag, connect_server

    assert isinstance(saved, Backup)
    password = _password() or ""
    _detach_others(saved.database, password)
    with connect_server(_server(), user="SYSDBA", password=password) as srv:
        srv.database.restore(
            backup=saved.file, database=saved.database, flags=SrvRestoreFlag.REPLACE
        )
        srv.wait()


__all__ = ["firebird_admin", "firebird_database", "firebird_password_setting"]
