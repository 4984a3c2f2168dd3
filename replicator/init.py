"""`replicator init`: a working replicator.toml and draft mapping files from a store's existing
register and server databases (PostgreSQL and SQLite), for the DBA to finish.

Steps: reflect both schemas (init_reflect), match and classify the tables and draft every
entry (init_plan), write the commented files (init_write), then check the drafts against the
live databases, as `replicator check` does, and say what is left to decide.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from replicator.backends import Backend, open_backend
from replicator.backends.base import first_line
from replicator.config import DatabaseConfig
from replicator.errors import ConfigError, TransientError
from replicator.init_plan import CATALOG, MOVEMENT, Draft, classify, draft, name_group, order
from replicator.init_reflect import Schema, match_tables, reflect
from replicator.init_write import Database, config_file, mapping_file, unmatched_text
from replicator.log import add_secret

SERVER_PASSWORD_ENV = "REPLICATOR_SERVER_PASSWORD"
REGISTER_NAME, SERVER_NAME = "caixa01", "server"
REGISTER_NODE, SERVER_NODE = "loja01-caixa01", "loja01-server"


@click.command("init")
@click.option("--register", "register_url", metavar="URL", help="the register's database URL")
@click.option("--server", "server_url", metavar="URL", help="the server's database URL")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="where to write replicator.toml and mappings/ (new or empty, unless --force)",
)
@click.option(
    "--tables",
    "patterns",
    multiple=True,
    metavar="PATTERN",
    help="only tables whose name matches (shell pattern, any letter case: 'TB_*'); "
    "repeatable, or comma-separated",
)
@click.option(
    "--server-password-env",
    metavar="NAME",
    help=f"environment variable with the server's password (default: {SERVER_PASSWORD_ENV} "
    "when it is set); written into the config as password_env, never the password",
)
@click.option("--register-password-env", metavar="NAME", help="the same for the register")
@click.option(
    "--with-store-example",
    is_flag=True,
    help="write the shipped example mappings and config (the schema of sql/example/, "
    "what `replicator demo` uses) instead of drafting from the databases",
)
@click.option("--force", is_flag=True, help="write into a folder that is not empty")
def init_command(**options: Any) -> None:
    """Draft replicator.toml and mappings/*.yaml from a store's register and server databases.

    Reflects both schemas (keys, unique constraints, foreign keys, types), matches register
    tables to server tables, orders them by their foreign keys, proposes the catalog
    (cadastros, server -> registers) and movement (movimento, registers -> server) groups,
    and marks everything left to you with `# DECIDE:`. PostgreSQL and SQLite."""
    from replicator.cli import failing_loud

    failing_loud(_init)(**options)


def _init(
    register_url: str | None,
    server_url: str | None,
    directory: Path,
    patterns: tuple[str, ...],
    server_password_env: str | None,
    register_password_env: str | None,
    with_store_example: bool,
    force: bool,
) -> None:
    from replicator.cli import out

    if not with_store_example and not (register_url and server_url):
        raise ConfigError(
            "init needs both databases: pass --register URL and --server URL (or "
            "--with-store-example for the shipped example schema)"
        )
    if (register_url is None) != (server_url is None):
        raise ConfigError("pass both --register URL and --server URL, or neither")
    wanted = [p.strip() for item in patterns for p in item.split(",") if p.strip()]
    if server_password_env is None and os.environ.get(SERVER_PASSWORD_ENV):
        server_password_env = SERVER_PASSWORD_ENV
    server = register = None
    if server_url and register_url:
        server = _database(SERVER_NAME, "server", SERVER_NODE, server_url, server_password_env)
        register = _database(
            REGISTER_NAME, "register", REGISTER_NODE, register_url, register_password_env
        )
    check_folder(directory, force)
    directory.mkdir(parents=True, exist_ok=True)
    if with_store_example:
        written = write_store_example(directory, register, server)
        out.print(f"wrote the shipped example store's config and mappings in {directory}")
    else:
        assert register is not None and server is not None
        reg_schema = _reflect(register, wanted)
        srv_schema = _reflect(server, wanted)
        written = write_drafts(directory, register, server, reg_schema, srv_schema)
        out.print(
            f"reflected {len(reg_schema.tables)} register and {len(srv_schema.tables)} server "
            f"tables; wrote {', '.join(str(p.relative_to(directory)) for p in written)} in "
            f"{directory}"
        )
    decisions = _decisions(directory, written)
    if register is not None:
        from replicator.init_check import verdict

        verdict(directory / "replicator.toml", out)
    if decisions:
        out.print(f"\n{len(decisions)} decisions are left to you (# DECIDE: lines):")
        for line in decisions:
            out.print(f"  {line}", markup=False)
    _next_steps(directory, with_store_example and register is None, out)


def check_folder(directory: Path, force: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is not a folder; pass --dir a new or empty folder")
    if not directory.exists() or force or not any(directory.iterdir()):
        return
    raise ConfigError(
        f"{directory.resolve()} is not empty; init writes replicator.toml and mappings/ "
        "there; choose a new or empty folder with --dir, or pass --force to overwrite those "
        "files (other files stay)"
    )


class _Db:
    """A database named on the command line: its config entry and an open backend."""

    def __init__(self, entry: Database, url: URL) -> None:
        self.entry = entry
        self.url = url
        self._backend: Backend | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = open_backend(self.url, self.entry.node)
        return self._backend


def _database(name: str, role: str, node: str, text: str, password_env: str | None) -> _Db:
    """Validate a URL by the config's rules; the URL to connect with (password inside) and
    the entry to write (password by reference only)."""
    try:
        DatabaseConfig.model_validate({"role": role, "url": text})
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"--{role} {_shown(text)}: {reason}") from None
    url = make_url(text)
    written = text
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        if not url.database or url.database == ":memory:":
            raise ConfigError(f"--{role} {text}: a SQLite register needs a file path")
        if not path.exists():
            raise ConfigError(
                f"--{role} {text}: SQLite file {path.resolve()} does not exist; init reads an "
                "existing database and never creates one"
            )
        path = path.resolve()
        url = url.set(database=str(path))
        written = f"sqlite:///{path.as_posix()}"
        if password_env:
            raise ConfigError(f"--{role}-password-env: a SQLite database has no password")
    if password_env:
        secret = os.environ.get(password_env)
        if secret is None:
            raise ConfigError(
                f"--{role}-password-env {password_env}: environment variable {password_env} "
                f"is not set; set it to the {role}'s password"
            )
        add_secret(secret)
        url = url.set(password=secret)
    return _Db(Database(name, role, node, written, password_env), url)


def _shown(text: str) -> str:
    try:
        return make_url(text).set(query={}).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return repr(text)


def _reflect(db: _Db, patterns: list[str]) -> Schema:
    backend = db.backend
    try:
        with backend.engine.connect() as conn:
            schema = reflect(conn, patterns)
    except sa_exc.SQLAlchemyError as exc:
        hint = ""
        if backend.dialect == "postgresql" and not db.entry.password_env:
            hint = (
                f"; if it needs a password, put it in an environment variable and pass "
                f"--{db.entry.role}-password-env NAME"
            )
        raise TransientError(
            f"--{db.entry.role} {backend.display_url}: cannot read its schema: "
            f"{first_line(exc)}{hint}"
        ) from None
    finally:
        backend.dispose()
    if not schema.tables:
        which = f" matching {', '.join(patterns)}" if patterns else ""
        raise ConfigError(f"--{db.entry.role} {backend.display_url}: no tables{which}")
    return schema


def write_drafts(
    directory: Path, register: _Db, server: _Db, reg: Schema, srv: Schema
) -> list[Path]:
    matches, only_register, only_server = match_tables(reg, srv)
    if not matches:
        raise ConfigError(
            "no register table matches a server table, by name or by columns; check that "
            "--register and --server point at the same store's databases"
        )
    groups = classify(matches)
    drafts: dict[str, list[Draft]] = {CATALOG: [], MOVEMENT: []}
    for m in matches:
        group, why = groups[m.register.name]
        d = draft(m, group or CATALOG, f"{group or CATALOG} ({why})" if group else CATALOG)
        if group is None:
            d.decide.insert(
                0,
                "neither its name nor its keys nor its foreign keys say which way it "
                "travels; drafted as catalog (server -> registers). If the registers write "
                "it, move this entry to movimento.yaml and swap source and target",
            )
        drafts[d.group].append(d)
    unmatched: dict[str, list[str]] = {CATALOG: [], MOVEMENT: []}
    for side, tables in (("register", only_register), ("server", only_server)):
        for t in tables:
            unmatched[name_group(t.name) or CATALOG].append(unmatched_text(t, side))
    mapping_dir = directory / "mappings"
    mapping_dir.mkdir(exist_ok=True)
    written: list[Path] = []
    variables: dict[str, list[str]] = {}
    groups_written = []
    for group in (CATALOG, MOVEMENT):
        ordered = order(drafts[group])
        if not ordered and not unmatched[group]:
            continue
        for d in ordered:
            for var, why in d.variables.items():
                variables.setdefault(var, []).append(why)
        active = any(d.active for d in ordered)
        # a file without an active table would not load: it keeps a name the loader skips
        path = mapping_dir / (f"{group}.yaml" if active else f"{group}.yaml.draft")
        path.write_text(mapping_file(group, ordered, unmatched[group]), encoding="utf-8")
        written.append(path)
        if active:
            groups_written.append(group)
    timezone = _register_timezone(register)
    config = directory / "replicator.toml"
    config.write_text(
        config_file(
            [server.entry, register.entry],
            groups_written,
            {k: ", ".join(dict.fromkeys(v)) for k, v in variables.items()},
            timezone,
            [
                f"register: {register.backend.display_url}",
                f"server:   {server.backend.display_url}",
            ],
        ),
        encoding="utf-8",
    )
    return [config, *written]


def _register_timezone(register: _Db | None) -> str | None:
    if register is None or register.url.get_backend_name() != "sqlite":
        return None
    from replicator.values import local_timezone

    return local_timezone()


def write_store_example(directory: Path, register: _Db | None, server: _Db | None) -> list[Path]:
    """The shipped mappings, and a config: for the two databases given, else the demo's
    (server.db and caixa1.db in the folder, to create from the shipped example DDL)."""
    mapping_dir = directory / "mappings"
    mapping_dir.mkdir(exist_ok=True)
    written = [directory / "replicator.toml"]
    for item in sorted(resources.files("replicator.mappings").iterdir(), key=lambda e: e.name):
        if item.name.endswith(".yaml"):
            (mapping_dir / item.name).write_text(item.read_text("utf-8"), encoding="utf-8")
            written.append(mapping_dir / item.name)
    if register is None or server is None:
        from replicator.demo.run import CONFIG, REGISTER

        text = CONFIG.format(registers=REGISTER.format(n=1))
        sql_dir = directory / "sql" / "example"
        sql_dir.mkdir(parents=True, exist_ok=True)
        for item in resources.files("replicator.sql").joinpath("example").iterdir():
            if item.name.endswith(".sql"):
                (sql_dir / item.name).write_text(item.read_text("utf-8"), encoding="utf-8")
                written.append(sql_dir / item.name)
    else:
        text = config_file(
            [server.entry, register.entry],
            ["cadastros", "produtos", "movimento"],
            {"store_id": "the price filter of cadastros/produtos and the sales' server key"},
            _register_timezone(register),
            ["the shipped example mappings (sql/example/ schema)"],
        )
    (directory / "replicator.toml").write_text(text, encoding="utf-8")
    return written


def _decisions(directory: Path, written: list[Path]) -> list[str]:
    """`file:line: table: reason` of every DECIDE comment written (its lines joined, whole:
    output to a pipe or a file is never cut)."""
    found: list[list[str]] = []
    for path in written:
        if path.suffix not in (".yaml", ".toml", ".draft"):
            continue
        table, open_comment = "", False
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            text = line.strip()
            if text.startswith("# ---- "):
                table = text.removeprefix("# ---- ").split(":", 1)[0] + ": "
            if "DECIDE:" in text:
                place = f"{path.relative_to(directory)}:{number}"
                found.append([place, table, text.split("DECIDE:", 1)[1].strip()])
                open_comment = True
            elif open_comment and text.startswith("#   "):
                found[-1][2] += " " + text.removeprefix("#").strip()
            else:
                open_comment = False
    return [f"{place}: {table}{reason}" for place, table, reason in found]


def _next_steps(directory: Path, example_only: bool, out: Any) -> None:
    config = directory / "replicator.toml"
    steps = ["edit the # DECIDE: lines (and delete each one once decided)"]
    if example_only:
        steps.insert(
            0,
            f"create the databases: sqlite3 {directory / 'server.db'} < "
            f"{directory / 'sql/example/server.sqlite.sql'} (and caixa1.db from "
            "register.sqlite.sql), or point the URLs in replicator.toml at yours",
        )
    steps += [
        f"replicator -c {config} check",
        f"replicator -c {config} setup --print   (review the SQL), then setup",
        f"replicator -c {config} sync cadastros movimento",
        f"sudo replicator -c {config} service install",
    ]
    out.print("\nnext steps:")
    for number, step in enumerate(steps, 1):
        out.print(f"  {number}. {step}", markup=False)
