"""The Windows service: `replicator run` under the Service Control Manager (SCM).

`ServiceRunner` holds the start and stop logic and imports nothing of Windows, so the tests
run it anywhere; the SCM is reached through a small seam (`ServiceSeam`). `ReplicatorService`,
defined only where pywin32 imports, forwards the SCM's calls to it. `install_windows` and
`uninstall_windows` are `replicator service install|uninstall` on Windows.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from replicator.errors import ReplicatorError
from replicator.log import mask

try:
    import pywintypes
    import servicemanager
    import win32service
    import win32serviceutil
except ImportError:  # not Windows, or pywin32 is not installed
    HAVE_PYWIN32 = False
else:
    HAVE_PYWIN32 = True

RunLoop = Callable[[Path, threading.Event], int]
Echo = Callable[[str], None]

CLASS_STRING = "replicator.winservice.ReplicatorService"
CONFIG_OPTION = "Config"  # HKLM\SYSTEM\CurrentControlSet\Services\NAME\Parameters\Config
DESCRIPTION = "Database replication between the POS registers and the back-office server"
STOP_WAIT_MS = 30_000  # what the SCM is told to wait for a stop (the loop needs up to 20 s)
SC_ACTION_RESTART = 1
RESET_SECONDS = 86_400  # the failure count starts again after a day without failures
RESTARTS = ((SC_ACTION_RESTART, 5_000), (SC_ACTION_RESTART, 5_000), (SC_ACTION_RESTART, 60_000))
ERROR_ACCESS_DENIED = 5
ERROR_SERVICE_DOES_NOT_EXIST = 1060
ERROR_SERVICE_NOT_ACTIVE = 1062


class ServiceSeam(Protocol):
    """What the runner tells the operating system (the SCM and its event log)."""

    def report_running(self) -> None: ...

    def report_stopping(self) -> None: ...

    def report_stopped(self, exit_code: int) -> None: ...

    def log_event(self, text: str, *, error: bool = False) -> None: ...


def _run_service(config: Path, stop: threading.Event) -> int:
    """What `replicator -c CONFIG run` does: the service's logging, then the loop."""
    from replicator.config import load_settings
    from replicator.log import log_settings, setup_logging
    from replicator.scheduler import run_service

    settings = load_settings(config)
    setup_logging(**log_settings(settings, for_service=True))
    return run_service(config, stop, settings=settings)


class ServiceRunner:
    """Runs the loop in the thread that calls `start()` until `stop()` is called from another
    thread (the SCM's control handler) or the loop ends by itself. Reports running, then
    stopping, then stopped (with the loop's exit code: non-zero is a failure, which the
    service's recovery options restart)."""

    def __init__(self, config_path: Path, seam: ServiceSeam, run: RunLoop = _run_service) -> None:
        self.config_path = config_path
        self.seam = seam
        self.run = run
        self.exit_code: int | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stopping = False

    def start(self) -> int:
        if self._stop.is_set():  # the SCM asked to stop before the loop started
            return self._stopped(0)
        self.seam.report_running()
        self.seam.log_event(f"replicator started with config {self.config_path}")
        try:
            code = self.run(self.config_path, self._stop)
        except ReplicatorError as exc:
            self.seam.log_event(f"replicator stopped: {mask(str(exc))}", error=True)
            code = exc.exit_code
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            if code:
                self.seam.log_event(f"replicator exited with code {code}", error=True)
        except Exception as exc:  # a bug: say which, with the traceback
            self.seam.log_event(
                f"replicator stopped by an unexpected {type(exc).__name__}: {mask(str(exc))}\n"
                + mask(traceback.format_exc()),
                error=True,
            )
            code = 1
        else:
            if code:
                self.seam.log_event(
                    f"replicator stopped with exit code {code}; see its log", error=True
                )
            elif not self._stop.is_set():
                self.seam.log_event("replicator ended by itself")
        return self._stopped(code)

    def stop(self) -> None:
        """Ask the loop to stop; returns at once (`start()` returns when the loop has)."""
        self._report_stopping()
        self._stop.set()

    def _stopped(self, code: int) -> int:
        self._report_stopping()
        self.exit_code = code
        self.seam.report_stopped(code)
        return code

    def _report_stopping(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self.seam.report_stopping()


# --- pywin32 -----------------------------------------------------------------------------------


def failure_actions() -> dict[str, Any]:
    """SERVICE_FAILURE_ACTIONS for ChangeServiceConfig2: restart after 5 s, 5 s, then 60 s."""
    return {"ResetPeriod": RESET_SECONDS, "RebootMsg": None, "Command": None, "Actions": RESTARTS}


def service_environment(name: str) -> None:
    """What systemd gives a unit, for the loop's defaults: $STATE_DIRECTORY and
    $LOGS_DIRECTORY under %ProgramData%; and a usable stderr (a service has none)."""
    base = Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "replicator" / name
    for variable, folder in (("STATE_DIRECTORY", "state"), ("LOGS_DIRECTORY", "logs")):
        path = Path(os.environ.setdefault(variable, str(base / folder)))
        path.mkdir(parents=True, exist_ok=True)
    for stream in ("stdout", "stderr"):
        if getattr(sys, stream) is None:
            setattr(sys, stream, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115


class _ScmSeam:
    """The seam as the SCM sees it. SERVICE_STOPPED is reported by pywin32 when SvcRun
    returns (exit code 0) or raises (a failure, which triggers the recovery actions)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def report_running(self) -> None:
        self.service.ReportServiceStatus(win32service.SERVICE_RUNNING)

    def report_stopping(self) -> None:
        self.service.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_MS)

    def report_stopped(self, exit_code: int) -> None:
        pass

    def log_event(self, text: str, *, error: bool = False) -> None:
        (servicemanager.LogErrorMsg if error else servicemanager.LogInfoMsg)(text)


class ServiceFailed(ReplicatorError):
    """Raised out of SvcRun so that pywin32 reports the stop as a failure."""


if HAVE_PYWIN32:

    class ReplicatorService(win32serviceutil.ServiceFramework):  # type: ignore[misc]
        _svc_name_ = "replicator"
        _svc_display_name_ = "Replicator"
        _svc_description_ = DESCRIPTION

        def __init__(self, args: list[str]) -> None:
            self._svc_name_ = args[0]  # the name it was installed under (--name)
            super().__init__(args)
            config = win32serviceutil.GetServiceCustomOption(args[0], CONFIG_OPTION)
            self._config = str(config or "")
            self._runner = ServiceRunner(Path(self._config), _ScmSeam(self))

        def SvcRun(self) -> None:  # statuses come from the runner, not from pywin32's SvcRun
            if not self._config:
                raise ServiceFailed(
                    f"service {self._svc_name_} has no config path in the registry; run "
                    "`replicator -c CONFIG service install` again"
                )
            service_environment(self._svc_name_)
            code = self._runner.start()
            if code:
                raise ServiceFailed(f"replicator stopped with exit code {code}")

        def SvcStop(self) -> None:
            self._runner.stop()

        def SvcShutdown(self) -> None:
            self._runner.stop()


def _winerror(exc: Any, doing: str) -> ReplicatorError:
    if getattr(exc, "winerror", None) == ERROR_ACCESS_DENIED:
        return ReplicatorError(
            f"{doing}: access denied; run it from a terminal opened with 'Run as administrator'"
        )
    return ReplicatorError(f"{doing}: {getattr(exc, 'strerror', exc)} (Windows error {exc})")


def _require_pywin32() -> None:
    if not HAVE_PYWIN32:
        raise ReplicatorError(
            "the Windows service needs pywin32: run `pip install pywin32` in the replicator's "
            "environment, then this command again"
        )


def _state(name: str) -> int | None:
    """The service's current state, None when it is not installed."""
    try:
        return int(win32serviceutil.QueryServiceStatus(name)[1])
    except pywintypes.error as exc:
        if exc.winerror == ERROR_SERVICE_DOES_NOT_EXIST:
            return None
        raise


def describe_windows(config: Path, name: str, user: str | None) -> str:
    """What `install` registers (for --print)."""
    return (
        f"Windows service {name} ({CLASS_STRING}, hosted by pywin32's pythonservice.exe)\n"
        f"  account: {user or 'LocalSystem'}; start: automatic (delayed)\n"
        f"  config: {config} (registry: HKLM\\SYSTEM\\CurrentControlSet\\Services\\{name}"
        f"\\Parameters\\{CONFIG_OPTION})\n"
        "  recovery: restart after 5 s, 5 s, then 60 s; failure count reset after a day; "
        "also when it stops with an error\n"
    )


def install_windows(config: Path, name: str, user: str | None, echo: Echo) -> None:
    """Register (or update) the service, store the config path, set recovery, (re)start."""
    import click

    _require_pywin32()
    password = None
    if user and not user.upper().startswith(("NT AUTHORITY\\", "NT SERVICE\\")):
        password = click.prompt(f"password of {user}", hide_input=True)
    try:
        state = _state(name)
        options: dict[str, Any] = {
            "startType": win32service.SERVICE_AUTO_START,
            "userName": user,
            "password": password,
            "description": DESCRIPTION,
            "delayedstart": True,
        }
        if state is None:
            win32serviceutil.InstallService(CLASS_STRING, name, f"Replicator ({name})", **options)
        else:
            win32serviceutil.ChangeServiceConfig(CLASS_STRING, name, **options)
        win32serviceutil.SetServiceCustomOption(name, CONFIG_OPTION, str(config))
        manager = win32service.OpenSCManager(None, None, win32service.SC_MANAGER_ALL_ACCESS)
        try:
            handle = win32service.OpenService(manager, name, win32service.SERVICE_ALL_ACCESS)
            try:
                win32service.ChangeServiceConfig2(
                    handle, win32service.SERVICE_CONFIG_FAILURE_ACTIONS, failure_actions()
                )
                # also when it stops with an error code, not only when the process dies
                win32service.ChangeServiceConfig2(
                    handle, win32service.SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, True
                )
            finally:
                win32service.CloseServiceHandle(handle)
        finally:
            win32service.CloseServiceHandle(manager)
        if state in (None, win32service.SERVICE_STOPPED):
            win32serviceutil.StartService(name)
        else:
            win32serviceutil.RestartService(name)
    except pywintypes.error as exc:
        raise _winerror(exc, f"installing the Windows service {name}") from None
    echo(
        f"{'installed' if state is None else 'updated'} and started the Windows service {name} "
        f"(config {config}); check it with `sc query {name}`, the Event Viewer (Windows "
        f"Logs > Application) and `replicator -c {config} status`"
    )


def uninstall_windows(name: str, echo: Echo) -> None:
    _require_pywin32()
    try:
        state = _state(name)
        if state is None:
            echo(f"no Windows service {name}: nothing to remove")
            return
        if state != win32service.SERVICE_STOPPED:
            try:
                win32serviceutil.StopService(name)
            except pywintypes.error as exc:
                if exc.winerror != ERROR_SERVICE_NOT_ACTIVE:
                    raise
            win32serviceutil.WaitForServiceStatus(name, win32service.SERVICE_STOPPED, 30)
        win32serviceutil.RemoveService(name)
    except pywintypes.error as exc:
        raise _winerror(exc, f"removing the Windows service {name}") from None
    echo(f"removed the Windows service {name}; its state and logs stay under %ProgramData%")
