"""Bad config: every malformed node config or mapping file is refused before any database is
opened, with `FAILED: file:line: key: what is wrong; how to fix it`, exit code 2 and no
traceback (DESIGN.md, promise 5).

Each case starts from a small valid node (one server and one register on SQLite, two mapping
files), breaks exactly one thing and runs the real `replicator -c replicator.toml check`.
The expected line numbers refer to the files below; keep them in sync if you edit them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from replicator.cli import cli
from replicator.config import load_settings
from replicator.errors import ConfigError

# Line numbers matter: the cases below name them.
NODE_TOML = """\
# Test node: one server, one register, SQLite files.
mappings = "mappings"

[node]
name = "loja01-caixa01"
store_id = 1

[databases.server]
role = "server"
url = "sqlite:///{dir}/server.db"

[databases.caixa1]
role = "register"
url = "sqlite:///{dir}/caixa1.db"
vars = {{ register_id = 1 }}

[sync]
page_rows = 500

[[jobs]]
group = "cadastros"
every = "60s"

[[jobs]]
group = "movimento"
every = "30s"
"""

CADASTROS_YAML = """\
# Catalog: server -> registers.
group: cadastros
direction: server_to_register
tables:
  - source: product
    key: [product_id]
    deletes: delete
  - source: price
    key: [store_id, product_id]
    depends_on: [product]
    where:
      store_id: "{store_id}"
"""

MOVIMENTO_YAML = """\
# Sales: registers -> server.
group: movimento
direction: register_to_server
tables:
  - source: sale
    key: [sale_id]
    target_key: [store_id, register_id, sale_id]
    columns:
      store_id: "{store_id}"
      register_id: "{register_id}"
    deletes: ignore
    closing:
      date: opened_at
      sums: [total]
  - source: sale_item
    key: [sale_id, line_no]
    target_key: [store_id, register_id, sale_id, line_no]
    columns:
      store_id: "{store_id}"
      register_id: "{register_id}"
    depends_on: [sale]
    deletes: ignore
"""

TOML = "replicator.toml"
CADASTROS = "mappings/cadastros.yaml"
MOVIMENTO = "mappings/movimento.yaml"


def make_node(directory: Path) -> Path:
    """Write the valid node; returns the path of its replicator.toml."""
    (directory / "mappings").mkdir()
    (directory / CADASTROS).write_text(CADASTROS_YAML, encoding="utf-8")
    (directory / MOVIMENTO).write_text(MOVIMENTO_YAML, encoding="utf-8")
    config = directory / TOML
    config.write_text(NODE_TOML.format(dir=directory.as_posix()), encoding="utf-8")
    return config


@dataclass(frozen=True)
class Case:
    """Break one file, then expect `where` (file:line), `key` and `fix` on one message line."""

    id: str
    file: str
    where: str
    key: str
    fix: str
    replace: tuple[str, str] | None = None  # (old, new); old must occur exactly once
    content: str | None = None  # the whole new file instead of a replacement
    encoding: str = "utf-8"
    also: tuple[str, ...] = ()  # more text the output must contain
    secret: str | None = None  # text that must never be shown

    def apply(self, directory: Path) -> None:
        path = directory / self.file
        if self.content is not None:
            text = self.content
        else:
            assert self.replace is not None
            old, new = (s.replace("{dir}", directory.as_posix()) for s in self.replace)
            text = path.read_text(encoding="utf-8")
            assert text.count(old) == 1, f"{self.id}: {old!r} must occur once in {self.file}"
            text = text.replace(old, new)
        path.write_bytes(text.encode(self.encoding))


CASES = [
    # ---- mapping files -------------------------------------------------------------------
    Case(
        "yaml-unknown-table-key-typo",
        MOVIMENTO,
        replace=("sale_id]\n    columns:", "sale_id]\n    colums:"),
        where="movimento.yaml:8",
        key="tables.0.colums",
        fix="did you mean 'columns'",
    ),
    Case(
        "yaml-unknown-top-level-key",
        CADASTROS,
        replace=(
            "direction: server_to_register\n",
            "direction: server_to_register\nowner: loja01\n",
        ),
        where="cadastros.yaml:4",
        key="owner",
        fix="remove it",
    ),
    Case(
        "yaml-key-string-not-list",
        MOVIMENTO,
        replace=("    key: [sale_id]\n", "    key: sale_id\n"),
        where="movimento.yaml:6",
        key="tables.0.key",
        fix="[sale_id]",
    ),
    Case(
        "yaml-missing-direction",
        CADASTROS,
        replace=("direction: server_to_register\n", ""),
        where="cadastros.yaml:2",
        key="direction",
        fix="add direction: server_to_register",
    ),
    Case(
        "yaml-invalid-direction",
        CADASTROS,
        replace=("direction: server_to_register", "direction: down"),
        where="cadastros.yaml:3",
        key="direction",
        fix="'server_to_register' or 'register_to_server'",
    ),
    Case(
        "yaml-table-declared-twice",
        CADASTROS,
        content=CADASTROS_YAML + "  - source: product\n    key: [product_id]\n",
        where="cadastros.yaml:13",
        key="tables.2",
        fix="remove one",
        also=("first at line 5",),
    ),
    Case(
        "yaml-empty-tables-list",
        CADASTROS,
        content="group: cadastros\ndirection: server_to_register\ntables: []\n",
        where="cadastros.yaml:3",
        key="tables",
        fix="add at least one table",
    ),
    Case(
        "yaml-depends-on-later-table",
        CADASTROS,
        content=CADASTROS_YAML.replace("    depends_on: [product]\n", "").replace(
            "    key: [product_id]\n", "    key: [product_id]\n    depends_on: [price]\n"
        ),
        where="cadastros.yaml:7",
        key="tables.0.depends_on",
        fix="move 'price' above 'product'",
    ),
    Case(
        "yaml-dependency-cycle",
        CADASTROS,
        replace=("    key: [product_id]\n", "    key: [product_id]\n    depends_on: [price]\n"),
        where="cadastros.yaml:7",
        key="tables.0.depends_on",
        fix="remove one of",
        also=("'product' -> 'price' -> 'product'",),
    ),
    Case(
        "yaml-depends-on-unknown-table",
        CADASTROS,
        replace=("depends_on: [product]", "depends_on: [produto]"),
        where="cadastros.yaml:10",
        key="tables.1.depends_on",
        fix="did you mean 'product'",
    ),
    Case(
        "yaml-duplicate-key",
        MOVIMENTO,
        replace=("    key: [sale_id]\n", "    key: [sale_id]\n    key: [id]\n"),
        where="movimento.yaml:7",
        key="tables.0.key",
        fix="keep one",
        also=("first at line 6",),
    ),
    Case(
        "yaml-tab-indentation",
        MOVIMENTO,
        replace=("    key: [sale_id]\n", "\tkey: [sale_id]\n"),
        where="movimento.yaml:6",
        key="key: [sale_id]",
        fix="indent with spaces",
    ),
    Case(
        "yaml-bad-indentation",
        MOVIMENTO,
        replace=(
            "    target_key: [store_id, register_id, sale_id]\n",
            "      target_key: [store_id, register_id, sale_id]\n",
        ),
        where="movimento.yaml:7",
        key="target_key",
        fix="indentation",
    ),
    Case(
        "yaml-target-key-not-in-key",
        MOVIMENTO,
        replace=("    key: [sale_id, line_no]\n", "    key: [sale_id]\n"),
        where="movimento.yaml:17",
        key="tables.1.target_key",
        fix="add it to key",
    ),
    Case(
        "yaml-bad-deletes-value",
        CADASTROS,
        replace=("deletes: delete", "deletes: remove"),
        where="cadastros.yaml:7",
        key="tables.0.deletes",
        fix="{soft: column}",
    ),
    Case(
        "yaml-column-value-map-typo",
        MOVIMENTO,
        replace=(
            'register_id}"\n    deletes: ignore\n    closing:',
            'register_id}"\n      status: {from: status, mapp: {"O": open}}\n'
            "    deletes: ignore\n    closing:",
        ),
        where="movimento.yaml:11",
        key="tables.0.columns.status.mapp",
        fix="did you mean 'map'",
    ),
    Case(
        "yaml-empty-file",
        "mappings/vazio.yaml",
        content="# nothing here yet\n",
        where="vazio.yaml:1",
        key="group, direction and tables",
        fix="delete the file",
    ),
    Case(
        "yaml-same-group-in-two-files",
        "mappings/copia.yaml",
        content=CADASTROS_YAML,
        where="copia.yaml:2",
        key="group",
        fix="rename one",
        also=("cadastros.yaml:2",),
    ),
    # ---- node config -----------------------------------------------------------------------
    Case(
        "toml-unknown-section-typo",
        TOML,
        replace=("[sync]", "[snyc]"),
        where="replicator.toml:17",
        key="snyc",
        fix="did you mean 'sync'",
    ),
    Case(
        "toml-wrong-type",
        TOML,
        replace=("page_rows = 500", 'page_rows = "x"'),
        where="replicator.toml:18",
        key="sync.page_rows",
        fix="whole number",
    ),
    Case(
        "toml-missing-node-section",
        TOML,
        replace=('[node]\nname = "loja01-caixa01"\nstore_id = 1\n', ""),
        where="replicator.toml:1",
        key="node",
        fix="add a [node] table",
    ),
    Case(
        "toml-syntax-error",
        TOML,
        replace=("page_rows = 500", "page_rows 500"),
        where="replicator.toml:18",
        key="page_rows 500",
        fix="key = value",
    ),
    Case(
        "toml-key-twice",
        TOML,
        replace=("store_id = 1\n", "store_id = 1\nstore_id = 2\n"),
        where="replicator.toml:7",
        key="store_id",
        fix="keep one",
    ),
    Case(
        "toml-not-utf8",
        TOML,
        replace=('name = "loja01-caixa01"', 'name = "Loja São Paulo"'),
        encoding="latin-1",
        where="replicator.toml:5",
        key="name",
        fix="save the file as UTF-8",
    ),
    Case(
        "toml-register-id-not-defined",
        TOML,
        replace=("vars = { register_id = 1 }\n", ""),
        where="replicator.toml:12",
        key="{register_id}",
        fix="vars = { register_id = ... }",
        also=("movimento.yaml:10", "movimento.yaml:20"),
    ),
    Case(
        "toml-password-in-url",
        TOML,
        replace=(
            'url = "sqlite:///{dir}/server.db"',
            'url = "postgresql+psycopg://repl:S3cretPw@10.0.0.5/loja"',
        ),
        where="replicator.toml:10",
        key="databases.server.url",
        fix="password_env",
        secret="S3cretPw",
    ),
    Case(
        "toml-unknown-database-kind",
        TOML,
        replace=('url = "sqlite:///{dir}/server.db"', 'url = "oracle://repl@10.0.0.5/loja"'),
        where="replicator.toml:10",
        key="databases.server.url",
        fix="use one of firebird, mariadb",
    ),
    Case(
        "toml-invalid-role",
        TOML,
        replace=('role = "register"', 'role = "caixa"'),
        where="replicator.toml:13",
        key="databases.caixa1.role",
        fix="'server' or 'register'",
    ),
    Case(
        "toml-no-register-database",
        TOML,
        replace=(
            '[databases.caixa1]\nrole = "register"\n',
            '[databases.caixa1]\nrole = "server"\n',
        ),
        where="replicator.toml:8",
        key="databases",
        fix='role = "register"',
    ),
    Case(
        "toml-job-unknown-group",
        TOML,
        replace=('group = "cadastros"', 'group = "cadastro"'),
        where="replicator.toml:21",
        key="jobs.0.group",
        fix="did you mean 'cadastros'",
    ),
    Case(
        "toml-bad-job-interval",
        TOML,
        replace=('every = "30s"', 'every = "5 minutes"'),
        where="replicator.toml:26",
        key="jobs.1.every",
        fix="e.g. 30s, 5m, 1h",
    ),
    Case(
        "toml-mapping-directory-missing",
        TOML,
        replace=('mappings = "mappings"', 'mappings = "mapeamentos"'),
        where="replicator.toml:2",
        key="mappings",
        fix="mappings = ",
    ),
]

# These also run as a real process: what a user sees on the terminal.
SUBPROCESS_CASES = [
    "yaml-tab-indentation",
    "toml-syntax-error",
    "yaml-unknown-table-key-typo",
    "toml-password-in-url",
]


def assert_refused(case: Case, exit_code: int, stderr: str, stdout: str, directory: Path) -> None:
    shown = stdout + stderr
    assert "Traceback" not in shown, shown
    assert exit_code == 2, shown
    assert "FAILED:" in stderr, shown
    at = re.compile(rf"(?<![\w.-]){re.escape(case.where)}(?!\d)")
    lines = [line for line in stderr.splitlines() if at.search(line)]
    assert lines, f"no line of the output names {case.where}:\n{stderr}"
    assert any(case.key in line and case.fix in line for line in lines), (
        f"expected key {case.key!r} and fix {case.fix!r} next to {case.where}:\n{stderr}"
    )
    for text in case.also:
        assert text in stderr, f"expected {text!r} in:\n{stderr}"
    if case.secret:
        assert case.secret not in shown
    # config errors come before any database is opened
    assert not list(directory.glob("*.db")), "a database was opened for a bad config"


@pytest.fixture
def broken(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Case, Path]:
    case: Case = request.param
    config = make_node(tmp_path)
    case.apply(tmp_path)
    return case, config


def test_the_unbroken_node_is_valid(tmp_path: Path) -> None:
    """Every case breaks exactly one thing of a node that loads."""
    settings = load_settings(make_node(tmp_path))
    assert sorted(settings.groups) == ["cadastros", "movimento"]
    assert len(settings.jobs()) == 2
    assert not list(tmp_path.glob("*.db"))


def test_there_are_enough_cases() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 14
    assert set(SUBPROCESS_CASES) <= set(ids)


@pytest.mark.parametrize("broken", CASES, ids=[c.id for c in CASES], indirect=True)
def test_bad_config_is_refused(broken: tuple[Case, Path]) -> None:
    case, config = broken
    result = CliRunner().invoke(cli, ["-c", str(config), "check"])
    assert isinstance(result.exception, SystemExit), result.exception
    assert_refused(case, result.exit_code, result.stderr, result.stdout, config.parent)
    # the same message from the library, for callers that are not the CLI
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert case.where in str(info.value)
    if case.secret:
        assert case.secret not in str(info.value)


@pytest.mark.parametrize(
    "broken",
    [c for c in CASES if c.id in SUBPROCESS_CASES],
    ids=[c.id for c in CASES if c.id in SUBPROCESS_CASES],
    indirect=True,
)
def test_bad_config_in_a_real_process(broken: tuple[Case, Path]) -> None:
    case, config = broken
    proc = subprocess.run(
        [sys.executable, "-m", "replicator.cli", "-c", str(config), "check"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
        cwd=config.parent,
    )
    assert_refused(case, proc.returncode, proc.stderr, proc.stdout, config.parent)
