"""`replicator demo`: an embedded store on SQLite files, one full cycle both ways."""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from replicator.closing import collect as closing_report
from replicator.closing_report import print_report
from replicator.config import load_settings
from replicator.demo import store
from replicator.errors import ConfigError
from replicator.i18n import set_language
from replicator.status import collect, status_table
from replicator.sync import Databases, JobResult, run_jobs
from replicator.tracking import install

CONFIG = """\
# Demo node: the store's server and its registers, all SQLite files in this folder.
# A real register would list only itself and the server (see docs/config.md).
mappings = "mappings"

[node]
name = "demo-store-1"
store_id = 1
timezone = "America/Sao_Paulo"  # the registers' clocks (their SQLite timestamps)

[log]
level = "WARNING"

[databases.server]
role = "server"
url = "sqlite:///server.db"
{registers}
[[jobs]]
group = "cadastros"
every = "60s"

[[jobs]]
group = "movimento"
every = "30s"
"""

REGISTER = """
[databases.caixa{n}]
role = "register"
url = "sqlite:///caixa{n}.db"
vars = {{ register_id = {n} }}
"""


# What the demo writes in its folder, and so all that `demo --force` replaces there.
DEMO_DATABASE = re.compile(r"(server|caixa[0-9]+)\.db(-wal|-shm|-journal)?")


def check_folder(directory: Path, force: bool) -> None:
    """Refuse a folder that has other things in it unless --force (then only the demo's own
    files are replaced)."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a folder; pass --dir a new or empty folder")
    if force or not any(directory.iterdir()):
        return
    raise ConfigError(
        f"{directory} is not empty; the demo writes server.db, caixa<N>.db, replicator.toml "
        "and mappings/ there; choose a new or empty folder with --dir, or pass --force to "
        "replace the demo store there"
    )


def build_store(directory: Path, registers: int) -> Path:
    """Create the databases, sample data, mappings and config; return the config path.

    An earlier demo store in the folder is replaced: its databases (server.db, caixa<N>.db
    and their -wal/-shm/-journal files), replicator.toml and the shipped mappings. Nothing
    else in the folder is touched."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        if DEMO_DATABASE.fullmatch(old.name) and old.is_file():
            old.unlink()
    mapping_dir = directory / "mappings"
    mapping_dir.mkdir(exist_ok=True)
    for entry in resources.files("replicator.mappings").iterdir():
        if entry.name.endswith(".yaml"):
            (mapping_dir / entry.name).write_text(
                entry.read_text(encoding="utf-8"), encoding="utf-8"
            )
    _create(
        directory / "server.db",
        store.server_metadata(),
        lambda conn: store.seed_server(conn, store_id=1),
    )
    for n in range(1, registers + 1):
        _create(
            directory / f"caixa{n}.db",
            store.register_metadata(),
            lambda conn, n=n: store.seed_register(conn, register_id=n),
        )
    config = directory / "replicator.toml"
    config.write_text(
        CONFIG.format(registers="".join(REGISTER.format(n=n) for n in range(1, registers + 1))),
        encoding="utf-8",
    )
    return config


def _create(path: Path, metadata: sa.MetaData, seed: object) -> None:
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        metadata.create_all(conn)
        seed(conn)  # type: ignore[operator]
    engine.dispose()


def run_demo(directory: Path | None, registers: int, out: Console, force: bool = False) -> None:
    if directory is not None:
        check_folder(directory, force)
    where = directory or Path(tempfile.mkdtemp(prefix="replicator-demo-"))
    out.print(
        f"[bold]Building a demo store in {where}[/] (SQLite: 1 server, {registers} registers)"
    )
    config = build_store(where, registers)
    settings = load_settings(config)
    dbs = Databases(settings)
    try:
        install(settings, dbs)
        out.print("change tracking installed (replicator setup)\n")
        before = _counts(dbs, settings.config.databases)
        movimento = run_jobs(settings, settings.jobs(["movimento"]), dbs)
        cadastros = run_jobs(settings, settings.jobs(["cadastros"]), dbs)
        after = _counts(dbs, settings.config.databases)
        out.print(_moved("catalog: server -> registers (sync cadastros)", cadastros))
        out.print(_moved("sales: registers -> server (sync movimento)", movimento))
        out.print(_compare(before, after))
        again = run_jobs(settings, settings.jobs(), dbs)
        moved = sum(r.rows for r in again)
        out.print(
            f"second cycle: {moved} rows moved"
            + (" (nothing new, nothing written)\n" if not moved else "\n")
        )
        out.print(status_table(collect(settings, dbs)))
        failed = [r for r in cadastros + movimento + again if r.error]
        for r in failed:
            out.print(f"[red]{r.job.name}: {r.error}[/]")
        out.print()
        set_language(settings.config.node.lang)
        print_report(out, closing_report(settings, dbs, store.DEFAULT_START.date()))
    finally:
        dbs.close()
    exe = _command()
    day = store.DEFAULT_START.date().isoformat()
    out.print(
        f"\nTry it yourself: cd {where} && {exe} status && {exe} sync movimento && "
        f"{exe} closing --date {day}",
        markup=False,
    )
    if failed:
        raise failed[0].error  # type: ignore[misc]


def _moved(title: str, results: list[JobResult]) -> Table:
    table = Table(title=title)
    table.add_column("job")
    table.add_column("table")
    table.add_column("rows", justify="right")
    table.add_column("deletes", justify="right")
    for res in results:
        for name, t in res.tables.items():
            table.add_row(res.job.name, name, str(t.upserts), str(t.deletes))
    return table


def _counts(dbs: Databases, names: object) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name in names:  # type: ignore[attr-defined]
        backend = dbs[name]
        with backend.engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            out[name] = {
                t: int(
                    conn.execute(sa.text(f"SELECT count(*) FROM {backend.quote(t)}")).scalar() or 0
                )
                for t in tables
                if not t.startswith("replicator_")
            }
    return out


def _compare(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> Table:
    names = sorted({t for counts in after.values() for t in counts})
    table = Table(title="rows per table: before -> after")
    table.add_column("table")
    for db in after:
        table.add_column(db, justify="right")
    for t in names:
        cells = []
        for db in after:
            b, a = before[db].get(t, 0), after[db].get(t, 0)
            cells.append(f"{b} -> [bold]{a}[/]" if a != b else str(a))
        table.add_row(t, *cells)
    return table


def _command() -> str:
    """How the user can run replicator again: plain `replicator` when that is this one."""
    me = Path(sys.argv[0])
    if me.name != "replicator":
        return "replicator"
    found = shutil.which("replicator")
    return "replicator" if found and Path(found).resolve() == me.resolve() else str(me.absolute())
