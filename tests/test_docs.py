"""The documentation stays true: the published schema and the examples in docs/ are current."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from replicator.config import Config
from replicator.mapping import MappingFile

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(
    r"^```(?P<lang>[A-Za-z0-9_-]*)[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL
)


def blocks(name: str, lang: str) -> list[tuple[int, str]]:
    """The fenced code blocks of one language in a docs file, with their first line number."""
    text = (DOCS / name).read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start()) + 1, m["body"])
        for m in FENCE.finditer(text)
        if m["lang"] == lang
    ]


def test_published_schema_is_current() -> None:
    published = json.loads((DOCS / "mapping.schema.json").read_text(encoding="utf-8"))
    current = MappingFile.model_json_schema(by_alias=True)
    assert published == current, (
        "docs/mapping.schema.json is out of date with replicator/mapping.py; run "
        "`replicator schema -o docs/mapping.schema.json`"
    )


MAPPING_BLOCKS = [
    (line, body)
    for line, body in blocks("mappings.md", "yaml")
    if re.search(r"^group:", body, re.MULTILINE)
]
CONFIG_BLOCKS = blocks("config.md", "toml")


def test_docs_have_examples() -> None:
    assert MAPPING_BLOCKS, "docs/mappings.md has no ```yaml block with a group: key"
    assert CONFIG_BLOCKS, "docs/config.md has no ```toml block"


@pytest.mark.parametrize(
    ("line", "body"), MAPPING_BLOCKS, ids=[f"mappings.md:{line}" for line, _ in MAPPING_BLOCKS]
)
def test_mapping_examples_are_valid(line: int, body: str) -> None:
    data = yaml.safe_load(body)
    assert isinstance(data, dict), f"docs/mappings.md:{line}: not a YAML mapping"
    MappingFile.model_validate(data)


@pytest.mark.parametrize(
    ("line", "body"), CONFIG_BLOCKS, ids=[f"config.md:{line}" for line, _ in CONFIG_BLOCKS]
)
def test_config_examples_are_valid(line: int, body: str) -> None:
    Config.model_validate(tomllib.loads(body))
