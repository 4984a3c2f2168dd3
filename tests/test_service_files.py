"""The OS service: the systemd unit passes `systemd-analyze verify` and keeps the SQLite folders
writable; its ExecStart line, run as systemd would run it, speaks the notify protocol and stops
on SIGTERM; sd_notify over abstract and path sockets; the Windows service's start and stop
logic with only the Service Control Manager replaced."""

from __future__ import annotations

import dataclasses
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator import sdnotify
from replicator.config import load_settings
from replicator.errors import ConfigError
from replicator.osservice import (
    Layout,
    UnitSpec,
    install_linux,
    render_unit,
    sqlite_files,
    uninstall_linux,
    unit_spec,
)
from replicator.winservice import RESTARTS, ServiceRunner, failure_actions

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CI = os.environ.get("CI", "").lower() == "true"
# `replicator` with the `service` group, whether or not cli.py registers it yet.
LAUNCH = (
    "from replicator.cli import cli; from replicator.osservice import service_cli; "
    "cli.commands.setdefault('service', service_cli); cli(prog_name='replicator')"
)
# The reference unit in service/: a register with its SQLite database in /var/lib/pdv.
REFERENCE = UnitSpec(
    name="replicator",
    command=(
        "/opt/replicator/.venv/bin/replicator",
        "--config",
        "/etc/replicator/replicator.toml",
        "run",
    ),
    config=Path("/etc/replicator/replicator.toml"),
    user="replicator",
    group="replicator",
    env_file=Path("/etc/replicator/replicator.env"),
    writable=(Path("/var/lib/pdv"),),
)


def replicator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LAUNCH, *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo store (SQLite server and registers); returns its replicator.toml."""
    folder = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [str(BIN / "replicator"), "demo", "--dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return folder / "replicator.toml"


@pytest.fixture
def awkward(demo: Path, tmp_path: Path) -> Path:
    """A register config with what quoting and ordering must survive: spaces and % in paths,
    databases in two folders, a log folder of its own, a PostgreSQL server on localhost."""
    store, data, logs = tmp_path / "loja 1%", tmp_path / "pdv dados", tmp_path / "logs x"
    store.mkdir()
    data.mkdir()
    shutil.copytree(demo.parent / "mappings", store / "mappings")
    shutil.copy(demo.parent / "caixa1.db", data / "caixa1.db")
    shutil.copy(demo.parent / "caixa2.db", store / "caixa2.db")
    config = store / "replicator.toml"
    config.write_text(
        textwrap.dedent(f"""\
        mappings = "mappings"

        [node]
        name = "loja01-caixa01"
        store_id = 1

        [log]
        dir = "{logs}"

        [databases.server]
        role = "server"
        url = "postgresql+psycopg://replicator@localhost/loja"
        password_env = "REPLICATOR_SERVER_PASSWORD"

        [databases.caixa1]
        role = "register"
        url = "sqlite:///{data}/caixa1.db"
        vars = {{ register_id = 1 }}

        [databases.caixa2]
        role = "register"
        url = "sqlite:///caixa2.db"
        vars = {{ register_id = 2 }}
        """),
        encoding="utf-8",
    )
    return config


def printed_unit(config: Path, *args: str) -> str:
    proc = replicator("-c", str(config), "service", "install", "--print", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def settings_of(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]


def unquote(value: str) -> list[str]:
    """The words of a unit setting, as systemd reads them (quotes, %% and $$)."""
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(value)]


def writable_paths(unit: str) -> list[Path]:
    return [
        Path(w.removeprefix("-"))
        for value in settings_of(unit, "ReadWritePaths")
        for w in unquote(value)
    ]


# --- (a) systemd-analyze verify ----------------------------------------------------------------


def _verify(unit: str, folder: Path, name: str) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        if CI:
            pytest.fail("CI=true but systemd-analyze is missing: install Debian's systemd")
        pytest.skip("systemd-analyze is missing (apt-get install systemd)")
    path = folder / f"{name}.service"
    path.write_text(unit, encoding="utf-8")
    proc = subprocess.run(
        [exe, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60
    )
    output = (proc.stdout + proc.stderr).splitlines()
    about_unit = [line for line in output if name in line or str(path) in line]
    assert proc.returncode == 0 and not about_unit, "\n".join(output) + "\n\n" + unit


@pytest.mark.parametrize("which", ["demo", "awkward", "reference"])
def test_generated_unit_passes_systemd_analyze_verify(
    which: str, demo: Path, awkward: Path, tmp_path: Path
) -> None:
    if which == "reference":  # with an ExecStart that exists here, which verify checks
        spec = dataclasses.replace(
            REFERENCE, command=(str(BIN / "replicator"), *REFERENCE.command[1:])
        )
        unit = render_unit(spec)
    else:
        unit = printed_unit(demo if which == "demo" else awkward)
    _verify(unit, tmp_path, f"replicator-verify-{which}")


def test_reference_unit_is_the_generator_output() -> None:
    text = (ROOT / "service" / "replicator.service").read_text(encoding="utf-8")
    generated = "".join(line for line in text.splitlines(True) if not line.startswith("## "))
    assert generated == render_unit(REFERENCE), (
        "service/replicator.service is out of date with replicator/osservice.py; rewrite it "
        "from render_unit(REFERENCE) in tests/test_service_files.py, keeping its ## notes"
    )
    assert "PrivateTmp=yes" in generated
    assert "ReadWritePaths=-/var/lib/pdv" in generated


# --- (b) what the unit says; --print and install ----------------------------------------------


def test_unit_keeps_sqlite_folders_and_log_folder_writable(awkward: Path, tmp_path: Path) -> None:
    unit = printed_unit(awkward)
    assert set(writable_paths(unit)) == {
        tmp_path / "loja 1%",
        tmp_path / "pdv dados",
        tmp_path / "logs x",
    }
    for db in sqlite_files(load_settings(awkward)):
        assert db.parent in writable_paths(unit)
    lines = "\n".join(line for line in unit.splitlines() if not line.startswith("#"))
    assert "loja 1%%/" in lines and "loja 1%/" not in lines  # % starts a systemd specifier
    assert settings_of(unit, "After") == ["network-online.target postgresql.service"]
    assert settings_of(unit, "ProtectSystem") == ["strict"]
    assert settings_of(unit, "ProtectHome") == ["read-only"]
    # under /tmp, a private /tmp would hide the config: the unit says so and turns it off
    assert settings_of(unit, "PrivateTmp") == ["no"]
    argv = unquote(settings_of(unit, "ExecStart")[0])
    assert argv == [str(BIN / "replicator"), "--config", str(awkward), "run"]


def test_demo_unit_says_what_the_issue_asks(demo: Path) -> None:
    unit = printed_unit(demo, "--name", "caixa-7", "--user", "pdv")
    expected = {
        "Type": ["notify"],
        "User": ["pdv"],
        "Restart": ["always"],
        "RestartSec": ["5"],
        "WatchdogSec": ["60"],
        "TimeoutStopSec": ["20"],
        "KillSignal": ["SIGTERM"],
        "EnvironmentFile": ["-/etc/replicator/caixa-7.env"],
        "StateDirectory": ["caixa-7"],
        "LogsDirectory": ["caixa-7"],
        "NoNewPrivileges": ["yes"],
        "After": ["network-online.target"],
        "Wants": ["network-online.target"],
        "WantedBy": ["multi-user.target"],
    }
    assert {key: settings_of(unit, key) for key in expected} == expected
    assert writable_paths(unit) == [demo.parent]


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    seen = {}
    for folder in folders:
        if folder.exists():
            for path in [folder, *folder.rglob("*")]:
                st = path.lstat()
                seen[str(path)] = (st.st_size, st.st_mtime_ns)
    return seen


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_print_changes_nothing(demo: Path) -> None:
    folders = (Path("/etc/systemd/system"), Path("/etc/replicator"), demo.parent)
    before, user_before = _snapshot(*folders), _has_user("replicator")
    unit = printed_unit(demo)
    assert unit.startswith("# Generated by `replicator service install`")
    assert _snapshot(*folders) == before
    assert _has_user("replicator") == user_before


def test_install_as_non_root_fails_clearly(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"replicator-test-{uuid.uuid4().hex[:8]}"
    args = ["-c", str(demo), "service", "install", "--name", name]
    if os.geteuid() == 0:  # a real non-root process cannot reach this venv's interpreter
        from click.testing import CliRunner

        from replicator.cli import cli
        from replicator.osservice import service_cli

        monkeypatch.setitem(cli.commands, "service", service_cli)
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        result = CliRunner().invoke(cli, args)
        code, err = result.exit_code, result.stderr
    else:
        proc = replicator(*args)
        code, err = proc.returncode, proc.stderr
    assert code == 1, err
    assert "Traceback" not in err
    assert err.startswith("FAILED: `replicator service install` needs root"), err
    assert "sudo" in err and "--print" in err
    assert not (Path("/etc/systemd/system") / f"{name}.service").exists()


@pytest.mark.parametrize(
    ("option", "value", "what"),
    [("--name", "../x", "service name"), ("--user", "Root Admin", "user name")],
)
def test_bad_name_or_user_is_refused(demo: Path, option: str, value: str, what: str) -> None:
    proc = replicator("-c", str(demo), "service", "install", "--print", option, value)
    assert proc.returncode == 2, proc.stderr
    assert f"is not a valid {what}" in proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout


@pytest.fixture
def spec(demo: Path, tmp_path: Path) -> Iterator[tuple[UnitSpec, Layout]]:
    """An install into a temporary folder, as the existing user nobody."""
    if not _has_user("nobody"):
        pytest.skip("no user nobody")
    env_file = tmp_path / "etc" / "caixa.env"
    yield (
        unit_spec(load_settings(demo), name="caixa", user="nobody", env_file=env_file),
        Layout(unit_dir=tmp_path / "systemd"),
    )


def test_install_without_systemd_writes_unit_and_secrets_file(
    spec: tuple[UnitSpec, Layout], demo: Path
) -> None:
    unit_spec_, layout = spec
    said: list[str] = []
    settings = load_settings(demo)
    why = "systemd is not running here (PID 1 is sh, a container?)"
    install_linux(settings, unit_spec_, said.append, layout=layout, why_not=why)
    unit = layout.unit_file("caixa")
    assert unit.read_text(encoding="utf-8") == render_unit(unit_spec_)
    env = unit_spec_.env_file
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert env.read_text(encoding="utf-8").startswith("# Secrets of the service caixa")
    assert any("written but not started" in line and why in line for line in said), said
    assert any("systemctl enable --now caixa" in line for line in said), said
    # nobody cannot reach the demo's folder (it is ours): install says so
    assert any("user nobody cannot" in line and str(demo.parent) in line for line in said)

    env.write_text("REPLICATOR_SERVER_PASSWORD=s3cret\n", encoding="utf-8")
    said.clear()
    install_linux(settings, unit_spec_, said.append, layout=layout, why_not=why)
    assert env.read_text(encoding="utf-8") == "REPLICATOR_SERVER_PASSWORD=s3cret\n"
    assert f"replaced {unit}" in said


def test_install_and_uninstall_with_systemd(spec: tuple[UnitSpec, Layout], demo: Path) -> None:
    unit_spec_, layout = spec
    calls: list[list[str]] = []
    said: list[str] = []
    install_linux(
        load_settings(demo), unit_spec_, said.append, layout=layout, systemctl=calls.append
    )
    assert calls == [["daemon-reload"], ["enable", "caixa"], ["restart", "caixa"]]
    assert any("systemctl status caixa" in line for line in said), said
    calls.clear()
    uninstall_linux("caixa", said.append, layout=layout, systemctl=calls.append)
    assert calls == [["disable", "--now", "caixa"], ["daemon-reload"]]
    assert not layout.unit_file("caixa").exists()
    assert unit_spec_.env_file.exists()  # secrets are not ours to delete
    said.clear()
    uninstall_linux("caixa", said.append, layout=layout, systemctl=calls.append)
    assert said == [f"no unit {layout.unit_file('caixa')}: nothing to remove"]


# --- (c) the ExecStart line, run as systemd runs it --------------------------------------------


def unit_environment(unit: str, tmp_path: Path) -> dict[str, str]:
    """The environment systemd gives the service: Environment=, the notify socket, the
    watchdog, $STATE_DIRECTORY and $LOGS_DIRECTORY (here in tmp_path)."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ", "HOME")}
    for value in settings_of(unit, "Environment"):
        for word in unquote(value):
            key, _, val = word.partition("=")
            env[key] = val
    for key, variable in (
        ("StateDirectory", "STATE_DIRECTORY"),
        ("LogsDirectory", "LOGS_DIRECTORY"),
    ):
        folder = tmp_path / key / settings_of(unit, key)[0]
        folder.mkdir(parents=True)
        env[variable] = str(folder)
    return env


def _receive(
    sock: socket.socket, wanted: str, proc: subprocess.Popen[str], seconds: float
) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            if proc.poll() is not None:
                break
            continue
        if wanted in got:
            return got
    proc.kill()
    _, err = proc.communicate(timeout=10)
    pytest.fail(f"no {wanted} in {seconds}s (got {got}, exit {proc.returncode}):\n{err}")


def test_exec_start_runs_ready_watchdog_and_stops_on_sigterm(demo: Path, tmp_path: Path) -> None:
    unit = printed_unit(demo)
    argv = unquote(settings_of(unit, "ExecStart")[0])
    env = unit_environment(unit, tmp_path)
    address = f"replicator-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + address)
        sock.settimeout(0.2)
        env |= {"NOTIFY_SOCKET": "@" + address, "WATCHDOG_USEC": "1500000"}
        proc = subprocess.Popen(
            argv, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            got = _receive(sock, "READY=1", proc, 60)
            got += _receive(sock, "WATCHDOG=1", proc, 5)
            proc.send_signal(signal.SIGTERM)
            start = time.monotonic()
            _, err = proc.communicate(timeout=5)
            took = time.monotonic() - start
            with pytest.raises(TimeoutError):  # drain the socket
                while True:
                    got.extend(sock.recv(4096).decode().splitlines())
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert took < 5
    assert "STOPPING=1" in got, got
    assert "Traceback" not in err


# --- (d) sd_notify -----------------------------------------------------------------------------


@pytest.fixture
def no_systemd(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_notify_outside_systemd_is_a_no_op(no_systemd: pytest.MonkeyPatch) -> None:
    assert sdnotify.notify("READY=1") is False


def test_notify_abstract_socket(no_systemd: pytest.MonkeyPatch) -> None:
    name = f"replicator-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        no_systemd.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1", "STATUS=job failed:\nlock timeout") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=job failed: lock timeout"


def test_notify_path_socket(no_systemd: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        no_systemd.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.notify("WATCHDOG=1") is True
        assert sock.recv(4096) == b"WATCHDOG=1"
    path.unlink()
    assert sdnotify.notify("WATCHDOG=1") is False  # the socket is gone: no exception


def test_watchdog_seconds(no_systemd: pytest.MonkeyPatch) -> None:
    assert sdnotify.watchdog_seconds() is None
    no_systemd.setenv("WATCHDOG_USEC", "60000000")
    assert sdnotify.watchdog_seconds() == 60.0
    no_systemd.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_seconds() == 60.0
    no_systemd.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_seconds() is None
    no_systemd.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "soon"):
        no_systemd.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_seconds() is None


# --- (e) the Windows service's logic -----------------------------------------------------------


class RecordingSeam:
    """The SCM and its event log, recorded."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.events: list[tuple[str, bool]] = []
        self.running = threading.Event()

    def report_running(self) -> None:
        self.states.append("running")
        self.running.set()

    def report_stopping(self) -> None:
        self.states.append("stopping")

    def report_stopped(self, exit_code: int) -> None:
        self.states.append(f"stopped {exit_code}")

    def log_event(self, text: str, *, error: bool = False) -> None:
        self.events.append((text, error))


def _start(runner: ServiceRunner) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(runner.start()), daemon=True)
    thread.start()
    return thread, codes


def test_runner_stops_when_asked() -> None:
    seam = RecordingSeam()
    seen: list[Path] = []

    def loop(config: Path, stop: threading.Event) -> int:
        seen.append(config)
        stop.wait(60)
        return 0

    runner = ServiceRunner(Path("C:/pdv/replicator.toml"), seam, run=loop)
    thread, codes = _start(runner)
    assert seam.running.wait(5)
    began = time.monotonic()
    runner.stop()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - began < 3
    assert codes == [0] and runner.exit_code == 0
    assert seam.states == ["running", "stopping", "stopped 0"]
    assert seen == [Path("C:/pdv/replicator.toml")]
    assert not any(error for _, error in seam.events)


def test_runner_reports_a_loop_that_raises() -> None:
    seam = RecordingSeam()

    def loop(config: Path, stop: threading.Event) -> int:
        raise RuntimeError("disk on fire")

    thread, codes = _start(ServiceRunner(Path("x.toml"), seam, run=loop))
    thread.join(5)
    assert not thread.is_alive(), "the service hangs after its loop failed"
    assert codes == [1]
    assert seam.states == ["running", "stopping", "stopped 1"]
    errors = [text for text, error in seam.events if error]
    assert len(errors) == 1 and "RuntimeError: disk on fire" in errors[0]
    assert "Traceback" in errors[0]


def test_runner_reports_a_config_error_with_its_exit_code() -> None:
    seam = RecordingSeam()

    def loop(config: Path, stop: threading.Event) -> int:
        raise ConfigError(f"{config}:3: unknown key 'dirr'")

    assert ServiceRunner(Path("x.toml"), seam, run=loop).start() == 2
    assert seam.states[-1] == "stopped 2"
    assert [t for t, e in seam.events if e] == ["replicator stopped: x.toml:3: unknown key 'dirr'"]


def test_runner_stopped_before_it_started() -> None:
    seam = RecordingSeam()
    calls: list[Path] = []

    def loop(config: Path, stop: threading.Event) -> int:
        calls.append(config)
        return 0

    runner = ServiceRunner(Path("x.toml"), seam, run=loop)
    runner.stop()
    assert runner.start() == 0
    assert calls == [] and seam.states == ["stopping", "stopped 0"]


def test_runner_runs_the_real_loop(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the SCM is replaced: the default loop is `replicator run`'s."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    seam = RecordingSeam()
    runner = ServiceRunner(demo, seam)
    thread, codes = _start(runner)
    assert seam.running.wait(5)
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob("*.lock")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the loop holds its instance lock once it runs
    time.sleep(0.5)
    runner.stop()
    thread.join(20)
    assert not thread.is_alive()
    assert codes == [0], seam.events
    assert seam.states == ["running", "stopping", "stopped 0"]


def test_recovery_restarts_three_times() -> None:
    actions = failure_actions()
    assert actions["ResetPeriod"] == 86400
    assert actions["Actions"] == RESTARTS == ((1, 5000), (1, 5000), (1, 60000))
    assert set(actions) == {"ResetPeriod", "RebootMsg", "Command", "Actions"}


def test_install_creates_the_configured_state_folder(
    spec: tuple[UnitSpec, Layout], demo: Path, tmp_path: Path
) -> None:
    """`[service] state_dir` that does not exist yet: install creates it for the service's
    user (else the service would fail at its first start, unable to take its lock)."""
    unit_spec_, layout = spec
    state = tmp_path / "state here"
    config = tmp_path / "with-state.toml"
    text = demo.read_text(encoding="utf-8").replace(
        'mappings = "mappings"', f'mappings = "{demo.parent / "mappings"}"'
    )
    config.write_text(text + f'\n[service]\nstate_dir = "{state}"\n', encoding="utf-8")
    settings = load_settings(config)
    said: list[str] = []
    install_linux(settings, unit_spec_, said.append, layout=layout, why_not="no systemd")
    assert state.is_dir()
    assert state.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert f"created state folder {state} for nobody" in said
