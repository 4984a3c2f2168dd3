"""The Firebird register backend with a PostgreSQL server, through the real Node (config,
mappings, setup, sync): out-of-order commits of generator versions, rolled-back and dead
transactions, no echo, deletes and key changes, WIN1252 text both ways and the quarantine of
characters it cannot hold, timestamps, exact decimals, blobs and long text, and the isql
script of `setup --print`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from firebird.driver import DatabaseError, connect
from fixtures_firebird import _dsn, _password
from support import moved, quarantined
from support_backends import Store, blob, create, ids, insert, long_text, make_store, rows
from support_backends import connect as connect_sa

from replicator.backends.firebird_sql import split_script
from replicator.cli import cli

ITEMS = """\
group: itens
direction: {direction}
tables:
  - source: item
    key: [id]
"""
UP, DOWN = "register_to_server", "server_to_register"
BOTH_WAYS = {
    "down": """\
        group: cadastros
        direction: server_to_register
        tables:
          - source: customer
            key: [id]
        """,
    "up": """\
        group: movimento
        direction: register_to_server
        tables:
          - source: customer
            key: [id]
        """,
}
PORTUGUESE = [
    "Ação de graças",
    "CORAÇÃO, PÃO E LIMÕES",
    "Sabão em pó nº 1",
    "1ª e 2º lugar: Açaí É bom",
    "ÇÃÕÉ çãõé ÂÊÔ âêô ÀÜ àü",
    "Preço: € 5,00 — “promoção”",
]


@pytest.fixture
def fb_store(
    firebird_database: Callable[..., str], pg_database: Callable[[], str], tmp_path: Path
) -> Iterator[Store]:
    with make_store(firebird_database, pg_database, tmp_path) as made:
        yield made


@pytest.fixture
def win1252_store(
    firebird_database: Callable[..., str], pg_database: Callable[[], str], tmp_path: Path
) -> Iterator[Store]:
    with make_store(lambda: firebird_database("WIN1252"), pg_database, tmp_path) as made:
        yield made


@contextmanager
def app(url: str) -> Iterator[Any]:
    """A connection of the POS application itself (firebird-driver, its own transactions)."""
    conn = connect(_dsn(sa.make_url(url).database or ""), password=_password(), charset="UTF8")
    try:
        yield conn
    finally:
        try:
            if conn.main_transaction.is_active():
                conn.rollback()
            conn.close()
        except DatabaseError:
            pass  # its attachment was ended by the test


def run(conn: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, params or None)
        return list(cur.fetchall()) if cur.description else []


DEAD_SALE = """
import sys, time
from firebird.driver import connect
conn = connect(sys.argv[1], charset="UTF8")
cur = conn.cursor()
cur.execute("INSERT INTO item (id, name, qty) VALUES (4, 'never committed', 1)")
print("sold", flush=True)
time.sleep(60)
"""


def inflight(url: str) -> list[tuple[Any, ...]]:
    with app(url) as conn:
        return run(conn, "SELECT TX, FLOOR_VERSION FROM REPLICATOR_INFLIGHT ORDER BY TX")


def item_table(md: sa.MetaData, name: str = "item") -> sa.Table:
    return sa.Table(
        name,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(80)),
        sa.Column("qty", sa.Integer),
    )


def with_items(store: Store, direction: str = UP) -> Any:
    for url in (store.register, store.server):
        md = sa.MetaData()
        item_table(md)
        create(url, md)
    return store.node({"itens": ITEMS.format(direction=direction)})


# --- out-of-order commits: generator versions are not transactional ----------------------------
def test_a_late_commit_of_an_earlier_version_is_not_lost(fb_store: Store) -> None:
    """A takes a version and stays open; B takes a later one and commits; a sync runs (it
    must not pass A's version); A commits; the next sync delivers both, once."""
    node = with_items(fb_store)
    with app(fb_store.register) as a, app(fb_store.register) as b:
        run(a, "INSERT INTO item (id, name, qty) VALUES (1, 'slow A', 1)")
        a_version = run(a, "SELECT repl_version FROM item WHERE id = 1")[0][0]
        run(b, "INSERT INTO item (id, name, qty) VALUES (2, 'fast B', 1)")
        b.commit()
        b_version = run(b, "SELECT repl_version FROM item WHERE id = 2")[0][0]
        assert a_version < b_version, "the test needs A's version below B's"
        a_tx = run(a, "SELECT CURRENT_TRANSACTION FROM RDB$DATABASE")[0][0]
        floors = dict(inflight(fb_store.register))
        assert a_tx in floors, "A is in flight"
        assert floors[a_tx] <= a_version, "its floor is below every version it takes"
        node.sync()
        assert ids(fb_store.server, "item") == [], "B waits behind the older open A"
        register = node.dbs["caixa"]
        register.blocker_seconds = -1  # A counts as old at once
        with register.read_snapshot() as conn:
            blocker = register.source_position(conn, node.settings.jobs()[0].name).blocker
        a_attachment = run(a, "SELECT CURRENT_CONNECTION FROM RDB$DATABASE")[0][0]
        assert blocker is not None and blocker.pid == a_attachment, blocker
        assert f"MON$ATTACHMENT_ID = {a_attachment}" in str(blocker), "how to end it"
        a.commit()
    node.sync()
    assert inflight(fb_store.register) == [], "records of ended transactions are purged"
    assert rows(fb_store.server, "item") == [(1, "slow A", 1), (2, "fast B", 1)]
    assert moved(node.sync()) == 0, "nothing twice"


def test_commit_retaining_starts_a_new_transaction_that_is_tracked_again(
    fb_store: Store,
) -> None:
    """Delphi POS applications commit with COMMIT RETAINING: the work goes on in a new
    transaction (a new id), whose versions must be held back like any other's."""
    node = with_items(fb_store)
    with app(fb_store.register) as w, app(fb_store.register) as b:
        run(w, "INSERT INTO item (id, name, qty) VALUES (1, 'first', 1)")
        w.commit(retaining=True)
        run(w, "INSERT INTO item (id, name, qty) VALUES (2, 'after retaining', 1)")
        run(b, "INSERT INTO item (id, name, qty) VALUES (3, 'other register', 1)")
        b.commit()
        node.sync()
        assert ids(fb_store.server, "item") == [1], "2 is in flight, 3 waits behind it"
        w.commit()
    node.sync()
    assert ids(fb_store.server, "item") == [1, 2, 3]


def test_rolled_back_and_dead_transactions_do_not_hold_the_bound(fb_store: Store) -> None:
    node = with_items(fb_store)
    insert(fb_store.register, "item", [{"id": 1, "name": "before", "qty": 1}])
    with app(fb_store.register) as hole, app(fb_store.register) as c:
        run(hole, "INSERT INTO item (id, name, qty) VALUES (2, 'rolled back', 1)")
        run(c, "INSERT INTO item (id, name, qty) VALUES (3, 'after', 1)")
        c.commit()
        node.sync()
        assert ids(fb_store.server, "item") == [1]
        hole.rollback()
    node.sync()
    assert ids(fb_store.server, "item") == [1, 3], "the rolled-back one no longer holds it"
    assert inflight(fb_store.register) == [], "its record is purged"
    # a POS process killed mid-sale (kill -9): the server ends its transaction
    dead = subprocess.Popen(
        [sys.executable, "-c", DEAD_SALE, _dsn(sa.make_url(fb_store.register).database or "")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        assert dead.stdout is not None and dead.stdout.readline().strip() == "sold"
        insert(fb_store.register, "item", [{"id": 5, "name": "later", "qty": 1}])
        node.sync()
        assert ids(fb_store.server, "item") == [1, 3]
    finally:
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        if dead.stdout is not None:
            dead.stdout.close()
    node.sync()
    assert ids(fb_store.server, "item") == [1, 3, 5]
    assert rows(fb_store.server, "item") == rows(fb_store.register, "item")


# --- no echo, deletes, key changes ---------------------------------------------------------------
def test_no_echo_deletes_and_key_changes_both_ways(fb_store: Store) -> None:
    """Customers replicate both ways: a row never bounces back; a delete and a key change on
    the register (the old key leaves as a tombstone) reach the server, and back down."""
    for url in (fb_store.register, fb_store.server):
        md = sa.MetaData()
        sa.Table(
            "customer",
            md,
            sa.Column("id", sa.String(36), primary_key=True),
            sa.Column("name", sa.String(80)),
        )
        create(url, md)
    node = fb_store.node(BOTH_WAYS)
    insert(fb_store.register, "customer", [{"id": "c-reg", "name": "José da Silva"}])
    insert(fb_store.server, "customer", [{"id": "c-srv", "name": "Maria"}])
    assert moved(node.sync("movimento")) == 1
    assert moved(node.sync("cadastros")) == 1, "only c-srv goes down, not c-reg back"
    for _ in range(2):
        assert moved(node.sync("movimento", "cadastros")) == 0, "no echo either way"
    with app(fb_store.register) as pos:
        run(pos, "UPDATE customer SET id = 'c-new', name = 'José S.' WHERE id = 'c-reg'")
        run(pos, "INSERT INTO customer (id, name) VALUES ('c-\"q\\', 'aspas')")
        run(pos, "INSERT INTO customer (id, name) VALUES (?, 'controle')", "c\tab\nl\x01")
        pos.commit()
    node.sync("movimento")
    assert sorted(rows(fb_store.server, "customer")) == [
        ("c\tab\nl\x01", "controle"),
        ('c-"q\\', "aspas"),
        ("c-new", "José S."),
        ("c-srv", "Maria"),
    ], "the old key c-reg is deleted on the server"
    with app(fb_store.register) as pos:
        run(pos, "DELETE FROM customer WHERE id IN ('c-\"q\\', 'c-srv')")
        run(pos, "DELETE FROM customer WHERE id = ?", "c\tab\nl\x01")
        pos.commit()
    node.sync("movimento")
    assert [r[0] for r in rows(fb_store.server, "customer")] == ["c-new"]
    insert(fb_store.server, "customer", [{"id": "c-srv", "name": "Maria de novo"}])
    node.sync("cadastros")
    assert moved(node.sync("movimento", "cadastros")) == 0
    assert rows(fb_store.server, "customer") == rows(fb_store.register, "customer")


# --- character sets: a WIN1252 register, a UTF-8 server ------------------------------------------
CATALOG = """\
group: cadastros
direction: server_to_register
tables:
  - source: product
    key: [id]
"""
NOTES = """\
group: movimento
direction: register_to_server
tables:
  - source: note
    key: [id]
"""


def text_table(md: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(60)),
        sa.Column("memo", sa.Text),
    )


def test_win1252_text_both_ways_and_characters_it_cannot_hold(win1252_store: Store) -> None:
    store = win1252_store
    for url in (store.register, store.server):
        md = sa.MetaData()
        text_table(md, "product")
        text_table(md, "note")
        create(url, md)
    node = store.node({"cadastros": CATALOG, "movimento": NOTES})
    down = [{"id": i, "name": t, "memo": t * 50} for i, t in enumerate(PORTUGUESE, 1)]
    down += [
        {"id": 90, "name": "Visto ✓", "memo": "ok"},
        {"id": 91, "name": "Erdős", "memo": "ok"},
        {"id": 92, "name": "ok", "memo": "memo com ✓"},
    ]
    insert(store.server, "product", down)
    node.sync("cadastros")
    assert rows(store.register, "product") == [
        (r["id"], r["name"], r["memo"]) for r in down if r["id"] < 90
    ], "every Portuguese character arrives as it was"
    with app(store.register) as pos:
        assert run(
            pos, "SELECT COUNT(*) FROM product WHERE OCTET_LENGTH(name) <> CHAR_LENGTH(name)"
        ) == [(0,)], "stored as WIN1252: one byte a character"
    q = node.dbs["caixa"].ct.quarantine
    with node.dbs["caixa"].engine.connect() as conn:
        held = conn.execute(
            sa.select(q.c.row_key, q.c.status, q.c.reason).order_by(q.c.row_key)
        ).all()
    assert [(k, s) for k, s, _ in held] == [
        ("[90]", "refused"),
        ("[91]", "refused"),
        ("[92]", "refused"),
    ]
    assert "'✓'" in held[0][2] and "WIN1252" in held[0][2] and "'name'" in held[0][2], held[0]
    assert "'ő'" in held[1][2] and "U+0151" in held[1][2], held[1]
    assert "'memo'" in held[2][2], held[2]

    up = [{"id": i, "name": t[::-1], "memo": t} for i, t in enumerate(PORTUGUESE, 1)]
    insert(store.register, "note", up)
    node.sync("movimento")
    assert rows(store.server, "note") == [(r["id"], r["name"], r["memo"]) for r in up]


def test_a_transliteration_failure_is_sorted_by_its_status_code(win1252_store: Store) -> None:
    """What the server itself says of a character WIN1252 lacks (a value that reaches it
    without the row check): a refused row, sorted by gds code, not by message text."""
    from replicator.backends import open_backend
    from replicator.backends.firebird import ISC_TRANSLITERATION_FAILED, _codes
    from replicator.quarantine import REFUSED

    md = sa.MetaData()
    text_table(md, "product")
    create(win1252_store.register, md)
    backend = open_backend(sa.make_url(win1252_store.register), "caixa")
    try:
        with pytest.raises(sa.exc.DBAPIError) as caught, backend.engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO product (id, name) VALUES (1, ?)", ("Visto ✓",))
        assert ISC_TRANSLITERATION_FAILED in _codes(caught.value)
        assert backend.row_error(caught.value) == REFUSED
        assert backend.is_transient(caught.value.orig) is False
        message = str(backend.classify(caught.value))
        assert "Cannot transliterate character" in message, "the cause, not only line one"
    finally:
        backend.dispose()


# --- values: exact decimals, timestamps to 1/10000 s, blobs, long text ---------------------------
VALUES = """\
group: {group}
direction: {direction}
tables:
  - source: {table}
    key: [id]
"""
T0 = datetime(2026, 12, 1, 8, 30, 15, 123400)


def value_table(md: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("amount", sa.Numeric(18, 4)),
        sa.Column("at", sa.DateTime),
        sa.Column("image", blob()),
        sa.Column("notes", long_text()),
    )


def test_values_keep_every_digit_and_byte_and_microseconds_are_never_cut(
    fb_store: Store,
) -> None:
    store = fb_store
    for url in (store.register, store.server):
        md = sa.MetaData()
        value_table(md, "sale")
        value_table(md, "price")
        create(url, md)
    node = store.node(
        {
            "movimento": VALUES.format(group="movimento", direction=UP, table="sale"),
            "cadastros": VALUES.format(group="cadastros", direction=DOWN, table="price"),
        }
    )
    image = bytes(range(256)) * 256  # 64 KB, every byte value
    notes = ("Pão de queijo, açúcar, nº 1ª: " * 4000)[:100_000]
    amounts = [
        Decimal("12345678901234.5678"),
        Decimal("-0.0001"),
        Decimal("0.1000"),
        Decimal("99999999999999.9999"),
    ]
    sales = [
        {
            "id": i,
            "amount": amount,
            "at": T0 + timedelta(days=i, microseconds=100 * i),
            "image": image if i % 2 else b"\x00",
            "notes": notes if i % 2 else "",
        }
        for i, amount in enumerate(amounts, 1)
    ]
    insert(store.register, "sale", sales)
    node.sync("movimento")
    assert rows(store.server, "sale") == rows(store.register, "sale")
    assert [r[1] for r in rows(store.server, "sale")] == [a.normalize() for a in amounts]

    # down: Firebird keeps 1/10000 s; a value with more is refused, never cut
    prices = [
        {"id": 1, "amount": Decimal("1.2345"), "at": T0, "image": None, "notes": "ok"},
        {
            "id": 2,
            "amount": Decimal("2"),
            "at": T0.replace(microsecond=123456),
            "image": None,
            "notes": "µs",
        },
    ]
    insert(store.server, "price", prices)
    node.sync("cadastros")
    assert ids(store.register, "price") == [1]
    assert rows(store.register, "price") == rows(store.server, "price", where="id = 1")
    q = node.dbs["caixa"].ct.quarantine
    with node.dbs["caixa"].engine.connect() as conn:
        held = dict(conn.execute(sa.select(q.c.row_key, q.c.reason)).all())
    assert sorted(held) == ["[2]"]
    assert "'at'" in held["[2]"] and "08:30:15.123456" in held["[2]"], held


# --- setup --print: an isql script ---------------------------------------------------------------
def test_setup_print_is_an_isql_script_with_set_term(fb_store: Store) -> None:
    node = with_items(fb_store)
    node.setup()  # again: every statement is idempotent
    config = str(fb_store.path / "replicator.toml")
    checked = CliRunner().invoke(cli, ["--config", config, "check"])
    assert checked.exit_code == 0, checked.output
    result = CliRunner().invoke(cli, ["--config", config, "setup", "--print"])
    assert result.exit_code == 0, result.output
    script = result.output.split("-- database caixa:", 1)[1]
    assert "SET TERM ^ ;" in script and "SET TERM ; ^" in script
    assert "ACTIVE BEFORE INSERT OR UPDATE" in script and "ON TRANSACTION COMMIT" in script
    assert "GRANT INSERT ON replicator_tombstone TO TRIGGER" in script
    assert "IF NOT EXISTS" not in script and "ON CONFLICT" not in script
    statements = split_script(script)
    assert all(not s.rstrip().endswith(("^", ";")) for s in statements)
    assert any(s.startswith("CREATE OR ALTER TRIGGER rpl_stamp_") for s in statements)
    names = [w for s in statements for w in s.replace("(", " ").split() if w.startswith("rpl_")]
    assert names and max(len(n) for n in names) <= 31, "Firebird 3 names: 31 characters"


# --- conflict rules and the job's lock on a Firebird target ------------------------------------
RULES = """\
group: cadastros
direction: server_to_register
tables:
  - source: kept
    key: [id]
    conflict: keep_target
  - source: newer
    key: [id]
    conflict: {newer_wins: qty}
"""


def test_keep_target_newer_wins_and_the_job_lock(fb_store: Store) -> None:
    from replicator.errors import BusyError

    for url in (fb_store.register, fb_store.server):
        md = sa.MetaData()
        for name in ("kept", "newer"):
            item_table(md, name)
        create(url, md)
    node = fb_store.node({"cadastros": RULES})
    insert(fb_store.register, "kept", [{"id": 1, "name": "register's own", "qty": 1}])
    insert(fb_store.register, "newer", [{"id": 1, "name": "register", "qty": 5}])
    insert(fb_store.register, "newer", [{"id": 2, "name": "register", "qty": 5}])
    insert(fb_store.server, "kept", [{"id": 1, "name": "server", "qty": 9}])
    insert(fb_store.server, "kept", [{"id": 2, "name": "server", "qty": 9}])
    insert(fb_store.server, "newer", [{"id": 1, "name": "older", "qty": 4}])
    insert(fb_store.server, "newer", [{"id": 2, "name": "newer", "qty": 6}])
    node.sync()
    assert rows(fb_store.register, "kept") == [(1, "register's own", 1), (2, "server", 9)]
    assert rows(fb_store.register, "newer") == [(1, "register", 5), (2, "newer", 6)]

    register = node.dbs["caixa"]
    with register.write("cadastros:server->caixa"):
        other = type(register)(register.url, "other", lock_timeout_ms=1000)
        try:
            with pytest.raises(BusyError), other.write("cadastros:server->caixa"):
                pass
            with other.write("another job"):
                pass  # other jobs are not held
        finally:
            other.dispose()


def test_setup_refuses_a_page_too_small_with_the_fix(
    firebird_database: Callable[..., str], pg_database: Callable[[], str], tmp_path: Path
) -> None:
    from replicator.errors import PermanentError

    small = make_store(lambda: firebird_database(page_size=4096), pg_database, tmp_path)
    refused = pytest.raises(PermanentError, match=r"page size is 4096 bytes.*gbak -c -page_size")
    with small as store, refused:
        with_items(store)


# --- found from outside: the printed script in isql, dialect 1, lost links ---------------------
def _isql(url: str, script: str, *options: str) -> subprocess.CompletedProcess[str]:
    isql = next((p for p in ("/usr/bin/isql-fb", "/usr/bin/isql") if Path(p).exists()), None)
    if isql is None:
        pytest.skip("isql-fb is not installed")
    path = sa.make_url(url).database or ""
    return subprocess.run(  # the password through ISC_PASSWORD (never in argv or a message)
        [isql, "-q", *options, _dsn(path)],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ISC_USER": "SYSDBA", "ISC_PASSWORD": _password() or ""},
    )


def test_setup_print_runs_in_isql_as_printed_and_installs_tracking(fb_store: Store) -> None:
    # isql commits DDL by itself but not an EXECUTE BLOCK: without a COMMIT after each
    # statement the database trigger's DDL deadlocked on the uncommitted control tables
    for url in (fb_store.register, fb_store.server):
        md = sa.MetaData()
        item_table(md)
        create(url, md)
    node = fb_store.node({"itens": ITEMS.format(direction=UP)}, setup=False)
    insert(fb_store.register, "item", [{"id": 1, "name": "before tracking", "qty": 1}])
    config = str(fb_store.path / "replicator.toml")
    server = CliRunner().invoke(cli, ["--config", config, "setup", "--database", "server"])
    assert "tracking installed" in server.output, server.output  # exit 3: the register is not
    result = CliRunner().invoke(cli, ["--config", config, "setup", "--print"])
    assert result.exit_code == 0, result.output
    script = result.output.split("-- database caixa:", 1)[1].split("\n", 1)[1]
    done = _isql(fb_store.register, script, "-bail")
    assert done.returncode == 0, done.stdout + done.stderr
    with app(fb_store.register) as conn:
        assert run(conn, "SELECT COUNT(*) FROM item WHERE repl_version IS NULL") == [(0,)]
        assert run(conn, "SELECT COUNT(*) FROM replicator_incarnation") == [(1,)]
        run(conn, "INSERT INTO item (id, name, qty) VALUES (2, 'sold', 1)")
        conn.commit()
    node.sync()
    assert rows(fb_store.server, "item") == [(1, "before tracking", 1), (2, "sold", 1)]


def test_setup_refuses_a_dialect_1_database_with_the_fix(
    firebird_database: Callable[..., str],
) -> None:
    from replicator.backends.firebird import FirebirdBackend
    from replicator.errors import PermanentError

    url = firebird_database("ISO8859_1")
    path = sa.make_url(url).database or ""
    gfix = subprocess.run(
        ["gfix", "-user", "SYSDBA", "-password", _password() or "", "-sql_dialect", "1",
         _dsn(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert gfix.returncode == 0, gfix.stderr
    backend = FirebirdBackend(sa.make_url(url), "caixa")
    try:
        refused = pytest.raises(PermanentError, match=r"SQL dialect 1.*gfix -sql_dialect 3")
        with refused, backend.setup_connection():
            pass
    finally:
        backend.dispose()


def test_a_link_cut_while_attaching_is_transient_and_dead_links_close_quietly(
    firebird_database: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    import socket
    import threading

    from replicator.backends.firebird import FirebirdBackend
    from replicator.errors import TransientError

    # a link that drops the handshake (a proxy or firewall in between, the server restarting):
    # "connection rejected by remote interface" was permanent, NEEDS ATTENTION for 10 minutes
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def drop_each() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            client.recv(1024)
            client.close()

    threading.Thread(target=drop_each, daemon=True).start()
    url = sa.make_url(firebird_database())
    cut = FirebirdBackend(url.set(port=port), "caixa")
    try:
        with pytest.raises(sa.exc.DBAPIError) as failed, cut.engine.connect():
            pass
        assert cut.is_transient(failed.value) is True
        assert isinstance(cut.classify(failed.value), TransientError)
    finally:
        cut.dispose()
        listener.close()

    # a pooled connection whose attachment was ended: the pool drops it without an ERROR and
    # a traceback (sqlalchemy-firebird's do_terminate called a method the driver lacks)
    backend = FirebirdBackend(url, "caixa")
    try:
        with backend.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1 FROM RDB$DATABASE").all()
            conn.rollback()
        with app(str(url)) as admin:
            run(admin, "DELETE FROM MON$ATTACHMENTS WHERE MON$ATTACHMENT_ID <> CURRENT_CONNECTION "
                "AND MON$SYSTEM_FLAG = 0")  # fmt: skip
            admin.commit()
        caplog.clear()
        with caplog.at_level("DEBUG", logger="sqlalchemy.pool"), backend.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1 FROM RDB$DATABASE").scalar() == 1
        backend.engine.dispose()
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert not errors, [r.getMessage() for r in errors]
    finally:
        backend.dispose()


def test_a_catalog_goes_down_in_blocks_of_rows_with_every_value_exact(
    win1252_store: Store,
) -> None:
    fb_store = win1252_store

    # one round trip per block of rows (EXECUTE BLOCK), not an executemany of one MERGE per
    # row; values written as literals read back exactly, a refused row is still found alone
    def catalog(md: sa.MetaData) -> sa.Table:
        return sa.Table(
            "price",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("name", sa.String(60)),
            sa.Column("amount", sa.Numeric(18, 4)),
            sa.Column("ratio", sa.Float(53)),
            sa.Column("at", sa.DateTime),
            sa.Column("day", sa.Date),
            sa.Column("notes", long_text()),
        )

    for url in (fb_store.register, fb_store.server):
        md = sa.MetaData()
        catalog(md)
        create(url, md)
    mapping = VALUES.format(group="cadastros", direction=DOWN, table="price")
    node = fb_store.node({"cadastros": mapping})
    names = ["O'Brien", "Pão ''quoted''", "tab\there", "new\nline", "", "✓ nope", "x" * 60]
    prices = [
        {
            "id": i,
            "name": names[i % len(names)] if i != 700 else "✓ refused",
            "amount": Decimal(i) / 10000 - Decimal("99999999999999.9999") * (i % 2),
            "ratio": [0.1 + 0.2, 1e-300, -2.5e300, 1 / 3, None][i % 5],
            "at": None if i % 9 == 0 else T0 + timedelta(days=i, microseconds=100 * i),
            "day": (T0 + timedelta(days=i)).date(),
            "notes": ("açúcar " * 500) if i % 50 == 0 else f"'{i}'",
        }
        for i in range(1, 1201)
        if i % len(names) != 5  # "✓ nope": refused in WIN1252 (row 700 is the one refused)
    ]
    insert(fb_store.server, "price", prices)
    statements: list[tuple[str, bool]] = []
    engine = node.dbs["caixa"].engine

    def seen(_c: Any, _cur: Any, stmt: str, _p: Any, _ctx: Any, many: bool) -> None:
        if "price" in stmt.lower() and "MERGE" in stmt:
            statements.append((stmt.split(None, 2)[0] + " " + stmt.split(None, 2)[1], many))

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        node.sync("cadastros")
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert not [s for s in statements if s[1]], "no executemany of one MERGE per row"
    assert 2 <= len(statements) <= 30, len(statements)  # blocks, and the bisect to row 700

    def read(url: str, where: Any = None) -> list[tuple[Any, ...]]:
        with connect_sa(url) as conn:
            t = sa.Table("price", sa.MetaData(), autoload_with=conn)
            cols = [t.c[c] for c in ("id", "name", "amount", "at", "day", "notes", "ratio")]
            stmt = sa.select(*cols).order_by(t.c.id)
            return [tuple(r) for r in conn.execute(stmt if where is None else stmt.where(where))]

    expected = [r for r in read(fb_store.server) if r[0] != 700]
    written = read(fb_store.register)
    assert [tuple(r) for r in written] == [tuple(r) for r in expected]  # floats: the same double
    q = node.dbs["caixa"].ct.quarantine
    with engine.connect() as conn:
        assert conn.execute(sa.select(q.c.row_key)).scalars().all() == ["[700]"]


def test_a_charset_none_database_is_read_in_the_application_charset(
    firebird_database: Callable[..., str], pg_database: Callable[[], str], tmp_path: Path
) -> None:
    """Brazilian POS databases of character set NONE hold WIN1252 bytes: with `?charset=WIN1252`
    in the register's URL, 'JOSÉ' reaches the server as it was written (read as UTF8, its
    byte 0xC9 stopped the whole job), the catalog arrives as WIN1252 bytes the application
    reads, and a character WIN1252 has no byte for is held for its row alone."""
    url = f"{firebird_database('NONE')}?charset=WIN1252"
    with make_store(lambda: url, pg_database, tmp_path) as store:
        for side in (store.register, store.server):
            md = sa.MetaData()
            text_table(md, "product")
            text_table(md, "note")
            create(side, md)
        node = store.node({"cadastros": CATALOG, "movimento": NOTES})
        up = [{"id": i, "name": t.upper(), "memo": t} for i, t in enumerate(PORTUGUESE, 1)]
        database = sa.make_url(url).database or ""
        with connect(_dsn(database), password=_password(), charset="WIN1252") as pos:
            for r in up:  # the application's own WIN1252 connection
                run(pos, "INSERT INTO note (id, name, memo) VALUES (?, ?, ?)", *r.values())
            pos.commit()
        node.sync("movimento")
        assert rows(store.server, "note") == [(r["id"], r["name"], r["memo"]) for r in up]
        down = [{"id": 1, "name": "Preço do pão", "memo": "açúcar"}]
        down.append({"id": 2, "name": "Visto ✓", "memo": "ok"})
        insert(store.server, "product", down)
        node.sync("cadastros")
        assert rows(store.register, "product") == [(1, "Preço do pão", "açúcar")]
        with connect(_dsn(database), password=_password(), charset="NONE") as raw:
            stored = run(raw, "SELECT CAST(name AS VARCHAR(80) CHARACTER SET OCTETS) FROM product")
        assert stored == [("Preço do pão".encode("cp1252"),)], "WIN1252 bytes, as the POS reads"
        assert [key for _, key in quarantined(node, "caixa")] == ["[2]"]
