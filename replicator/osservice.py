"""`replicator service install|uninstall`: `replicator run` as an OS service.

On Linux a systemd unit, generated from the node config: which folders stay writable under
the hardening is read from the config (SQLite databases, the log folder). On Windows a
service registered with pywin32 (see winservice.py). Nothing here runs the loop itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.engine import make_url

from replicator.config import Settings
from replicator.errors import ReplicatorError

F = TypeVar("F", bound=Callable[..., Any])
Echo = Callable[[str], None]
Systemctl = Callable[[list[str]], None]

DEFAULT_NAME = "replicator"
DEFAULT_USER = "replicator"
UNIT_DIR = Path("/etc/systemd/system")
ENV_DIR = Path("/etc/replicator")
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
TEMP_DIRS = (Path("/tmp"), Path("/var/tmp"))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class UnitSpec:
    """Everything the unit says that depends on the machine and the config."""

    name: str
    command: tuple[str, ...]  # ExecStart, one argument each
    config: Path
    user: str
    group: str
    env_file: Path
    writable: tuple[Path, ...] = ()  # ReadWritePaths
    after_postgresql: bool = False
    private_tmp_off: Path | None = None  # a path the service needs that is under /tmp
    secrets: tuple[str, ...] = ()  # the password_env variables, for the EnvironmentFile


# --- what the config needs -------------------------------------------------------------------


def _absolute(path: Path, base: Path) -> Path:
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def sqlite_files(settings: Settings) -> list[Path]:
    """The SQLite database files of the config, absolute. Read from the URLs without
    `Settings.url()`, which would need the passwords."""
    base = _absolute(settings.path, Path.cwd()).parent
    files = []
    for db in settings.config.databases.values():
        url = make_url(db.url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            files.append(_absolute(Path(str(url.database)), base))
    return files


def log_folder(settings: Settings) -> Path | None:
    """The config's `[log] dir`, absolute; None when the logs go to $LOGS_DIRECTORY."""
    folder = getattr(settings.config.log, "dir", None)
    base = _absolute(settings.path, Path.cwd()).parent
    return _absolute(Path(folder), base) if folder is not None else None


def writable_folders(settings: Settings, name: str) -> list[Path]:
    """ReadWritePaths: the folders of the SQLite databases (SQLite writes its -wal, -shm and
    -journal files next to the database), the log folder and the `[service] state_dir`,
    except what systemd already gives the service (/var/lib/NAME, /var/log/NAME)."""
    base = _absolute(settings.path, Path.cwd()).parent
    wanted = [f.parent for f in sqlite_files(settings)]
    logs = log_folder(settings)
    if logs is not None:
        wanted.append(logs)
    state = getattr(getattr(settings.config, "service", None), "state_dir", None)
    if state is not None:
        wanted.append(_absolute(Path(state), base))
    given = (Path("/var/lib") / name, Path("/var/log") / name)
    folders: list[Path] = []
    for folder in sorted(set(wanted)):
        if not any(folder.is_relative_to(p) for p in (*given, *folders)):
            folders.append(folder)
    return folders


def uses_local_postgresql(settings: Settings) -> bool:
    """A PostgreSQL database on this machine (TCP to localhost, or a Unix socket)."""
    for db in settings.config.databases.values():
        url = make_url(db.url)
        if url.get_backend_name() != "postgresql":
            continue
        host = str(url.query.get("host") or url.host or "")
        if not host or host.startswith("/") or host.lower() in LOCAL_HOSTS:
            return True
    return False


def replicator_command(config: Path) -> tuple[str, ...]:
    """ExecStart: the `replicator` script next to this interpreter, else the interpreter."""
    script = Path(sys.executable).absolute().parent / "replicator"
    if script.is_file() and os.access(script, os.X_OK):
        head: tuple[str, ...] = (str(script),)
    else:
        head = (str(Path(sys.executable).absolute()), "-m", "replicator.cli")
    return (*head, "--config", str(config), "run")


def unit_spec(
    settings: Settings,
    *,
    name: str = DEFAULT_NAME,
    user: str = DEFAULT_USER,
    env_file: Path | None = None,
) -> UnitSpec:
    config = _absolute(settings.path, Path.cwd())
    writable = writable_folders(settings, name)
    mappings = _absolute(settings.config.mappings, config.parent)
    needed = [config, mappings, *writable, *sqlite_files(settings)]
    in_tmp = next((p for p in needed if any(p.is_relative_to(t) for t in TEMP_DIRS)), None)
    return UnitSpec(
        name=name,
        command=replicator_command(config),
        config=config,
        user=user,
        group=_group_of(user),
        env_file=env_file or ENV_DIR / f"{name}.env",
        writable=tuple(writable),
        after_postgresql=uses_local_postgresql(settings),
        private_tmp_off=in_tmp,
        secrets=tuple(
            dict.fromkeys(
                d.password_env for d in settings.config.databases.values() if d.password_env
            )
        ),
    )


def _group_of(user: str) -> str:
    import grp
    import pwd

    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return user  # `useradd --user-group` will make a group of the same name


# --- the unit ----------------------------------------------------------------------------------


def _word(text: str, *, exec_line: bool = False) -> str:
    """One word of a unit setting: `%` specifiers (and `$` variables in ExecStart) escaped,
    quoted when it holds a space or a quote."""
    text = text.replace("%", "%%")
    if exec_line:
        text = text.replace("$", "$$")
    if re.search(r"[\s\"'\\;]", text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def render_unit(spec: UnitSpec) -> str:
    after = "network-online.target" + (" postgresql.service" if spec.after_postgresql else "")
    exec_start = " ".join(_word(a, exec_line=True) for a in spec.command)
    lines = [
        f"# Generated by `replicator service install` for {spec.config}.",
        "# Change the config and run `replicator service install` again rather than editing",
        "# this file; see docs/service.md for what each line is for.",
        "[Unit]",
        f"Description=replicator: POS database replication ({spec.name})",
        f"After={after}",
        "Wants=network-online.target",
        "# Never give up restarting: a register must catch up whenever it can.",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=notify",
        f"ExecStart={exec_start}",
        f"User={spec.user}",
        f"Group={spec.group}",
        "# Passwords (password_env) as VAR=value lines, readable by root only; optional.",
        f"EnvironmentFile=-{_word(str(spec.env_file))}",
        f"# $STATE_DIRECTORY=/var/lib/{spec.name}, $LOGS_DIRECTORY=/var/log/{spec.name}.",
        f"StateDirectory={spec.name}",
        f"LogsDirectory={spec.name}",
        "Restart=always",
        "RestartSec=5",
        "# The loop pings every 20 s while healthy; a hung loop is killed and restarted.",
        "WatchdogSec=60",
        "TimeoutStopSec=20",
        "KillSignal=SIGTERM",
        "# Hardening: a read-only system, no privileges, no kernel or device access.",
        "NoNewPrivileges=yes",
    ]
    if spec.private_tmp_off is None:
        lines.append("PrivateTmp=yes")
    else:
        lines += [
            f"# PrivateTmp=no: {spec.private_tmp_off} is under a temporary folder,",
            "# which a private /tmp would hide. Move it to a lasting place.",
            "PrivateTmp=no",
        ]
    lines += [
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    ]
    if spec.writable:
        lines += [
            "# Writable despite ProtectSystem/ProtectHome: the folders of the SQLite databases",
            "# (SQLite writes -wal and -journal files next to each) and the log folder.",
            *(f"ReadWritePaths=-{_word(str(p))}" for p in spec.writable),
        ]
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


# --- installing on Linux -----------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where install writes; tests point it at a temporary folder."""

    unit_dir: Path = UNIT_DIR

    def unit_file(self, name: str) -> Path:
        return self.unit_dir / f"{name}.service"


def find_systemctl() -> tuple[Systemctl | None, str]:
    """`systemctl`, or None and why it cannot be used here."""
    exe = shutil.which("systemctl")
    if exe is None:
        return None, "systemctl is not installed"
    if not Path("/run/systemd/system").is_dir():  # sd_booted(3)
        try:
            pid1 = Path("/proc/1/comm").read_text().strip()
        except OSError:
            pid1 = "unknown"
        return None, f"systemd is not running here (PID 1 is {pid1}, a container?)"

    def systemctl(args: list[str]) -> None:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ReplicatorError(
                f"`systemctl {' '.join(args)}` failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()}"
            )

    return systemctl, ""


def require_root(action: str, writes: str) -> None:
    if os.geteuid() != 0:
        raise ReplicatorError(
            f"`replicator service {action}` needs root: it {writes}. Run it with sudo"
            + (
                ", or add --print to see the unit without installing it"
                if action == "install"
                else ""
            )
        )


def ensure_user(user: str, echo: Echo) -> None:
    import pwd

    try:
        pwd.getpwnam(user)
        return
    except KeyError:
        pass
    shell = shutil.which("nologin") or "/usr/sbin/nologin"
    command = ["useradd", "--system", "--user-group", "--no-create-home", "--shell", shell, user]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ReplicatorError(
            f"user {user!r} does not exist and useradd is missing; create the user yourself, "
            "or pass --user with an existing one"
        ) from None
    if proc.returncode != 0:
        raise ReplicatorError(
            f"could not create user {user!r} (`{' '.join(command)}`): {proc.stderr.strip()}"
        )
    echo(f"created system user {user} (no home, no login shell)")


def write_env_file(spec: UnitSpec, echo: Echo) -> None:
    """The EnvironmentFile, root-only, with the config's variables commented: never replaced."""
    path = spec.env_file
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            echo(f"warning  {path} is readable by others (mode {mode:o}); run chmod 600 {path}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    names = spec.secrets or ("REPLICATOR_SERVER_PASSWORD",)
    text = (
        f"# Secrets of the service {spec.name}: VAR=value, one a line. systemd reads this file\n"
        "# as root before it starts the service; keep it owned by root and chmod 600.\n"
        f"# The config {spec.config} reads these (password_env):\n"
        + "".join(f"#{n}=\n" for n in names)
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    if os.geteuid() == 0:
        os.chown(path, 0, 0)
    echo(f"wrote {path} (mode 600): put the passwords there")


def permission_warnings(settings: Settings, spec: UnitSpec) -> list[str]:
    """What the service user will not be able to run, read or write, by the Unix mode bits
    (ACLs are not looked at): the command, the config, each SQLite database and its folder."""
    import grp
    import pwd

    try:
        entry = pwd.getpwnam(spec.user)
    except KeyError:
        return []
    if entry.pw_uid == 0:
        return []
    gids = set(os.getgrouplist(spec.user, entry.pw_gid))

    def blocked(path: Path, bits: int) -> Path | None:
        """The first folder on the way, or the path itself, that lacks the bits."""
        for step, need in [*((p, 1) for p in reversed(path.parents)), (path, bits)]:
            st = step.stat()
            shift = 6 if st.st_uid == entry.pw_uid else 3 if st.st_gid in gids else 0
            if (st.st_mode >> shift) & need != need:
                return step
        return None

    checks = [(Path(spec.command[0]), 1, "run"), (Path(sys.executable).resolve(), 1, "run")]
    checks.append((spec.config, 4, "read"))
    for db in sqlite_files(settings):
        checks += [(db.parent, 3, "write in"), (db, 6, "write")]
    out: dict[Path, str] = {}
    for path, bits, verb in checks:
        step = blocked(path, bits) if path.exists() else None
        if step is not None and step not in out:
            st = step.stat()
            owner = f"{_name(pwd.getpwuid, st.st_uid)}:{_name(grp.getgrgid, st.st_gid)}"
            out[step] = (
                f"the service user {spec.user} cannot {verb} {path}: {step} is {owner} mode "
                f"{st.st_mode & 0o777:o}; give the user access (a group and chmod g+..., or "
                "an ACL) or pass --user"
            )
    return list(out.values())


def _name(lookup: Callable[[int], Any], ident: int) -> str:
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return str(ident)


def install_linux(
    settings: Settings,
    spec: UnitSpec,
    echo: Echo,
    *,
    layout: Layout | None = None,
    systemctl: Systemctl | None = None,
    why_not: str = "",
) -> None:
    """Create the user, the EnvironmentFile, the log folder; write the unit; start it when
    systemd runs here (`systemctl` given), else say how to."""
    layout = layout or Layout()
    ensure_user(spec.user, echo)
    write_env_file(spec, echo)
    base = _absolute(settings.path, Path.cwd()).parent
    state = getattr(getattr(settings.config, "service", None), "state_dir", None)
    for what, folder in (
        ("log folder", log_folder(settings)),
        ("state folder", _absolute(Path(state), base) if state is not None else None),
    ):
        if folder is not None and not folder.exists():
            import pwd

            folder.mkdir(parents=True)
            entry = pwd.getpwnam(spec.user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
            echo(f"created {what} {folder} for {spec.user}")
    if spec.private_tmp_off is not None:
        echo(
            f"warning  {spec.private_tmp_off} is in a temporary folder (emptied at boot): "
            "the unit runs without PrivateTmp; move it"
        )
    for line in permission_warnings(settings, spec):
        echo(f"warning  {line}")
    unit = layout.unit_file(spec.name)
    unit.parent.mkdir(parents=True, exist_ok=True)
    replaced = unit.exists()
    temp = unit.with_name(f".{unit.name}.tmp")
    temp.write_text(render_unit(spec), encoding="utf-8")
    temp.chmod(0o644)
    temp.replace(unit)
    echo(f"{'replaced' if replaced else 'wrote'} {unit}")
    if systemctl is None:
        echo(
            f"the unit was written but not started: {why_not}. On a machine booted with "
            f"systemd: `systemctl daemon-reload && systemctl enable --now {spec.name}`. "
            f"Here: run `{' '.join(spec.command)}` in the foreground"
        )
        return
    systemctl(["daemon-reload"])
    systemctl(["enable", spec.name])
    systemctl(["restart", spec.name])  # starts it, or picks up a changed unit
    echo(
        f"service {spec.name} enabled and running; check it with `systemctl status "
        f"{spec.name}`, `journalctl -u {spec.name}` and `replicator -c {spec.config} status`"
    )


def uninstall_linux(
    name: str,
    echo: Echo,
    *,
    layout: Layout | None = None,
    systemctl: Systemctl | None = None,
) -> None:
    """Stop, disable and remove the unit; the user, the state, the logs and the
    EnvironmentFile (secrets) stay."""
    layout = layout or Layout()
    unit = layout.unit_file(name)
    if not unit.exists():
        echo(f"no unit {unit}: nothing to remove")
        return
    if systemctl is not None:
        systemctl(["disable", "--now", name])
    unit.unlink()
    if systemctl is not None:
        systemctl(["daemon-reload"])
    echo(
        f"removed {unit}; left in place: /var/lib/{name}, /var/log/{name}, "
        f"{ENV_DIR / (name + '.env')} (secrets: remove it yourself) and the service user"
    )


# --- the commands ------------------------------------------------------------------------------


def _loud(fn: F) -> F:
    """replicator.cli's `failing_loud`, imported when the command runs (cli imports us)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from replicator.cli import failing_loud

        return failing_loud(fn)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _settings() -> Settings:
    from replicator.cli import Ctx

    ctx = click.get_current_context().find_object(Ctx)
    if ctx is None:  # the group used on its own
        ctx = Ctx(Path(os.environ.get("REPLICATOR_CONFIG", "replicator.toml")), False, None)
    return ctx.settings()


def _check(
    pattern: re.Pattern[str], what: str, *, posix_only: bool = False
) -> Callable[[click.Context, Any, Any], Any]:
    def check(_ctx: click.Context, _param: Any, value: Any) -> Any:
        if posix_only and os.name == "nt":  # DOMAIN\user, NT SERVICE\name...
            return value
        if value is not None and not pattern.match(value):
            raise click.BadParameter(f"{value!r} is not a valid {what}")
        return value

    return check


NAME_OPTION = click.option(
    "--name",
    default=DEFAULT_NAME,
    show_default=True,
    callback=_check(_NAME, "service name (letters, digits, '-', '_', '.', no more than 64)"),
    help="service name (one per config on a machine that runs several)",
)


@click.group("service")
def service_cli() -> None:
    """Install `replicator run` as an OS service (systemd unit, Windows service)."""


@service_cli.command("install")
@click.option(
    "--user",
    default=None,
    callback=_check(_USER, "user name (lower case letters, digits, '-', '_')", posix_only=True),
    help="account of the service (Linux: default replicator, created when missing; "
    "Windows: default LocalSystem)",
)
@click.option("--print", "print_only", is_flag=True, help="print the unit and change nothing")
@NAME_OPTION
@click.option(
    "--env-file",
    type=click.Path(path_type=Path),
    default=None,
    help="EnvironmentFile with the passwords (default /etc/replicator/NAME.env)",
)
@_loud
def install(user: str | None, print_only: bool, name: str, env_file: Path | None) -> None:
    """Register and start the service for this config (-c), or --print the unit."""
    echo = click.echo
    if os.name == "nt":
        from replicator.winservice import describe_windows, install_windows

        config = _absolute(_settings().path, Path.cwd())
        if print_only:
            echo(describe_windows(config, name, user))
        else:
            install_windows(config, name, user, echo)
        return
    if not print_only:
        require_root(
            "install",
            f"creates the user, writes {Layout().unit_file(name)} and starts the service",
        )
    settings = _settings()
    env = _absolute(env_file, Path.cwd()) if env_file else None
    spec = unit_spec(settings, name=name, user=user or DEFAULT_USER, env_file=env)
    if print_only:
        click.echo(render_unit(spec), nl=False)
        return
    systemctl, why_not = find_systemctl()
    install_linux(settings, spec, echo, systemctl=systemctl, why_not=why_not)


@service_cli.command("uninstall")
@NAME_OPTION
@_loud
def uninstall(name: str) -> None:
    """Stop the service and remove it (its state, logs and secrets stay)."""
    if os.name == "nt":
        from replicator.winservice import uninstall_windows

        uninstall_windows(name, click.echo)
        return
    require_root("uninstall", f"stops the service and removes {Layout().unit_file(name)}")
    systemctl, _why = find_systemctl()
    uninstall_linux(name, click.echo, systemctl=systemctl)
