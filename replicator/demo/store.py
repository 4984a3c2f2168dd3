"""The example store: register and server schemas (SQLAlchemy Core) and deterministic sample data.

The same catalog tables ("cadastros") exist on both sides. Sales ("movimento") use
register-local ids on a register; on the server the same tables are keyed by
``(store_id, register_id, ...)`` so that every register of every store fits in one table.
Replication columns (``repl_version`` ...) are not part of this schema: ``replicator setup``
adds them.

``python -m replicator.demo.store`` regenerates the DDL kept in ``sql/example/``.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    func,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateTable

#: America/Sao_Paulo (no daylight saving time since 2019).
BRT = timezone(timedelta(hours=-3), "-03")
#: The dialects whose DDL is kept in sql/example/.
DIALECTS: tuple[str, ...] = ("postgresql", "sqlite")
#: Where ``main()`` writes the DDL: <repo>/sql/example.
SQL_DIR = Path(__file__).resolve().parents[2] / "sql" / "example"
#: Products in the default catalog; ``seed_register`` sells product ids 1..DEFAULT_PRODUCTS.
DEFAULT_PRODUCTS = 40
#: The business day the sample sales happen on, when ``seed_register`` gets no ``start``.
DEFAULT_START = datetime(2024, 3, 15, 8, 0, tzinfo=BRT)
#: Sample sales of a day are spread over this span after ``start``.
BUSINESS_HOURS = timedelta(hours=12)

CENT = Decimal("0.01")
GRAM = Decimal("0.001")

_DIALECTS: dict[str, Callable[[], Dialect]] = {
    "postgresql": postgresql.dialect,
    "sqlite": sqlite.dialect,
}


# --------------------------------------------------------------------------------------------
# schema


def register_metadata() -> MetaData:
    """A register's ("caixa") database: the catalog plus its own sales, with local ids."""
    metadata = MetaData(info={"side": "register"})
    _catalog_tables(metadata)
    Table(
        "sale",
        metadata,
        Column("sale_id", Integer, primary_key=True, autoincrement=False),
        Column("opened_at", DateTime(timezone=True), nullable=False),
        Column("closed_at", DateTime(timezone=True)),
        # no foreign key: a customer registered at another register may not be here yet
        Column("customer_id", String(36)),
        Column("employee_id", Integer, nullable=False),
        # 'O' open, 'C' closed, 'X' cancelled
        Column("status", String(1), nullable=False),
        Column("total", Numeric(12, 2), nullable=False),
    )
    Table(
        "sale_item",
        metadata,
        Column("sale_id", Integer, ForeignKey("sale.sale_id"), primary_key=True),
        Column("line_no", Integer, primary_key=True, autoincrement=False),
        # no foreign key: the register keeps selling while a catalog change is on its way
        Column("product_id", Integer, nullable=False),
        *_item_columns(),
    )
    Table(
        "payment",
        metadata,
        Column("sale_id", Integer, ForeignKey("sale.sale_id"), primary_key=True),
        Column("seq", Integer, primary_key=True, autoincrement=False),
        *_payment_columns(),
    )
    Table(
        "cash_closing",
        metadata,
        Column("closing_id", Integer, primary_key=True, autoincrement=False),
        *_closing_columns(),
    )
    return metadata


def server_metadata() -> MetaData:
    """The back-office server's database: the catalog plus the sales of every register."""
    metadata = MetaData(info={"side": "server"})
    _catalog_tables(metadata)
    sale_key = ["store_id", "register_id", "sale_id"]
    Table(
        "sale",
        metadata,
        *_node_columns(),
        Column("sale_id", Integer, nullable=False),
        Column("opened_at", DateTime(timezone=True), nullable=False),
        Column("closed_at", DateTime(timezone=True)),
        Column("customer_id", String(36)),
        Column("employee_id", Integer, nullable=False),
        # 'open', 'closed', 'cancelled' (the register's one-letter codes, spelled out)
        Column("status", String(10), nullable=False),
        Column("total", Numeric(12, 2), nullable=False),
        PrimaryKeyConstraint(*sale_key),
    )
    Table(
        "sale_item",
        metadata,
        *_node_columns(),
        Column("sale_id", Integer, nullable=False),
        Column("line_no", Integer, nullable=False),
        Column("product_id", Integer, ForeignKey("product.product_id"), nullable=False),
        *_item_columns(),
        PrimaryKeyConstraint(*sale_key, "line_no"),
        ForeignKeyConstraint(sale_key, [f"sale.{c}" for c in sale_key]),
    )
    Table(
        "payment",
        metadata,
        *_node_columns(),
        Column("sale_id", Integer, nullable=False),
        Column("seq", Integer, nullable=False),
        *_payment_columns(),
        PrimaryKeyConstraint(*sale_key, "seq"),
        ForeignKeyConstraint(sale_key, [f"sale.{c}" for c in sale_key]),
    )
    Table(
        "cash_closing",
        metadata,
        *_node_columns(),
        Column("closing_id", Integer, nullable=False),
        *_closing_columns(),
        PrimaryKeyConstraint("store_id", "register_id", "closing_id"),
    )
    return metadata


def _catalog_tables(metadata: MetaData) -> None:
    """The catalog ("cadastros"): identical on registers and server."""
    Table(
        "product",
        metadata,
        Column("product_id", Integer, primary_key=True, autoincrement=False),
        Column("sku", String(32), nullable=False, unique=True),
        Column("name", String(120), nullable=False),
        Column("unit", String(8), nullable=False, server_default="UN"),
        Column("price", Numeric(12, 3), nullable=False),
        Column("active", Boolean, nullable=False, server_default=true()),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )
    Table(
        "price",
        metadata,
        Column("store_id", Integer, primary_key=True, autoincrement=False),
        Column("product_id", Integer, ForeignKey("product.product_id"), primary_key=True),
        Column("price", Numeric(12, 2), nullable=False),
        Column("valid_from", DateTime(timezone=True), nullable=False),
    )
    Table(
        "customer",
        metadata,
        # a UUID, so customers registered at any register never collide
        Column("customer_id", String(36), primary_key=True),
        Column("name", String(120), nullable=False),
        Column("tax_id", String(20)),
        Column("email", String(120)),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    Table(
        "employee",
        metadata,
        Column("employee_id", Integer, primary_key=True, autoincrement=False),
        Column("name", String(120), nullable=False),
        Column("role", String(30), nullable=False),
        Column("active", Boolean, nullable=False),
    )
    Table(
        "user_login",
        metadata,
        Column("login", String(30), primary_key=True),
        Column("employee_id", Integer, ForeignKey("employee.employee_id"), nullable=False),
        Column("password_hash", String(128), nullable=False),
        Column("active", Boolean, nullable=False),
    )


def _node_columns() -> list[Column[Any]]:
    return [
        Column("store_id", Integer, nullable=False),
        Column("register_id", Integer, nullable=False),
    ]


def _item_columns() -> list[Column[Any]]:
    return [
        Column("quantity", Numeric(12, 3), nullable=False),
        Column("unit_price", Numeric(12, 2), nullable=False),
        Column("total", Numeric(12, 2), nullable=False),
    ]


def _payment_columns() -> list[Column[Any]]:
    return [
        Column("method", String(20), nullable=False),
        Column("amount", Numeric(12, 2), nullable=False),
    ]


def _closing_columns() -> list[Column[Any]]:
    return [
        Column("business_date", Date, nullable=False),
        Column("opened_at", DateTime(timezone=True), nullable=False),
        Column("closed_at", DateTime(timezone=True), nullable=False),
        Column("sales_count", Integer, nullable=False),
        Column("sales_total", Numeric(12, 2), nullable=False),
        Column("cash_total", Numeric(12, 2), nullable=False),
    ]


# --------------------------------------------------------------------------------------------
# DDL


def ddl(metadata: MetaData, dialect_name: str) -> str:
    """CREATE TABLE statements for every table of ``metadata``, in dependency order."""
    try:
        dialect = _DIALECTS[dialect_name]()
    except KeyError:
        raise ValueError(
            f"unknown dialect {dialect_name!r}; choose one of {', '.join(_DIALECTS)}"
        ) from None
    side = str(metadata.info.get("side", "example"))
    parts = [
        f"-- Example store: {side} database, {dialect_name}.\n"
        "-- Generated by `python -m replicator.demo.store` from replicator/demo/store.py.\n"
        "-- Do not edit by hand. Replication columns and triggers are added by\n"
        "-- `replicator setup`, not here.\n"
    ]
    for table in metadata.sorted_tables:
        text = str(CreateTable(table).compile(dialect=dialect)).strip()
        lines = [line.rstrip() for line in text.replace("\t", "    ").splitlines()]
        parts.append("\n".join(lines) + ";\n")
    return "\n".join(parts)


def ddl_files() -> dict[str, str]:
    """File name in sql/example/ -> its expected content."""
    sides: dict[str, Callable[[], MetaData]] = {
        "server": server_metadata,
        "register": register_metadata,
    }
    return {
        f"{side}.{dialect}.sql": ddl(build(), dialect)
        for side, build in sides.items()
        for dialect in DIALECTS
    }


def main(out_dir: Path | None = None) -> None:
    """Write the DDL of both sides, for every dialect, to sql/example/."""
    directory = SQL_DIR if out_dir is None else out_dir
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in ddl_files().items():
        path = directory / name
        path.write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {path}")


# --------------------------------------------------------------------------------------------
# sample data

# (name, unit, price in R$); price per kg for unit KG
_PRODUCTS: tuple[tuple[str, str, str], ...] = (
    ("Pão francês", "KG", "16.90"),
    ("Açúcar cristal 1kg", "UN", "4.79"),
    ("Café torrado e moído 500g", "UN", "18.90"),
    ("Arroz agulhinha tipo 1 5kg", "UN", "27.90"),
    ("Feijão carioca 1kg", "UN", "8.49"),
    ("Leite integral UHT 1L", "UN", "5.29"),
    ("Manteiga com sal 200g", "UN", "12.90"),
    ("Óleo de soja 900ml", "UN", "7.49"),
    ("Macarrão espaguete 500g", "UN", "4.59"),
    ("Farinha de mandioca torrada 500g", "UN", "6.29"),
    ("Farinha de trigo 1kg", "UN", "5.49"),
    ("Sal refinado iodado 1kg", "UN", "2.39"),
    ("Queijo muçarela fatiado", "KG", "49.90"),
    ("Presunto cozido fatiado", "KG", "39.90"),
    ("Banana prata", "KG", "6.99"),
    ("Maçã gala", "KG", "9.98"),
    ("Tomate italiano", "KG", "8.49"),
    ("Cebola", "KG", "5.99"),
    ("Batata inglesa", "KG", "6.49"),
    ("Ovos brancos (dúzia)", "DZ", "11.90"),
    ("Frango congelado", "KG", "13.90"),
    ("Carne moída de patinho", "KG", "44.90"),
    ("Linguiça toscana", "KG", "24.90"),
    ("Refrigerante guaraná 2L", "UN", "8.99"),
    ("Suco de laranja integral 1L", "UN", "9.49"),
    ("Água mineral sem gás 500ml", "UN", "2.19"),
    ("Cerveja pilsen lata 350ml", "UN", "4.29"),
    ("Biscoito recheado de chocolate 130g", "UN", "3.29"),
    ("Chocolate ao leite 90g", "UN", "6.99"),
    ("Pão de queijo congelado 1kg", "UN", "24.90"),
    ("Requeijão cremoso 200g", "UN", "8.99"),
    ("Iogurte natural 170g", "UN", "3.49"),
    ("Detergente líquido neutro 500ml", "UN", "2.79"),
    ("Sabão em pó 1,6kg", "UN", "21.90"),
    ("Papel higiênico folha dupla c/ 12", "PCT", "19.90"),
    ("Creme dental 90g", "UN", "4.99"),
    ("Sabonete de glicerina 90g", "UN", "2.49"),
    ("Esponja de aço c/ 8", "PCT", "3.19"),
    ("Picolé de açaí 🍧", "UN", "7.50"),
    ("Coxinha de frango 🍗", "UN", "6.50"),
)

# (employee_id, name, role, active, login)
_EMPLOYEES: tuple[tuple[int, str, str, bool, str], ...] = (
    (1, "Maria da Conceição Souza", "gerente", True, "maria"),
    (2, "João Araújo", "operador de caixa", True, "joao"),
    (3, "Ana Lúcia Gonçalves", "operadora de caixa", True, "ana"),
    (4, "José Antônio Pereira", "fiscal de caixa", True, "jose"),
    (5, "Luíza Fernandes", "repositora", False, "luiza"),  # left the company
)
#: Employees who sell at the registers.
CASHIERS: tuple[int, ...] = (2, 3)

# (name, email, is a company)
_CUSTOMERS: tuple[tuple[str, str | None, bool], ...] = (
    ("Antônio Carlos Ribeiro", "antonio.ribeiro@example.com.br", False),
    ("Fernanda Lima da Conceição", "fernanda.lima@example.com.br", False),
    ("Padaria Pão Dourado Ltda.", "compras@paodourado.example.com.br", True),
    ("Cláudia Magalhães", None, False),
    ("Sebastião Gonçalves Brandão", "tiao.brandao@example.com.br", False),
    ("Lanchonete Açaí & Cia ME", None, True),
)
# customers who give their CPF at the register and are registered there
_WALK_IN_NAMES = (
    "Raimunda Nonata da Silva",
    "Conceição Aparecida Rocha",
    "Thiago Sérgio Brandão",
    "Letícia Guimarães Araújo",
    "Joaquim Estêvão Peçanha",
)
# (method, weight) for single payments; "dinheiro" is cash
_METHODS = (("pix", 3), ("cartão de débito", 3), ("cartão de crédito", 2), ("dinheiro", 2))
CASH = "dinheiro"

_CATALOG_SINCE = datetime(2024, 3, 1, 7, 0, tzinfo=BRT)
_CUSTOMER_NAMESPACE = uuid.UUID("6f1c0c8e-4d0b-4f6e-9a53-2d1f8f3a7c10")


def product_info(product_id: int) -> tuple[str, str, Decimal]:
    """Name, unit and list price of a catalog product; ids past the base list get variants."""
    if product_id < 1:
        raise ValueError(f"product ids start at 1, got {product_id}")
    name, unit, price = _PRODUCTS[(product_id - 1) % len(_PRODUCTS)]
    round_ = (product_id - 1) // len(_PRODUCTS)
    if round_:
        name = f"{name} — variação {round_ + 1}"
    return name, unit, Decimal(price) + Decimal(round_) * Decimal("0.10")


def store_price(store_id: int, product_id: int) -> Decimal:
    """The shelf price of a product in a store: store 1 sells at list price, each next +3%."""
    list_price = product_info(product_id)[2]
    factor = Decimal(1) + Decimal("0.03") * (store_id - 1)
    return (list_price * factor).quantize(CENT, ROUND_HALF_UP)


def customer_id(index: int) -> str:
    """Id of the ``index``-th (0-based) customer of the server catalog."""
    return str(uuid.uuid5(_CUSTOMER_NAMESPACE, f"customer-{index}"))


def seed_server(conn: Connection, store_id: int = 1, products: int = DEFAULT_PRODUCTS) -> None:
    """Insert the sample catalog into a server database.

    Products 1..``products``, their prices in stores ``store_id`` and ``store_id + 1`` (so that
    the per-store price filter of the mappings has something to filter), customers, employees
    and their logins. Runs in the caller's transaction; does not commit.
    """
    if products < 1:
        raise ValueError(f"products must be at least 1, got {products}")
    tables = server_metadata().tables
    rng = random.Random(0)
    conn.execute(
        tables["employee"].insert(),
        [
            {"employee_id": eid, "name": name, "role": role, "active": active}
            for eid, name, role, active, _login in _EMPLOYEES
        ],
    )
    conn.execute(
        tables["user_login"].insert(),
        [
            {
                "login": login,
                "employee_id": eid,
                # a stand-in for the POS's own hash; never a real password
                "password_hash": "sha256$" + hashlib.sha256(f"demo:{login}".encode()).hexdigest(),
                "active": active,
            }
            for eid, _name, _role, active, login in _EMPLOYEES
        ],
    )
    product_rows = []
    for pid in range(1, products + 1):
        name, unit, list_price = product_info(pid)
        product_rows.append(
            {
                "product_id": pid,
                "sku": _ean13(f"789{pid:09d}"),
                "name": name,
                "unit": unit,
                "price": list_price,
                "active": True,
                "updated_at": _CATALOG_SINCE + timedelta(minutes=pid),
            }
        )
    conn.execute(tables["product"].insert(), product_rows)
    conn.execute(
        tables["price"].insert(),
        [
            {
                "store_id": store,
                "product_id": pid,
                "price": store_price(store, pid),
                "valid_from": _CATALOG_SINCE,
            }
            for store in (store_id, store_id + 1)
            for pid in range(1, products + 1)
        ],
    )
    conn.execute(
        tables["customer"].insert(),
        [
            {
                "customer_id": customer_id(index),
                "name": name,
                "tax_id": _cnpj(rng) if company else _cpf(rng),
                "email": email,
                "created_at": _CATALOG_SINCE - timedelta(days=30 - 4 * index, hours=index),
            }
            for index, (name, email, company) in enumerate(_CUSTOMERS)
        ],
    )


def seed_register(
    conn: Connection,
    register_id: int,
    sales: int = 5,
    start: datetime | None = None,
    *,
    store_id: int = 1,
    products: int = DEFAULT_PRODUCTS,
) -> None:
    """Insert one business day of sample sales into a register database.

    ``sales`` sales spread over the day from ``start`` (timezone-aware; default
    ``DEFAULT_START``), each with 1-4 items of products 1..``products`` at the prices of
    ``store_id`` and 1-2 payments that add up to its total. The fourth sale is cancelled after
    payment (status 'X'); the others are closed ('C'). One customer is registered at the
    register and buys in one of the sales, and one cash_closing sums the day's closed sales.

    Deterministic: the data depends only on the arguments and on the ids already present, so
    calling it again (say with the next day's ``start``) continues the sale and closing ids.
    Runs in the caller's transaction; does not commit.
    """
    if sales < 0:
        raise ValueError(f"sales must be 0 or more, got {sales}")
    if products < 1:
        raise ValueError(f"products must be at least 1, got {products}")
    if start is None:
        start = DEFAULT_START
    if start.utcoffset() is None:
        raise ValueError("start must be timezone-aware, e.g. datetime(..., tzinfo=store.BRT)")
    tables = register_metadata().tables
    sale, item, payment = tables["sale"], tables["sale_item"], tables["payment"]
    closing = tables["cash_closing"]
    first_sale = (conn.execute(select(func.max(sale.c.sale_id))).scalar() or 0) + 1
    first_closing = (conn.execute(select(func.max(closing.c.closing_id))).scalar() or 0) + 1
    rng = random.Random(register_id if first_sale == 1 else register_id * 1_000_003 + first_sale)

    cashier = CASHIERS[(register_id - 1) % len(CASHIERS)]
    step = BUSINESS_HOURS.total_seconds() / max(sales, 1)
    walk_in_sale = rng.randrange(sales) if sales else -1
    sale_rows: list[dict[str, Any]] = []
    item_rows: list[dict[str, Any]] = []
    payment_rows: list[dict[str, Any]] = []
    customer_rows: list[dict[str, Any]] = []
    sales_count, sales_total, cash_total = 0, Decimal("0.00"), Decimal("0.00")

    for n in range(sales):
        sale_id = first_sale + n
        opened = start + timedelta(seconds=round(step * n + rng.uniform(0, step * 0.4)))
        # a sale takes 20 s to 5 min at the register (less when the day is crowded)
        duration = rng.uniform(min(20.0, step * 0.1), min(300.0, step * 0.5))
        closed = opened + timedelta(seconds=round(duration))
        status = "X" if n == 3 else "C"

        customer: str | None = None
        if n == walk_in_sale:
            customer = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            customer_rows.append(
                {
                    "customer_id": customer,
                    "name": rng.choice(_WALK_IN_NAMES),
                    "tax_id": _cpf(rng),
                    "email": None,
                    "created_at": opened,
                }
            )
        elif rng.random() < 0.25:
            customer = customer_id(rng.randrange(len(_CUSTOMERS)))

        total = Decimal("0.00")
        chosen = rng.sample(range(1, products + 1), min(rng.randint(1, 4), products))
        for line_no, pid in enumerate(chosen, start=1):
            unit = product_info(pid)[1]
            if unit == "KG":
                quantity = (Decimal(rng.randint(150, 1500)) / 1000).quantize(GRAM)
            else:
                quantity = Decimal(rng.choice((1, 1, 1, 1, 2, 2, 3, 6))).quantize(GRAM)
            unit_price = store_price(store_id, pid)
            line_total = (quantity * unit_price).quantize(CENT, ROUND_HALF_UP)
            total += line_total
            item_rows.append(
                {
                    "sale_id": sale_id,
                    "line_no": line_no,
                    "product_id": pid,
                    "quantity": quantity,
                    "unit_price": unit_price,
                    "total": line_total,
                }
            )

        cash = Decimal("0.00")
        for seq, (method, amount) in enumerate(_payments(rng, total), start=1):
            payment_rows.append(
                {"sale_id": sale_id, "seq": seq, "method": method, "amount": amount}
            )
            if method == CASH:
                cash += amount

        sale_rows.append(
            {
                "sale_id": sale_id,
                "opened_at": opened,
                "closed_at": closed,
                "customer_id": customer,
                "employee_id": cashier,
                "status": status,
                "total": total,
            }
        )
        if status == "C":
            sales_count += 1
            sales_total += total
            cash_total += cash

    for table, rows in (
        (tables["customer"], customer_rows),
        (sale, sale_rows),
        (item, item_rows),
        (payment, payment_rows),
    ):
        if rows:
            conn.execute(table.insert(), rows)
    conn.execute(
        closing.insert(),
        {
            "closing_id": first_closing,
            "business_date": start.date(),
            "opened_at": start,
            "closed_at": start + BUSINESS_HOURS + timedelta(minutes=10),
            "sales_count": sales_count,
            "sales_total": sales_total,
            "cash_total": cash_total,
        },
    )


def _payments(rng: random.Random, total: Decimal) -> list[tuple[str, Decimal]]:
    """1-2 payments adding up to ``total``; a split pays some whole reais in cash first."""
    cents = int(total / CENT)
    if cents >= 2 and rng.random() < 0.3:
        first = rng.randint(1, cents - 1)
        if cents > 100:
            first = max(first // 100 * 100, 100)
        other = rng.choice(("pix", "cartão de débito", "cartão de crédito"))
        return [(CASH, Decimal(first) * CENT), (other, Decimal(cents - first) * CENT)]
    methods = [m for m, _ in _METHODS]
    weights = [w for _, w in _METHODS]
    return [(rng.choices(methods, weights)[0], total)]


def _ean13(first12: str) -> str:
    digits = [int(c) for c in first12]
    odd = sum(digits[0::2])
    even = sum(digits[1::2])
    return first12 + str((10 - (odd + 3 * even) % 10) % 10)


def _cpf(rng: random.Random) -> str:
    digits = [rng.randrange(10) for _ in range(9)]
    for size in (9, 10):
        total = sum(d * w for d, w in zip(digits, range(size + 1, 1, -1), strict=True))
        digits.append(total * 10 % 11 % 10)
    s = "".join(map(str, digits))
    return f"{s[:3]}.{s[3:6]}.{s[6:9]}-{s[9:]}"


def _cnpj(rng: random.Random) -> str:
    digits = [rng.randrange(10) for _ in range(8)] + [0, 0, 0, 1]
    for weights in ((5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2), (6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)):
        remainder = sum(d * w for d, w in zip(digits, weights, strict=True)) % 11
        digits.append(0 if remainder < 2 else 11 - remainder)
    s = "".join(map(str, digits))
    return f"{s[:2]}.{s[2:5]}.{s[5:8]}/{s[8:12]}-{s[12:]}"


if __name__ == "__main__":
    main()
