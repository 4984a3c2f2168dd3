"""`replicator init`, step 3: the drafts as commented YAML mapping files and a replicator.toml.

Every decision left to the DBA is a `# DECIDE:` comment with its reason and options. An entry
that cannot pass `replicator check` as it stands (no key, a key the target lacks, a required
column nothing fills) is written commented out, under its DECIDE lines.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field
from datetime import date

from replicator.init_plan import CATALOG, Draft
from replicator.init_reflect import TableInfo

WIDTH = 96
PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "none"}

GROUP_HEADERS = {
    CATALOG: (
        "catalog: server -> registers",
        "server_to_register",
        """\
Catalog ("cadastros"): server -> registers. The server holds the master copy (products,
prices, customers, employees, logins); every register keeps a full local copy so it can
sell with the network down. `replicator sync cadastros` is the old "Atualização Completa".
A table lands here when its name says catalog (produto, preco, cliente, funcionario,
usuario...), or when other tables' foreign keys point at it (a payment type), or when
nothing says otherwise (then with a DECIDE line).""",
    ),
    "movimento": (
        "movement: registers -> server",
        "register_to_server",
        """\
Movement ("movimento"): registers -> server. Sales, their items and payments, cash
movements and closings, written on a register and archived on the server. `replicator sync
movimento` is the old "Exporta Movimento". A table lands here when the server keys it per
register (store_id / register_id in the server's key only), when its name says movement
(venda, item, pagamento, caixa, fechamento...), or when it has a foreign key to a movement
table. The tables of one batch are applied in one server transaction, in the order below,
so the server never shows a sale without its items.""",
    ),
}


def comment(text: str, indent: str, decide: bool = False) -> list[str]:
    head = f"{indent}# DECIDE: " if decide else f"{indent}# "
    rest = f"{indent}#   " if decide else f"{indent}# "
    return textwrap.wrap(
        text, WIDTH, initial_indent=head, subsequent_indent=rest, break_on_hyphens=False
    )


def scalar(value: str) -> str:
    """A YAML scalar that reads back as this text."""
    return value if PLAIN.match(value) and value.lower() not in YAML_WORDS else json.dumps(value)


def flow(values: list[str]) -> str:
    return "[" + ", ".join(scalar(v) for v in values) + "]"


def entry(d: Draft) -> list[str]:
    """The YAML of one table entry (without its comments)."""
    lines = [f"- source: {scalar(d.source.name)}"]
    if d.target.name != d.source.name:
        lines.append(f"  target: {scalar(d.target.name)}")
    lines.append(f"  key: {flow(d.key or ['?'])}")
    if d.target_key is not None:
        lines.append(f"  target_key: {flow(d.target_key)}")
    if d.columns:
        lines.append("  columns:")
        lines += [f"    {scalar(t)}: {scalar(s)}" for t, s in d.columns.items()]
    if d.exclude:
        lines.append(f"  exclude: {flow(d.exclude)}")
    if d.where:
        lines.append("  where:")
        lines += [f"    {scalar(c)}: {scalar(v)}" for c, v in d.where.items()]
    if d.depends_on:
        lines.append(f"  depends_on: {flow(d.depends_on)}")
    lines.append("  conflict: source_wins")
    lines.append(f"  deletes: {'delete' if d.group == CATALOG else 'ignore'}")
    return lines


def mapping_file(group: str, drafts: list[Draft], unmatched: list[str]) -> str:
    description, direction, header = GROUP_HEADERS[group]
    out = [f"# Drafted by `replicator init` on {date.today().isoformat()}."]
    out += ["# " + line if line else "#" for line in header.splitlines()]
    out += [
        "#",
        "# Lines marked DECIDE need you: read each one, fix the entry, delete the DECIDE line.",
        "# Entries written as comments cannot pass `replicator check` until you decide.",
        "# Reference: docs/mappings.md.",
        f"group: {group}",
        f'description: "{description} (drafted by replicator init)"',
        f"direction: {direction}",
        "",
        "tables:" if any(d.active for d in drafts) else "tables: []  # DECIDE: no table yet",
    ]
    for d in drafts:
        arrow = f"{d.source.name} -> {d.target.name}"
        out.append(f"  # ---- {arrow}: {d.why_group} ----")
        for note in d.notes:
            out += comment(note, "  ")
        if d.group != CATALOG:
            out += comment("deletes: ignore: the server is the archive; registers purge", "  ")
        for text in d.blocking:
            out += comment(text + " (the entry is commented out until then)", "  ", True)
        for text in d.decide:
            out += comment(text, "  ", True)
        prefix = "  " if d.active else "  # "
        out += [prefix + line for line in entry(d)]
        out.append("")
    if unmatched:
        out.append("# ---- unmatched: tables of one side only ----")
    for text in unmatched:
        out += comment(text, "", True)
    return "\n".join(out).rstrip() + "\n"


def unmatched_text(table: TableInfo, side: str) -> str:
    other = "server" if side == "register" else "register"
    return (
        f"{side} table {table.name} matches no {other} table (by name or by columns), so it "
        f"is not replicated. Options: leave it local to the {side}, create it on the "
        f"{other} and run `replicator init` again, or add an entry by hand with source and "
        "target"
    )


@dataclass
class Database:
    name: str
    role: str
    node: str
    url: str
    password_env: str | None = None
    comments: list[str] = field(default_factory=list)


def config_file(
    databases: list[Database],
    groups: list[str],
    variables: dict[str, str],
    timezone: str | None,
    sources: list[str],
) -> str:
    """replicator.toml for the register's node: the two databases, the groups as jobs."""
    register = next(d for d in databases if d.role == "register")
    out = [f"# replicator.toml drafted by `replicator init` on {date.today().isoformat()} from:"]
    out += [f"#   {line}" for line in sources]
    out += [
        "# Lines marked DECIDE need you. No password is written here: passwords come from the",
        "# environment variable named by password_env (or a password_file). See docs/config.md.",
        'mappings = "mappings"',
        "",
        "[node]",
        *comment(
            "this register's node name, unique in the chain and never changed (job "
            "progress is keyed by it); the convention is loja<NN>-caixa<NN>",
            "",
            True,
        ),
        f"name = {json.dumps(register.node)}",
    ]
    uses = dict(variables)
    out += comment(
        "this store's number" + (f"; {uses['store_id']}" if "store_id" in uses else ""),
        "",
        True,
    )
    out.append("store_id = 1")
    out += comment(
        "this register's number, its own in the store (two registers with one number "
        "overwrite each other's sales on the server)"
        + (f"; {uses['register_id']}" if "register_id" in uses else ""),
        "",
        True,
    )
    out.append("register_id = 1")
    others = {k: v for k, v in uses.items() if k not in ("store_id", "register_id")}
    if others:
        for name, why in others.items():
            out += comment(f"the value of {{{name}}}: {why}", "", True)
        out.append("vars = { " + ", ".join(f"{k} = 1" for k in others) + " }")
    if timezone:
        out += comment(
            "the zone of the register's clock (its SQLite timestamps are local time); "
            "this machine's zone was found",
            "",
            True,
        )
        out.append(f"timezone = {json.dumps(timezone)}")
    for db in databases:
        out += ["", f"[databases.{db.name}]"]
        out += [f"# {c}" for c in db.comments]
        out += [
            f'role = "{db.role}"',
            f"node = {json.dumps(db.node)}",
            f"url = {json.dumps(db.url)}",
        ]
        if db.password_env:
            out.append(f"password_env = {json.dumps(db.password_env)}")
    every = {CATALOG: ("5m", None), "movimento": ("30s", "10m")}
    for group in groups:
        often, lag = every.get(group, ("60s", None))
        out += ["", "[[jobs]]", f'group = "{group}"', f'every = "{often}"']
        if lag:
            out.append(f'max_lag = "{lag}"')
    return "\n".join(out) + "\n"
