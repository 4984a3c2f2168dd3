"""`replicator closing`: the day's reconciliation as store staff read it. A PostgreSQL server
and SQLite registers of the example store, the shipped mappings, real syncs, a real outage of
one register, a price change that one register misses, a row the server refuses."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conftest import execute
from support import Node

from replicator import i18n
from replicator.cli import cli
from replicator.closing import closing_command
from replicator.closing_model import Action
from replicator.closing_report import action_text
from replicator.demo import store
from replicator.mapping import Closing
from replicator.sync import run_jobs

ROOT = Path(__file__).parent.parent
DAY = store.DEFAULT_START.date()  # 2024-03-15, sales from 08:00 -03:00

if "closing" not in cli.commands:  # until cli.py registers it
    cli.add_command(closing_command)


def create(url: str, metadata: sa.MetaData, seed: Callable[[sa.Connection], None]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        metadata.create_all(conn)
        seed(conn)
    engine.dispose()


@dataclass
class Shop:
    config: Path
    server: str
    registers: list[str]
    node: Node

    def closing(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, ["-c", str(self.config), "closing", *args])
        return result.exit_code, result.output

    def report(self, *args: str) -> tuple[int, dict[str, Any]]:
        code, output = self.closing("--json", *args)
        assert output.lstrip().startswith("{"), output
        return code, json.loads(output)

    def sync(self, group: str, *registers: str) -> None:
        jobs = [
            j
            for j in self.node.settings.jobs([group])
            if not registers or j.source in registers or j.target in registers
        ]
        for result in run_jobs(self.node.settings, jobs, self.node.dbs):
            assert result.error is None, result.error


CONFIG = """\
mappings = "mappings"

[node]
name = "loja1"
store_id = 1
timezone = "America/Sao_Paulo"

[log]
dir = "logs"
retention_days = 100000  # the tests' business day is in 2024

[databases.server]
role = "server"
url = "{server}"

[databases.caixa1]
role = "register"
url = "{caixa1}"
vars = {{ register_id = 1 }}

[databases.caixa2]
role = "register"
url = "{caixa2}"
vars = {{ register_id = 2 }}

[[jobs]]
group = "movimento"

[[jobs]]
group = "cadastros"
"""


def build_shop(server: str, directory: Path, sales: int = 5) -> Shop:
    directory.mkdir(parents=True, exist_ok=True)
    registers = [f"sqlite:///{directory / f'caixa{n}.db'}" for n in (1, 2)]
    create(server, store.server_metadata(), lambda c: store.seed_server(c, store_id=1))
    for n, url in enumerate(registers, start=1):
        create(url, store.register_metadata(), lambda c, n=n: store.seed_register(c, n, sales))
    shutil.copytree(
        ROOT / "mappings", directory / "mappings", ignore=shutil.ignore_patterns("*.py")
    )
    config = directory / "replicator.toml"
    config.write_text(CONFIG.format(server=server, caixa1=registers[0], caixa2=registers[1]))
    result = CliRunner().invoke(cli, ["-c", str(config), "setup"])
    assert result.exit_code == 0, result.output
    return Shop(config, server, registers, Node(config))


@pytest.fixture
def shop(pg_database: Callable[[], str], tmp_path: Path) -> Iterator[Shop]:
    built = build_shop(pg_database(), tmp_path)
    built.node.sync()
    yield built
    built.node.close()
    i18n.set_language("en")


# A rule of the server's that refuses a row (SQLSTATE 23514, as a CHECK constraint would).
SHORT_EMAIL = (
    "CREATE FUNCTION short_email() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF length(NEW.email) > 24 THEN RAISE EXCEPTION 'e-mail too long for the server' "
    "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$",
    "CREATE TRIGGER short_email BEFORE INSERT OR UPDATE ON customer "
    "FOR EACH ROW EXECUTE FUNCTION short_email()",
)


def sell(url: str, sale_id: int, at: datetime, total: str, method: str, status: str = "C") -> None:
    """One sale at a register, with its item and its payment, as the POS writes it."""
    execute(
        url,
        "INSERT INTO sale (sale_id, opened_at, closed_at, customer_id, employee_id, status, total)"
        " VALUES (:id, :at, :at, NULL, 1, :status, :total)",
        "INSERT INTO sale_item (sale_id, line_no, product_id, quantity, unit_price, total)"
        " VALUES (:id, 1, 1, 1, :total, :total)",
        "INSERT INTO payment (sale_id, seq, method, amount) VALUES (:id, 1, :method, :total)",
        params={
            "id": sale_id,
            "at": at.replace(tzinfo=None).isoformat(sep=" "),  # a register keeps local time
            "total": total,
            "method": method,
            "status": status,
        },
    )


def register_payments(url: str) -> dict[str, Decimal]:
    """Totals per payment type of the register's closed sales, summed here in Python."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text(
                    "SELECT p.method, CAST(p.amount AS TEXT) FROM payment p "
                    "JOIN sale s ON s.sale_id = p.sale_id WHERE s.status = 'C'"
                )
            ).all()
    finally:
        engine.dispose()
    out: dict[str, Decimal] = {}
    for method, amount in found:
        out[method] = out.get(method, Decimal(0)) + Decimal(amount).quantize(Decimal("0.01"))
    return out


def table(report: dict[str, Any], register: str, name: str) -> dict[str, Any]:
    reg = next(r for r in report["registers"] if r["database"] == register)
    return next(t for t in reg["tables"] if t["table"] == name)


def register(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in report["registers"] if r["database"] == name)


def test_a_clean_day_is_ok(shop: Shop) -> None:
    code, report = shop.report("--date", DAY.isoformat())
    assert code == 0, report["actions"]
    assert report["ok"] and report["verdict"].startswith("Closing OK")
    for name in ("caixa1", "caixa2"):
        sales = table(report, name, "sale")
        assert sales["agree"]
        assert sales["register"]["count"] == sales["server"]["count"] == 4  # one cancelled
        payments = table(report, name, "payment")
        groups = {
            g: Decimal(v["sums"]["amount"]) for g, v in payments["register"]["groups"].items()
        }
        assert groups == register_payments(shop.registers[int(name[-1]) - 1])
        assert payments["server"]["groups"] == payments["register"]["groups"]
        assert register(report, name)["pending"] == []
        runs = register(report, name)["runs"]
        assert {r["group"] for r in runs} == {"movimento", "cadastros"}
        assert all(r["last_ok"] for r in runs)
    code, text = shop.closing("--date", DAY.isoformat())
    assert code == 0
    assert "Closing OK" in text.splitlines()[2]


def test_outage_missed_price_and_quarantine_then_fix(shop: Shop) -> None:
    caixa1, caixa2 = shop.registers
    # Register 2 keeps selling while its network is down: its sale never leaves.
    sell(caixa2, 100, store.DEFAULT_START + timedelta(hours=10), "12.34", "pix")
    # A price change on the server reaches register 2, not register 1.
    execute(
        shop.server,
        "UPDATE price SET price = 9.99, valid_from = now() WHERE store_id = 1 AND product_id = 7",
    )
    shop.sync("cadastros", "caixa2")
    # The server refuses a customer registered at register 1 (a rule of the server's).
    execute(shop.server, *SHORT_EMAIL)
    execute(
        caixa1,
        "INSERT INTO customer (customer_id, name, tax_id, email, created_at) VALUES "
        "('7c1d2d6e-0000-4000-8000-000000000001', 'Raimunda Nonata', NULL, "
        "'raimunda.nonata@example.com', '2024-03-15 10:00:00')",
    )
    shop.sync("movimento", "caixa1")

    code, report = shop.report("--date", DAY.isoformat())
    assert code == 8
    assert not report["ok"]
    codes = sorted((a["register"], a["code"], a["table"], a["count"]) for a in report["actions"])
    assert codes == [
        ("1", "catalog", None, 1),
        ("1", "held", None, 1),
        ("2", "missing", "payment", 1),
        ("2", "missing", "sale", 1),
    ]
    sales = table(report, "caixa2", "sale")
    assert [m["key"] for m in sales["missing"]] == [[100]]
    assert sales["missing"][0]["amounts"] == {"total": "12.34"}
    assert sales["missing"][0]["when"] == "2024-03-15T18:00:00-03:00"
    assert sales["different"] == sales["extra"] == []
    assert sales["register"]["count"] == sales["server"]["count"] + 1
    reg_total = Decimal(sales["register"]["sums"]["total"])
    assert reg_total - Decimal(sales["server"]["sums"]["total"]) == Decimal("12.34")
    payments = table(report, "caixa2", "payment")
    pix_register = Decimal(payments["register"]["groups"]["pix"]["sums"]["amount"])
    pix_server = Decimal(
        payments["server"]["groups"].get("pix", {"sums": {"amount": "0"}})["sums"]["amount"]
    )
    assert pix_register - pix_server == Decimal("12.34")
    assert {g: Decimal(v["sums"]["amount"]) for g, v in payments["register"]["groups"].items()} == (
        register_payments(caixa2)
    )
    for name in ("sale", "payment", "cash_closing"):
        assert table(report, "caixa1", name)["agree"]
    assert table(report, "caixa2", "cash_closing")["agree"]

    pending1 = register(report, "caixa1")["pending"]
    assert [(p["table"], p["direction"], p["count"]) for p in pending1] == [
        ("price", "to_register", 1)
    ]
    assert pending1[0]["rows"][0]["key"] == [1, 7]
    assert pending1[0]["rows"][0]["shown"] == {"price": "9.99"}
    assert pending1[0]["age_seconds"] is not None
    assert [(p["table"], p["direction"]) for p in register(report, "caixa2")["pending"]] == [
        ("sale", "to_server"),
        ("sale_item", "to_server"),
        ("payment", "to_server"),
    ]
    held = register(report, "caixa1")["held"]
    assert [(h["table"], h["state"]) for h in held] == [("customer", "refused")]
    assert register(report, "caixa2")["held"] == []

    # The terminal says the same, verdict first.
    code, text = shop.closing("--date", DAY.isoformat())
    assert code == 8
    lines = text.splitlines()
    assert lines[2].startswith("Closing NOT OK: 4 things to do")
    assert "Register 2: 1 row of Sales has not reached the server" in text
    assert "Register 1: 1 catalog change has not reached the register" in text
    assert "Register 1: 1 row is held in quarantine" in text

    # The cause of the refusal is fixed; --fix runs the integration and reports again.
    execute(shop.server, "DROP TRIGGER short_email ON customer")
    code, text = shop.closing("--date", DAY.isoformat(), "--fix")
    assert code == 0, text
    assert "Closing OK" in text
    code, report = shop.report("--date", DAY.isoformat())
    assert code == 0 and report["ok"], report["actions"]
    sales = table(report, "caixa2", "sale")
    assert sales["register"] == sales["server"]


def test_one_register_compares_every_row(shop: Shop) -> None:
    """A sale changed on the server by hand (same count and total elsewhere) is found when
    one register is asked for: its rows are compared one by one."""
    execute(
        shop.server,
        "UPDATE sale SET opened_at = opened_at + interval '1 minute' "
        "WHERE register_id = 1 AND sale_id = 2",
    )
    code, report = shop.report("--date", DAY.isoformat(), "--register", "1")
    assert code == 8
    sales = table(report, "caixa1", "sale")
    assert sales["rows_compared"]
    assert [d["key"] for d in sales["different"]] == [[2]]
    assert [c["column"] for c in sales["different"][0]["columns"]] == ["opened_at"]
    assert [r["database"] for r in report["registers"]] == ["caixa1"]


def test_sales_across_midnight_count_on_their_own_day(
    pg_database: Callable[[], str], tmp_path: Path
) -> None:
    shop = build_shop(pg_database(), tmp_path, sales=0)
    try:
        caixa1 = shop.registers[0]
        evening = datetime(2024, 3, 15, 21, 30, tzinfo=store.BRT)  # 00:30 UTC on the 16th
        sell(caixa1, 1, evening, "10.00", "dinheiro")
        sell(caixa1, 2, evening + timedelta(hours=2), "20.00", "pix")  # 23:30 local
        sell(caixa1, 3, evening + timedelta(hours=3), "40.00", "pix")  # 00:30 local, the 16th
        shop.node.sync()
        code, report = shop.report("--date", "2024-03-15", "--register", "caixa1")
        assert code == 0, report["actions"]
        sales = table(report, "caixa1", "sale")
        assert sales["register"]["count"] == sales["server"]["count"] == 2
        assert sales["register"]["sums"] == sales["server"]["sums"] == {"total": "30.00"}
        code, report = shop.report("--date", "16/03/2024", "--register", "caixa1")
        assert code == 0, report["actions"]
        sales = table(report, "caixa1", "sale")
        assert sales["register"]["count"] == sales["server"]["count"] == 1
        assert sales["server"]["sums"] == {"total": "40.00"}
        payments = table(report, "caixa1", "payment")
        assert payments["server"]["groups"] == {"pix": {"count": 1, "sums": {"amount": "40.00"}}}
    finally:
        shop.node.close()


def test_the_report_in_portuguese(shop: Shop) -> None:
    sell(shop.registers[1], 100, store.DEFAULT_START + timedelta(hours=10), "1234.56", "pix")
    code, text = shop.closing("--date", "15/03/2024", "--lang", "pt-BR")
    assert code == 8
    assert "Fechamento de 15/03/2024 (horário da loja America/Sao_Paulo), 2 caixas" in text
    assert "Fechamento NÃO OK: 2 coisas a fazer" in text
    assert "Caixa 2: 1 registro de Vendas não chegou ao servidor" in text
    assert "R$ 1.234,56" in text
    assert "Pagamentos por forma" in text
    code, report = shop.report("--date", DAY.isoformat(), "--lang", "pt-BR")
    assert report["language"] == "pt-BR"
    assert report["actions"][0]["text"].startswith("Caixa 2:")


SALES = Closing(title={"en": "Sales", "pt-BR": "Vendas"}, date="opened_at")


@pytest.mark.parametrize("count", [1, 3])
def test_every_action_has_a_portuguese_text(count: int) -> None:
    codes = ["unreadable", "missing", "different", "extra", "totals", "catalog", "waiting"]
    codes += ["held", "conflicts"]
    for code in codes:
        action = Action(code, "2", count, "sale", SALES, age_seconds=3600, detail="x")
        i18n.set_language("en")
        english = action_text(action)
        i18n.set_language("pt-BR")
        portuguese = action_text(action)
        assert portuguese != english, code
        assert portuguese.startswith("Caixa 2"), portuguese
    i18n.set_language("en")


def test_wrong_register_and_date_are_config_errors(shop: Shop) -> None:
    code, out = shop.closing("--register", "caixa9")
    assert code == 2 and "caixa9" in out and "caixa1, caixa2" in out
    code, out = shop.closing("--date", "ontem de manhã")
    assert code == 2 and "2026-03-15" in out


def test_a_register_that_cannot_be_reached_is_named(shop: Shop) -> None:
    """The other registers are still reported; the day cannot be called complete (exit 4)."""
    text = shop.config.read_text("utf-8")
    shop.config.write_text(
        text.replace(
            "[[jobs]]",
            '[databases.caixa3]\nrole = "register"\n'
            'url = "postgresql+psycopg://postgres@127.0.0.1:9/caixa3"\n'
            "vars = { register_id = 3 }\n\n[[jobs]]",
            1,
        ),
        "utf-8",
    )
    code, report = shop.report("--date", DAY.isoformat())
    assert code == 4, report["actions"]
    assert [(a["register"], a["code"], a["table"]) for a in report["actions"]] == [
        ("3", "unreadable", "caixa3")
    ]
    assert "could not be read" in report["verdict"] or report["actions"][0]["text"]
    assert table(report, "caixa1", "sale")["agree"] and table(report, "caixa2", "sale")["agree"]
    problems = register(report, "caixa3")["problems"]
    assert problems and problems[0]["exit_code"] == 4


def test_a_missing_register_file_is_a_config_error(shop: Shop) -> None:
    Path(shop.registers[1].removeprefix("sqlite:///")).unlink()
    code, out = shop.closing("--date", DAY.isoformat())
    assert code == 2  # as for every command: only setup creates a SQLite file
    assert "caixa2" in out


def write_mapping(shop: Shop, old: str, new: str) -> None:
    path = shop.config.parent / "mappings" / "movimento.yaml"
    text = path.read_text("utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), "utf-8")


def test_closing_keys_are_validated_with_file_and_line(shop: Shop) -> None:
    write_mapping(shop, "      via: sale\n", "      via: sales\n")
    code, out = shop.closing()
    assert code == 2
    assert "movimento.yaml:" in out and "did you mean 'sale'" in out
    write_mapping(shop, "      via: sales\n", "      via: sale\n")
    write_mapping(shop, "      by: method\n", "      by: method\n      show: [seq]\n")
    write_mapping(shop, "amount: {en: amount", "valor: {en: amount")
    code, out = shop.closing()
    assert code == 2 and "labels: 'valor' is not in sums, by or show" in out
    write_mapping(shop, "valor: {en: amount", "amount: {en: amount")
    write_mapping(shop, "      date: business_date\n", "")
    code, out = shop.closing()
    assert code == 2 and "sums is only used with date" in out


def test_a_closing_column_missing_in_the_database_fails_loud(shop: Shop) -> None:
    from replicator.closing import closing_problems
    from replicator.config import load_settings

    write_mapping(shop, "      by: method\n", "      by: metodo\n")
    write_mapping(shop, "labels: {method:", "labels: {metodo:")
    code, out = shop.closing("--date", DAY.isoformat())
    assert code == 3
    assert "movimento.yaml:" in out and "'metodo' is not a column of source table 'payment'" in out
    problems = closing_problems(load_settings(shop.config), shop.node.dbs)
    assert any("'metodo'" in p for p in problems), problems


def test_the_days_log_warnings_and_errors(shop: Shop) -> None:
    import gzip

    logs = shop.config.parent / "logs"
    logs.mkdir(exist_ok=True)
    job = "movimento:caixa2->server"
    (logs / "replicator-2024-03-15.log.gz").write_bytes(
        gzip.compress(
            f"2024-03-15 09:00:00.000 | ERROR   | [job={job}] failed: connection refused\n"
            "Traceback (most recent call last):\n  File x\n".encode()
        )
    )
    (logs / "replicator-2024-03-15.log").write_text(
        f"2024-03-15 18:00:00.000 | INFO    | [job={job}] 3 rows in 1 batches\n"
        '{"time": "2024-03-15T18:01:00.000-03:00", "level": "WARNING", "message": '
        f'"long transaction", "job": "{job}"}}\n'
        "2024-03-15 18:02:00.000 | WARNING | cannot tell this machine's time zone\n",
        "utf-8",
    )
    code, report = shop.report("--date", DAY.isoformat())
    assert code == 0  # warnings and errors are shown, they do not make the day incomplete
    assert (report["log"]["errors"], report["log"]["warnings"]) == (1, 2)
    lines = register(report, "caixa2")["log"]
    assert [(ln["level"], ln["message"]) for ln in lines] == [
        ("ERROR", "failed: connection refused"),
        ("WARNING", "long transaction"),
    ]
    assert register(report, "caixa1")["log"] == []
    assert [ln["message"] for ln in report["log"]["lines"]] == [
        "cannot tell this machine's time zone"
    ]
