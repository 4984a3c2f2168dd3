"""Load YAML and TOML files while keeping the line of every key, so errors can name it."""

from __future__ import annotations

import re
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


def _dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc)


# A mapping file is small: a few hundred values, nested a few levels. Aliases (*name) are
# expanded in place, so a few lines of nested aliases can stand for billions of values
# ("billion laughs"); such files are refused before any expansion is paid for.
MAX_VALUES = 100_000  # values (keys, items, scalars) of the file once aliases are expanded
MAX_DEPTH = 64  # nesting of lists and mappings, aliases expanded


class _Composer(yaml.SafeLoader):
    """The safe loader's composer, recording every alias use and refusing deep nesting.

    Composing is cheap (an alias is the same node object again); the cost comes later, when
    `_convert` walks the nodes: `_check_expansion` measures it first."""

    def __init__(self, stream: str, path: Path) -> None:
        super().__init__(stream)
        self.path = path
        self.depth = 0
        self.aliases: list[tuple[str, int, yaml.Node]] = []  # (name, line, node)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1  # the parser marks every event
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)  # raises for an undefined alias
            if node is not None:
                self.aliases.append((str(event.anchor), line, node))
            return node
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise ConfigError(
                    f"{self.path}:{line}: lists and mappings nested more "
                    f"than {MAX_DEPTH} levels deep; a mapping file needs only a few levels"
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node, composer: _Composer, path: Path) -> None:
    """Refuse a file whose aliases expand to too many values, too deep, or into themselves.

    Measures the expanded tree on the composed graph, each node once (memoised, iterative),
    so the check costs as much as the file's text, never as much as its expansion."""
    aliases = composer.aliases
    if not aliases:
        return  # a tree: its size is the file's size
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_nodes.discard(key)
            children = _children(node)
            # capped: only whether the budget is passed matters
            size[key] = min(1 + sum(size[id(c)] for c in children), MAX_VALUES + 1)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            continue
        if key in size:
            continue
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:  # an alias inside its own anchor: never ends
                name, line = next(((n, ln) for n, ln, a in aliases if a is child), ("?", 0))
                raise ConfigError(
                    f"{path}:{line}: the YAML alias *{name} is used inside its own anchor "
                    f"&{name}, so the value would never end; write the values out instead of "
                    "using & and *"
                )
            if id(child) not in size:
                stack.append((child, False))
    if size[id(root)] <= MAX_VALUES and depth[id(root)] <= MAX_DEPTH:
        return
    name, line, _ = max(aliases, key=lambda a: (size[id(a[2])], -a[1]))
    names = sorted({n for n, _, _ in aliases})
    shown = ", ".join(f"*{n}" for n in names[:5]) + (", ..." if len(names) > 5 else "")
    problem = (
        f"more than {MAX_VALUES:,} values"
        if size[id(root)] > MAX_VALUES
        else f"lists and mappings nested more than {MAX_DEPTH} levels deep"
    )
    raise ConfigError(
        f"{path}:{line}: *{name}: this file uses YAML aliases ({shown}) {len(aliases)} times, "
        f"which would expand to {problem}; write the values out instead of using & and *"
    )


def _convert(node: yaml.Node, loc: Loc, lines: dict[Loc, int], path: Path) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(
                    f"{path}:{line}: {_dotted(loc) or '(top level)'}: a key must be a plain "
                    "name, not a list or mapping; check the `?`, brackets and braces"
                )
            key = _scalar(key_node)
            if key in out:
                raise ConfigError(
                    f"{path}:{line}: {_dotted((*loc, str(key)))}: key {key!r} appears twice "
                    f"(first at line {first[key]}); keep one of them"
                )
            first[key] = line
            out[key] = _convert(value_node, (*loc, str(key)), lines, path)
            lines[(*loc, str(key))] = line
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*loc, i), lines, path) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    # construct the composed node directly: re-serializing it fails for empty values (`key:`)
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _read(path: Path) -> str:
    """The file's text; a missing file or one that is not UTF-8 is a ConfigError with a line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read file: {exc.strerror}") from None
    try:
        return raw.decode("utf-8-sig")  # Windows editors may add a BOM
    except UnicodeDecodeError as exc:
        number = raw.count(b"\n", 0, exc.start) + 1
        bad = raw.splitlines()[number - 1].decode("utf-8", errors="backslashreplace")
        raise ConfigError(
            f"{path}:{number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} in: {bad.strip()}); "
            "save the file as UTF-8"
        ) from None


def _line_text(text: str, number: int) -> str | None:
    """Line ``number`` (1-based) of ``text``, for quoting in a message."""
    lines = text.splitlines()
    if 1 <= number <= len(lines) and lines[number - 1].strip():
        return lines[number - 1].rstrip()
    return None


def _yaml_hint(problem: str) -> str:
    if "\\t" in problem or "\t" in problem:
        return "indent with spaces, not tabs"
    if "block" in problem or "mapping values are not allowed" in problem or "indent" in problem:
        return (
            "the indentation of this line does not match the lines around it; keys of one "
            "mapping start in the same column (indent with spaces)"
        )
    if "quot" in problem or "scalar" in problem:
        return "close the quotes, or quote a value that contains ': ' or starts with { [ * & ! %"
    return "check indentation, colons and quotes"


def load_yaml(path: Path) -> SourceFile:
    text = _read(path)
    composer = _Composer(text, path)
    try:
        root = composer.get_single_node()
        if root is not None:
            _check_expansion(root, composer, path)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_yaml_error(path, text, exc)) from None
    except yaml.YAMLError as exc:  # unmarked reader errors, e.g. control characters
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    finally:
        composer.dispose()
    if root is None:
        raise ConfigError(
            f"{path}:1: the file is empty (or only comments), but a mapping file needs "
            "group, direction and tables (see docs/mappings.md); fill it in or delete the file"
        )
    lines: dict[Loc, int] = {}
    try:
        data = _convert(root, (), lines, path)
    except yaml.MarkedYAMLError as exc:  # e.g. an unknown tag (!foo) or a bad !!int
        raise ConfigError(_yaml_error(path, text, exc)) from None
    return SourceFile(path, data, lines)


def _yaml_error(path: Path, text: str, exc: yaml.MarkedYAMLError) -> str:
    problem = str(exc.problem or exc.context)
    context = f" {exc.context}" if exc.problem and exc.context else ""
    mark = exc.problem_mark or exc.context_mark
    if "end of stream" in problem and exc.context_mark:  # an unclosed quote or bracket
        mark = exc.context_mark
    where = f"{path}:{mark.line + 1}" if mark else str(path)
    quoted = _line_text(text, mark.line + 1) if mark else None
    shown = f" in {quoted!r}" if quoted else ""
    return f"{where}: invalid YAML: {problem}{context}{shown}; {_yaml_hint(problem + context)}"


_TOML_AT = re.compile(r"\s*\(at line (\d+), column \d+\)$|\s*\(at end of document\)$")


def _toml_hint(problem: str) -> str:
    if problem.startswith("Cannot overwrite a value"):
        return "this key is already set above; keep one of them"
    if problem.startswith("Cannot declare"):
        return "this [table] is already declared above; keep one of them and merge their keys"
    if "after a key" in problem or "Invalid statement" in problem:
        return 'write key = value, with text in quotes: key = "text"'
    if "Illegal character" in problem or "Unterminated" in problem:
        return 'close the quotes: key = "text"'
    return 'write key = value, quote text ("..."), and close every [ ] and { }'


def load_toml(path: Path) -> SourceFile:
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = _TOML_AT.search(message)
        problem = message[: at.start()] if at else message
        number = int(at.group(1)) if at and at.group(1) else None
        quoted = _line_text(text, number) if number else None
        where = f"{path}:{number}" if number else str(path)
        context = f" in {quoted.strip()!r}" if quoted else ""
        raise ConfigError(
            f"{where}: invalid TOML: {problem}{context}; {_toml_hint(problem)}"
        ) from None
    return SourceFile(path, data, _toml_lines(text))


_TOML_KEY_PART = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|([A-Za-z0-9_-]+))\s*')
_TOML_HEADER = re.compile(r"^(\[\[?)\s*(.*?)\s*(\]\]?)\s*(?:#.*)?$")


def _toml_key(text: str) -> Loc:
    """A dotted TOML key (``a.b``, ``"a.b".c``) as a tuple of its parts."""
    parts: list[str | int] = []
    for piece in _TOML_KEY_PART.finditer(text):
        parts.append(next(g for g in piece.groups() if g is not None))
    return tuple(parts)


def _open_brackets(value: str) -> int:
    """Net open [ and { in a value, outside strings and comments (for multi-line arrays)."""
    depth = 0
    quote = ""
    i = 0
    while i < len(value):
        ch = value[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        i += 1
    return depth


def _toml_lines(text: str) -> dict[Loc, int]:
    """Line map for TOML: the file (line 1), table headers and the keys under them.

    Good enough for error messages: multi-line arrays and strings are skipped, keys inside
    inline tables take the line of the inline table."""
    lines: dict[Loc, int] = {(): 1}
    section: Loc = ()
    counts: dict[Loc, int] = {}
    depth = 0  # open brackets of a multi-line array or inline table
    in_string = ""  # the delimiter of an open multi-line string
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if in_string:
            if line.count(in_string) % 2 == 1:
                in_string = ""
            continue
        if depth > 0:
            depth += _open_brackets(line)
            continue
        if not line or line.startswith("#"):
            continue
        header = _TOML_HEADER.match(line) if line.startswith("[") else None
        if header:
            name = _toml_key(header.group(2))
            for n in range(1, len(name)):
                lines.setdefault(name[:n], number)
            lines.setdefault(name, number)
            if header.group(1) == "[[":
                index = counts.get(name, 0)
                counts[name] = index + 1
                section = (*name, index)
                lines.setdefault(section, number)
            else:
                section = name
        elif "=" in line:
            key_text, value = line.split("=", 1)
            key = _toml_key(key_text)
            for n in range(1, len(key) + 1):
                lines.setdefault((*section, *key[:n]), number)
            for delimiter in ('"""', "'''"):
                if value.count(delimiter) % 2 == 1:
                    in_string = delimiter
            if not in_string:
                depth = max(_open_brackets(value), 0)
    return lines
