"""What store staff read, in their language: gettext messages, money, numbers, dates.

English is the source language; Brazilian Portuguese comes from
``replicator/locale/pt_BR/LC_MESSAGES/replicator.po``. The language is chosen once per
command with :func:`set_language` (``--lang``, else ``[node] lang``, else ``LC_ALL``,
``LC_MESSAGES``, ``LANG``, else English) and read by :func:`_` and :func:`ngettext` from a
module-level current translation.

Messages use ``str.format`` named placeholders on a literal string, so that extraction sees
them: ``_("{count} sales missing on the server").format(count=n)``. A message that must be
marked where it is defined (a module constant) but translated where it is shown uses
:func:`N_` there and ``_(constant)`` at the point of use.

The catalogs ship as ``.po`` sources; the build compiles them to ``.mo`` (``setup.py``). When
the ``.mo`` is missing or older than its ``.po`` (an editable install, a ``.po`` just edited)
the ``.po`` is compiled in memory at first use. See docs/i18n.md.

Money, numbers and dates come from Babel's CLDR data and take ``Decimal`` (never ``float``):
``R$ 1.234,56`` and ``31/12/2026`` in pt-BR, ``R$1,234.56`` and ``Dec 31, 2026`` in English
(the CLDR medium date: the short English one, ``12/31/26``, is too easy to misread).
"""

from __future__ import annotations

import gettext
import io
import os
import threading
from datetime import UTC, datetime, tzinfo
from datetime import date as date_type
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import click
from babel import dates as babel_dates
from babel import numbers as babel_numbers

DOMAIN = "replicator"
LOCALE_DIR = Path(__file__).with_name("locale")
ENGLISH = "en"
PORTUGUESE = "pt-BR"
LANGUAGES = (ENGLISH, PORTUGUESE)
ENV_VARS = ("LC_ALL", "LC_MESSAGES", "LANG")  # the first one set (and not empty) decides
# A .mo written up to this many seconds before its .po is taken as built from it: pip writes
# an installed package's files one after another, the .mo (sorted first) a moment earlier.
MO_SLACK_SECONDS = 2.0

_BABEL_LOCALE = {ENGLISH: "en_US", PORTUGUESE: "pt_BR"}
_CATALOG_DIR = {PORTUGUESE: "pt_BR"}
# Per language, the CLDR date width: pt-BR's short one is 31/12/2026; English's is 12/31/26.
_DATE_FORMAT = {ENGLISH: "medium", PORTUGUESE: "short"}
_SPACES = {0x00A0: " ", 0x202F: " "}  # CLDR's no-break spaces: plain ones for grep and diff

_lock = threading.Lock()
_cache: dict[str, gettext.NullTranslations] = {}
_current: tuple[str, gettext.NullTranslations] = (ENGLISH, gettext.NullTranslations())


# --- choosing the language ------------------------------------------------------------------
def normalize(lang: str | None) -> str | None:
    """ "pt-BR", "pt_BR", "pt", "pt_BR.UTF-8", "en_US" -> a tag of LANGUAGES; None if unknown.

    Any Portuguese reads pt-BR (the only Portuguese catalog); "C" and "POSIX" read English."""
    if not lang:
        return None
    base = lang.strip().split(".")[0].split("@")[0].replace("_", "-").lower()
    if base in ("c", "posix") or base == "en" or base.startswith("en-"):
        return ENGLISH
    if base == "pt" or base.startswith("pt-"):
        return PORTUGUESE
    return None


def choose(lang: str | None, environ: dict[str, str] | None = None) -> str:
    """The language for `lang` (or the environment, or English), without setting it."""
    env = os.environ if environ is None else environ
    if lang:
        return normalize(lang) or ENGLISH
    for name in ENV_VARS:
        value = env.get(name)
        if value:  # the first one set decides, as in C's setlocale: LC_ALL=C means English
            return normalize(value) or ENGLISH
    return ENGLISH


def set_language(lang: str | None) -> str:
    """Make `lang` (else LC_ALL, LC_MESSAGES, LANG, else English) the current language.

    Callers pass ``--lang`` or, without it, the ``[node] lang`` setting:
    ``set_language(lang or settings.config.node.lang)``. Unknown languages read English.
    Returns the tag chosen: "en" or "pt-BR"."""
    global _current
    tag = choose(lang)
    translations = translations_for(tag)
    with _lock:
        _current = (tag, translations)
    return tag


def language() -> str:
    """The current language's tag."""
    return _current[0]


def _check_lang(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and normalize(value) is None:
        raise click.BadParameter(
            f"{value!r} is not a language of the replicator; use one of {', '.join(LANGUAGES)}"
        )
    return value


LANG_OPTION = click.option(
    "--lang",
    default=None,
    callback=_check_lang,
    metavar="LANG",
    help="language of the output: en or pt-BR (default: [node] lang, else LC_ALL/LANG)",
)


# --- catalogs -------------------------------------------------------------------------------
def catalog_path(tag: str, suffix: str = ".po") -> Path | None:
    folder = _CATALOG_DIR.get(tag)
    if folder is None:
        return None
    return LOCALE_DIR / folder / "LC_MESSAGES" / f"{DOMAIN}{suffix}"


def compile_po(po: Path) -> bytes:
    """The .mo bytes of a .po file (Babel), fuzzy entries left out as msgfmt does."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with po.open("rb") as fh:
        catalog = read_po(fh)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    return buf.getvalue()


def translations_for(tag: str) -> gettext.NullTranslations:
    """The translations of a language: its .mo when it is current, else its .po compiled."""
    with _lock:
        found = _cache.get(tag)
    if found is not None:
        return found
    po, mo = catalog_path(tag), catalog_path(tag, ".mo")
    translations: gettext.NullTranslations
    if po is None or mo is None:
        translations = gettext.NullTranslations()
    elif mo.exists() and (
        not po.exists() or mo.stat().st_mtime + MO_SLACK_SECONDS >= po.stat().st_mtime
    ):
        with mo.open("rb") as fh:
            translations = gettext.GNUTranslations(fh)
    elif po.exists():
        translations = gettext.GNUTranslations(io.BytesIO(compile_po(po)))
    else:  # a package without its catalog: English rather than a crash
        translations = gettext.NullTranslations()
    with _lock:
        _cache.setdefault(tag, translations)
        return _cache[tag]


def _reset_cache() -> None:
    """Forget loaded catalogs (tests that rewrite a .po)."""
    with _lock:
        _cache.clear()


# --- messages -------------------------------------------------------------------------------
def _(message: str) -> str:
    """`message` in the current language."""
    return _current[1].gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """`singular` or `plural` for `n`, in the current language (pt-BR: 0 and 1 are singular)."""
    return _current[1].ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Mark a message for extraction where it is defined; translate it with _() when shown."""
    return message


# --- money, numbers, dates ------------------------------------------------------------------
def _locale() -> str:
    return _BABEL_LOCALE[_current[0]]


def _plain(text: str) -> str:
    return text.translate(_SPACES)


def money(value: Decimal, currency: str = "BRL") -> str:
    """pt-BR "R$ 1.234,56", en "R$1,234.56" (CLDR, with a plain space)."""
    if isinstance(value, float):
        raise TypeError("money() takes a Decimal, never a float")
    return _plain(babel_numbers.format_currency(value, currency, locale=_locale()))


def number(value: Decimal | int) -> str:
    """pt-BR "1.234,5", en "1,234.5": every digit of a Decimal kept."""
    if isinstance(value, float):
        raise TypeError("number() takes a Decimal or an int, never a float")
    return _plain(babel_numbers.format_decimal(value, locale=_locale(), decimal_quantization=False))


def date(d: date_type) -> str:
    """pt-BR "31/12/2026" (CLDR short), en "Dec 31, 2026" (CLDR medium)."""
    return _plain(babel_dates.format_date(d, _DATE_FORMAT[_current[0]], locale=_locale()))


def _zone(tz: str | tzinfo | None) -> tzinfo | None:
    if tz is None or isinstance(tz, tzinfo):
        return tz
    return ZoneInfo(tz)


def datetime_(dt: datetime, tz: str | tzinfo | None = None) -> str:
    """The date as :func:`date` and the time to the minute, in zone `tz` (an IANA name; None:
    this machine's zone). A naive `dt` is UTC, as the control tables keep it on SQLite.
    pt-BR "31/12/2026 14:05", en "Dec 31, 2026 2:05 PM"."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    zone = _zone(tz)
    local = dt.astimezone(zone) if zone is not None else dt.astimezone()
    clock = babel_dates.format_time(local, "short", locale=_locale())
    return f"{date(local.date())} {_plain(clock)}"


def age(seconds: float) -> str:
    """How long ago, shortly: "45 s", "3 min", "2 h 05 min", "3 d 04 h" (translated)."""
    total = max(0, int(seconds))
    if total < 60:
        return _("{seconds} s").format(seconds=total)
    minutes = total // 60
    if minutes < 60:
        return _("{minutes} min").format(minutes=minutes)
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return _("{hours} h {minutes:02d} min").format(hours=hours, minutes=minutes)
    days, hours = divmod(hours, 24)
    return _("{days} d {hours:02d} h").format(days=days, hours=hours)
