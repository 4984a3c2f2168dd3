"""`replicator resync` with MariaDB and Firebird registers and a PostgreSQL server: the same
mapped row hashes the same on every database (MariaDB builds the canonical text and its MD5 in
SQL; Firebird 3, without MD5, streams the rows' values to be hashed in Python), so a dry run
finds exactly the injected differences, the resync repairs them, and equal rows are never
downloaded."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from support_backends import Store, connect, create, insert, key, make_store, timestamp

from replicator.resync import ResyncResult, run_resync, select_jobs
from replicator.resync_hash import MASK, field_specs, field_text, row_hasher
from replicator.resync_side import Side

KINDS = ["mariadb", "firebird"]
N_SALES = 3000
N_PRODUCTS = 2000
QUANTUM = {"mariadb": timedelta(microseconds=1), "firebird": timedelta(microseconds=100)}

MOVEMENT = """\
group: movimento
direction: register_to_server
tables:
  - source: sale
    key: [sale_id]
    target_key: [store_id, register_id, sale_id]
    columns:
      store_id: "{store_id}"
      register_id: "{register_id}"
      status: {from: status, map: {"O": open, "C": closed}}
      channel: {const: "loja"}
    deletes: ignore
"""
CATALOG = """\
group: produtos
direction: server_to_register
tables:
  - source: product
    key: [product_id]
    deletes: delete
"""


def _register_tables() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "sale",
        md,
        key("sale_id"),
        sa.Column("status", sa.String(1)),
        sa.Column("total", sa.Numeric(10, 2)),
        sa.Column("qty", sa.Numeric(12, 3)),
        sa.Column("opened_at", timestamp()),
        sa.Column("note", sa.String(40)),
        sa.Column("name", sa.String(40)),
        sa.Column("paid", sa.Boolean),
    )
    sa.Table(
        "product",
        md,
        key("product_id"),
        sa.Column("name", sa.String(40)),
        sa.Column("price", sa.Numeric(10, 2)),
        sa.Column("updated_at", timestamp()),
        sa.Column("active", sa.Boolean),
    )
    return md


def _server_tables() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "sale",
        md,
        sa.Column("store_id", sa.Integer, primary_key=True),
        sa.Column("register_id", sa.Integer, primary_key=True),
        sa.Column("sale_id", sa.Integer, primary_key=True),
        sa.Column("status", sa.String(10)),
        sa.Column("total", sa.Numeric(12, 4)),  # another scale than the register's
        sa.Column("qty", sa.Numeric(12, 3)),
        sa.Column("opened_at", sa.DateTime(timezone=True)),
        sa.Column("note", sa.String(40)),
        sa.Column("name", sa.String(40)),
        sa.Column("paid", sa.Boolean),
        sa.Column("channel", sa.String(10)),
    )
    sa.Table(
        "product",
        md,
        key("product_id"),
        sa.Column("name", sa.String(40)),
        sa.Column("price", sa.Numeric(10, 2)),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
        sa.Column("active", sa.Boolean),
    )
    return md


START = datetime(2024, 1, 1)
WRITES = ("INSERT", "UPDATE", "DELETE", "MERGE", "CREATE", "ALTER", "DROP", "TRUNCATE")


def _sale(i: int) -> dict[str, Any]:
    return {
        "sale_id": i,
        "status": "C" if i % 3 == 0 else "O",
        "total": Decimal(i % 1000) + Decimal("0.50"),
        "qty": Decimal(i % 7) - Decimal("2.125"),  # negative ones too
        # midnight, whole seconds and fractions Firebird keeps (1/10000 s)
        "opened_at": START + timedelta(seconds=i, microseconds=123400 * (i % 2)),
        "note": None if i % 10 == 0 else f"n{i}",
        "name": "Pão de queijo" if i % 5 == 0 else "café",
        "paid": i % 2 == 0,
    }


def _server_sale(i: int) -> dict[str, Any]:
    row = _sale(i)
    return {
        **row,
        "store_id": 1,
        "register_id": 3,
        "status": "closed" if row["status"] == "C" else "open",
        "opened_at": row["opened_at"].replace(tzinfo=UTC),
        "channel": "loja",
    }


def _product(i: int, aware: bool) -> dict[str, Any]:
    at = datetime(2024, 3, 1, 12) + timedelta(seconds=i, microseconds=500 * (i % 3))
    return {
        "product_id": i,
        "name": None if i % 10 == 0 else ("Açaí" if i % 3 == 0 else f"p{i}"),
        "price": Decimal(i % 100) + Decimal("0.10"),
        "updated_at": at.replace(tzinfo=UTC) if aware else at,
        "active": i % 2 == 0,
    }


@pytest.fixture(params=KINDS)
def store(
    request: pytest.FixtureRequest, pg_database: Callable[[], str], tmp_path: Path
) -> Iterator[Store]:
    register_database = request.getfixturevalue(f"{request.param}_database")
    with make_store(register_database, pg_database, tmp_path) as made:
        yield made


def _resync(store: Store, **kw: Any) -> ResyncResult:
    node = store.nodes[-1]
    selection = select_jobs(node.settings, [], None)
    return run_resync(node.settings, node.dbs, selection, chunk_rows=1000, **kw)


def _found(result: ResyncResult, table: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {"missing": set(), "extra": set(), "different": set()}
    (report,) = [t for t in result.tables if t.table == table]
    for s in report.samples:
        out[s["kind"]].add(s["key"])
    return out


def _execute(url: str, *statements: tuple[str, dict[str, Any]]) -> None:
    with connect(url) as conn:
        for sql, params in statements:
            conn.execute(sa.text(sql), params)


def test_dry_run_finds_exactly_the_injected_differences_and_resync_repairs_them(
    store: Store,
) -> None:
    """Both directions at once: sales up from the register (the register is the source),
    the catalog down to it (the register is the target)."""
    create(store.register, _register_tables())
    create(store.server, _server_tables())
    insert(store.register, "sale", [_sale(i) for i in range(1, N_SALES + 1)])
    insert(store.server, "sale", [_server_sale(i) for i in range(1, N_SALES + 1)])
    insert(store.server, "product", [_product(i, True) for i in range(1, N_PRODUCTS + 1)])
    insert(store.register, "product", [_product(i, False) for i in range(1, N_PRODUCTS + 1)])
    node = store.node({"movimento": MOVEMENT, "produtos": CATALOG})
    same = _resync(store, dry_run=True)
    assert not same.errors, same.errors
    assert {t.table: (t.rows, t.differences, t.fetched, t.hashes) for t in same.tables} == {
        "sale": (N_SALES, 0, 0, 0),
        "product": (N_PRODUCTS, 0, 0, 0),
    }
    quantum = QUANTUM[store.kind]
    _execute(
        store.server,
        ("DELETE FROM sale WHERE sale_id IN (10, 2500)", {}),  # missing
        ("INSERT INTO sale (store_id, register_id, sale_id, note) VALUES (1, 3, 9000, 'x')", {}),
        ("UPDATE sale SET note = 'edited' WHERE sale_id = 11", {}),  # one column
        ("UPDATE sale SET note = '' WHERE sale_id = 20", {}),  # NULL at the register
        ("UPDATE sale SET total = total + 0.0001 WHERE sale_id = 16", {}),  # the scale
        ("UPDATE sale SET qty = qty + 0.001 WHERE sale_id = 12", {}),
        ("UPDATE sale SET opened_at = opened_at + :q WHERE sale_id = 13", {"q": quantum}),
        ("UPDATE sale SET channel = 'web' WHERE sale_id = 14", {}),  # a constant
        ("UPDATE sale SET name = 'Pao de queijo' WHERE sale_id = 15", {}),  # an accent
        ("UPDATE sale SET paid = NOT paid WHERE sale_id = 17", {}),
    )
    _execute(
        store.register,
        ("DELETE FROM product WHERE product_id IN (1, 1500)", {}),  # missing
        ("INSERT INTO product (product_id, name) VALUES (5000, 'ghost')", {}),  # extra
        ("UPDATE product SET price = 5.11 WHERE product_id = 5", {}),
        ("UPDATE product SET name = '' WHERE product_id = 10", {}),  # NULL at the server
        (
            "UPDATE product SET updated_at = :at WHERE product_id = 7",
            {"at": datetime(2024, 3, 1, 12, 0, 7, 500) + quantum},
        ),
        ("UPDATE product SET active = :a WHERE product_id = 8", {"a": False}),
        ("UPDATE product SET name = 'Acai' WHERE product_id = 9", {}),  # an accent
    )
    seen: list[str] = []

    def listen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(WRITES):
            seen.append(statement)

    for backend in (node.dbs["caixa"], node.dbs["server"]):
        sa.event.listen(backend.engine, "before_cursor_execute", listen)
    dry = _resync(store, dry_run=True)
    for backend in (node.dbs["caixa"], node.dbs["server"]):
        sa.event.remove(backend.engine, "before_cursor_execute", listen)
    assert not dry.errors, dry.errors
    assert seen == []  # --dry-run: not one write reached either database
    assert _found(dry, "sale") == {
        "missing": {"[10]", "[2500]"},
        "extra": {"[1,3,9000]"},
        "different": {f"[1,3,{i}]" for i in range(11, 18)} | {"[1,3,20]"},
    }
    assert _found(dry, "product") == {
        "missing": {"[1]", "[1500]"},
        "extra": {"[5000]"},
        "different": {f"[{i}]" for i in (5, 7, 8, 9, 10)},
    }
    # equal rows hash alike on both sides: only the differing rows are downloaded
    assert {t.table: t.fetched for t in dry.tables} == {"sale": 16, "product": 10}
    assert dry.exit_code == 8

    fixed = _resync(store, dry_run=False, delete_extra=True)
    assert not fixed.errors, fixed.errors
    assert {t.table: (t.repaired, t.deleted, t.held) for t in fixed.tables} == {
        "sale": (10, 1, 0),
        "product": (7, 1, 0),
    }
    again = _resync(store, dry_run=True)
    assert again.differences == 0 and again.exit_code == 0
    assert {t.table: t.hashes for t in again.tables} == {"sale": 0, "product": 0}

    # and through the command line
    from replicator.cli import cli
    from replicator.resync import resync_command

    cli.add_command(resync_command)
    res = CliRunner().invoke(cli, ["-c", str(node.settings.path), "resync", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["differences"] == 0 and len(doc["tables"]) == 2


# --- the canonical texts, value by value --------------------------------------------------------
AWKWARD = [
    # id, dec2, dec_plain, text, at (naive), stamp (into an instant), day, flag
    (1, "-12.35", "0.1000", "", "2024-01-01 00:00:00", "2024-01-01 00:00:00", True),
    (2, "0.10", "-3.0000", None, "2024-01-01 10:00:00.5", "1999-12-31 23:59:59.1234", False),
    (3, "0.00", "100", "N", "2024-02-29 23:59:59.9999", "2024-06-01 12:00:00.0001", None),
    (4, None, "-0.0001", "3:é|a", None, None, True),
    (5, "-0.01", None, "Pão 😀 ação", "2000-01-01 00:00:00.0100", "2024-01-01 00:00:00.5", False),
]


def test_canonical_texts_equal_pythons_and_postgresqls(store: Store) -> None:
    """Per column and per row hash, for awkward values: the register's texts (MariaDB: its
    SQL; Firebird: Python over the driver's values) equal PostgreSQL's SQL and Python's."""
    from replicator.resync_hash import postgresql_fields, postgresql_row_hash
    from replicator.resync_mariadb import mariadb_fields, mariadb_row_hash

    def table(md: sa.MetaData, aware: bool, wide: bool) -> sa.Table:
        return sa.Table(
            "kinds",
            md,
            key("id"),
            sa.Column("d2", sa.Numeric(10, 2)),
            sa.Column("dn", sa.Numeric(12, 4) if not wide else sa.Numeric()),
            sa.Column("t", sa.String(40)),
            sa.Column("at", timestamp()),
            sa.Column("stamp", timestamp(aware)),
            sa.Column("flag", sa.Boolean),
        )

    register_md, server_md = sa.MetaData(), sa.MetaData()
    table(register_md, False, False)
    table(server_md, True, True)
    create(store.register, register_md)
    create(store.server, server_md)
    values: list[dict[str, Any]] = [
        {
            "id": r[0],
            "d2": None if r[1] is None else Decimal(r[1]),
            "dn": None if r[2] is None else Decimal(r[2]),
            "t": r[3],
            "at": None if r[4] is None else datetime.fromisoformat(r[4]),
            "stamp": None if r[5] is None else datetime.fromisoformat(r[5]),
            "flag": r[6],
        }
        for r in AWKWARD
    ]
    insert(store.register, "kinds", values)
    insert(
        store.server,
        "kinds",
        [{**v, "stamp": v["stamp"] and v["stamp"].replace(tzinfo=UTC)} for v in values],
    )
    node = store.node({"produtos": CATALOG}, setup=False)
    here, there = node.dbs["caixa"], node.dbs["server"]
    with there.engine.connect() as conn:
        target = sa.Table("kinds", sa.MetaData(), autoload_with=conn)
        names = [c.name for c in target.c]
        specs = field_specs(target, names, "UTC")
        fields = postgresql_fields(specs, [target.c[n] for n in names], "UTC")
        sub = sa.select(*[f.label(f"f{i}") for i, f in enumerate(fields)]).subquery()
        pg_texts = [list(r) for r in conn.execute(sa.select(*fields).order_by(target.c.id))]
        pg_hashes = [
            int(h) & MASK
            for (h,) in conn.execute(
                sa.select(postgresql_row_hash(specs, list(sub.c), "md5")).order_by(sub.c.f0)
            )
        ]
    with here.engine.connect() as conn:
        source = sa.Table("kinds", sa.MetaData(), autoload_with=conn)
        raw = conn.execute(sa.select(*[source.c[n] for n in names]).order_by(source.c.id)).all()
        python = [
            [field_text(s, v, here.timezone) for s, v in zip(specs, r, strict=True)] for r in raw
        ]
        hasher = row_hasher(specs, here.timezone)
        assert python == pg_texts
        assert [hasher(*r) for r in raw] == pg_hashes
    # the register side's own row hashes (MariaDB: SQL; Firebird: streamed, hashed here)
    side = Side(here, source, [source.c[n] for n in names], [], [source.c.id], specs, specs[:1])
    by_id = {int(k[0]): h for k, _, h in side.hashes([(None, None)])}
    assert [by_id[r[0]] for r in AWKWARD] == pg_hashes
    if store.kind == "firebird":  # the row text Firebird builds is the one Python builds
        from replicator.resync_firebird import firebird_row_text
        from replicator.resync_hash import _piece

        text = firebird_row_text(specs, [source.c[n] for n in names], here.timezone)
        assert text is not None
        with here.engine.connect() as conn:
            built = conn.execute(sa.select(text).order_by(source.c.id)).scalars().all()
        assert built == [
            "|".join(_piece(s, f) for s, f in zip(specs, t, strict=True)) for t in pg_texts
        ]
    # a register in another zone than UTC: its naive timestamps into an instant are
    # converted in Python (MariaDB too: CONVERT_TZ needs the server's zone tables)
    zone, before = "America/Sao_Paulo", here.timezone
    here.timezone = zone
    try:
        # a constant in place of the text (a mapping's `{const: ...}`): not read back
        exprs = [source.c[n] if n != "t" else sa.literal("loja").label("t") for n in names]
        side = Side(here, source, exprs, [], [source.c.id], specs, specs[:1])
        assert side.client
        by_id = {int(k[0]): h for k, _, h in side.hashes([(None, None)])}
    finally:
        here.timezone = before
    local = row_hasher(specs, zone)
    at = names.index("t")
    expected = [local(*r[:at], "loja", *r[at + 1 :]) for r in raw]
    assert [by_id[r[0]] for r in raw] == expected
    assert not set(expected) & set(pg_hashes)
    with here.engine.connect() as conn:
        if store.kind == "mariadb":
            mine = mariadb_fields(specs, [source.c[n] for n in names], here.timezone)
            assert mine is not None
            sql = [list(r) for r in conn.execute(sa.select(*mine).order_by(source.c.id))]
            assert sql == pg_texts
            hashed = conn.execute(
                sa.select(mariadb_row_hash(specs, mine)).order_by(source.c.id)
            ).scalars()
            assert [int(h) for h in hashed] == pg_hashes


# --- keys other than one integer column -------------------------------------------------------
KEYS = """\
group: chaves
direction: server_to_register
tables:
  - source: code
    key: [code]
  - source: line
    key: [sale_id, line_no]
"""


def _keys_tables() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "code",
        md,
        sa.Column("code", sa.String(20), primary_key=True),
        sa.Column("label", sa.String(20)),
    )
    sa.Table(
        "line",
        md,
        sa.Column("sale_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("line_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("qty", sa.Numeric(10, 3)),
    )
    return md


def _code(i: int) -> str:
    """Mixed case and accents: a case-insensitive collation orders them otherwise than code
    points do."""
    return ("K", "k", "é", "Ž", "a")[i % 5] + str(i)


@pytest.fixture(params=[*KINDS, "firebird-win1252"])
def keys_store(
    request: pytest.FixtureRequest, pg_database: Callable[[], str], tmp_path: Path
) -> Iterator[Store]:
    kind, _, charset = str(request.param).partition("-")
    make = request.getfixturevalue(f"{kind}_database")
    register = (lambda: make(charset.upper())) if charset else make
    with make_store(register, pg_database, tmp_path) as made:
        yield made


def test_text_and_composite_keys_chunk_by_key_values_not_collation(keys_store: Store) -> None:
    """Text keys in code point order on every side (MariaDB's collation folds case; a
    WIN1252 Firebird database orders `Ž` (0x8E) before `é`), and a composite key."""
    store = keys_store
    for url in (store.register, store.server):
        create(url, _keys_tables())
        insert(url, "code", [{"code": _code(i), "label": f"l{i}"} for i in range(1, 3001)])
        insert(
            url,
            "line",
            [{"sale_id": i // 4, "line_no": i % 4, "qty": Decimal(i) / 8} for i in range(4000)],
        )
    store.node({"chaves": KEYS})
    same = _resync(store, dry_run=True, leaf_rows=50)
    assert not same.errors, same.errors
    assert {t.table: (t.rows, t.differences, t.hashes) for t in same.tables} == {
        "code": (3000, 0, 0),
        "line": (4000, 0, 0),
    }
    _execute(
        store.register,
        ("DELETE FROM code WHERE code IN ('k1', 'Ž2998')", {}),
        ("INSERT INTO code (code, label) VALUES ('A0', 'extra')", {}),
        ("INSERT INTO code (code, label) VALUES ('ée', 'extra')", {}),
        ("UPDATE code SET label = 'changed' WHERE code = 'é1502'", {}),
        ("DELETE FROM line WHERE sale_id = 10 AND line_no = 2", {}),
        ("INSERT INTO line (sale_id, line_no, qty) VALUES (5000, 1, 1)", {}),
        ("UPDATE line SET qty = -1 WHERE sale_id = 900 AND line_no = 3", {}),
    )
    dry = _resync(store, dry_run=True, leaf_rows=50)
    assert not dry.errors, dry.errors
    assert _found(dry, "code") == {
        "missing": {'["k1"]', json.dumps(["Ž2998"])},
        "extra": {'["A0"]', json.dumps(["ée"])},
        "different": {json.dumps(["é1502"])},
    }
    assert _found(dry, "line") == {
        "missing": {"[10,2]"},
        "extra": {"[5000,1]"},
        "different": {"[900,3]"},
    }
    fixed = _resync(store, dry_run=False, leaf_rows=50)
    assert not fixed.errors, fixed.errors
    assert _resync(store, dry_run=True, leaf_rows=50).differences == 0
