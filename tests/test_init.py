"""`replicator init`: drafts from existing databases, checked, set up and synced for real."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import execute
from support import rows

from replicator.cli import cli
from replicator.config import load_settings
from replicator.demo import store
from replicator.init import init_command
from replicator.mapping import load_mapping

if "init" not in cli.commands:  # until cli.py registers it
    cli.add_command(init_command)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def create(url: str, metadata: sa.MetaData, seed: Callable[[sa.Connection], None]) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            metadata.create_all(conn)
            seed(conn)
    finally:
        engine.dispose()


def blocks(text: str) -> dict[str, str]:
    """Each table entry's text (its comments and its YAML), by its `source -> target` head."""
    parts = re.split(r"^ *# ---- (\S+)(?: -> \S+)?: .*$", text, flags=re.MULTILINE)
    # a wrapped comment reads as one line
    return {parts[i]: re.sub(r"\n *#   ", " ", parts[i + 1]) for i in range(1, len(parts), 2)}


@pytest.fixture
def example(pg_database: Callable[[], str], tmp_path: Path) -> tuple[str, str]:
    """The example store: its server on PostgreSQL, a register on SQLite, sample data."""
    server, register = pg_database(), f"sqlite:///{tmp_path / 'caixa.db'}"
    create(server, store.server_metadata(), lambda c: store.seed_server(c, store_id=1))
    create(register, store.register_metadata(), lambda c: store.seed_register(c, register_id=1))
    return server, register


def test_example_store_drafts_pass_check_and_sync_both_ways(
    example: tuple[str, str], tmp_path: Path
) -> None:
    server, register = example
    out_dir = tmp_path / "node"
    code, out = run("init", "--register", register, "--server", server, "--dir", str(out_dir))
    assert code == 0, out
    assert "check: the drafts pass" in out
    # the list of decisions carries each whole reason (piped output is never cut)
    listed = out.split("decisions are left to you", 1)[1]
    assert "…" not in listed
    assert "job progress is keyed by it" in listed and "never changed" in listed
    cadastros = load_mapping(out_dir / "mappings" / "cadastros.yaml")
    movimento = load_mapping(out_dir / "mappings" / "movimento.yaml")
    assert cadastros.direction == "server_to_register"
    assert [t.source for t in cadastros.tables] == [
        "customer",
        "employee",
        "product",
        "price",
        "user_login",
    ]
    assert cadastros.table("price").where == {"store_id": "{store_id}"}
    assert cadastros.table("user_login").depends_on == ["employee"]
    assert movimento.direction == "register_to_server"
    sale = movimento.table("sale")
    assert sale.target_key == ["store_id", "register_id", "sale_id"]
    assert sale.columns == {"store_id": "{store_id}", "register_id": "{register_id}"}
    assert movimento.table("sale_item").depends_on == ["sale"]
    labels = [t.label for t in movimento.tables]
    assert labels.index("sale") < labels.index("payment")
    # each per-register key is a decision, named in the file and in the summary
    text = (out_dir / "mappings" / "movimento.yaml").read_text("utf-8")
    assert all("DECIDE:" in b for b in blocks(text).values())
    assert re.search(r"mappings/movimento\.yaml:\d+: sale -> sale: the server keys sale", out)

    config = str(out_dir / "replicator.toml")
    load_settings(Path(config))
    code, out = run("-c", config, "setup")
    assert code == 0, out
    code, out = run("-c", config, "check")
    assert code == 0, out
    code, out = run("-c", config, "sync")
    assert code == 0, out
    assert len(rows(register, "product")) == len(rows(server, "product")) == 40
    assert len(rows(register, "price")) == 40
    sales = rows(server, "sale", ["store_id", "register_id", "sale_id", "total"])
    assert sales == [(1, 1, *r) for r in rows(register, "sale", ["sale_id", "total"])]
    assert len(rows(server, "sale_item")) == len(rows(register, "sale_item")) > 0


REGISTER_DDL = [
    "CREATE TABLE PRODUTO (CD_PRODUTO INTEGER PRIMARY KEY, DS_PRODUTO VARCHAR(60) NOT NULL, "
    "VL_PRECO NUMERIC(12,2) NOT NULL, DT_ALTERACAO DATETIME)",
    "CREATE TABLE FORMA_PGTO (CD_FORMA INTEGER PRIMARY KEY, DS_FORMA VARCHAR(30) NOT NULL)",
    "CREATE TABLE PRECO (CD_PRODUTO INTEGER PRIMARY KEY REFERENCES PRODUTO (CD_PRODUTO), "
    "VL_VENDA NUMERIC(12,2) NOT NULL)",
    "CREATE TABLE CLIENTE (CD_CLIENTE INTEGER PRIMARY KEY, NM_CLIENTE VARCHAR(80) NOT NULL, "
    "FL_ATIVO CHAR(1), LOCALIZACAO TEXT)",
    "CREATE TABLE TB_VENDA (NR_VENDA INTEGER PRIMARY KEY, DT_VENDA DATETIME NOT NULL, "
    "CD_CLIENTE INTEGER, VL_TOTAL NUMERIC(12,2) NOT NULL, FL_CANCELADA CHAR(1))",
    "CREATE TABLE ITEM_VENDA (NR_VENDA INTEGER NOT NULL REFERENCES TB_VENDA (NR_VENDA), "
    "NR_ITEM INTEGER NOT NULL, CD_PRODUTO INTEGER NOT NULL, QT_ITEM NUMERIC(12,3) NOT NULL, "
    "PRIMARY KEY (NR_VENDA, NR_ITEM))",
    "CREATE TABLE PAGAMENTO (NR_VENDA INTEGER NOT NULL REFERENCES TB_VENDA (NR_VENDA), "
    "NR_SEQ INTEGER NOT NULL, CD_FORMA INTEGER NOT NULL REFERENCES FORMA_PGTO (CD_FORMA), "
    "VL_PAGO NUMERIC(12,2) NOT NULL, PRIMARY KEY (NR_VENDA, NR_SEQ))",
    "CREATE TABLE FECHAMENTO (NR_FECHAMENTO INTEGER PRIMARY KEY, DT_MOVIMENTO DATE NOT NULL, "
    "VL_TOTAL NUMERIC(12,2) NOT NULL)",
    "CREATE TABLE LOG_OPERACAO (DT_LOG DATETIME, DS_LOG VARCHAR(200))",
    "CREATE TABLE CONFIG_LOCAL (CHAVE VARCHAR(30) PRIMARY KEY, VALOR VARCHAR(200))",
]
SALE_KEY = "cd_loja integer NOT NULL, nr_caixa integer NOT NULL, nr_venda integer NOT NULL"
SERVER_DDL = [
    "CREATE TABLE produto (cd_produto integer PRIMARY KEY, ds_produto varchar(60) NOT NULL, "
    "vl_preco numeric(12,2) NOT NULL, dt_alteracao timestamp)",
    "CREATE TABLE forma_pgto (cd_forma integer PRIMARY KEY, ds_forma varchar(30) NOT NULL)",
    "CREATE TABLE preco (cd_loja integer NOT NULL, cd_produto integer NOT NULL "
    "REFERENCES produto, vl_venda numeric(12,2) NOT NULL, PRIMARY KEY (cd_loja, cd_produto))",
    "CREATE TABLE cliente (cd_cliente integer PRIMARY KEY, nm_cliente varchar(80) NOT NULL, "
    "fl_ativo boolean, localizacao point)",
    f"CREATE TABLE tb_venda ({SALE_KEY}, dt_venda timestamp NOT NULL, cd_cliente integer, "
    "vl_total numeric(12,2) NOT NULL, fl_cancelada boolean, "
    "PRIMARY KEY (cd_loja, nr_caixa, nr_venda))",
    f"CREATE TABLE item_venda ({SALE_KEY}, nr_item integer NOT NULL, "
    "cd_produto integer NOT NULL REFERENCES produto, qt_item numeric(12,3) NOT NULL, "
    "PRIMARY KEY (cd_loja, nr_caixa, nr_venda, nr_item), "
    "FOREIGN KEY (cd_loja, nr_caixa, nr_venda) REFERENCES tb_venda)",
    f"CREATE TABLE pagamento ({SALE_KEY}, nr_seq integer NOT NULL, "
    "cd_forma integer NOT NULL REFERENCES forma_pgto, vl_pago numeric(12,2) NOT NULL, "
    "PRIMARY KEY (cd_loja, nr_caixa, nr_venda, nr_seq), "
    "FOREIGN KEY (cd_loja, nr_caixa, nr_venda) REFERENCES tb_venda)",
    "CREATE TABLE fechamento (cd_empresa integer NOT NULL, nr_fechamento integer NOT NULL, "
    "dt_movimento date NOT NULL, vl_total numeric(12,2) NOT NULL, "
    "PRIMARY KEY (cd_empresa, nr_fechamento))",
    "CREATE TABLE log_operacao (dt_log timestamp, ds_log varchar(200))",
    "CREATE TABLE estoque (cd_produto integer PRIMARY KEY, qt_estoque numeric(12,3))",
]


def test_foreign_schema_flags_every_decision(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    server, register = pg_database(), f"sqlite:///{tmp_path / 'pdv.db'}"
    execute(server, *SERVER_DDL)
    execute(register, *REGISTER_DDL)
    out_dir = tmp_path / "node"
    code, out = run("init", "--register", register, "--server", server, "--dir", str(out_dir))
    assert code == 0, out
    assert "check: the drafts pass" in out, out
    cad_path, mov_path = (out_dir / "mappings" / f"{g}.yaml" for g in ("cadastros", "movimento"))
    cadastros, movimento = load_mapping(cad_path), load_mapping(mov_path)
    assert [t.source for t in cadastros.tables] == ["cliente", "forma_pgto", "produto", "preco"]
    assert [t.label for t in movimento.tables] == [
        "FECHAMENTO",
        "TB_VENDA",
        "ITEM_VENDA",
        "PAGAMENTO",
    ]
    cad, mov = blocks(cad_path.read_text("utf-8")), blocks(mov_path.read_text("utf-8"))

    # nothing to decide where the schemas agree (names differ only in letter case)
    assert "DECIDE" not in cad["produto"] and "DECIDE" not in cad["forma_pgto"]
    produto = cadastros.table("produto")
    assert (produto.target, produto.key) == ("PRODUTO", ["cd_produto"])
    assert produto.columns["CD_PRODUTO"] == "cd_produto"
    assert "DT_ALTERACAO looks like the application's own change stamp" not in cad["produto"]
    assert "dt_alteracao looks like" in cad["produto"]

    # prices kept per store on the server, once per product on the register: this store's
    preco = cadastros.table("preco")
    assert (preco.key, preco.target_key) == (["cd_loja", "cd_produto"], ["CD_PRODUTO"])
    assert preco.where == {"cd_loja": "{store_id}"}
    assert preco.depends_on == ["produto"]
    assert "DECIDE: the server keeps one row per store" in cad["preco"]

    # the sales header keyed per register on the server
    venda = movimento.table("TB_VENDA")
    assert venda.target_key == ["cd_loja", "nr_caixa", "nr_venda"]
    assert venda.columns["cd_loja"] == "{store_id}"
    assert venda.columns["nr_caixa"] == "{register_id}"
    assert venda.columns["nr_venda"] == "NR_VENDA"
    assert "DECIDE: the server keys tb_venda per register" in mov["TB_VENDA"]
    assert movimento.table("ITEM_VENDA").depends_on == ["TB_VENDA"]
    assert movimento.table("PAGAMENTO").key == ["NR_VENDA", "NR_SEQ"]

    # a flag S/N against a boolean, and a type the replicator does not know: not copied
    assert "FL_CANCELADA" in venda.exclude
    assert re.search(r"DECIDE: TB_VENDA\.FL_CANCELADA .*types that do not fit", mov["TB_VENDA"])
    cliente = cadastros.table("cliente")
    assert {"fl_ativo", "localizacao"} <= set(cliente.exclude)
    assert "a type the replicator does not know" in cad["cliente"]

    # a server key column that names neither the store nor the register: a variable, said
    fechamento = movimento.table("FECHAMENTO")
    assert fechamento.columns["cd_empresa"] == "{cd_empresa}"
    assert "DECIDE: the server keys fechamento with cd_empresa" in mov["FECHAMENTO"]
    config = (out_dir / "replicator.toml").read_text("utf-8")
    assert "vars = { cd_empresa = 1 }" in config

    # no primary key: written commented out, never guessed
    assert "LOG_OPERACAO" not in [t.source for t in cadastros.tables + movimento.tables]
    log = cad.get("log_operacao", "")
    assert "DECIDE: log_operacao has no primary key" in log
    assert "  # - source: log_operacao" in log
    # tables that match nothing are named
    whole = "".join(cad.values()) + "".join(mov.values())
    assert re.search(r"DECIDE: register table CONFIG_LOCAL matches no server table", whole)
    assert re.search(r"DECIDE: server table estoque matches no register table", whole)
    load_settings(out_dir / "replicator.toml")


def test_init_refuses_a_folder_that_is_not_empty(example: tuple[str, str], tmp_path: Path) -> None:
    server, register = example
    out_dir = tmp_path / "node"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine", "utf-8")
    args = ["init", "--register", register, "--server", server, "--dir", str(out_dir)]
    code, out = run(*args)
    assert code == 2
    assert "FAILED" in out and "is not empty" in out and "--force" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["notes.txt"]
    code, out = run(*args, "--force")
    assert code == 0, out
    assert (out_dir / "notes.txt").read_text("utf-8") == "mine"
    assert (out_dir / "mappings" / "movimento.yaml").exists()


def test_password_comes_from_the_environment_and_is_never_written(
    example: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, register = example
    with_password = server.replace("postgres@", "postgres:s3cret-pw@")
    code, out = run(
        "init", "--register", register, "--server", with_password, "--dir", str(tmp_path / "x")
    )
    assert code == 2 and "contains a password" in out and "s3cret-pw" not in out
    monkeypatch.setenv("LOJA_PG_PW", "s3cret-pw")  # trust auth: any password is accepted
    out_dir = tmp_path / "node"
    code, out = run(
        "init",
        *("--register", register, "--server", server, "--dir", str(out_dir)),
        *("--server-password-env", "LOJA_PG_PW"),
    )
    assert code == 0, out
    assert "check: the drafts pass" in out
    config = (out_dir / "replicator.toml").read_text("utf-8")
    assert 'password_env = "LOJA_PG_PW"' in config
    for path in out_dir.rglob("*"):
        if path.is_file():
            assert "s3cret-pw" not in path.read_text("utf-8")


def test_with_store_example_writes_the_shipped_files(
    example: tuple[str, str], tmp_path: Path
) -> None:
    server, register = example
    shipped = {
        e.name: e.read_text("utf-8")
        for e in resources.files("replicator.mappings").iterdir()
        if e.name.endswith(".yaml")
    }
    demo_dir = tmp_path / "demo-like"
    code, out = run("init", "--with-store-example", "--dir", str(demo_dir))
    assert code == 0, out
    assert {p.name: p.read_text("utf-8") for p in (demo_dir / "mappings").iterdir()} == shipped
    assert (demo_dir / "sql" / "example" / "server.sqlite.sql").exists()
    assert 'url = "sqlite:///server.db"' in (demo_dir / "replicator.toml").read_text("utf-8")

    out_dir = tmp_path / "node"
    code, out = run(
        "init", "--with-store-example", "--register", register, "--server", server,
        "--dir", str(out_dir),
    )  # fmt: skip
    assert code == 0, out
    assert "check: the drafts pass" in out
    config = str(out_dir / "replicator.toml")
    assert run("-c", config, "setup")[0] == 0
    code, out = run("-c", config, "sync", "movimento", "produtos")
    assert code == 0, out
    assert len(rows(server, "sale")) == len(rows(register, "sale")) > 0
    assert len(rows(register, "price")) == 40
