"""The service's logs: daily files that a person reads at closing, rotated at local midnight
(tested by moving an injected clock, not by waiting), earlier days gzipped, old ones deleted;
JSON lines for log shippers; a full or unwritable log disk never stops anything and is
reported by `log_problem()`; known passwords never written by any sink. Real files in
tmp_path, the real CLI in real processes."""

from __future__ import annotations

import gzip
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import execute
from loguru import logger
from support import ITEM_DDL, ITEMS, write_node

from replicator.config import Settings, load_settings
from replicator.errors import ConfigError
from replicator.log import (
    DailyLogFile,
    add_secret,
    log_problem,
    log_settings,
    scrub,
    setup_logging,
)

SAO_PAULO = ZoneInfo("America/Sao_Paulo")


@pytest.fixture(autouse=True)
def console_only() -> Iterator[None]:
    """Each test leaves logging as every command starts it: the console only."""
    yield
    setup_logging("INFO")


class Clock:
    """An injected clock that the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a real process, standard output and error piped (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "replicator.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


# --- rotation, compression, retention ----------------------------------------------------------
def test_a_new_file_at_local_midnight_and_the_day_before_gzipped(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 3, 1, 23, 59, 59, 900_000, tzinfo=SAO_PAULO))
    daily = setup_logging("INFO", tmp_path, console=False, clock=clock)
    assert daily is not None
    logger.bind(job="movimento:caixa1->server").info("closing: 812 rows in 3 batches")
    clock.now = datetime(2026, 3, 2, 0, 0, 0, 100_000, tzinfo=SAO_PAULO)
    logger.bind(job="movimento:caixa1->server").info("opening: 4 rows in 1 batches")
    daily.wait(30)

    assert names(tmp_path) == ["replicator-2026-03-01.log.gz", "replicator-2026-03-02.log"]
    march_1 = gzip.decompress((tmp_path / "replicator-2026-03-01.log.gz").read_bytes())
    lines = march_1.decode("utf-8").splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(
        "| INFO    | [job=movimento:caixa1->server] closing: 812 rows in 3 batches"
    )
    march_2 = (tmp_path / "replicator-2026-03-02.log").read_text("utf-8")
    assert "opening: 4 rows in 1 batches" in march_2 and "closing" not in march_2


def test_the_day_is_the_local_date_of_the_zone(tmp_path: Path) -> None:
    # 02:30 UTC on March 2 is still March 1, 23:30 in São Paulo: the closing's file.
    clock = Clock(datetime(2026, 3, 2, 2, 30, tzinfo=UTC))
    daily = DailyLogFile(tmp_path, clock=clock, tz=SAO_PAULO)
    assert daily.write("late sale\n")
    daily.stop()
    daily.wait(30)
    assert names(tmp_path) == ["replicator-2026-03-01.log"]


def test_retention_deletes_old_days_and_keeps_today_uncompressed(tmp_path: Path) -> None:
    today = date(2026, 6, 1)

    def day(n: int, suffix: str = ".log") -> str:
        return f"replicator-{(today - timedelta(days=n)).isoformat()}{suffix}"

    for name in [day(200, ".log.gz"), day(91), day(91, ".log.gz"), day(90, ".log.gz")]:
        (tmp_path / name).write_bytes(gzip.compress(b"old\n") if name.endswith("gz") else b"old\n")
    (tmp_path / day(1)).write_text("yesterday\n", "utf-8")
    (tmp_path / day(0)).write_text("this morning\n", "utf-8")
    (tmp_path / "notes.txt").write_text("the manager's\n", "utf-8")
    (tmp_path / "replicator-2026-02-30.log").write_text("not a day\n", "utf-8")

    clock = Clock(datetime(2026, 6, 1, 14, 0, tzinfo=SAO_PAULO))
    daily = setup_logging("INFO", tmp_path, retention_days=90, console=False, clock=clock)
    assert daily is not None
    logger.info("this afternoon")
    daily.wait(30)

    assert names(tmp_path) == sorted(
        [day(90, ".log.gz"), day(1, ".log.gz"), day(0), "notes.txt", "replicator-2026-02-30.log"]
    )
    assert gzip.decompress((tmp_path / day(1, ".log.gz")).read_bytes()) == b"yesterday\n"
    text = (tmp_path / day(0)).read_text("utf-8")
    assert text.startswith("this morning\n") and "this afternoon" in text


def test_a_day_compressed_twice_keeps_both_parts_and_leftovers_are_cleaned(
    tmp_path: Path,
) -> None:
    """A second process whose clock lagged wrote more lines of a day already compressed; a
    killed compressor left its claimed file and its temporary output behind."""
    (tmp_path / "replicator-2026-05-30.log.gz").write_bytes(gzip.compress(b"first part\n"))
    (tmp_path / "replicator-2026-05-30.log").write_bytes(b"second part\n")
    claimed = tmp_path / "replicator-2026-05-31.log.4242-7.compressing"
    claimed.write_bytes(b"claimed by a killed process\n")
    temp = tmp_path / "replicator-2026-05-31.log.gz.4242-7.tmp"
    temp.write_bytes(b"\x1f\x8b half written")
    hours_ago = time.time() - 2 * 3600
    for path in (claimed, temp):
        os.utime(path, (hours_ago, hours_ago))

    DailyLogFile(tmp_path).housekeep(date(2026, 6, 1))

    assert names(tmp_path) == ["replicator-2026-05-30.log.gz", "replicator-2026-05-31.log.gz"]
    may_30 = gzip.decompress((tmp_path / "replicator-2026-05-30.log.gz").read_bytes())
    assert may_30 == b"first part\nsecond part\n"
    may_31 = gzip.decompress((tmp_path / "replicator-2026-05-31.log.gz").read_bytes())
    assert may_31 == b"claimed by a killed process\n"


def test_compressors_sharing_a_folder_never_corrupt_a_file(tmp_path: Path) -> None:
    """Eight compressors (as eight services sharing the folder) at once on the same files:
    every day ends as one .gz whose content is that day's lines exactly once."""
    days = [date(2026, 5, d) for d in range(20, 26)]
    content = {}
    for d in days:
        lines = "".join(f"{d} line {i:06d} {'x' * 60}\n" for i in range(20_000))
        content[d] = lines.encode()
        (tmp_path / f"replicator-{d.isoformat()}.log").write_bytes(content[d])
    start = threading.Barrier(8)

    def compress() -> None:
        start.wait()
        DailyLogFile(tmp_path).housekeep(date(2026, 6, 1))

    threads = [threading.Thread(target=compress) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert names(tmp_path) == [f"replicator-{d.isoformat()}.log.gz" for d in days]
    for d in days:
        assert (
            gzip.decompress((tmp_path / f"replicator-{d.isoformat()}.log.gz").read_bytes())
            == (content[d])
        )


# --- formats and context -----------------------------------------------------------------------
def test_json_lines_carry_the_context_and_the_exception(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 3, 1, 18, 30, tzinfo=SAO_PAULO))
    setup_logging("INFO", tmp_path, json=True, console=False, clock=clock)
    log = logger.bind(job="movimento:loja01-caixa02->loja01-server")
    log.bind(table="sale").info("batch 1: 4 pages applied (0.061s of target lock)")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("unexpected error")
    logger.bind(database="caixa02").warning("not reachable")

    lines = (tmp_path / "replicator-2026-03-01.log").read_text("utf-8").splitlines()
    docs = [json.loads(line) for line in lines]
    assert len(docs) == 3
    first, second, third = docs
    assert first["level"] == "INFO"
    assert first["message"] == "batch 1: 4 pages applied (0.061s of target lock)"
    assert first["job"] == "movimento:loja01-caixa02->loja01-server"
    assert first["table"] == "sale"
    assert datetime.fromisoformat(first["time"]).utcoffset() is not None
    assert "exception" not in first
    assert second["level"] == "ERROR" and "table" not in second
    assert second["exception"].startswith("Traceback (most recent call last):")
    assert second["exception"].endswith("ZeroDivisionError: division by zero")
    assert third == {"time": third["time"], "level": "WARNING", "message": "not reachable"} | {
        "database": "caixa02"
    }


def test_an_error_carries_its_traceback_into_the_text_file(tmp_path: Path) -> None:
    setup_logging("INFO", tmp_path, console=False)

    card = "card-" + secrets.token_hex(4)  # a customer's data in the failing frame

    def apply_batch(row: str) -> None:
        raise RuntimeError(f"constraint violated by a row of {len(row)} characters")

    try:
        apply_batch(card)
    except RuntimeError:
        logger.bind(job="cadastros:server->caixa1", table="price").exception("unexpected error")
    (file,) = tmp_path.glob("replicator-*.log")
    text = file.read_text("utf-8")
    assert "| ERROR   | [job=cadastros:server->caixa1 table=price] unexpected error\n" in text
    assert "Traceback (most recent call last):" in text
    assert "in apply_batch" in text and "RuntimeError: constraint violated by a row" in text
    assert card not in text  # tracebacks show no variable values


def test_stdlib_loggers_reach_the_file(tmp_path: Path) -> None:
    setup_logging("INFO", tmp_path, console=False)
    logging.getLogger("sqlalchemy.engine").warning("pool overflow: %d connections", 12)
    logging.getLogger("sqlalchemy.engine").info("below WARNING: not routed")
    logger.warning("a file name from a Windows share: caixa\udc80.db")  # a lone surrogate
    (file,) = tmp_path.glob("replicator-*.log")
    text = file.read_text("utf-8")
    assert "| WARNING | pool overflow: 12 connections" in text
    assert "not routed" not in text
    assert "a file name from a Windows share: caixa\\udc80.db" in text


# --- a failing log disk ------------------------------------------------------------------------
def test_an_unwritable_folder_is_reported_and_the_console_goes_on(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("a file, not a folder\n", "utf-8")
    folder = tmp_path / "afile" / "logs"  # cannot be created, even by root
    setup_logging("INFO", folder)  # does not raise
    for n in range(3):
        logger.info("sync {} still runs", n)

    problem = log_problem()
    assert problem == f"cannot write the log folder {folder}: Not a directory"
    err = capfd.readouterr().err
    assert err.count("cannot write the log folder") == 1, err
    assert "sync 0 still runs" in err and "sync 2 still runs" in err
    assert "Traceback" not in err and "Logging error" not in err

    setup_logging("INFO", tmp_path / "logs")
    assert log_problem() is None


def test_without_console_the_lines_go_to_stderr_while_the_file_fails(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("", "utf-8")
    setup_logging("INFO", tmp_path / "afile" / "logs", console=False)
    logger.info("a line the journal keeps")
    err = capfd.readouterr().err
    assert "cannot write the log folder" in err and "a line the journal keeps" in err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_disk_is_reported_once_and_recovers_by_itself(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    clock = Clock(datetime(2026, 3, 1, 10, 0, tzinfo=SAO_PAULO))
    today = tmp_path / "replicator-2026-03-01.log"
    today.symlink_to("/dev/full")  # every write: No space left on device
    daily = DailyLogFile(tmp_path, clock=clock, retry_seconds=0)
    assert daily.write("10:00 lost\n") is False
    assert daily.write("10:01 lost\n") is False
    assert daily.problem == f"cannot write the log folder {tmp_path}: No space left on device"
    assert capfd.readouterr().err.count("No space left on device") == 1

    today.unlink()  # space again
    clock.now = datetime(2026, 3, 1, 10, 5, tzinfo=SAO_PAULO)
    assert daily.write("10:05 written\n") is True
    assert daily.problem is None
    daily.stop()
    note, line = today.read_text("utf-8").splitlines()
    assert "| WARNING | cannot write the log folder" in note
    assert "No space left on device since 2026-03-01 10:00:00" in note
    assert line == "10:05 written"
    assert "can be written again" in capfd.readouterr().err


def test_the_folder_is_retried_at_most_every_retry_seconds(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("", "utf-8")
    daily = DailyLogFile(tmp_path / "afile" / "logs", retry_seconds=3600)
    assert daily.write("lost\n") is False
    (tmp_path / "afile").unlink()  # the folder could be made now...
    assert daily.write("still waiting\n") is False  # ...but it is not tried before an hour
    assert not (tmp_path / "afile").exists()


# --- secrets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_known_secrets_are_never_written(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], as_json: bool
) -> None:
    long_secret = "pw-" + secrets.token_hex(8)
    short_secret = "Q" + secrets.token_hex(1)  # three characters
    quoted_secret = 'a"b\\c' + secrets.token_hex(3)  # escaped by repr() and by JSON
    for value in (long_secret, short_secret, quoted_secret):
        add_secret(value)
    setup_logging("INFO", tmp_path, json=as_json)

    logger.info("connecting with {} and {}", long_secret, short_secret)
    logger.bind(table=short_secret).warning("a table named like a password")
    logging.getLogger("psycopg").warning("driver says %s", quoted_secret)
    try:
        password = long_secret  # a local of the failing frame: never shown (diagnose off)
        raise ValueError(f"login failed for {password!r}, {quoted_secret!r} and {short_secret}")
    except ValueError:
        logger.exception("unexpected error")

    written = "".join(p.read_text("utf-8") for p in tmp_path.glob("replicator-*"))
    console = capfd.readouterr()
    for output in (written, console.err, console.out):
        for value in (long_secret, short_secret, quoted_secret, repr(quoted_secret)[1:-1]):
            assert value not in output
        assert json.dumps(quoted_secret)[1:-1] not in output
    assert "connecting with *** and ***" in console.err
    assert "ValueError: login failed for" in console.err
    assert "ValueError: login failed for" in written
    assert written.count("***") >= 6


def test_passwords_read_by_the_config_are_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_password, file_password = secrets.token_hex(6), secrets.token_hex(6)
    monkeypatch.setenv("REPL_TEST_SERVER_PASSWORD", env_password)
    (tmp_path / "caixa.password").write_text(file_password + "\n", "utf-8")
    (tmp_path / "caixa.password").chmod(0o600)
    config = write_node(
        tmp_path,
        "postgresql+psycopg://replicator@10.0.0.5/loja",
        "postgresql+psycopg://replicator@10.0.0.6/caixa",
        {"itens": ITEMS},
    )
    text = config.read_text("utf-8")
    text = text.replace(
        'url = "postgresql+psycopg://replicator@10.0.0.5/loja"\n',
        'url = "postgresql+psycopg://replicator@10.0.0.5/loja"\n'
        'password_env = "REPL_TEST_SERVER_PASSWORD"\n',
    ).replace(
        'url = "postgresql+psycopg://replicator@10.0.0.6/caixa"\n',
        'url = "postgresql+psycopg://replicator@10.0.0.6/caixa"\n'
        'password_file = "caixa.password"\n',
    )
    config.write_text(text, "utf-8")
    settings = load_settings(config)
    assert settings.url("server").password == env_password
    assert settings.url("caixa").password == file_password
    assert scrub(f"{env_password} {file_password}") == "*** ***"


@pytest.mark.postgres
def test_a_run_with_a_known_password_never_logs_it(
    tmp_path: Path, pg_database: Callable[[], str]
) -> None:
    """The server's password is its database's name (trust authentication ignores it): the
    lines that name the database would show it, so they must say *** instead."""
    server = pg_database()
    password = server.rsplit("/", 1)[1]
    register = f"sqlite:///{tmp_path / 'caixa.db'}"
    execute(server, ITEM_DDL)
    execute(register, ITEM_DDL)
    config = write_node(tmp_path, server, register, {"itens": ITEMS}, '[log]\ndir = "logs"\n')
    text = config.read_text("utf-8").replace(
        f'url = "{server}"\n', f'url = "{server}"\npassword_env = "REPL_TEST_PASSWORD"\n'
    )
    config.write_text(text, "utf-8")
    env = {"REPL_TEST_PASSWORD": password}

    setup = process("-c", str(config), "setup", env=env)
    assert setup.returncode == 0, setup.stderr
    execute(register, "INSERT INTO item (id, name, qty) VALUES (1, 'sold', 2)")
    sync = process("-c", str(config), "--debug", "sync", env=env)
    assert sync.returncode == 0, sync.stderr

    written = "".join(p.read_text("utf-8") for p in (tmp_path / "logs").glob("replicator-*"))
    assert "1 rows in" in written
    for output in (setup.stderr, sync.stderr, written):
        assert password not in output
    assert "/***" in setup.stderr + written  # the database's name, as the password it is


# --- config and the CLI --------------------------------------------------------------------------
def test_a_config_with_file_says_to_use_dir(tmp_path: Path) -> None:
    register = f"sqlite:///{tmp_path / 'caixa.db'}"
    config = write_node(
        tmp_path, register, register, {"itens": ITEMS}, '[log]\nfile = "logs/replicator.log"\n'
    )
    with pytest.raises(ConfigError, match=r"`file` was replaced by `dir` \(a folder of daily"):
        load_settings(config)


def test_the_console_of_the_service_follows_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register = f"sqlite:///{tmp_path / 'caixa.db'}"

    def settings(log: str) -> Settings:
        config = write_node(tmp_path, register, register, {"itens": ITEMS}, log)
        return load_settings(config)

    monkeypatch.delenv("LOGS_DIRECTORY", raising=False)
    with_dir = settings('[log]\ndir = "logs"\nformat = "json"\nretention_days = 30\n')
    assert log_settings(with_dir, level="DEBUG") == {
        "level": "DEBUG",
        "directory": tmp_path / "logs",
        "retention_days": 30,
        "json": True,
        "console": True,  # a command: always
    }
    assert log_settings(with_dir, for_service=True)["console"] is False
    no_dir = settings("")
    service = log_settings(no_dir, for_service=True)
    assert service["directory"] is None and service["console"] is True
    forced = settings('[log]\ndir = "logs"\nconsole = true\n')
    assert log_settings(forced, for_service=True)["console"] is True

    monkeypatch.setenv("LOGS_DIRECTORY", "/var/log/replicator")  # systemd's LogsDirectory=
    systemd = log_settings(no_dir, for_service=True)
    assert systemd["directory"] == Path("/var/log/replicator")
    assert systemd["console"] is False


def test_sync_writes_the_day_s_file(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    built = process("demo", "--dir", str(demo))
    assert built.returncode == 0, built.stderr
    config = demo / "replicator.toml"
    text = config.read_text("utf-8")
    assert '[log]\nlevel = "WARNING"\n' in text
    config.write_text(text.replace('[log]\nlevel = "WARNING"\n', '[log]\ndir = "logs"\n'), "utf-8")
    execute(
        f"sqlite:///{demo / 'server.db'}", "UPDATE product SET price = 17.5 WHERE product_id = 1"
    )

    days = {datetime.now(UTC).date()}
    sync = process("-c", str(config), "sync", env={"TZ": "UTC"})
    days.add(datetime.now(UTC).date())
    assert sync.returncode == 0, sync.stderr

    files = names(demo / "logs")
    assert len(files) == 1 and files[0] in {f"replicator-{d.isoformat()}.log" for d in days}
    text = (demo / "logs" / files[0]).read_text("utf-8")
    for register in ("caixa1", "caixa2"):
        job = f"[job=cadastros:server->{register}]"
        assert f"| INFO    | {job} batch 1: 1 pages applied" in text
        assert f"| INFO    | {job} 1 rows in " in text
    assert "1 rows in " in sync.stderr  # a command logs to the console too
