"""Values in the form their target declares: time zones of naive timestamps (a register's clock
is local time), exact decimals and ISO-8601 timestamps into a SQLite register's TEXT columns.

Against real SQLite files and the real PostgreSQL server; `Backend.row_adapter` is also tested
directly, as the apply path calls it once per table and batch."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import execute
from support import Node, quarantined, rows, write_node

from replicator import values
from replicator.backends import open_backend
from replicator.check import run_check
from replicator.config import load_settings
from replicator.errors import ConfigError

SAO_PAULO = "America/Sao_Paulo"
BRT = timezone(timedelta(hours=-3))  # Sao Paulo has had no daylight saving time since 2019


# --- config ----------------------------------------------------------------------------------
NODE = """\
mappings = "mappings"

[node]
name = "loja01-caixa02"
{node_tz}
[databases.server]
role = "server"
url = "postgresql+psycopg://replicator@10.0.0.5/loja"

[databases.caixa]
role = "register"
url = "sqlite:///caixa.db"
{caixa_tz}
[databases.other]
role = "register"
url = "sqlite:///other.db"
"""


def config_file(tmp_path: Path, node_tz: str = "", caixa_tz: str = "") -> Path:
    (tmp_path / "mappings").mkdir(exist_ok=True)
    (tmp_path / "mappings" / "g.yaml").write_text(
        "group: g\ndirection: register_to_server\ntables:\n  - source: t\n    key: [id]\n"
    )
    path = tmp_path / "replicator.toml"
    path.write_text(NODE.format(node_tz=node_tz, caixa_tz=caixa_tz), encoding="utf-8")
    return path


def test_timezone_of_each_database(tmp_path: Path) -> None:
    settings = load_settings(
        config_file(tmp_path, 'timezone = "America/Manaus"\n', f'timezone = "{SAO_PAULO}"\n')
    )
    assert settings.timezone("caixa") == SAO_PAULO  # its own
    assert settings.timezone("other") == "America/Manaus"  # [node] timezone for SQLite
    assert settings.timezone("server") == "UTC"  # PostgreSQL: the session's zone


def test_timezone_defaults_to_this_machine_for_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", SAO_PAULO)
    values.local_timezone.cache_clear()
    try:
        settings = load_settings(config_file(tmp_path))
        assert settings.timezone("caixa") == SAO_PAULO
        assert settings.timezone("server") == "UTC"
    finally:
        values.local_timezone.cache_clear()


def test_machine_zone_that_cannot_be_named_is_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "BRT3")  # a POSIX rule, not an IANA name
    monkeypatch.setattr(values.os, "readlink", lambda _path: "/nowhere")
    monkeypatch.setattr(values, "Path", lambda _path: Path("/nonexistent/timezone"))
    monkeypatch.setattr(values.time, "tzname", ("-03", "-03"))
    values.local_timezone.cache_clear()
    try:
        assert values.local_timezone() == "UTC"
    finally:
        values.local_timezone.cache_clear()


@pytest.mark.parametrize(
    ("node_tz", "caixa_tz", "where", "key", "fix"),
    [
        ("", 'timezone = "America/Sao_Pablo"\n', ":13:", "databases.caixa.timezone", SAO_PAULO),
        ('timezone = "america/sao_paulo"\n', "", ":5:", "node.timezone", SAO_PAULO),
        ('timezone = "-03:00"\n', "", ":5:", "node.timezone", "IANA name"),
        ('timezone = "localtime"\n', "", ":5:", "node.timezone", "IANA name"),
    ],
)
def test_bad_timezone_is_a_config_error_with_file_and_line(
    tmp_path: Path, node_tz: str, caixa_tz: str, where: str, key: str, fix: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(config_file(tmp_path, node_tz, caixa_tz))
    line = next(ln for ln in str(err.value).splitlines() if key in ln)
    assert f"replicator.toml{where}" in line and fix in line, line


# --- row_adapter, directly --------------------------------------------------------------------
REGISTER_PRICE = (
    "CREATE TABLE price (product_id INTEGER PRIMARY KEY, valid_from DATETIME, "
    "valid_text TEXT, price TEXT, price_num NUMERIC(15,4), qty INTEGER, day DATE, "
    "attrs JSON, code VARCHAR(10))"
)


def test_sqlite_row_adapter_writes_each_declared_form(sqlite_database: Callable[[], str]) -> None:
    url = sqlite_database()
    execute(url, REGISTER_PRICE)
    backend = open_backend(sa.make_url(url), "caixa", timezone=SAO_PAULO)
    try:
        with backend.engine.connect() as conn:
            table = backend.table(conn, "price")
        columns = [c.name for c in table.c]
        adapt = backend.row_adapter(table, columns, "UTC")
        assert adapt is not None
        at = datetime(2024, 3, 1, 2, 0, tzinfo=UTC)
        row = (1, at, at, Decimal("12.5000"), Decimal("12.5000"), Decimal("3"), at, {"a": 1}, 7)
        assert adapt(row) == (
            1,
            datetime(2024, 2, 29, 23, 0),  # local time of the register, no zone
            "2024-02-29T23:00:00-03:00",  # ISO-8601 with the register's offset
            "12.5000",  # exact, at the source's scale
            Decimal("12.5000"),  # NUMERIC: as before (SQLAlchemy binds it)
            3,
            datetime(2024, 2, 29, 23, 0),  # DATE: SQLAlchemy keeps the local date, 02-29
            {"a": 1},  # JSON: SQLAlchemy serialises it
            7,
        )
        naive = datetime(2024, 3, 1, 0, 30)
        assert adapt((2, naive, naive, Decimal("1E+3"), None, Decimal("2.5"), None, None, None))[
            1:6
        ] == (naive, "2024-03-01T00:30:00", "1000", None, "2.5")
        assert adapt((3, None, Decimal("0.00001"), Decimal("-0E-4"), *[None] * 5))[2:4] == (
            "0.00001",
            "-0.0000",
        )
        assert adapt(adapt(row)) == adapt(row), "adapting twice changes nothing"
        assert backend.row_adapter(table, ["product_id"], None) is not None
    finally:
        backend.dispose()


def test_base_row_adapter_gives_naive_timestamps_the_source_zone(
    pg_database: Callable[[], str],
) -> None:
    url = pg_database()
    execute(
        url,
        "CREATE TABLE sale (id integer PRIMARY KEY, at timestamptz, wall timestamp, total numeric)",
    )
    backend = open_backend(sa.make_url(url), "server")
    try:
        with backend.engine.connect() as conn:
            table = backend.table(conn, "sale")
        columns = ["id", "at", "wall", "total"]
        adapt = backend.row_adapter(table, columns, SAO_PAULO)
        assert adapt is not None
        local = datetime(2024, 3, 1, 0, 30)
        got = adapt((1, local, local, Decimal("12.50")))
        assert got[1] == datetime(2024, 3, 1, 3, 30, tzinfo=UTC)
        assert got[2:] == (local, Decimal("12.50")), "naive columns stay naive"
        aware = datetime(2024, 3, 1, 3, 30, tzinfo=UTC)
        assert adapt((2, aware, None, None))[1] is aware
        text = adapt((3, "2024-03-01 00:30:00", None, None))[1]
        assert text == datetime(2024, 3, 1, 3, 30, tzinfo=UTC)
        assert adapt((4, "2024-03-01T00:30:00+00:00", None, None))[1] == "2024-03-01T00:30:00+00:00"
        assert adapt((5, "not a time", None, None))[1] == "not a time"
        assert backend.row_adapter(table, columns, None) is None
        assert backend.row_adapter(table, ["id", "total"], SAO_PAULO) is None
    finally:
        backend.dispose()


# --- end to end --------------------------------------------------------------------------------
SALES = """\
group: movimento
direction: register_to_server
tables:
  - source: sale
    key: [sale_id]
"""
PRICES = """\
group: cadastros
direction: server_to_register
tables:
  - source: price
    key: [product_id]
    columns:
      valid_from: valid_from
      valid_text: valid_from
      price: price
      price_num: price
"""


def node(tmp_path: Path, server: str, register: str, mappings: dict[str, str]) -> Node:
    config = write_node(tmp_path, server, register, mappings, extra=f'timezone = "{SAO_PAULO}"\n')
    assert 'timezone = "America/Sao_Paulo"' in config.read_text().split("[databases.caixa]")[1]
    n = Node(config)
    assert n.dbs["caixa"].timezone == SAO_PAULO, "Databases opens each backend with its zone"
    assert n.dbs["server"].timezone == "UTC"
    n.setup()
    return n


def test_sale_after_local_midnight_reaches_the_server_on_its_business_day(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    server, register = pg_database(), sqlite_database()
    execute(
        register,
        "CREATE TABLE sale (sale_id INTEGER PRIMARY KEY, opened_at DATETIME, total TEXT)",
    )
    execute(
        server,
        "CREATE TABLE sale (sale_id integer PRIMARY KEY, opened_at timestamptz, "
        "total numeric(20,2))",
    )
    n = node(tmp_path, server, register, {"movimento": SALES})
    try:
        execute(
            register,
            "INSERT INTO sale (sale_id, opened_at, total) VALUES "
            "(1, '2024-03-01 00:30:00.000000', '12.50'), "
            "(2, '2024-02-29 23:59:59.000000', '12345678901234567.89')",
        )
        n.sync("movimento")
        assert quarantined(n) == []
        engine = sa.create_engine(server)
        try:
            with engine.connect() as conn:
                got = conn.execute(sa.text("SELECT sale_id, opened_at, total FROM sale")).all()
                business_days = conn.execute(
                    sa.text("SELECT (opened_at AT TIME ZONE 'America/Sao_Paulo')::date FROM sale")
                ).scalars()
                days = {d.isoformat() for d in business_days}
        finally:
            engine.dispose()
        got.sort()
        assert days == {"2024-03-01", "2024-02-29"}
        assert got[0][1] == datetime(2024, 3, 1, 3, 30, tzinfo=UTC)
        assert got[1][1] == datetime(2024, 3, 1, 2, 59, 59, tzinfo=UTC)
        # TEXT money stays exact: no float on the way (a float keeps ~15 digits)
        assert [r[2] for r in got] == [Decimal("12.50"), Decimal("12345678901234567.89")]
    finally:
        n.close()


def test_server_prices_reach_a_register_in_its_declared_forms(
    pg_database: Callable[[], str], sqlite_database: Callable[[], str], tmp_path: Path
) -> None:
    server, register = pg_database(), sqlite_database()
    execute(
        server,
        "CREATE TABLE price (product_id integer PRIMARY KEY, valid_from timestamptz, "
        "price numeric(15,4))",
        "INSERT INTO price VALUES (1, '2024-03-01 02:00:00+00', 12.5), "
        "(2, '2024-03-01 12:00:00+00', 1234567890.1234), (3, NULL, 0)",
    )
    execute(
        register,
        "CREATE TABLE price (product_id INTEGER PRIMARY KEY, valid_from DATETIME, "
        "valid_text TEXT, price TEXT, price_num NUMERIC(15,4))",
    )
    n = node(tmp_path, server, register, {"cadastros": PRICES})
    try:
        n.sync("cadastros")
        assert quarantined(n, "caixa") == []
        engine = sa.create_engine(register)
        try:
            with engine.connect() as conn:
                got = conn.exec_driver_sql(
                    "SELECT product_id, valid_from, valid_text, price, typeof(price), price_num "
                    "FROM price ORDER BY 1"
                ).all()
        finally:
            engine.dispose()
        assert got == [
            (1, "2024-02-29 23:00:00.000000", "2024-02-29T23:00:00-03:00", "12.5000", "text", 12.5),
            (
                2,
                "2024-03-01 09:00:00.000000",
                "2024-03-01T09:00:00-03:00",
                "1234567890.1234",
                "text",
                1234567890.1234,
            ),
            (3, None, None, "0.0000", "text", 0),
        ]
        # Sent again (an update that changes nothing), the rows still go through.
        execute(server, "UPDATE price SET price = price")
        n.sync("cadastros")
        assert quarantined(n, "caixa") == []
    finally:
        n.close()


# --- replicator check agrees with sync ----------------------------------------------------------
def test_check_type_rules_follow_what_sync_does(
    sqlite_database: Callable[[], str], pg_database: Callable[[], str], tmp_path: Path
) -> None:
    server, register = pg_database(), sqlite_database()
    execute(
        register,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, money TEXT, at DATETIME, code VARCHAR(1), "
        "n INTEGER, label TEXT)",
    )
    execute(
        server,
        "CREATE TABLE t (id integer PRIMARY KEY, money numeric(15,2), at text, code integer, "
        "n timestamptz, label integer)",
    )
    mapping = textwrap.dedent("""\
        group: g
        direction: register_to_server
        tables:
          - source: t
            key: [id]
            columns:
              code: {from: code, map: {"A": 1, "B": 2}}
              label: {from: label, map: {"x": "x"}, default: "y"}
        """)
    n = Node(write_node(tmp_path, server, register, {"g": mapping}))
    try:
        n.setup()
        report = run_check(n.settings, n.dbs)
    finally:
        n.close()
    errors, warnings = "\n".join(report.errors), "\n".join(report.warnings)
    # TEXT -> NUMERIC: copied exactly; rows whose text is not a number are quarantined
    assert "column 'money'" not in errors
    assert "column 'money': source type TEXT into target type NUMERIC(15, 2): non-numeric" in (
        warnings
    )
    # DATETIME -> TEXT: ISO-8601 text
    assert "column 'at'" not in errors + warnings
    # a value map that translates codes into numbers; other codes pass through as text
    assert "column 'code'" not in errors
    assert "column 'code': source type (values not in the map) VARCHAR(1)" in warnings
    # an (identity) value map converts nothing: it no longer hides a mismatch
    assert "column 'label': value map value 'x' does not fit target type INTEGER" in errors
    assert "column 'label'" not in warnings, "its default replaces the values not in the map"
    # INTEGER -> timestamptz: nothing sync can copy; the advice is a column type
    assert "column 'n': source type INTEGER does not fit target type TIMESTAMP" in errors
    assert "change the column type on one side" in errors
    assert "map it through a value map" not in errors


def test_text_money_with_more_places_than_the_server_keeps_is_refused_not_rounded(
    sqlite_database: Callable[[], str], pg_database: Callable[[], str], tmp_path: Path
) -> None:
    """'0.105' from a register's TEXT money column into numeric(12,2) would silently become
    0.11 on the server: the row is held with the reason instead; exact values go through."""
    register, server = sqlite_database(), pg_database()
    execute(register, "CREATE TABLE sale (id integer PRIMARY KEY, total text)")
    execute(server, "CREATE TABLE sale (id integer PRIMARY KEY, total numeric(12,2))")
    group = "group: m\ndirection: register_to_server\ntables:\n  - source: sale\n    key: [id]\n"
    node = Node(write_node(tmp_path, server, register, {"m": group}))
    node.setup()
    execute(
        register,
        "INSERT INTO sale (id, total) VALUES (1, '0.105'), (2, '0.10'), (3, ' 12.5 '), "
        "(4, '7.1000')",
    )
    node.sync()
    assert [(r[0], str(r[1])) for r in rows(server, "sale")] == [
        (2, "0.1"),
        (3, "12.5"),
        (4, "7.1"),
    ]
    held = quarantined(node)
    assert held == [("sale", "[1]")]
    node.close()


def test_a_date_the_register_wrote_in_another_format_holds_back_only_its_row(
    sqlite_database: Callable[[], str], pg_database: Callable[[], str], tmp_path: Path
) -> None:
    """SQLite keeps any text in a DATE column: one '04/03/2024' among ISO dates must be held
    with its reason (naming the column), while the other rows and tables go on."""
    register, server = sqlite_database(), pg_database()
    execute(register, 'CREATE TABLE "order" (id integer PRIMARY KEY, dia DATE)')
    execute(server, 'CREATE TABLE "order" (id integer PRIMARY KEY, dia date)')
    group = 'group: m\ndirection: register_to_server\ntables:\n  - source: "order"\n    key: [id]\n'
    node = Node(write_node(tmp_path, server, register, {"m": group}))
    node.setup()
    execute(
        register,
        """INSERT INTO "order" (id, dia) VALUES (1, '2024-03-04'), (2, '04/03/2024'),
           (3, '2024-03-05')""",
    )
    results = node.sync()
    assert results[0].error is None
    assert [r[0] for r in rows(server, "order")] == [1, 3]
    assert quarantined(node) == [("order", "[2]")]
    backend = node.dbs["server"]
    with backend.engine.connect() as conn:
        reason = conn.execute(sa.text("SELECT reason FROM replicator.quarantine")).scalar()
    assert "column 'dia'" in reason and "04/03/2024" in reason, reason
    # corrected at the source, it goes through with the next sync
    execute(register, """UPDATE "order" SET dia = '2024-03-04' WHERE id = 2""")
    node.sync()
    assert [r[0] for r in rows(server, "order")] == [1, 2, 3]
    assert quarantined(node) == []
    node.close()
