"""`replicator init`, step 2: a draft of every mapping entry, with what a person must decide.

Each matched pair of tables goes to the catalog (`cadastros`, server -> registers) or to the
movement (`movimento`, registers -> server), from its keys, its name and its foreign keys:

1. a server table whose primary key has columns that the register's key lacks (store_id,
   register_id) is keyed per register: movement, unless only store columns are added and
   its name says catalog (prices per store: catalog, filtered on this store);
2. otherwise its name, in Portuguese or English (produto, preco, cliente... vs venda, item,
   pagamento, caixa, fechamento...);
3. otherwise its foreign keys: a table that points at a movement table is movement, a table
   that movement or catalog tables point at (a payment type) is catalog.

What stays undecided is drafted into the catalog with a `DECIDE` note, never guessed silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from replicator.check import _category, _type_rule
from replicator.init_reflect import ColumnInfo, Match, TableInfo

CATALOG, MOVEMENT = "cadastros", "movimento"

CATALOG_WORDS = (
    "produto", "product", "preco", "price", "cliente", "customer", "funcionario", "employee",
    "usuario", "user", "login", "operador", "fornecedor", "supplier", "categoria", "category",
    "marca", "brand", "unidade", "promoc", "promotion",
)  # fmt: skip
MOVEMENT_WORDS = (
    "venda", "sale", "item", "pagamento", "payment", "pgto", "caixa", "fechamento", "closing",
    "moviment", "cupom", "pedido", "order", "sangria", "suprimento", "cash", "nfce", "receipt",
)  # fmt: skip
# A name that starts like this is a list of codes (FORMA_PGTO, TIPO_VENDA): catalog.
LOOKUP_PREFIX = re.compile(r"^(forma|tipo|cad|categ|grupo|tab|unid)", re.IGNORECASE)
STORE_COLUMN = re.compile(r"(store|loja|filial)", re.IGNORECASE)
REGISTER_COLUMN = re.compile(r"(register|caixa|pdv|terminal|ecf|checkout|estacao)", re.IGNORECASE)
IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")


def name_group(name: str) -> str | None:
    """The group a table's name suggests, or None when it says nothing (or both)."""
    if LOOKUP_PREFIX.match(name):
        return CATALOG
    lowered = name.lower()
    catalog = sum(w in lowered for w in CATALOG_WORDS)
    movement = sum(w in lowered for w in MOVEMENT_WORDS)
    if catalog == movement:
        return None
    return CATALOG if catalog > movement else MOVEMENT


@dataclass
class Draft:
    """One mapping entry as `init` writes it, with its comments."""

    group: str
    why_group: str
    source: TableInfo
    target: TableInfo
    key: list[str] = field(default_factory=list)
    target_key: list[str] | None = None
    columns: dict[str, str] = field(default_factory=dict)  # target column -> spec text
    exclude: list[str] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    decide: list[str] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)  # the entry is written commented out
    variables: dict[str, str] = field(default_factory=dict)  # {name} used -> why

    @property
    def label(self) -> str:
        return self.source.name

    @property
    def active(self) -> bool:
        return not self.blocking


def _extras(match: Match) -> list[str]:
    """Server key columns the register's key lacks, when the register's key is part of it."""
    reg = {c.lower() for c in match.register.primary_key}
    srv = [c for c in match.server.primary_key if c.lower() not in reg]
    if not reg or not srv or not reg <= {c.lower() for c in match.server.primary_key}:
        return []
    return srv


def classify(matches: list[Match]) -> dict[str, tuple[str | None, str]]:
    """Group and reason per register table name; None: nothing said which."""
    found: dict[str, tuple[str | None, str]] = {}
    for m in matches:
        extras = _extras(m)
        named = name_group(m.register.name) or name_group(m.server.name)
        if extras and not (named == CATALOG and all(STORE_COLUMN.search(c) for c in extras)):
            found[m.register.name] = (MOVEMENT, "the server keys it per register")
        elif named:
            found[m.register.name] = (named, "its name")
        else:
            found[m.register.name] = (None, "")
    # foreign keys, on either side, between matched tables
    pair_of = {}
    for m in matches:
        pair_of[m.register.name.lower()] = m.register.name
        pair_of[m.server.name.lower()] = m.register.name
    refs: dict[str, set[str]] = {m.register.name: set() for m in matches}
    for m in matches:
        for fk in (*m.register.foreign_keys, *m.server.foreign_keys):
            other = pair_of.get(fk.table.lower())
            if other and other != m.register.name:
                refs[m.register.name].add(other)
    changed = True
    while changed:
        changed = False
        for name, (group, _) in list(found.items()):
            if group is not None:
                continue
            parents = {found[p][0] for p in refs[name]}
            children = {found[c][0] for c, ps in refs.items() if name in ps}
            if MOVEMENT in parents:
                found[name] = (MOVEMENT, "its foreign key to a movement table")
            elif children and None not in children:
                found[name] = (CATALOG, "the foreign keys of other tables that point at it")
            else:
                continue
            changed = True
    return found


def draft(match: Match, group: str, why: str) -> Draft:
    down = group == CATALOG
    source, target = (match.server, match.register) if down else (match.register, match.server)
    d = Draft(group, why, source, target)
    if match.by_columns is not None:
        d.decide.append(
            f"matched by its columns ({match.by_columns:.0%} in common), not by its name: "
            f"check that {source.name} really is {target.name}, or delete this entry"
        )
    key, reason = source.best_key()
    if not key:
        d.blocking.append(
            f"{source.name} has no primary key and no unique constraint, so its rows cannot "
            "be told apart (an update would be a new row on the target). Options: add a "
            "primary key to it (on both sides), or leave it out of replication"
        )
        return d
    if reason:
        d.decide.append(f"{source.name}: {reason}; a primary key is safer")
    d.key = list(key)
    # server key columns the register's key lacks: filled on the server (movement), or
    # filtered on at the server (a catalog kept per store)
    extras = _extras(match)
    mapped: dict[str, str] = {}  # source column -> target column
    for k in key:
        if down and k in extras:
            continue
        t = target.column(k)
        if t is None:
            d.blocking.append(
                f"key column {k} of {source.name} has no column in {target.name}; map it in "
                "columns, or give the target a column of that name"
            )
        else:
            mapped[k] = t.name
    filled: dict[str, str] = {}  # target column -> variable
    if extras and not down:
        for col in extras:
            filled[col] = _per_register(d, col)
        sure = [c for c in extras if filled[c] in ("store_id", "register_id")]
        if sure:
            names = ", ".join(sure)
            values = ", ".join(f'"{{{filled[c]}}}"' for c in sure)
            d.decide.append(
                f"the server keys {target.name} per register: {names} (not in the "
                f"register's key) are filled with {values} from replicator.toml. Check that "
                "they mean the store and the register, and that every register of the store "
                "has its own register_id"
            )
        d.target_key = list(target.primary_key)
    elif extras and down:
        for col in extras:
            d.where[col] = "{store_id}"
        d.variables["store_id"] = "filters the catalog on this store"
        d.target_key = [mapped[k] for k in key if k not in extras and k in mapped]
        d.decide.append(
            f"the server keeps one row per store ({extras} in its key, not on the "
            f"register): only this store's rows are sent (where {extras[0]} = {{store_id}}). "
            "Remove `where` to send every store's rows (then the register needs those "
            "columns in its key too)"
        )
    else:
        for col in key:
            if STORE_COLUMN.search(col) and down:
                d.where[col] = "{store_id}"
                d.variables["store_id"] = "filters the catalog on this store"
                d.decide.append(
                    f"{col} looks like the store: only this store's rows are sent "
                    f'(where {col} = "{{store_id}}"); remove `where` to send every store\'s'
                )
    wanted = d.target_key if d.target_key is not None else [mapped.get(k, k) for k in key]
    if not d.blocking and not target.is_unique(wanted):
        has = [list(target.primary_key)] if target.primary_key else []
        has += [list(u) for u in target.uniques]
        d.blocking.append(
            f"the target key {wanted} is not the primary key or a unique constraint of "
            f"{target.name} (it has {has or 'none'}). Options: add that primary key to "
            f"{target.name}, or set target_key and columns to fill its key"
        )
    if d.target_key is not None and d.target_key == [mapped.get(k, k) for k in key]:
        d.target_key = None
    _columns(d, filled)
    hints = source.change_hints()
    if hints:
        d.notes.append(
            f"{', '.join(hints)} looks like the application's own change stamp; the "
            "replicator does not track by it yet (setup adds repl_version and triggers)"
        )
    return d


def _per_register(d: Draft, col: str) -> str:
    store, register = bool(STORE_COLUMN.search(col)), bool(REGISTER_COLUMN.search(col))
    if store != register:
        var = "store_id" if store else "register_id"
        d.variables[var] = f"fills {d.target.name}.{col}"
        return var
    var = IDENTIFIER.sub("_", col.lower())
    d.variables[var] = f"fills {d.target.name}.{col} (a guess)"
    d.decide.append(
        f"the server keys {d.target.name} with {col}, which is not in the register's key "
        f"and does not look like a store or a register number; it is filled with "
        f'"{{{var}}}", a variable set in replicator.toml. Options: set that variable per '
        'register, or map it to "{store_id}" / "{register_id}" or a source column'
    )
    return var


def _columns(d: Draft, filled: dict[str, str]) -> None:
    source, target = d.source, d.target
    used: set[str] = set()
    left_default: list[str] = []
    for tcol in target.columns:
        if tcol.name in filled:
            d.columns[tcol.name] = "{" + filled[tcol.name] + "}"
            same = source.column(tcol.name)
            if same is not None:
                used.add(same.name)
                d.exclude.append(same.name)
                d.notes.append(
                    f"{same.name} exists on the register but is not in its key; the server "
                    f"key takes it from the variable instead, so it is excluded"
                )
            continue
        scol = source.column(tcol.name)
        if scol is None:
            if tcol.required:
                d.blocking.append(
                    f"{target.name}.{tcol.name} is NOT NULL without a default and "
                    f"{source.name} has no such column. Options: map it in columns (a "
                    'constant, "{store_id}", a source column), or give it a default'
                )
            else:
                left_default.append(tcol.name)
            continue
        used.add(scol.name)
        if _types(d, scol.name, tcol.name) and scol.name != tcol.name:
            d.columns[tcol.name] = scol.name
    if left_default:
        d.notes.append(f"{target.name} columns with no source column: {', '.join(left_default)}")
    only = [c.name for c in source.columns if c.name not in used and c.name not in d.where]
    if only:
        d.exclude.extend(only)
        d.notes.append(f"excluded: {', '.join(only)} (no such column in {target.name})")
    for k in d.key:
        if k in d.exclude:
            d.exclude.remove(k)
    d.exclude = list(dict.fromkeys(d.exclude))


def _types(d: Draft, scol_name: str, tcol_name: str) -> bool:
    """Whether the column is copied (False: excluded for its type, with a DECIDE)."""
    scol, tcol = d.source.column(scol_name), d.target.column(tcol_name)
    assert scol is not None and tcol is not None
    shown = f"{d.source.name}.{scol.name} ({_type(scol)}) -> {d.target.name}.{tcol.name} "
    shown += f"({_type(tcol)})"
    if not scol.known_type or not tcol.known_type:
        problem = "a type the replicator does not know"
    else:
        rule = _type_rule(_category(scol.type), _category(tcol.type))
        if rule is None:
            return True
        level, note = rule
        if level == "warning":
            d.decide.append(f"{shown}: {note}; keep it if the values always fit")
            return True
        problem = "types that do not fit: sync would refuse every row"
    if scol.name in d.key:
        d.blocking.append(f"{shown}: key column with {problem}; make the types match")
        return True
    if tcol.required:
        d.blocking.append(f"{shown}: {problem}, and the target column is NOT NULL")
        return True
    d.exclude.append(scol.name)
    hint = ""
    if _category(tcol.type) == "bool" and _category(scol.type) in ("text", "number"):
        hint = (
            f" A flag such as S/N can be translated: {tcol.name}: {{from: {scol.name}, map: "
            '{"S": true, "N": false}} under columns (and remove it from exclude).'
        )
    d.decide.append(
        f"{shown}: {problem}, so it is excluded (not copied).{hint} Options: change one "
        "side's type, translate it with a value map, or leave it out"
    )
    return False


def _type(column: ColumnInfo) -> str:
    return str(column.type) if column.known_type else "a type SQLAlchemy does not know"


def order(drafts: list[Draft]) -> list[Draft]:
    """Parents before children (foreign keys of either side); `depends_on` between the
    active tables; a cycle is broken where it must be, and said."""
    by_source = {d.source.name.lower(): d for d in drafts}
    by_target = {d.target.name.lower(): d for d in drafts}
    parents: dict[str, list[Draft]] = {}
    for d in drafts:
        found: list[Draft] = []
        for fk, side in [(f, by_source) for f in d.source.foreign_keys] + [
            (f, by_target) for f in d.target.foreign_keys
        ]:
            parent = side.get(fk.table.lower())
            if parent is None:
                if side is by_target:
                    d.notes.append(
                        f"{d.target.name} has a foreign key to {fk.table}, which is not in "
                        "this group: it must already hold the rows referred to"
                    )
            elif parent is d:
                d.notes.append(
                    f"{d.target.name} refers to itself ({', '.join(fk.columns)}): a child "
                    "that arrives before its parent waits in the quarantine, then goes through"
                )
            elif parent not in found:
                found.append(parent)
        parents[d.label] = found
    done: list[Draft] = []
    pending = sorted(drafts, key=lambda d: d.label.lower())
    while pending:
        ready = [d for d in pending if all(p in done for p in parents[d.label])]
        if not ready:
            first = pending[0]
            first.decide.append(
                f"its foreign keys form a cycle with {[p.label for p in parents[first.label]]}:"
                " there is no order that satisfies them all; one of them must be deferrable "
                "or left out"
            )
            ready = [first]
        for d in ready:
            pending.remove(d)
            done.append(d)
    for d in done:
        before = done[: done.index(d)]
        for p in parents[d.label]:
            if p in before and p.active:
                d.depends_on.append(p.label)
            elif not p.active:
                d.decide.append(
                    f"depends on {p.label}, which is commented out below or above: its rows "
                    f"will wait in the target's quarantine until {p.label} travels too"
                )
    return done
