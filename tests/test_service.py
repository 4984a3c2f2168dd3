"""`replicator run`, the service loop, tried as a store runs it: a real process started from the
command line, real databases, a network that fails, signals, crashes."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import execute
from proxy import Proxy
from support import ITEMS, Node, rows, scalar, write_node

REPLICATOR = Path(sys.executable).parent / "replicator"
ITEM_DDL = "CREATE TABLE item (id integer PRIMARY KEY, name varchar(40), qty integer)"
PRODUCTS = """\
group: produtos
direction: server_to_register
tables:
  - source: product
    key: [id]
"""
PRODUCT_DDL = "CREATE TABLE product (id integer PRIMARY KEY, name varchar(40), price numeric(10,2))"


def start(config: Path, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    with open(log or config.parent / "run.log", "ab") as out:  # the child keeps its copy
        return subprocess.Popen(
            [
                *os.environ.get("WRAP", "").split(),
                str(REPLICATOR),
                "--config",
                str(config),
                *args,
                "run",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TZ": "UTC"},
        )


def wait_for(what: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if what():
                return
        except (sa.exc.OperationalError, KeyError, IndexError):
            pass  # not there yet
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s: {message}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> float:
    """SIGTERM; how long the process took to exit (asserts it exited cleanly)."""
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout)
    assert code == 0, f"exit code {code}"
    return time.monotonic() - began


def count(url: str, table: str = "item") -> int:
    return int(scalar(url, f"SELECT count(*) FROM {table}"))


def service_node(
    tmp_path: Path, server: str, register: str, extra: str = "", groups: str = "itens"
) -> Path:
    known = {"itens": ITEMS, "produtos": PRODUCTS}
    mappings = {g: known[g] for g in groups.split()}
    jobs = "".join(f'\n[[jobs]]\ngroup = "{g}"\nevery = "1s"\n' for g in groups.split())
    config = write_node(tmp_path, server, register, mappings, extra=jobs + extra)
    node = Node(config)
    node.setup()
    node.close()
    return config


class Writer(threading.Thread):
    """A register selling: one sale every `every` seconds through its own SQLite connection
    with a short busy timeout, counting the sales that failed."""

    def __init__(self, path: str, every: float = 0.02, start_id: int = 1) -> None:
        super().__init__(daemon=True)
        self.path, self.every, self.next_id = path, every, start_id
        self.failed: list[str] = []
        self.sold = 0
        self.halt = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None)
        while not self.halt.is_set():
            try:
                conn.execute(
                    "INSERT INTO item (id, name, qty) VALUES (?, ?, ?)",
                    (self.next_id, f"sale {self.next_id}", self.next_id % 7),
                )
                self.next_id += 1
                self.sold += 1
            except sqlite3.Error as exc:
                self.failed.append(str(exc))
            time.sleep(self.every)
        conn.close()


def sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


# --- outage ------------------------------------------------------------------------------------
def test_run_rides_out_an_outage_and_a_stalled_link(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """The open links to the server stop answering; then the link drops, then accepts
    connections and says nothing, then comes back: the register never fails a sale, and every
    sale reaches the server exactly once,
    without restarting the service."""
    server, register = pg_database(), sqlite_database()
    execute(server, ITEM_DDL)
    execute(register, ITEM_DDL)
    with Proxy(5432) as proxy:
        via_proxy = server.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        config = service_node(
            tmp_path,
            via_proxy,
            register,
            extra='[service]\nretry_after = "1s"\nmax_backoff = "4s"\nstall = "5s"\n',
        )
        writer = Writer(sqlite_path(register))
        writer.start()
        proc = start(config)
        try:
            wait_for(lambda: count(server) > 20, 30, "first sales on the server")
            proxy.stall()  # the open links stop answering: no error, no data
            time.sleep(12)  # longer than the stall guard (5 s)
            proxy.restore()
            before = count(server)
            wait_for(lambda: count(server) > before, 30, "sales again after a stall")
            proxy.cut()
            time.sleep(6)
            proxy.stall()
            time.sleep(14)  # longer than the connect timeout (10 s) and the stall guard (5 s)
            proxy.restore()
            time.sleep(2)
            writer.halt.set()
            writer.join()
            wait_for(lambda: count(server) == writer.sold, 60, "every sale on the server")
            assert proc.poll() is None, "the service kept running"
        finally:
            writer.halt.set()
            took = stop(proc)
    assert writer.failed == [], writer.failed[:3]
    assert writer.sold > 500
    assert rows(server, "item") == rows(register, "item")
    log = (tmp_path / "run.log").read_text()
    assert "FAILED, retrying in" in log  # the failures were transient, with backoff
    assert took < 5


def test_stall_guard_cuts_a_link_that_says_nothing(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    """A query on a link that stopped answering (no error, no data) ends in an error once the
    job has made no progress for `stall`, instead of waiting forever."""
    from replicator.scheduler import StallGuard

    server = pg_database()
    with Proxy(5432) as proxy:
        engine = sa.create_engine(server.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"))
        guard = StallGuard(limit=1.0)
        guard.watch(engine)
        failure: list[BaseException] = []
        began = time.monotonic()

        def job() -> None:
            with guard.running("job"), engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
                proxy.stall()
                try:
                    conn.execute(sa.text("SELECT 2"))
                except sa.exc.DBAPIError as exc:
                    failure.append(exc)

        thread = threading.Thread(target=job, daemon=True)
        thread.start()
        while thread.is_alive() and time.monotonic() - began < 20:
            guard.check()
            time.sleep(0.1)
        thread.join(1)
        assert not thread.is_alive(), "the query still waits"
        assert failure and isinstance(failure[0], sa.exc.OperationalError)
        assert time.monotonic() - began < 5
        proxy.restore()
        engine.dispose()


# --- crash -----------------------------------------------------------------------------------
def test_run_killed_at_random_moments_converges(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """SIGKILL at ten seeded random moments of a large sync both ways (the catalog in short
    commits, the sales in whole batches); after a restart both sides are equal."""
    server, register = pg_database(), sqlite_database()
    execute(server, ITEM_DDL, PRODUCT_DDL)
    execute(register, ITEM_DDL, PRODUCT_DDL)
    config = service_node(
        tmp_path, server, register, extra="[sync]\nbatch_rows = 2000\n", groups="itens produtos"
    )
    execute(
        server,
        "INSERT INTO product (id, name, price) SELECT g, 'product ' || g, g % 1000 + 0.99 "
        "FROM generate_series(1, 60000) g",
    )
    with sqlite3.connect(sqlite_path(register)) as conn:
        conn.executemany(
            "INSERT INTO item (id, name, qty) VALUES (?, ?, ?)",
            ((i, f"sale {i}", i % 9) for i in range(1, 40001)),
        )
    rng = random.Random(20261202)
    next_id = 40001
    for _ in range(10):
        proc = start(config)
        time.sleep(rng.uniform(0.8, 2.5))
        proc.kill()
        proc.wait()
        # the store goes on between crashes: a price change, a few more sales
        execute(server, f"UPDATE product SET price = price + 1 WHERE id % 97 = {next_id % 97}")
        with sqlite3.connect(sqlite_path(register)) as conn:
            conn.executemany(
                "INSERT INTO item (id, name, qty) VALUES (?, ?, ?)",
                ((i, f"sale {i}", 1) for i in range(next_id, next_id + 50)),
            )
        next_id += 50
    proc = start(config)
    try:
        wait_for(
            lambda: (
                count(server) == next_id - 1
                and rows(server, "product") == rows(register, "product")
            ),
            120,
            "both sides equal after the crashes",
        )
    finally:
        stop(proc)
    assert rows(server, "item") == rows(register, "item")
    assert count(register, "product") == 60000


# --- graceful stop --------------------------------------------------------------------------------
def test_sigterm_during_a_batch_exits_fast_with_the_batch_whole(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    server, register = pg_database(), sqlite_database()
    execute(server, ITEM_DDL)
    execute(register, ITEM_DDL)
    config = service_node(tmp_path, server, register)
    # one batch of several seconds: longer than the stop's grace period (600,000 rows took
    # 3 s once they went straight into the table by COPY, inside the 3.5 s grace)
    total = 1_500_000
    with sqlite3.connect(sqlite_path(register)) as conn:
        conn.executemany(
            "INSERT INTO item (id, name, qty) VALUES (?, ?, ?)",
            ((i, f"sale {i}", i % 9) for i in range(total)),
        )
    proc = start(config)
    admin = sa.create_engine(server)
    try:
        # wait until the batch is being written on the server
        def writing() -> bool:
            with admin.connect() as conn:
                return bool(
                    conn.execute(
                        sa.text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                            "current_database() AND application_name = 'replicator' "
                            "AND backend_xid IS NOT NULL"
                        )
                    ).scalar()
                )

        wait_for(writing, 60, "a batch being written")
        took = stop(proc)
    finally:
        admin.dispose()
        if proc.poll() is None:
            proc.kill()
    assert took < 5, f"took {took:.1f}s to stop"
    assert count(server) in (0, total), "a batch is applied whole or not at all"
    log = config.parent / "run.log"
    started = log.read_text("utf-8").count("service started")
    proc = start(config)
    try:
        wait_for(lambda: count(server) == total, 90, "the batch after a restart")
        # stopped once it runs (a SIGTERM during its start-up would find no handler yet)
        wait_for(lambda: log.read_text("utf-8").count("service started") > started, 30, "a start")
    finally:
        stop(proc)


def test_sigterm_during_catalog_commits_stops_at_a_commit(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """A large catalog goes to a register in short commits: a stop ends at the next one, and
    the restarted service goes on from there."""
    server, register = pg_database(), sqlite_database()
    execute(server, PRODUCT_DDL)
    execute(register, PRODUCT_DDL)
    config = service_node(tmp_path, server, register, groups="produtos")
    execute(
        server,
        "INSERT INTO product (id, name, price) "
        "SELECT g, 'p' || g, 1.5 FROM generate_series(1, 150000) g",
    )
    proc = start(config)
    wait_for(lambda: count(register, "product") > 0, 60, "first commits at the register")
    took = stop(proc)
    assert took < 5
    partial = count(register, "product")
    assert 0 < partial < 150000
    proc = start(config)
    try:
        wait_for(lambda: count(register, "product") == 150000, 90, "the rest after a restart")
    finally:
        stop(proc)
    assert rows(server, "product") == rows(register, "product")


# --- one process per config ------------------------------------------------------------
def test_second_run_on_the_same_config_refuses_and_names_the_holder(
    sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    server, register = sqlite_database(), sqlite_database()
    execute(server, ITEM_DDL)
    execute(register, ITEM_DDL)
    config = service_node(tmp_path, server, register)
    first = start(config)
    try:
        wait_for(lambda: any(tmp_path.glob("*.state.json")), 30, "the first service runs")
        second = subprocess.run(
            [str(REPLICATOR), "--config", str(config), "run"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        stop(first)
    assert second.returncode == 6
    assert f"pid {first.pid}" in second.stderr
    assert "already running" in second.stderr


# --- health and metrics ---------------------------------------------------------------------------
def test_health_and_metrics_tell_what_the_service_sees(
    sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    server, register = sqlite_database(), sqlite_database()
    execute(server, ITEM_DDL)
    execute(register, ITEM_DDL)
    port = _free_port()
    config = service_node(
        tmp_path,
        server,
        register,
        extra=f'[service]\nhttp = "127.0.0.1:{port}"\npermanent_retry = "2s"\n',
    )
    execute(register, "INSERT INTO item (id, name, qty) VALUES (1, 'one', 1), (2, 'two', 2)")
    execute(server, "DROP TABLE item")  # a DBA's mistake on the server
    proc = start(config)
    try:

        def failing() -> bool:
            code, doc = _get(port, "/health")
            return code == 503 and doc["jobs"][0]["health"] == "failing"

        wait_for(failing, 30, "/health says failing")
        doc = _get(port, "/health")[1]
        job = doc["jobs"][0]
        assert job["error_kind"] == "permanent"
        assert "'item' does not exist" in job["last_error"]
        assert job["failures"] >= 1
        # the DBA fixes the schema: the service picks it up by itself
        execute(server, ITEM_DDL)
        wait_for(lambda: _get(port, "/health")[0] == 200, 30, "/health back to ok")
        wait_for(lambda: count(server) == 2, 30, "rows after the fix")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert 'replicator_rows_total{group="itens"' in metrics
        assert "replicator_lag_seconds{" in metrics
        assert "replicator_errors_total{" in metrics
        state = json.loads(next(tmp_path.glob("replicator-*.state.json")).read_text())
        assert state["service"]["pid"] == proc.pid
    finally:
        stop(proc)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


@pytest.mark.parametrize("lag", ["2s"])
def test_a_job_that_cannot_deliver_is_failing_after_its_max_lag(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path, lag: str
) -> None:
    """The server is unreachable: after `max_lag` the job says what may be waiting, and the
    outage makes /health failing (503)."""
    server, register = pg_database(), sqlite_database()
    execute(server, ITEM_DDL)
    execute(register, ITEM_DDL)
    port = _free_port()
    with Proxy(5432) as proxy:
        via_proxy = server.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        config = service_node(
            tmp_path,
            via_proxy,
            register,
            extra=f'[service]\nhttp = "127.0.0.1:{port}"\nretry_after = "1s"\n',
        )
        text = config.read_text().replace('every = "1s"\n', f'every = "1s"\nmax_lag = "{lag}"\n')
        config.write_text(text)
        proc = start(config)
        try:
            wait_for(lambda: _get(port, "/health")[1]["jobs"][0]["state"] == "ok", 30, "ok first")
            proxy.cut()

            def alarmed() -> bool:
                doc = _get(port, "/health")[1]
                return any("may be waiting" in r for r in doc["jobs"][0]["reasons"])

            wait_for(alarmed, 30, "an alarm for its lag")
            # an outage longer than max_lag is failing: a monitor on the status code hears it
            wait_for(lambda: _get(port, "/health")[0] == 503, 30, "503 for a long outage")
            doc = _get(port, "/health")[1]
            assert doc["service"]["health"] == "failing"
            assert any("retrying after" in r for r in doc["jobs"][0]["reasons"])
            proxy.restore()
            wait_for(lambda: _get(port, "/health")[1]["jobs"][0]["health"] == "ok", 30, "ok")
        finally:
            stop(proc)


# --- the day's log ----------------------------------------------------------------------------
def test_the_day_s_log_has_a_line_per_run_and_no_password(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """A store manager reads the day's file: one summary line per job run, and the database
    password (known to the service through password_env) appears nowhere it writes."""
    from datetime import datetime

    server, register = pg_database(), sqlite_database()
    # the password is the database's name (trust auth ignores it): every line that names the
    # database, such as the failure below, would show it without the masking
    secret = server.rsplit("/", 1)[1]
    execute(server, ITEM_DDL)
    execute(register, ITEM_DDL)
    config = service_node(tmp_path, server, register)
    text = config.read_text().replace(
        f'url = "{server}"', f'url = "{server}"\npassword_env = "REPL_TEST_PW"'
    )
    config.write_text(text + '\n[service]\npermanent_retry = "1s"\n[log]\ndir = "logs"\n')
    day = tmp_path / "logs" / f"replicator-{datetime.now().date().isoformat()}.log"
    os.environ["REPL_TEST_PW"] = secret  # trust auth: the server ignores it, we must hide it
    try:
        execute(register, "INSERT INTO item (id, name, qty) VALUES (1, 'one', 1), (2, 'two', 2)")
        execute(server, "DROP TABLE item")
        proc = start(config)
        try:
            wait_for(
                lambda: day.exists() and "NEEDS ATTENTION" in day.read_text(), 30, "the failure"
            )
            execute(server, ITEM_DDL)  # fixed: picked up at the next slow retry
            wait_for(lambda: count(server) == 2, 30, "the sales on the server")
            time.sleep(1.5)  # a few idle runs
        finally:
            stop(proc)
    finally:
        del os.environ["REPL_TEST_PW"]
    lines = day.read_text().splitlines()
    assert any("FAILED, NEEDS ATTENTION" in line and "***" in line for line in lines)
    runs = [line for line in lines if "itens caixa -> server: ok;" in line]
    assert any("2 rows applied, 0 deleted" in line for line in runs), lines[-5:]
    assert len(runs) >= 2
    everything = [day, tmp_path / "run.log", *tmp_path.glob("*.state.json")]
    for path in everything:
        assert secret not in path.read_text(), path


def test_a_register_file_restored_while_the_service_runs_is_read_again(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    """The register's file is replaced by last night's copy while `run` keeps its pooled
    connections: the service reads the file that is there now, not the old one through its
    open handle, and the sales made after the restore reach the server."""
    server, register = pg_database(), sqlite_database()
    execute(server, ITEM_DDL)
    execute(register, ITEM_DDL)
    config = service_node(tmp_path, server, register)
    path = sqlite_path(register)
    execute(register, items_sql(1, 5))
    proc = start(config)
    try:
        wait_for(lambda: count(server) == 5, 30, "the first sales")
        backup = tmp_path / "backup.db"
        with sqlite3.connect(path) as src, sqlite3.connect(backup) as dst:
            src.backup(dst)
        src.close()
        dst.close()
        execute(register, items_sql(6, 10))  # sold after the backup, before the disaster
        wait_for(lambda: count(server) == 10, 30, "the sales before the restore")
        for suffix in ("-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)
        os.replace(backup, path)  # the register is restored from last night's copy
        execute(register, items_sql(11, 15))
        wait_for(lambda: count(server) == 15, 60, "the sales after the restore")
    finally:
        stop(proc)
    assert sorted(r[0] for r in rows(server, "item")) == list(range(1, 16))


def items_sql(first: int, last: int) -> str:
    values = ", ".join(f"({i}, 'sale {i}', 1)" for i in range(first, last + 1))
    return f"INSERT INTO item (id, name, qty) VALUES {values}"
