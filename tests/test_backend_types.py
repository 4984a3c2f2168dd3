"""Types across dialects: for every kind of register, each type pair that a POS schema uses is
replicated register -> PostgreSQL server and PostgreSQL server -> register, and the values
arrive exact (decimals to the last place, timestamps to the microsecond where the kind keeps
them, every byte of a blob, 100,000 characters of text, Portuguese accents).

Ids: test_type[<kind>-<case>]; the cases of one kind share one node and one sync each way."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from conftest import PG_ADMIN, REGISTER_KINDS
from support import quarantined
from support_backends import (
    ExactDecimal,
    Store,
    blob,
    create,
    insert,
    long_text,
    module_databases,
    normalize,
    rows,
    timestamp,
)

from replicator.sync import JobResult, run_jobs

BRT = timezone(timedelta(hours=-3))
NEPAL = timezone(timedelta(hours=5, minutes=45))
ACCENTS = "ç ã õ é º ª"
TEXT_100K = ("Pão de queijo, açúcar, ação, nº 1ª, ÇÃÕÉ, café ☕ 🧾 " * 2500)[:100_000]


def naive(values: list[Any]) -> list[Any]:
    """Aware timestamps as naive UTC (the zone of the test machine and of our sessions)."""
    return [
        v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, datetime) else v for v in values
    ]


def flag(value: Any) -> Any:
    return None if value is None else bool(value)


@dataclass(frozen=True)
class Case:
    name: str
    register_type: Callable[[], sa.types.TypeEngine[Any]]
    values: list[Any]
    server_type: Callable[[], sa.types.TypeEngine[Any]] | None = None  # None: the same
    # per kind: other values (a kind's resolution), or a reason the pair does not exist
    values_by_kind: dict[str, list[Any]] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)
    compare: Callable[[Any], Any] = normalize
    register_values: Callable[[list[Any]], list[Any]] = lambda v: v
    server_values: Callable[[list[Any]], list[Any]] = lambda v: v
    # (kind, "up" or "down"): a gap of the replicator this pair shows, until it is fixed
    known_gaps: dict[tuple[str, str], str] = field(default_factory=dict)


MICROS = [
    datetime(2026, 12, 31, 23, 59, 59, 999999),
    datetime(2000, 1, 1, 0, 0, 0, 1),
    datetime(2026, 2, 28, 12, 0, 0, 500000),
    datetime(1970, 1, 1),
    None,
]
# Firebird's TIMESTAMP keeps 1/10,000 of a second
TEN_THOUSANDTHS = [
    datetime(2026, 12, 31, 23, 59, 59, 999900),
    datetime(2000, 1, 1, 0, 0, 0, 100),
    datetime(2026, 2, 28, 12, 0, 0, 500000),
    datetime(1970, 1, 1),
    None,
]
INSTANTS = [
    datetime(2026, 12, 1, 23, 30, 0, 123400, tzinfo=BRT),  # the next day in UTC
    datetime(2026, 6, 1, 0, 0, 0, 100, tzinfo=UTC),
    datetime(2026, 3, 8, 9, 15, tzinfo=NEPAL),
    None,
]
NO_ZONE = "not applicable: {} has no TIMESTAMP WITH TIME ZONE"

CASES = [
    Case(
        "numeric_12_2",
        lambda: sa.Numeric(12, 2),
        [
            Decimal("9999999999.99"),
            Decimal("-9999999999.99"),
            Decimal("0.01"),
            Decimal("-0.01"),
            Decimal("0.00"),
            Decimal("1234.50"),
            None,
        ],
    ),
    Case(
        "numeric_18_4",
        lambda: ExactDecimal(18, 4),  # TEXT on SQLite (its NUMERIC is a float)
        [
            Decimal("99999999999999.9999"),
            Decimal("-99999999999999.9999"),
            Decimal("0.0001"),
            Decimal("12345678901234.5678"),
            Decimal("-0.0001"),
            None,
        ],
    ),
    Case(
        "timestamp_micro",
        timestamp,
        MICROS,
        values_by_kind={"firebird": TEN_THOUSANDTHS},
    ),
    Case(
        "timestamptz",
        lambda: timestamp(timezone=True),
        INSTANTS,
        not_applicable={
            **{k: NO_ZONE.format(k) for k in ("sqlite", "mariadb")},
            "firebird": NO_ZONE.format("Firebird 3 (the test server)") + " (Firebird 4 has)",
        },
    ),
    Case(
        # a register without zones keeps naive local time (UTC here), the server an instant
        "timestamp_to_timestamptz",
        timestamp,
        INSTANTS,
        server_type=lambda: timestamp(timezone=True),
        register_values=naive,
    ),
    Case("boolean", lambda: sa.Boolean(), [True, False, None], compare=flag),
    Case(
        # registers of POS systems that keep flags as SMALLINT 0/1 while the server says BOOLEAN
        "smallint_0_1_to_boolean",
        lambda: sa.SmallInteger(),
        [True, False, None],
        server_type=lambda: sa.Boolean(),
        compare=flag,
        register_values=lambda values: [None if v is None else int(v) for v in values],
    ),
    Case(
        "blob",
        blob,
        [bytes(range(256)) * 400, b"\x00", b"\xff\x00\xfe", None],
    ),
    Case("long_text", long_text, [TEXT_100K, "ç", None]),
    Case(
        "accents",
        lambda: sa.String(80),
        [ACCENTS, "AÇÚCAR ÇÃÕÉ", "Nº 1ª via", "ç" * 80, "São João", "", None],
    ),
]


def typed(name: str, kind: sa.types.TypeEngine[Any]) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("v", kind),
    )


# One node, both directions: `up` goes register -> server, `down` server -> register.
MAPPINGS = {
    group: f"group: {group}\ndirection: {direction}\ntables:\n  - source: {group}\n    key: [id]\n"
    for group, direction in (("up", "register_to_server"), ("down", "server_to_register"))
}


@dataclass
class Outcome:
    """What one direction of one case did: both sides' rows, what moved, any table error."""

    source: list[tuple[Any, ...]]
    target: list[tuple[Any, ...]]
    moved: int
    moved_again: int
    error: str | None


@dataclass
class TypedRun:
    kind: str
    outcomes: dict[tuple[str, str], Outcome]  # (case, "up" or "down")


def _mapping(direction: str, names: list[str]) -> str:
    tables = "".join(f"  - source: {n}\n    key: [id]\n" for n in names)
    group = "up" if direction == "register_to_server" else "down"
    return f"group: {group}\ndirection: {direction}\ntables:\n{tables}"


@pytest.fixture(scope="module", params=REGISTER_KINDS)
def typed_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TypedRun]:
    """Per kind of register, once: a table per case and direction on both sides, one node,
    one sync each way and a second one; the case tests read the outcome (one setup for all
    of them keeps the suite fast)."""
    kind = request.param
    path = tmp_path_factory.mktemp(f"types-{kind}")
    with (
        module_databases(kind, request, path) as registers,
        module_databases("postgresql", request, path) as servers,
    ):
        store = Store(kind, registers(), servers(), path)
        cases = [c for c in CASES if kind not in c.not_applicable]
        tables: dict[tuple[str, str, str], sa.Table] = {}
        for case in cases:
            for group in ("up", "down"):
                name = f"{group}_{case.name}"
                tables["register", group, case.name] = typed(name, case.register_type())
                tables["server", group, case.name] = typed(
                    name, (case.server_type or case.register_type)()
                )
        for (side, _, _), table in tables.items():
            create(store.register if side == "register" else store.server, table.metadata)
        names = [c.name for c in cases]
        node = store.node(
            {
                "up": _mapping("register_to_server", [f"up_{n}" for n in names]),
                "down": _mapping("server_to_register", [f"down_{n}" for n in names]),
            }
        )
        try:
            for case in cases:
                values = case.values_by_kind.get(kind, case.values)
                insert(
                    store.register,
                    tables["register", "up", case.name],
                    [{"id": i, "v": v} for i, v in enumerate(case.register_values(values))],
                )
                insert(
                    store.server,
                    tables["server", "down", case.name],
                    [{"id": i, "v": v} for i, v in enumerate(case.server_values(values))],
                )
            first = {
                r.job.group: r for r in run_jobs(node.settings, node.settings.jobs(), node.dbs)
            }
            again = {
                r.job.group: r for r in run_jobs(node.settings, node.settings.jobs(), node.dbs)
            }
            outcomes = {}
            for case in cases:
                for group, source, target in (
                    ("up", "register", "server"),
                    ("down", "server", "register"),
                ):
                    label = f"{group}_{case.name}"
                    done, redone = first[group].tables[label], again[group].tables[label]
                    urls = {"register": store.register, "server": store.server}
                    outcomes[case.name, group] = Outcome(
                        rows(urls[source], tables[source, group, case.name]),
                        rows(urls[target], tables[target, group, case.name]),
                        done.upserts,
                        redone.upserts,
                        done.error or redone.error or _job_error(first[group], again[group]),
                    )
            yield TypedRun(kind, outcomes)
        finally:
            store.close()


def _job_error(*results: JobResult) -> str | None:
    errors = [str(r.error) for r in results if r.error]
    return "; ".join(errors) or None


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_type(typed_run: TypedRun, case: Case) -> None:
    """The register's type and the server's, both ways: register -> PostgreSQL and
    PostgreSQL -> register; exact values on both sides, and nothing sent again."""
    kind = typed_run.kind
    if kind in case.not_applicable:
        pytest.skip(case.not_applicable[kind])
    values = case.values_by_kind.get(kind, case.values)
    expected = [(i, case.compare(normalize(v))) for i, v in enumerate(values)]
    for group in ("up", "down"):
        where = f"{kind} -> postgresql" if group == "up" else f"postgresql -> {kind}"
        outcome = typed_run.outcomes[case.name, group]
        source = [(i, case.compare(v)) for i, v in outcome.source]
        assert source == expected, f"{where}: the source itself keeps the values"
        got = [(i, case.compare(v)) for i, v in outcome.target]
        gap = case.known_gaps.get((kind, group))
        if gap:
            if got == expected:
                pytest.fail(f"{where}: the known gap is fixed; remove it from known_gaps: {gap}")
            pytest.xfail(f"{where}: {gap}")
        assert outcome.error is None, f"{where}: {outcome.error}"
        assert got == expected, where
        assert outcome.moved == len(values), where
        assert outcome.moved_again == 0, f"{where}: equal values are not sent again"


# --- a register in a single-byte character set --------------------------------------------
LATIN_TEXTS = [ACCENTS, "AÇÚCAR ÇÃÕÉ", "Nº 1ª via", "ç" * 80, "São João"]


def latin_register(
    kind: str, make: Callable[..., str], request: pytest.FixtureRequest
) -> tuple[str, dict[str, Any]]:
    """A register database (or table) in a single-byte character set, as legacy POS
    databases in Brazil are (WIN1252, ISO-8859-1), and the table options that ask for it."""
    if kind == "firebird":
        return make("WIN1252"), {}
    if kind == "mariadb":
        return make(), {"mariadb_charset": "latin1"}
    assert kind == "postgresql"
    name = f"repl_latin_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )

    def drop() -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    request.addfinalizer(drop)
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", {}


def test_accents_in_a_single_byte_register(
    register_database: Callable[..., str],
    pg_database: Callable[[], str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Portuguese text travels exact between a Latin-1/WIN1252 register and the UTF-8
    server both ways; a character the register's set lacks (an emoji from the server) is held
    on the register with its reason, and the other rows are applied."""
    kind = request.node.callspec.params["register_database"]
    if kind == "sqlite":
        pytest.skip("not applicable: SQLite text is always Unicode")
    register, options = latin_register(kind, register_database, request)
    store = Store(kind, register, pg_database(), tmp_path)
    request.addfinalizer(store.close)
    for side, url in (("register", store.register), ("server", store.server)):
        for group in ("up", "down"):
            md = sa.MetaData()
            sa.Table(
                group,
                md,
                sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                sa.Column("v", sa.String(80)),
                **(options if side == "register" else {}),
            )
            create(url, md)
    node = store.node(MAPPINGS)
    texts = [{"id": i, "v": v} for i, v in enumerate(LATIN_TEXTS)]
    insert(store.register, "up", texts)
    insert(store.server, "down", [*texts, {"id": 99, "v": "Café ☕"}])
    node.sync("up")
    assert rows(store.server, "up") == [(i, v) for i, v in enumerate(LATIN_TEXTS)]
    node.sync("down")
    assert rows(store.register, "down") == [(i, v) for i, v in enumerate(LATIN_TEXTS)]
    assert quarantined(node, "caixa") == [("down", "[99]")], "the emoji has no Latin-1 form"
