"""Load YAML and TOML files while keeping the line of every key, so errors can name it."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from replicator.errors import ConfigError

Loc = tuple[str | int, ...]


@dataclass
class SourceFile:
    """A parsed file: its data plus the line number of every path inside it."""

    path: Path
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        """The line of the deepest known prefix of ``loc``."""
        for n in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:n]))
            if line is not None:
                return line
        return None

    def where(self, loc: Loc) -> str:
        line = self.line_of(loc)
        return f"{self.path}:{line}" if line else str(self.path)


def _convert(node: yaml.Node, loc: Loc, lines: dict[Loc, int], path: Path) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node)) if not isinstance(
                key_node, yaml.ScalarNode
            ) else _scalar(key_node)
            if key in out:
                raise ConfigError(
                    f"{path}:{key_node.start_mark.line + 1}: key {key!r} appears twice; "
                    "keep one of them"
                )
            out[key] = _convert(value_node, (*loc, str(key)), lines, path)
            lines[(*loc, str(key))] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*loc, i), lines, path) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    return yaml.SafeLoader(yaml.serialize(node)).get_single_data()


def load_yaml(path: Path) -> SourceFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}{line}: invalid YAML: {exc.problem or exc.context}; check indentation, "
            "colons and quotes"
        ) from None
    if root is None:
        raise ConfigError(f"{path}: the file is empty; see docs/mappings.md for the format")
    lines: dict[Loc, int] = {}
    data = _convert(root, (), lines, path)
    return SourceFile(path, data, lines)


def load_toml(path: Path) -> SourceFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read file: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return SourceFile(path, data, _toml_lines(text))


def _toml_lines(text: str) -> dict[Loc, int]:
    """Best-effort line map for TOML: table headers and the keys under them."""
    lines: dict[Loc, int] = {}
    section: Loc = ()
    counts: dict[Loc, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[["):
            name = tuple(p.strip().strip('"') for p in line.strip("[]").split("."))
            index = counts.get(name, 0)
            counts[name] = index + 1
            section = (*name, index)
            lines.setdefault(section, number)
            lines.setdefault(name, number)
        elif line.startswith("["):
            section = tuple(p.strip().strip('"') for p in line.strip("[]").split("."))
            lines.setdefault(section, number)
        elif "=" in line:
            key = tuple(p.strip().strip('"') for p in line.split("=", 1)[0].split("."))
            lines.setdefault((*section, *key), number)
    return lines
