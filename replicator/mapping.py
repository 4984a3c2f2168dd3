"""Mapping files: one replication group per file, its direction and its tables in order."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from replicator.errors import ConfigError
from replicator.sourcefile import SourceFile, load_yaml

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


ColumnSpec = Annotated[
    str | int | float | bool | None | Const | FromColumn,
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
    deletes: Literal["delete", "ignore"] | SoftDelete = "delete"
    conflict: Literal["source_wins", "keep_target"] | NewerWins = "source_wins"
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
        seen = [v for i, v in enumerate(value) if v in value[:i]]
        if seen:
            raise ValueError(f"{seen[0]!r} is listed twice")
        return value

    @model_validator(mode="after")
    def _keys_resolve(self) -> TableMapping:
        for col in self.key:
            if col in self.exclude:
                raise ValueError(f"key column {col!r} is also in exclude; remove it from exclude")
        for tcol in self.resolved_target_key():
            spec = self.columns.get(tcol, tcol)
            if isinstance(spec, FromColumn) and spec.map is not None:
                raise ValueError(f"target key column {tcol!r} cannot use a value map")
            src = source_column_of(spec)
            if src is not None and src not in self.key:
                raise ValueError(
                    f"target key column {tcol!r} comes from {src!r}, which is not in key "
                    f"{self.key}; add it to key or map the column to a key column"
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
        seen: set[str] = set()
        for index, table in enumerate(self.tables):
            if table.label in seen:
                raise _TableError(index, f"table {table.label!r} is declared twice")
            for dep in table.depends_on:
                if dep == table.label:
                    raise _TableError(index, f"table {table.label!r} depends on itself")
                if dep not in seen:
                    later = [t.label for t in self.tables[index + 1 :]]
                    fix = (
                        f"move {dep!r} above {table.label!r}"
                        if dep in later
                        else f"no table {dep!r} in this group; check the name"
                    )
                    raise _TableError(
                        index, f"table {table.label!r} depends on {dep!r}, which is not "
                        f"declared before it: {fix} (tables are applied in file order)"
                    )
            seen.add(table.label)
        return self

    def table(self, name: str) -> TableMapping:
        for table in self.tables:
            if table.label == name:
                return table
        raise ConfigError(
            f"group {self.group!r} has no table {name!r}; tables: "
            + ", ".join(t.label for t in self.tables)
        )


class _TableError(ValueError):
    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def format_validation_error(source: SourceFile, exc: ValidationError, what: str) -> str:
    """Turn pydantic errors into `file:line: key: message` lines with a fix."""
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
        ctx_error = err.get("ctx", {}).get("error")
        if isinstance(ctx_error, _TableError):
            loc = ("tables", ctx_error.index)
        where = source.where(loc)
        key = ".".join(str(p) for p in loc) or "(top level)"
        message = _explain(err, what)
        out.append(f"{where}: {key}: {message}")
    return "\n".join(dict.fromkeys(out))


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and (
        part in {"str", "int", "float", "bool", "none", "Const", "FromColumn", "SoftDelete",
                 "NewerWins", "list[union[str,int,float,bool,none]]"}
        or part.startswith(("literal[", "function-", "union["))
    )


def _explain(err: Mapping[str, Any], what: str) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key; remove it or check its spelling (see docs/{what}.md)"
    if kind == "missing":
        return "required key is missing; add it"
    if kind == "literal_error":
        return f"{err['msg']}"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def load_mapping(path: Path) -> MappingFile:
    source = load_yaml(path)
    if not isinstance(source.data, dict):
        raise ConfigError(f"{source.where(())}: a mapping file must be a YAML mapping "
                          "with group, direction and tables")
    try:
        return MappingFile.model_validate(source.data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, "mappings")) from None


def load_mappings(directory: Path) -> dict[str, MappingFile]:
    """All mapping files of a directory, by group; a group defined twice is an error."""
    if not directory.is_dir():
        raise ConfigError(f"mapping directory {directory} does not exist; "
                          "set mappings = \"...\" in replicator.toml")
    groups: dict[str, MappingFile] = {}
    origin: dict[str, Path] = {}
    for path in sorted(directory.glob("*.y*ml")):
        mapping = load_mapping(path)
        if mapping.group in groups:
            raise ConfigError(
                f"{path}: group {mapping.group!r} is already defined in {origin[mapping.group]}; "
                "rename one of the groups"
            )
        groups[mapping.group] = mapping
        origin[mapping.group] = path
    if not groups:
        raise ConfigError(f"no mapping files (*.yaml) in {directory}")
    return groups
