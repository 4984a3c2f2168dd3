"""Mapping files: one replication group per file, its direction and its tables in order."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from replicator.errors import ConfigError
from replicator.sourcefile import Loc, SourceFile, load_yaml

VAR_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
Scalar = str | int | float | bool | None
DEFAULT_CHANGE_COLUMN = "repl_version"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Const(Strict):
    """A constant value for the target column."""

    const: Scalar


class FromColumn(Strict):
    """A source column, optionally translated through a value map."""

    from_: str = Field(alias="from")
    map: dict[str, Scalar] | None = Field(
        default=None, description="source value -> target value; other values pass through"
    )
    default: Scalar = Field(
        default=None, description="value for source values not in the map (only with map)"
    )

    @property
    def has_default(self) -> bool:
        return "default" in self.model_fields_set

    @field_validator("map", mode="before")
    @classmethod
    def _text_keys(cls, value: Any) -> Any:
        """Map keys compare as text (YAML reads an unquoted 1 as a number)."""
        if isinstance(value, dict):
            return {str(k) if isinstance(k, int | float) else k: v for k, v in value.items()}
        return value

    @field_validator("default")
    @classmethod
    def _default_needs_map(cls, value: Scalar, info: ValidationInfo) -> Scalar:
        if info.data.get("map") is None:
            raise ValueError("default is only used with map; add a map or remove default")
        return value


ColumnSpec = Annotated[
    str | int | float | bool | Const | FromColumn | None,
    Field(
        description=(
            'A source column name ("name"), a node variable ("{store_id}"), a constant '
            "(number, true/false, null, or {const: ...}), or {from: column, map: {...}}"
        )
    ),
]


class SoftDelete(Strict):
    soft: str = Field(description="target column set to true instead of deleting the row")


class NewerWins(Strict):
    newer_wins: str = Field(description="column compared; the row with the greater value wins")


class Closing(Strict):
    date: str = Field(description="source date or timestamp column the closing report groups by")
    sums: list[str] = Field(default_factory=list, description="amount columns summed per day")


class TableMapping(Strict):
    """One table replicated from source to target."""

    name: str | None = Field(default=None, description="name used in logs; default: source")
    source: str
    target: str | None = Field(default=None, description="default: same as source")
    key: list[str] = Field(min_length=1, description="source key columns (primary key)")
    target_key: list[str] | None = Field(
        default=None, description="target key columns; default: the mapped source key"
    )
    change_column: str = Field(default=DEFAULT_CHANGE_COLUMN)
    columns: dict[str, ColumnSpec] = Field(
        default_factory=dict, description="target column -> source column, variable or constant"
    )
    copy_other_columns: bool = Field(
        default=True, description="also copy source columns not named in `columns` as they are"
    )
    exclude: list[str] = Field(default_factory=list, description="source columns never copied")
    where: dict[str, Scalar | list[Scalar]] = Field(
        default_factory=dict,
        description='row filter on source columns: value, "{variable}", or a list (IN)',
    )
    deletes: Literal["delete", "ignore"] | SoftDelete = Field(
        default="delete", description="delete (the default), ignore, or {soft: column}"
    )
    conflict: Literal["source_wins", "keep_target"] | NewerWins = Field(
        default="source_wins",
        description="source_wins (the default), keep_target, or {newer_wins: column}",
    )
    depends_on: list[str] = Field(
        default_factory=list, description="tables of this group that must be applied first"
    )
    closing: Closing | None = None

    @property
    def label(self) -> str:
        return self.name or self.source

    @property
    def target_table(self) -> str:
        return self.target or self.source

    def explicit_spec(self, target_column: str) -> ColumnSpec:
        return self.columns[target_column]

    @field_validator("key", "exclude", "depends_on")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        seen = [i for i, v in enumerate(value) if v in value[:i]]
        if seen:
            raise LocatedError((seen[0],), f"{value[seen[0]]!r} is listed twice; remove one")
        return value

    @model_validator(mode="after")
    def _keys_resolve(self) -> TableMapping:
        for col in self.key:
            if col in self.exclude:
                raise LocatedError(
                    ("exclude", self.exclude.index(col)),
                    f"key column {col!r} is also in exclude; remove it from exclude",
                )
        for index, tcol in enumerate(self.resolved_target_key()):
            spec = self.columns.get(tcol, tcol)
            at: Loc = ("target_key", index) if self.target_key is not None else ("key",)
            if tcol in self.columns:
                at = ("columns", tcol)
            if isinstance(spec, FromColumn) and spec.map is not None:
                raise LocatedError(
                    at,
                    f"target key column {tcol!r} cannot use a value map; "
                    "remove the map or the column from the key",
                )
            src = source_column_of(spec)
            if src is not None and src not in self.key:
                if self.target_key is not None:
                    at = ("target_key", index)
                raise LocatedError(
                    at,
                    f"target key column {tcol!r} comes from source column {src!r}, which is "
                    f"not in key {self.key}; add it to key or map the column to a key column",
                )
        return self

    def resolved_target_key(self) -> list[str]:
        if self.target_key is not None:
            return self.target_key
        renamed = {source_column_of(spec): t for t, spec in self.columns.items()}
        return [renamed.get(col, col) for col in self.key]


def source_column_of(spec: ColumnSpec) -> str | None:
    """The source column a spec reads, or None for constants and variables."""
    if isinstance(spec, FromColumn):
        return spec.from_
    if isinstance(spec, str) and not VAR_RE.match(spec):
        return spec
    return None


Direction = Literal["server_to_register", "register_to_server"]


class MappingFile(Strict):
    """A replication group: what `replicator sync GROUP` runs."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="replicator mapping file",
        json_schema_extra={"$id": "https://replicator.invalid/mapping.schema.json"},
    )

    group: str = Field(pattern=r"^[a-z][a-z0-9_-]*$", description="group name, e.g. cadastros")
    description: str = ""
    direction: Direction
    tables: list[TableMapping] = Field(min_length=1)

    @model_validator(mode="after")
    def _order(self) -> MappingFile:
        labels = [t.label for t in self.tables]
        first: dict[str, int] = {}
        for index, label in enumerate(labels):
            if label in first:
                raise LocatedError(
                    ("tables", index),
                    f"table {label!r} is declared twice (first at {{see}}); remove one, or "
                    "give one of them another `name:` if they really are different tables",
                    see=("tables", first[label]),
                )
            first[label] = index
        for index, table in enumerate(self.tables):
            for d, dep in enumerate(table.depends_on):
                at = ("tables", index, "depends_on", d)
                if dep == table.label:
                    raise LocatedError(
                        at,
                        f"table {table.label!r} depends on itself; remove "
                        f"{dep!r} from its depends_on",
                    )
                if dep not in first:
                    close = difflib.get_close_matches(dep, labels, n=1)
                    fix = f"did you mean {close[0]!r}?" if close else "check the name;"
                    raise LocatedError(
                        at,
                        f"table {table.label!r} depends on {dep!r}, but this group has no "
                        f"such table; {fix} tables of this group: {', '.join(labels)}",
                    )
        cycle = _find_cycle(self.tables, first)
        if cycle:
            start = self.tables[first[cycle[0]]]
            path = " -> ".join(repr(c) for c in cycle)
            raise LocatedError(
                ("tables", first[cycle[0]], "depends_on", start.depends_on.index(cycle[1])),
                f"tables {path} depend on each other (a cycle), so there is no order to apply "
                "them in; remove one of these depends_on",
            )
        for index, table in enumerate(self.tables):
            for d, dep in enumerate(table.depends_on):
                if first[dep] > index:
                    raise LocatedError(
                        ("tables", index, "depends_on", d),
                        f"table {table.label!r} depends on {dep!r}, which is declared after it "
                        f"(at {{see}}), but tables are applied in file order: move {dep!r} "
                        f"above {table.label!r}",
                        see=("tables", first[dep]),
                    )
        return self

    def table(self, name: str) -> TableMapping:
        for table in self.tables:
            if table.label == name:
                return table
        raise ConfigError(
            f"group {self.group!r} has no table {name!r}; tables: "
            + ", ".join(t.label for t in self.tables)
        )


def _find_cycle(tables: list[TableMapping], index: dict[str, int]) -> list[str] | None:
    """A dependency cycle as [a, b, ..., a], starting at the earliest table; or None."""
    deps = {t.label: t.depends_on for t in tables}
    done: set[str] = set()

    def visit(label: str, path: list[str]) -> list[str] | None:
        if label in path:
            return [*path[path.index(label) :], label]
        if label in done:
            return None
        for dep in deps.get(label, []):
            found = visit(dep, [*path, label])
            if found:
                return found
        done.add(label)
        return None

    for table in tables:
        cycle = visit(table.label, [])
        if cycle:
            begin = min(range(len(cycle) - 1), key=lambda i: index[cycle[i]])
            ring = cycle[:-1]
            ring = ring[begin:] + ring[:begin]
            return [*ring, ring[0]]
    return None


class LocatedError(ValueError):
    """A validator error that knows where, below the model being validated, the problem is.

    ``loc`` is relative to that model; ``see`` (also relative) is another place the message
    refers to as ``{see}``, shown as its line number when the file is known."""

    def __init__(self, loc: Loc, message: str, see: Loc | None = None) -> None:
        self.loc = loc
        self.template = message
        self.see = see
        super().__init__(message.replace("{see}", _dotted(see or ())))


def _dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc)


_UNION_TAGS = {
    "str",
    "int",
    "float",
    "bool",
    "none",
    "Const",
    "FromColumn",
    "SoftDelete",
    "NewerWins",
}


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and (
        part in _UNION_TAGS
        or part.startswith(("literal[", "function-", "union[", "list[", "dict["))
    )


def format_validation_error(
    source: SourceFile, exc: ValidationError, what: str, model: type[BaseModel] | None = None
) -> str:
    """Turn pydantic errors into `file:line: key: what is wrong; how to fix it` lines.

    ``model`` (default: the mapping file) lets the message suggest keys and values."""
    model = model or MappingFile
    out = []
    for err, branches in _pick_union_branches(source, exc.errors()):
        raw_loc: tuple[str | int, ...] = tuple(err["loc"])
        loc = tuple(p for p in raw_loc if not _is_union_tag(p))
        ctx_error = err.get("ctx", {}).get("error")
        message = _explain(err, what, source, model, raw_loc, loc, branches)
        if isinstance(ctx_error, LocatedError):
            loc = (*loc, *ctx_error.loc)
            see = ctx_error.see
            if see is not None:
                base = loc[: len(loc) - len(ctx_error.loc)]
                line = source.line_of((*base, *see))
                shown = f"line {line}" if line else _dotted((*base, *see))
                message = ctx_error.template.replace("{see}", shown)
        where = source.where(loc)
        key = _dotted(loc) or "(top level)"
        out.append(f"{where}: {key}: {message}")
    return "\n".join(dict.fromkeys(out))


def _value_at(data: Any, loc: Loc) -> Any:
    for part in loc:
        found = (isinstance(data, dict) and part in data) or (
            isinstance(data, list) and isinstance(part, int) and part < len(data)
        )
        if found:
            data = data[part]
        else:
            return None
    return data


_SHAPE_ERRORS = {
    "model_type",
    "model_attributes_type",
    "dict_type",
    "string_type",
    "int_type",
    "int_parsing",
    "float_type",
    "float_parsing",
    "bool_type",
    "bool_parsing",
    "none_required",
    "list_type",
    "literal_error",
    "is_instance_of",
}


def _pick_union_branches(source: SourceFile, errors: list[Any]) -> list[tuple[Any, int]]:
    """Pydantic reports every member of a union that failed; keep the member the user meant.

    For a mapping value (`{from: x, mapp: ...}`) that is the model with the fewest errors;
    for a plain value, the plain members. Returns (error, number of members that failed)."""
    by_root: dict[Loc, dict[object, list[Any]]] = {}
    order: list[tuple[Loc, Any]] = []
    for err in errors:
        raw = tuple(err["loc"])
        tag = next((i for i, p in enumerate(raw) if _is_union_tag(p)), None)
        if tag is None:
            order.append(((), err))
            continue
        root = raw[:tag]
        if root not in by_root:
            by_root[root] = {}
            order.append((root, None))
        by_root[root].setdefault(raw[tag], []).append(err)
    out: list[tuple[Any, int]] = []
    for root, err in order:
        if err is not None:
            out.append((err, 1))
            continue
        branches = by_root[root]
        value = _value_at(source.data, tuple(p for p in root if not _is_union_tag(p)))
        if isinstance(value, dict):
            models = {
                tag: errs
                for tag, errs in branches.items()
                if not any(
                    e["type"] in _SHAPE_ERRORS and len(e["loc"]) == len(root) + 1 for e in errs
                )
            }
            if models:
                best = min(models.values(), key=len)
                out.extend((e, 1) for e in best)
                continue
        plain = [
            e
            for errs in branches.values()
            for e in errs
            if not (
                e["type"] in {"model_type", "model_attributes_type", "dict_type"}
                and len(e["loc"]) == len(root) + 1
            )
        ]
        if not isinstance(value, dict) and len(plain) == 1:
            out.append((plain[0], len(branches)))
        else:
            first = (plain or next(iter(branches.values())))[0]
            out.append(({**first, "type": "union_mismatch", "tags": list(branches)}, len(branches)))
    return out


def _strip_annotated(tp: Any) -> tuple[Any, FieldInfo | None]:
    info = None
    while typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        info = next((a for a in args[1:] if isinstance(a, FieldInfo)), info)
        tp = args[0]
    return tp, info


def _field_at(
    model: type[BaseModel], raw_loc: tuple[str | int, ...]
) -> tuple[Any, FieldInfo | None, FieldInfo | None]:
    """At a pydantic error location: the type, its own FieldInfo, and the FieldInfo of the
    list or dict it is an item of (None when unknown)."""
    tp: Any = model
    info: FieldInfo | None = None
    container: FieldInfo | None = None
    for part in raw_loc:
        tp, extra = _strip_annotated(tp)
        info = extra or info
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            named = [a for a in args if getattr(_strip_annotated(a)[0], "__name__", None) == part]
            if named:
                tp = named[0]
                continue
            if _is_union_tag(part):
                return None, info, container
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            containers = [a for a in args if typing.get_origin(a) in (list, dict)]
            choice = models or containers
            if not choice:
                return None, None, None
            tp, extra = _strip_annotated(choice[0])
            info = extra or info
            origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next((f for n, f in tp.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return None, None, None
            tp, info, container = field.annotation, field, None
        elif (origin is list and isinstance(part, int)) or origin is dict:
            tp = typing.get_args(tp)[-1]
            info, container = None, info or container
        else:
            return None, None, None
    tp, extra = _strip_annotated(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:  # Optional[X]
            tp = _strip_annotated(args[0])[0]
    return tp, extra or info, container


def _model_keys(tp: Any) -> list[str]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []


def _literals(tp: Any) -> list[Any]:
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [v for a in typing.get_args(tp) for v in _literals(a)]
    return []


_WORDS = {
    "str": "text",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "none": "nothing (null)",
}


def _expected(tags: list[object]) -> list[str]:
    """What the members of a union accept, in words."""
    out = []
    for tag in tags:
        text = str(tag)
        if text in _WORDS:
            out.append(_WORDS[text])
        elif text.startswith("literal["):
            out.append(text.removeprefix("literal[").removesuffix("]"))
        elif text.startswith("list["):
            out.append("a list")
        else:
            out.append("a mapping")
    return list(dict.fromkeys(out))


_ITEMS = {
    "tables": "table",
    "key": "key column",
    "target_key": "key column",
    "databases": "database",
    "sums": "column",
}


def _explain(
    err: Mapping[str, Any],
    what: str,
    source: SourceFile,
    model: type[BaseModel],
    raw_loc: tuple[str | int, ...],
    loc: Loc,
    branches: int,
) -> str:
    kind = err["type"]
    toml = source.path.suffix == ".toml"
    name = str(loc[-1]) if loc else ""
    tp, own, container = _field_at(model, raw_loc)
    info = own or container
    description = info.description if info is not None else None
    value = err.get("input")
    if kind == "extra_forbidden":
        parent = _field_at(model, raw_loc[:-1])[0]
        known = _model_keys(parent)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        if close:
            return (
                f"unknown key; did you mean {close[0]!r}? (keys allowed here: {', '.join(known)})"
            )
        listed = f"; keys allowed here: {', '.join(known)}" if known else ""
        return f"unknown key; remove it or check its spelling{listed} (see docs/{what}.md)"
    if kind == "missing":
        options = _literals(tp)
        if options:
            if toml:
                alternatives = " or ".join(f'"{o}"' for o in options[1:])
                return f'required key is missing; add {name} = "{options[0]}"' + (
                    f" (or {alternatives})" if alternatives else ""
                )
            alternatives = " or ".join(str(o) for o in options[1:])
            return f"required key is missing; add {name}: {options[0]}" + (
                f" (or {alternatives})" if alternatives else ""
            )
        if toml and _model_keys(tp):
            section = _dotted(loc)
            return f"required table is missing; add a [{section}] table" + (
                f" ({description})" if description else ""
            )
        hint = f" ({description})" if description else ""
        return f"required key is missing; add it{hint}"
    if kind == "union_mismatch":
        if own is not None and own.description:
            return f"not a valid value; use {own.description[:1].lower()}{own.description[1:]}"
        about = f" ({description})" if description else ""
        return f"not a valid value; expected {' or '.join(_expected(err['tags']))}{about}"
    if kind == "literal_error":
        expected = str(err["msg"]).replace("Input should be ", "")
        if branches > 1 and description:
            return f"{value!r} is not allowed; use {description}"
        return f"{value!r} is not allowed; use {expected}"
    if kind == "list_type":
        if isinstance(value, str | int):
            return f"expected a list; write it in brackets: [{value}]"
        return "expected a list; write it in brackets: [a, b]"
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        default = info.default if info is not None else None
        example = f", e.g. {name} = {default}" if isinstance(default, int) and toml else ""
        return f"expected a whole number, without quotes{example}"
    if kind in {"bool_type", "bool_parsing"}:
        return "expected true or false, without quotes"
    if kind in {"float_type", "float_parsing"}:
        return "expected a number, without quotes"
    if kind == "string_type":
        return 'expected text; put it in quotes: "..."'
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        if toml:
            return f"expected a table: a [{_dotted(loc)}] section or {{ key = value }}"
        return "expected a mapping: `key: value` lines indented below it"
    if kind in {"too_short"}:
        item = _ITEMS.get(name, "item")
        return f"cannot be empty; add at least one {item}"
    if kind == "string_pattern_mismatch":
        expected = f"; expected {description}" if description else ""
        return f"{value!r} is not valid{expected}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return msg


def load_mapping(path: Path) -> MappingFile:
    return _load(path)[0]


def _load(path: Path) -> tuple[MappingFile, SourceFile]:
    source = load_yaml(path)
    if not isinstance(source.data, dict):
        raise ConfigError(
            f"{source.where(())}: a mapping file must be a YAML mapping "
            "with group, direction and tables"
        )
    try:
        return MappingFile.model_validate(source.data), source
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, "mappings")) from None


def load_mappings(directory: Path) -> dict[str, MappingFile]:
    """All mapping files of a directory, by group; a group defined twice is an error."""
    return {group: mapping for group, (mapping, _) in load_mapping_sources(directory).items()}


def load_mapping_sources(directory: Path) -> dict[str, tuple[MappingFile, SourceFile]]:
    """Like `load_mappings`, with each group's parsed file (for messages that need lines)."""
    if not directory.is_dir():
        raise ConfigError(
            f'mapping directory {directory} does not exist; set mappings = "..." in replicator.toml'
        )
    groups: dict[str, tuple[MappingFile, SourceFile]] = {}
    for path in sorted(directory.glob("*.y*ml")):
        mapping, source = _load(path)
        if mapping.group in groups:
            other = groups[mapping.group][1]
            raise ConfigError(
                f"{source.where(('group',))}: group: {mapping.group!r} is already defined in "
                f"{other.where(('group',))}; rename one of the groups (one file per group)"
            )
        groups[mapping.group] = (mapping, source)
    if not groups:
        raise ConfigError(f"no mapping files (*.yaml) in {directory}")
    return groups
