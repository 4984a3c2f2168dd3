"""What staff read is in their language: every message has its pt-BR translation, money and
dates follow CLDR, the language is chosen as documented, and a fresh install has its catalogs
(compiled by the build, or from the .po at first use)."""

from __future__ import annotations

import ast
import os
import shutil
import string
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.pofile import read_po

from replicator import i18n

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "replicator"
PO = PACKAGE / "locale" / "pt_BR" / "LC_MESSAGES" / "replicator.po"
POT = PACKAGE / "locale" / "replicator.pot"
EXTRACT = "pybabel extract (see docs/i18n.md)"
GETTEXT_CALLS = {"_", "ngettext", "N_"}


def extracted() -> list[tuple[str, str | tuple[str, ...]]]:
    """(file:line, message id) of every _(), ngettext() and N_() in the package."""
    out: list[tuple[str, str | tuple[str, ...]]] = []
    for filename, lineno, message, _comments, _context in extract_from_dir(
        str(PACKAGE), method_map=[("**.py", "python")], keywords=DEFAULT_KEYWORDS
    ):
        out.append((f"replicator/{filename}:{lineno}", message))
    return out


def catalog(path: Path) -> Catalog:
    with path.open("rb") as fh:
        return read_po(fh)


def fields(text: str) -> set[str]:
    return {name for _lit, name, _spec, _conv in string.Formatter().parse(text) if name}


@pytest.fixture(autouse=True)
def english() -> Iterator[None]:
    yield
    i18n._reset_cache()
    i18n.set_language("en")


# --- the catalog ----------------------------------------------------------------------------
def test_every_message_shown_to_staff_has_a_pt_br_translation() -> None:
    messages = extracted()
    assert len(messages) > 30, "extraction found too few messages: is the extractor broken?"
    po = catalog(PO)
    problems = []
    for where, message in messages:
        key = message if isinstance(message, str) else message[0]
        entry = po.get(key)
        if entry is None:
            problems.append(f"{where}: {key!r} is not in {PO.name}")
            continue
        strings = [entry.string] if isinstance(entry.string, str) else list(entry.string or ())
        if not all(s.strip() for s in strings):
            problems.append(f"{where}: {key!r} has no pt-BR translation")
        if entry.fuzzy:
            problems.append(f"{where}: {key!r} is fuzzy: check it and remove the flag")
        for s in strings:
            if s and fields(s) != fields(key):
                problems.append(f"{where}: {key!r}: pt-BR has placeholders {sorted(fields(s))}")
    fuzzy = [m.id for m in po if m.id and m.fuzzy]
    problems += [f"{PO.name}: {m!r} is fuzzy" for m in fuzzy if m not in problems]
    assert not problems, (
        "\n".join(problems) + f"\nrun {EXTRACT}, then translate in {PO.relative_to(ROOT)}"
    )


def test_the_template_is_current() -> None:
    pot = catalog(POT)
    stale = [
        f"{w}: {m!r}" for w, m in extracted() if (m if isinstance(m, str) else m[0]) not in pot
    ]
    assert not stale, f"{POT.name} is out of date; run {EXTRACT}:\n" + "\n".join(stale)


def test_messages_are_literal_strings() -> None:
    """_(f"...") or _(text) would never be extracted, so never translated."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id not in GETTEXT_CALLS or path.name == "i18n.py":
                continue
            literal = [isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args]
            wanted = 2 if node.func.id == "ngettext" else 1
            if literal[:wanted] != [True] * wanted:
                bad.append(
                    f"{path.relative_to(ROOT)}:{node.lineno}: {node.func.id}() of a non-literal"
                )
    assert not bad, "\n".join(bad)


# --- formatting -----------------------------------------------------------------------------
def test_money_numbers_and_dates_in_portuguese() -> None:
    assert i18n.set_language("pt-BR") == "pt-BR"
    assert i18n.money(Decimal("1234.56")) == "R$ 1.234,56"
    assert i18n.money(Decimal("-0.5")) == "-R$ 0,50"
    assert i18n.money(Decimal("1234567.891")) == "R$ 1.234.567,89"
    assert i18n.number(Decimal("1234.5678")) == "1.234,5678"
    assert i18n.number(1234) == "1.234"
    assert i18n.date(date(2026, 12, 31)) == "31/12/2026"
    stamp = datetime(2026, 12, 31, 17, 5, tzinfo=UTC)
    assert i18n.datetime_(stamp, "America/Sao_Paulo") == "31/12/2026 14:05"
    assert i18n.datetime_(stamp.replace(tzinfo=None), "UTC") == "31/12/2026 17:05"  # naive: UTC


def test_money_numbers_and_dates_in_english() -> None:
    assert i18n.set_language("en") == "en"
    assert i18n.money(Decimal("1234.56")) == "R$1,234.56"
    assert i18n.money(Decimal("10"), "USD") == "$10.00"
    assert i18n.number(Decimal("1234.5")) == "1,234.5"
    assert i18n.date(date(2026, 12, 31)) == "Dec 31, 2026"
    stamp = datetime(2026, 12, 31, 17, 5, tzinfo=UTC)
    assert i18n.datetime_(stamp, "America/Sao_Paulo") == "Dec 31, 2026 2:05 PM"


def test_money_never_takes_a_float() -> None:
    with pytest.raises(TypeError):
        i18n.money(12.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        i18n.number(12.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "en", "pt"),
    [
        (0, "0 s", "0 s"),
        (45.9, "45 s", "45 s"),
        (180, "3 min", "3 min"),
        (2 * 3600 + 5 * 60, "2 h 05 min", "2 h 05 min"),
        (3 * 86400 + 4 * 3600, "3 d 04 h", "3 d 04 h"),
    ],
)
def test_age(seconds: float, en: str, pt: str) -> None:
    i18n.set_language("en")
    assert i18n.age(seconds) == en
    i18n.set_language("pt-BR")
    assert i18n.age(seconds) == pt


def test_messages_and_plurals_follow_the_language() -> None:
    i18n.set_language("pt-BR")
    assert i18n._("refused by the database") == "recusada pelo banco de dados"
    one = "{through} of {count} row went through."
    many = "{through} of {count} rows went through."
    assert i18n.ngettext(one, many, 1).format(through=1, count=1) == "1 de 1 linha foi enviada."
    assert i18n.ngettext(one, many, 3).format(through=2, count=3) == "2 de 3 linhas foram enviadas."
    i18n.set_language("en")
    assert i18n._("refused by the database") == "refused by the database"
    assert i18n.ngettext(one, many, 3).format(through=2, count=3) == "2 of 3 rows went through."


# --- choosing the language ------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in i18n.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("given", "chosen"),
    [
        ("pt-BR", "pt-BR"),
        ("pt_BR", "pt-BR"),
        ("pt", "pt-BR"),
        ("PT-br", "pt-BR"),
        ("pt_BR.UTF-8", "pt-BR"),
        ("en", "en"),
        ("en_US.UTF-8", "en"),
        ("de_DE", "en"),
        ("C", "en"),
    ],
)
def test_language_from_the_option(clean_env: pytest.MonkeyPatch, given: str, chosen: str) -> None:
    clean_env.setenv("LANG", "pt_BR.UTF-8" if chosen == "en" else "en_US.UTF-8")
    assert i18n.set_language(given) == chosen
    assert i18n.language() == chosen


def test_language_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    assert i18n.set_language(None) == "en"  # nothing set
    clean_env.setenv("LANG", "pt_BR.UTF-8")
    assert i18n.set_language(None) == "pt-BR"
    clean_env.setenv("LC_MESSAGES", "en_US.UTF-8")
    assert i18n.set_language(None) == "en"  # LC_MESSAGES before LANG
    clean_env.setenv("LC_ALL", "pt_BR")
    assert i18n.set_language(None) == "pt-BR"  # LC_ALL before both
    clean_env.setenv("LC_ALL", "")
    assert i18n.set_language(None) == "en"  # empty is not set: LC_MESSAGES decides
    clean_env.setenv("LC_MESSAGES", "fr_FR.UTF-8")
    assert i18n.set_language(None) == "en"  # unknown: English


def test_node_lang_setting_is_checked() -> None:
    from pydantic import ValidationError

    from replicator.config import NodeConfig

    assert NodeConfig(name="n", lang="pt-BR").lang == "pt-BR"
    with pytest.raises(ValidationError, match="not a language"):
        NodeConfig(name="n", lang="klingon")


# --- a fresh install has its catalogs -------------------------------------------------------
def _copy_catalogs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    locale = tmp_path / "locale"
    shutil.copytree(PACKAGE / "locale", locale)
    for mo in locale.rglob("*.mo"):
        mo.unlink()
    monkeypatch.setattr(i18n, "LOCALE_DIR", locale)
    i18n._reset_cache()
    return locale / "pt_BR" / "LC_MESSAGES" / "replicator.po"


def test_a_po_without_mo_is_compiled_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An editable install from a fresh clone has only the .po: it is compiled at first use,
    and nothing is written next to it."""
    po = _copy_catalogs(tmp_path, monkeypatch)
    i18n.set_language("pt-BR")
    assert i18n._("conflict") == "conflito"
    assert not po.with_suffix(".mo").exists()


def test_a_mo_older_than_its_po_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    po = _copy_catalogs(tmp_path, monkeypatch)
    mo = po.with_suffix(".mo")
    mo.write_bytes(i18n.compile_po(po))
    po.write_text(
        po.read_text("utf-8").replace('msgstr "conflito"', 'msgstr "conflito (novo)"'), "utf-8"
    )
    old = po.stat().st_mtime - 3600
    os.utime(mo, (old, old))
    i18n.set_language("pt-BR")
    assert i18n._("conflict") == "conflito (novo)", "the edited .po wins over an old .mo"

    i18n._reset_cache()
    # a .mo built from the .po (just now, so not older): it is used as it is
    mo.write_bytes(i18n.compile_po(po).replace(b"conflito (novo)", b"conflito (mo!!)"))
    i18n.set_language("pt-BR")
    assert i18n._("conflict") == "conflito (mo!!)"


def test_no_catalog_reads_english(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    po = _copy_catalogs(tmp_path, monkeypatch)
    po.unlink()
    assert i18n.set_language("pt-BR") == "pt-BR"
    assert i18n._("conflict") == "conflict"


CHECK_INSTALLED = """
import sys
import replicator.i18n as i18n
assert i18n.__file__.startswith(sys.argv[1]), i18n.__file__
mo = i18n.catalog_path("pt-BR", ".mo")
assert mo.exists(), mo
def refuse(po):
    raise AssertionError("compiled the .po: the installed .mo was not used")
i18n.compile_po = refuse
i18n.set_language("pt-BR")
assert i18n._("conflict") == "conflito", i18n._("conflict")
print("ok", mo)
"""


def test_pip_install_ships_compiled_catalogs(tmp_path: Path) -> None:
    """`pip install .` (a wheel built in isolation, as pip does it) installs the .mo, and the
    installed package uses it. Needs the package index for the build requirements."""
    source = tmp_path / "source"  # a clean tree: the build writes build/ and *.egg-info
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.mo")
    for name in ("replicator", "sql", "mappings"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("replicator-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "replicator/locale/pt_BR/LC_MESSAGES/replicator.mo" in names
    assert "replicator/locale/pt_BR/LC_MESSAGES/replicator.po" in names
    site = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run(
        [sys.executable, "-c", CHECK_INSTALLED, str(site)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
