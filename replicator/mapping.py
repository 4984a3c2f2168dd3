"""Mapping files: one replication group per file, its direction and its tables in order."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from replicator.diagnostics import LocatedError, format_validation_error
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
        raise ConfigError(format_validation_error(source, exc, "mappings", MappingFile)) from None


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
