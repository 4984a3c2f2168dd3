"""Node config (replicator.toml): who this node is, its databases, its jobs, its logging."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from replicator.diagnostics import format_validation_error
from replicator.errors import ConfigError
from replicator.log import add_secret
from replicator.mapping import MappingFile, TableMapping, load_mapping_sources
from replicator.sourcefile import Loc, SourceFile, load_toml
from replicator.values import UTC_NAME, check_timezone, local_timezone

Var = str | int


# Database kinds (SQLAlchemy backend names) that `replicator.backends.open_backend` opens.
SUPPORTED_KINDS = {"postgresql", "sqlite", "mariadb", "mysql", "firebird", "mssql"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(Strict):
    name: str = Field(description="this node's name, e.g. loja01-caixa02")
    store_id: Var | None = None
    register_id: Var | None = None
    vars: dict[str, Var] = Field(default_factory=dict, description="more node variables")
    timezone: str | None = Field(
        default=None,
        description="IANA time zone of the naive timestamps of this node's SQLite databases, "
        'e.g. "America/Sao_Paulo"; default: this machine\'s zone',
    )
    lang: str | None = Field(
        default=None,
        description='staff language of `closing`, `status` and `errors`, e.g. "pt-BR" or "en"; '
        "default: LC_ALL/LC_MESSAGES/LANG, else English",
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)

    @field_validator("lang")
    @classmethod
    def _known_lang(cls, value: str | None) -> str | None:
        from replicator.i18n import LANGUAGES, normalize

        if value is not None and normalize(value) is None:
            raise ValueError(
                f"{value!r} is not a language of the replicator: use one of " + ", ".join(LANGUAGES)
            )
        return value


class DatabaseConfig(Strict):
    role: Literal["server", "register"]
    node: str | None = Field(
        default=None,
        description="stable name of this database's node, the same in every node's config "
        "(written as the origin of replicated rows); default: the key of this table",
    )
    url: str = Field(
        description="SQLAlchemy URL without the password, e.g. "
        "postgresql+psycopg://replicator@10.0.0.5/loja or sqlite:///caixa.db"
    )
    password_env: str | None = Field(
        default=None, description="environment variable that holds the password"
    )
    password_file: Path | None = Field(
        default=None, description="file (mode 600) whose first line is the password"
    )
    vars: dict[str, Var] = Field(
        default_factory=dict, description="variables of this database's node, e.g. register_id"
    )
    timezone: str | None = Field(
        default=None,
        description="IANA time zone of this database's naive timestamps, e.g. "
        '"America/Sao_Paulo"; default: [node] timezone, else this machine\'s zone for SQLite '
        "and UTC (the replicator's session zone) for PostgreSQL",
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)

    @field_validator("url")
    @classmethod
    def _no_password_in_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(
                "not a database URL; write e.g. postgresql+psycopg://user@host/db or "
                "sqlite:///path/file.db"
            ) from None
        secret = [k for k in url.query if k.lower() in {"password", "passwd", "pwd", "passfile"}]
        # an ODBC connection string passed whole (odbc_connect=DRIVER=...;PWD=...)
        odbc = " ".join(str(v) for k, v in url.query.items() if k.lower() == "odbc_connect")
        if re.search(r"(^|;)\s*(pwd|password)\s*=", odbc, re.IGNORECASE):
            secret.append("odbc_connect PWD")
        if url.password or secret:
            raise ValueError(
                "the URL contains a password; remove it and set password_env or password_file"
            )
        if url.get_backend_name() not in SUPPORTED_KINDS:
            raise ValueError(
                f"database kind {url.get_backend_name()!r} is not supported; "
                f"use one of {', '.join(sorted(SUPPORTED_KINDS))}"
            )
        return value


DURATION = r"^[1-9]\d*(s|m|h)$"


def seconds_of(duration: str) -> int:
    """`30s`, `5m`, `1h` in seconds (the pattern DURATION is validated first)."""
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


class JobConfig(Strict):
    group: str
    every: str = Field(default="60s", pattern=DURATION, description="e.g. 30s, 5m, 1h")
    max_lag: str | None = Field(
        default=None,
        pattern=DURATION,
        description="alarm when a change older than this has not been delivered, e.g. 10m "
        "(default: ten times `every`, at least 5m)",
    )
    registers: list[str] | None = Field(
        default=None,
        min_length=1,
        description="register databases this job runs for (default: all)",
    )

    @property
    def seconds(self) -> int:
        return seconds_of(self.every)

    @property
    def lag_alarm(self) -> int:
        return seconds_of(self.max_lag) if self.max_lag else max(300, 10 * self.seconds)


class LogConfig(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    dir: Path | None = Field(
        default=None,
        description="folder of the daily log files replicator-YYYY-MM-DD.log, relative to "
        "this file's folder; default: $LOGS_DIRECTORY (systemd's LogsDirectory=), else none",
    )
    retention_days: int = Field(
        default=90, ge=1, description="days an earlier day's log file is kept (gzipped)"
    )
    format: Literal["text", "json"] = Field(
        default="text", description='"json": the files hold JSON lines, for log shippers'
    )
    console: bool | None = Field(
        default=None,
        description="`replicator run` also logs to standard error; default: when it is a "
        "terminal or when there is no log folder (other commands always do)",
    )

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, data: object) -> object:
        if isinstance(data, dict):
            if "file" in data:
                raise ValueError(
                    "`file` was replaced by `dir` (a folder of daily files "
                    'replicator-YYYY-MM-DD.log); write dir = "logs" with the folder of the '
                    "file, and remove rotation and retention"
                )
            if "rotation" in data:
                raise ValueError(
                    "`rotation` is gone: a new file starts at local midnight; remove it"
                )
            if "retention" in data:
                raise ValueError(
                    "`retention` was replaced by `retention_days` (a number of days, default 90)"
                )
        return data

    def folder(self, base: Path) -> Path | None:
        """The folder of the log files: `dir` (relative to `base`, the config file's
        folder), else the first folder of $LOGS_DIRECTORY (set by systemd for a unit with
        LogsDirectory=), else None: no files."""
        if self.dir is not None:
            return self.dir if self.dir.is_absolute() else base / self.dir
        systemd = os.environ.get("LOGS_DIRECTORY", "").split(os.pathsep)[0]
        return Path(systemd) if systemd else None


class SyncConfig(Strict):
    page_rows: int = Field(default=5000, ge=1, description="rows read per page")
    batch_rows: int = Field(default=20000, ge=1, description="changes per target transaction")
    lock_timeout_ms: int = Field(default=2000, ge=0)


class ServiceConfig(Strict):
    """`replicator run`: the service loop."""

    workers: int = Field(default=4, ge=1, le=64, description="jobs run at the same time (threads)")
    http: str | None = Field(
        default=None,
        pattern=r"^[^\s:]*:\d{1,5}$",
        description='serve /health and /metrics here, e.g. "127.0.0.1:8787" (default: off)',
    )
    state_dir: Path | None = Field(
        default=None,
        description="folder of the service's state file and lock (default: $STATE_DIRECTORY, "
        "which systemd sets, else the folder of this file)",
    )
    retry_after: str = Field(
        default="5s", pattern=DURATION, description="first retry after a transient failure"
    )
    max_backoff: str = Field(
        default="5m", pattern=DURATION, description="longest wait between transient retries"
    )
    permanent_retry: str = Field(
        default="10m",
        pattern=DURATION,
        description="retry pace of a job that failed for a reason a person must fix",
    )
    stall: str = Field(
        default="5m",
        pattern=DURATION,
        description="a job that makes no progress for this long has its connections cut",
    )
    shared: bool = Field(
        default=False,
        strict=True,
        description="several `replicator run` processes share this server's jobs through "
        "leases in the server database (`setup` creates their table)",
    )

    @field_validator("http")
    @classmethod
    def _port_in_range(cls, value: str | None) -> str | None:
        if value is not None and not 1 <= int(value.rpartition(":")[2]) <= 65535:
            raise ValueError('the port must be 1-65535, e.g. "127.0.0.1:8787"')
        return value

    @model_validator(mode="after")
    def _backoff_in_order(self) -> ServiceConfig:
        if seconds_of(self.retry_after) > seconds_of(self.max_backoff):
            raise ValueError(
                f"retry_after ({self.retry_after}) is longer than max_backoff "
                f"({self.max_backoff}); make retry_after the shorter one"
            )
        return self


class Config(Strict):
    node: NodeConfig = Field(
        description='who this node is: name = "loja01-caixa02", and store_id, register_id'
    )
    mappings: Path = Path("mappings")
    databases: dict[str, DatabaseConfig] = Field(min_length=1)
    jobs: list[JobConfig] = Field(default_factory=list)
    log: LogConfig = LogConfig()
    sync: SyncConfig = SyncConfig()
    service: ServiceConfig = ServiceConfig()


class Job(BaseModel):
    """One (group, source database, target database) to run."""

    model_config = ConfigDict(frozen=True)

    group: str
    source: str  # database names in this config
    target: str
    source_node: str  # their stable identities, the same in every node's config
    target_node: str
    vars: dict[str, Var]
    every: int
    max_lag: int = 300  # seconds: the lag that makes the job degraded
    server: str = ""  # the server database of the job (its leases live there)

    @property
    def name(self) -> str:
        """Names the job's watermarks and lock in the target: two services that run the same
        job under different database names still share them."""
        return f"{self.group}:{self.source_node}->{self.target_node}"


class Settings:
    """A loaded and cross-checked node: config, mappings and the jobs they make."""

    def __init__(self, path: Path, config: Config, groups: dict[str, MappingFile]) -> None:
        self.path = path
        self.config = config
        self.groups = groups
        self.sources: dict[str, SourceFile] = {}  # the parsed mapping file of each group

    def where(self, group: str, table: int | None = None) -> str:
        """`file:line (group 'g')` of a group, or of one of its tables, for messages."""
        source = self.sources.get(group)
        loc: Loc = ("tables", table) if table is not None else ("group",)
        place = source.where(loc) if source else str(self.config.mappings / f"{group}.yaml")
        return f"{place} (group {group!r})"

    def url(self, database: str) -> URL:
        db = self.config.databases[database]
        url = make_url(db.url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            path = Path(url.database)
            if not path.is_absolute():
                url = url.set(database=str((self.path.parent / path).resolve()))
        password = _password(database, db, self.path.parent)
        return url.set(password=password) if password else url

    def jobs(self, groups: list[str] | None = None) -> list[Job]:
        wanted = groups or [j.group for j in self.config.jobs] or list(self.groups)
        for group in wanted:
            if group not in self.groups:
                raise ConfigError(
                    f"no mapping group {group!r}; groups in {self.config.mappings}: "
                    + ", ".join(sorted(self.groups))
                )
        servers = [n for n, d in self.config.databases.items() if d.role == "server"]
        registers = [n for n, d in self.config.databases.items() if d.role == "register"]
        out = []
        for group in dict.fromkeys(wanted):
            job_cfg = next((j for j in self.config.jobs if j.group == group), None)
            every = job_cfg.seconds if job_cfg else 60
            max_lag = job_cfg.lag_alarm if job_cfg else 600
            chosen = job_cfg.registers if job_cfg and job_cfg.registers else registers
            down = self.groups[group].direction == "server_to_register"
            for server in servers:
                for register in chosen:
                    node_vars = self._vars(register)
                    src, dst = (server, register) if down else (register, server)
                    out.append(
                        Job(
                            group=group,
                            source=src,
                            target=dst,
                            source_node=self.node(src),
                            target_node=self.node(dst),
                            vars=node_vars,
                            every=every,
                            max_lag=max_lag,
                            server=server,
                        )
                    )
        return out

    def timezone(self, database: str) -> str:
        """The IANA zone of a database's naive timestamps (local time there): its own
        `timezone`; for PostgreSQL, else UTC, the zone of the replicator's sessions
        (timestamptz values are instants either way, `timestamp without time zone` values
        stay naive); for the others (SQLite, MariaDB, Firebird, SQL Server: registers whose
        POS writes its wall clock), else `[node] timezone`, else this machine's zone."""
        db = self.config.databases[database]
        if db.timezone:
            return db.timezone
        if make_url(db.url).get_backend_name() == "postgresql":
            return UTC_NAME
        return self.config.node.timezone or local_timezone()

    def node(self, database: str) -> str:
        """The stable identity of a database's node (written as the origin of its rows)."""
        return self.config.databases[database].node or database

    def _vars(self, register: str) -> dict[str, Var]:
        node = self.config.node
        out: dict[str, Var] = {"node": node.name}
        if node.store_id is not None:
            out["store_id"] = node.store_id
        if node.register_id is not None:
            out["register_id"] = node.register_id
        out.update(node.vars)
        out.update(self.config.databases[register].vars)
        return out


def _password(name: str, db: DatabaseConfig, base: Path) -> str | None:
    if db.password_env:
        value = os.environ.get(db.password_env)
        if value is None:
            raise ConfigError(
                f"database {name!r}: environment variable {db.password_env} is not set; "
                f"set it (looked in the environment because of password_env)"
            )
        add_secret(value)  # never written by a log sink
        return value
    if db.password_file:
        path = db.password_file if db.password_file.is_absolute() else base / db.password_file
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError, UnicodeDecodeError):
            raise ConfigError(
                f"database {name!r}: cannot read the password from {path} (password_file); "
                "its first line must hold the password"
            ) from None
        add_secret(text)  # never written by a log sink, even when the file is refused below
        if os.name == "posix" and mode & 0o077:
            raise ConfigError(
                f"database {name!r}: {path} can be read by other users; run "
                f"`chmod 600 {path}` (password_file must be private)"
            )
        return text
    return None


_VAR_USE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_settings(path: Path) -> Settings:
    source = load_toml(path)
    try:
        config = Config.model_validate(source.data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, "config", Config)) from None
    problems = []
    roles = [d.role for d in config.databases.values()]
    if "server" not in roles or "register" not in roles:
        found = ", ".join(f"{n} ({d.role})" for n, d in config.databases.items())
        problems.append(
            f"{source.where(('databases',))}: databases: need one database with role = "
            f'"server" and at least one with role = "register"; found {found}'
        )
    mapping_dir = config.mappings
    if not mapping_dir.is_absolute():
        mapping_dir = path.parent / mapping_dir
    if not mapping_dir.is_dir() or not any(mapping_dir.glob("*.y*ml")):
        problem = "does not exist" if not mapping_dir.is_dir() else "has no mapping files (*.yaml)"
        problems.append(
            f"{source.where(('mappings',))}: mappings: the mapping directory {mapping_dir} "
            f'{problem}; set mappings = "..." to the folder of the mapping files '
            "(relative to this file)"
        )
    if problems:
        raise ConfigError("\n".join(problems))
    sources = load_mapping_sources(mapping_dir)
    groups = {name: mapping for name, (mapping, _) in sources.items()}
    for index, job in enumerate(config.jobs):
        loc: Loc = ("jobs", index, "group")
        first = next(i for i, j in enumerate(config.jobs) if j.group == job.group)
        if first != index:
            problems.append(
                f"{source.where(loc)}: jobs.{index}.group: group {job.group!r} already has a "
                f"[[jobs]] entry at line {source.line_of(('jobs', first))}; merge the two"
            )
        if job.group not in groups:
            close = difflib.get_close_matches(job.group, list(groups), n=1)
            fix = f"did you mean {close[0]!r}? " if close else ""
            problems.append(
                f"{source.where(loc)}: jobs.{index}.group: no mapping group "
                f"{job.group!r}; {fix}known groups: {', '.join(sorted(groups))}"
            )
        for reg in job.registers or []:
            if config.databases.get(reg) is None or config.databases[reg].role != "register":
                known = [n for n, d in config.databases.items() if d.role == "register"]
                problems.append(
                    f"{source.where(('jobs', index, 'registers'))}: "
                    f"jobs.{index}.registers: {reg!r} is not a register database; "
                    f"register databases: {', '.join(known)}"
                )
    problems += _identity_problems(source, config)
    settings = Settings(path, config, groups)
    settings.sources = {name: src for name, (_, src) in sources.items()}
    for name, db in config.databases.items():
        if db.role != "register":
            continue
        known_vars = set(settings._vars(name))
        for mapping, mapping_source in sources.values():
            for t_index, table in enumerate(mapping.tables):
                for var, var_loc in _variable_uses(table):
                    if var in known_vars:
                        continue
                    used_at = mapping_source.where(("tables", t_index, *var_loc))
                    vars_fix = (
                        f"add {var} = ... to the vars of [databases.{name}]"
                        if db.vars
                        else f"add vars = {{ {var} = ... }} under [databases.{name}]"
                    )
                    problems.append(
                        f"{source.where(('databases', name))}: databases.{name}: {used_at} "
                        f"(group {mapping.group!r}, table {table.label!r}) uses {{{var}}}, but "
                        f"this register has no such variable; {vars_fix}, or {var} = ... "
                        "under [node]"
                    )
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))
    return settings


def _variable_uses(table: TableMapping) -> list[tuple[str, Loc]]:
    """The node variables (``{name}``) a table's columns and row filter use, with their place."""
    found: list[tuple[str, Loc]] = []

    def walk(value: object, loc: Loc) -> None:
        if isinstance(value, str):
            m = _VAR_USE.fullmatch(value)
            if m:
                found.append((m.group(1), loc))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*loc, str(k)))
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, (*loc, i))
        elif isinstance(value, BaseModel):
            walk(value.model_dump(by_alias=True), loc)

    walk(table.columns, ("columns",))
    walk(table.where, ("where",))
    return found


def _identity_problems(source: SourceFile, config: Config) -> list[str]:
    """Two databases with one node identity, or two registers with one register_id, would
    share (or clobber) jobs and lose sales silently: refuse them."""
    problems = []
    seen: dict[str, str] = {}
    for name, db in config.databases.items():
        node = db.node or name
        if node in seen:
            problems.append(
                f"{source.where(('databases', name))}: databases.{name}: node {node!r} is "
                f"also the node of database {seen[node]!r}; every database needs its own node "
                f'identity (set node = "..." in one of them)'
            )
        seen.setdefault(node, name)
    ids: dict[str, str] = {}
    for name, db in config.databases.items():
        if db.role != "register":
            continue
        value = db.vars.get("register_id", config.node.register_id)
        if value is None:
            continue
        if str(value) in ids:
            problems.append(
                f"{source.where(('databases', name))}: databases.{name}: register_id "
                f"{value!r} is also the register_id of {ids[str(value)]!r}; their sales "
                "would share keys on the server: give each register its own register_id"
            )
        ids.setdefault(str(value), name)
    return problems
