"""Pydantic validation errors as `file:line: key: what is wrong; how to fix it` lines.

Shared by mapping files (YAML) and the node config (TOML); knows nothing of either model."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from replicator.sourcefile import Loc, SourceFile


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
    assert model is not None, "pass the model the file was validated against"
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
