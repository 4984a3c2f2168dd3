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
    """What the closing report (`replicator closing`) compares for a table: rows of one
    business day counted and summed on both sides (`date`), and the age of changes still
    waiting to be sent (`changed`). See docs/closing.md."""

    title: str | dict[str, str] | None = Field(
        default=None,
        description='the name staff read, e.g. "Vendas", or one per language: '
        "{en: Sales, pt-BR: Vendas}; default: the table name",
    )
    date: str | None = Field(
        default=None,
        description="source date or timestamp column whose local day places a row on a "
        "business day (of the `via` table when set)",
    )
    via: str | None = Field(
        default=None,
        description="a table of this group declared above whose `date` is this table's "
        "(payments take the day of their sale), joined on that table's key columns",
    )
    sums: list[str] = Field(
        default_factory=list, description="amount columns summed per day, exactly"
    )
    by: str | None = Field(
        default=None,
        description="column whose values get their own count and sums, e.g. the payment type",
    )
    where: dict[str, Scalar | list[Scalar]] = Field(
        default_factory=dict,
        description="only these rows are counted and summed (e.g. status: C, not cancelled "
        "sales); source columns of the table that holds `date`",
    )
    changed: str | None = Field(
        default=None,
        description="source column holding when a row last changed (e.g. updated_at): the "
        "report gives the age of the changes still waiting to be sent",
    )
    show: list[str] = Field(
        default_factory=list,
        description="source columns listed beside the key for rows that are missing, "
        "different or waiting (e.g. price)",
    )

    labels: dict[str, str | dict[str, str]] = Field(
        default_factory=dict,
        description="names staff read for the columns of sums, by and show, e.g. "
        "{amount: {en: Amount, pt-BR: Valor}}; default: the column names",
    )

    @field_validator("sums", "show")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        seen = [i for i, v in enumerate(value) if v in value[:i]]
        if seen:
            raise LocatedError((seen[0],), f"{value[seen[0]]!r} is listed twice; remove one")
        return value

    @field_validator("title")
    @classmethod
    def _languages(cls, value: str | dict[str, str] | None) -> str | dict[str, str] | None:
        _known_languages(value, ())
        return value

    @field_validator("labels")
    @classmethod
    def _label_languages(
        cls, value: dict[str, str | dict[str, str]]
    ) -> dict[str, str | dict[str, str]]:
        for column, text in value.items():
            _known_languages(text, (column,))
        return value

    @model_validator(mode="after")
    def _date_keys(self) -> Closing:
        if self.date is None:
            for key in ("sums", "by", "via", "where"):
                if getattr(self, key):
                    raise LocatedError(
                        (key,), f"{key} is only used with date; add date: COLUMN or remove {key}"
                    )
        if self.by is not None and self.by in self.sums:
            raise LocatedError(
                ("by",), f"{self.by!r} is both in sums and by; a column is summed or grouped by"
            )
        named = [*self.sums, *([self.by] if self.by else []), *self.show]
        for column in self.labels:
            if column not in named:
                raise LocatedError(
                    ("labels", column),
                    f"labels: {column!r} is not in sums, by or show; label one of "
                    + (", ".join(named) or "them (there are none)"),
                )
        return self

    def title_in(self, lang: str) -> str | None:
        """The title for a language tag ("en", "pt-BR"), else the first one given."""
        return _in_language(self.title, lang)

    def label_in(self, column: str, lang: str) -> str:
        """What staff read for a column, in a language; else the column's name."""
        return _in_language(self.labels.get(column), lang) or column


def _in_language(text: str | dict[str, str] | None, lang: str) -> str | None:
    if text is None or isinstance(text, str):
        return text
    from replicator.i18n import normalize

    for key, value in text.items():
        if normalize(key) == lang:
            return value
    return next(iter(text.values()), None)


def _known_languages(text: str | dict[str, str] | None, at: Loc) -> None:
    if not isinstance(text, dict):
        return
    from replicator.i18n import LANGUAGES, normalize

    for lang in text:
        if normalize(lang) is None:
            raise LocatedError(
                (*at, lang),
                f"{lang!r} is not a language of the replicator; use " + " or ".join(LANGUAGES),
            )


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

    @model_validator(mode="after")
    def _closing_via(self) -> MappingFile:
        """`closing.via` names a table declared above, which has a closing `date`."""
        labels = [t.label for t in self.tables]
        for index, table in enumerate(self.tables):
            via = table.closing.via if table.closing else None
            if via is None:
                continue
            at: Loc = ("tables", index, "closing", "via")
            if via not in labels[:index]:
                close = difflib.get_close_matches(via, labels, n=1)
                fix = f"did you mean {close[0]!r}? " if close else ""
                raise LocatedError(
                    at,
                    f"closing.via: {via!r} is not a table declared above {table.label!r}; "
                    f"{fix}tables above it: {', '.join(labels[:index]) or 'none'}",
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
