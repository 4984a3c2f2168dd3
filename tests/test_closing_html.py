"""The closing report as HTML, checked in a real headless browser (Debian's chromium): the
totals read from the page's DOM are the `--json` output, to the cent; the page fits a phone's
width and prints on A4. With CI=true a missing chromium fails instead of skipping."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import execute
from test_closing import DAY, SHORT_EMAIL, Shop, build_shop, sell

from replicator import i18n
from replicator.demo import store

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> str:
    if BROWSER is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return BROWSER


def chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


class Cells(HTMLParser):
    """The total cells of a page (`data-measure`) with their attributes and shown text."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self.body: dict[str, str | None] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "body":
            self.body = found
        if "data-measure" in found:
            self._open = {**found, "text": ""}

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._open is not None:
            self.cells.append(self._open)
            self._open = None


def shown_amount(text: str, lang: str) -> Decimal:
    """R$ 1.234,56 (pt-BR) or R$1,234.56 (en) back to a Decimal."""
    digits = re.sub(r"[^\d,.\-]", "", text)
    if lang == "pt-BR":
        digits = digits.replace(".", "").replace(",", ".")
    else:
        digits = digits.replace(",", "")
    return Decimal(digits)


def expected(report: dict[str, Any]) -> dict[tuple[str, str, str, str, str], Decimal]:
    """Every total of the --json report, keyed as the page's cells are."""
    out = {}
    for reg in report["registers"]:
        for table in reg["tables"]:
            for side in ("register", "server"):
                found = table[side]
                groups = {"": found, **found["groups"]} if table["by"] else {"": found}
                for group, totals in groups.items():
                    key = (reg["database"], table["table"], group, side)
                    out[(*key, "count")] = Decimal(totals["count"])
                    for name, value in totals["sums"].items():
                        out[(*key, f"sum:{name}")] = Decimal(value)
    return out


@pytest.fixture
def day_with_problems(pg_database: Callable[[], str], tmp_path: Path) -> Iterator[Shop]:
    """The closing of the outage test: a sale that never left register 2, a price change
    that never reached register 1, a customer the server refuses."""
    shop = build_shop(pg_database(), tmp_path / "store")
    shop.node.sync()
    sell(shop.registers[1], 100, store.DEFAULT_START + timedelta(hours=10), "1234.56", "pix")
    execute(
        shop.server,
        "UPDATE price SET price = 9.99, valid_from = now() WHERE store_id = 1 AND product_id = 7",
    )
    shop.sync("cadastros", "caixa2")
    execute(shop.server, *SHORT_EMAIL)
    execute(
        shop.registers[0],
        "INSERT INTO customer (customer_id, name, tax_id, email, created_at) VALUES "
        "('7c1d2d6e-0000-4000-8000-000000000001', 'Raimunda Nonata', NULL, "
        "'raimunda.nonata@example.com', '2024-03-15 10:00:00')",
    )
    shop.sync("movimento", "caixa1")
    yield shop
    shop.node.close()
    i18n.set_language("en")


@pytest.mark.parametrize("lang", ["en", "pt-BR"])
def test_totals_in_the_browser_are_the_json(
    day_with_problems: Shop, browser: str, tmp_path: Path, lang: str
) -> None:
    shop = day_with_problems
    page = tmp_path / "closing.html"
    # one run writes both: the page and the JSON document of the same report
    code, report = shop.report("--date", DAY.isoformat(), "--lang", lang, "--html", str(page))
    assert code == 8, report["actions"]
    html = page.read_text("utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "a network asset"
    assert "<script" not in html

    dom = chromium(browser, tmp_path / "profile", "--dump-dom", page.as_uri()).stdout
    cells = Cells()
    cells.feed(dom)
    assert cells.body["data-exit-code"] == "8"
    read = {}
    for cell in cells.cells:
        key = (
            cell["data-register"],
            cell["data-table"],
            cell["data-group"],
            cell["data-side"],
            cell["data-measure"],
        )
        value = Decimal(cell["data-value"])
        shown = cell["text"].strip()
        if cell["data-measure"] == "count":
            assert Decimal(shown.replace(".", "").replace(",", "")) == value
        else:
            assert shown_amount(shown, lang) == value, shown
        read[key] = value
    assert read == expected(report)
    assert read[("caixa2", "sale", "", "register", "sum:total")] - read[
        ("caixa2", "sale", "", "server", "sum:total")
    ] == Decimal("1234.56")
    page_text = "".join(cells.text)
    # the verdict comes first, with exactly what to do
    verdict = report["verdict"]
    assert page_text.index(verdict) < page_text.index(report["registers"][0]["database"])
    for action in report["actions"]:
        assert action["text"].replace("`", "") in page_text
    if lang == "pt-BR":
        assert "R$ 1.234,56" in page_text and "Fechamento NÃO OK" in page_text


PROBE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="page" src="{page}" style="width:390px;height:844px;border:0"></iframe>
<script>
const page = document.getElementById("page");
page.addEventListener("load", () => {{
  document.body.dataset.scroll = page.contentDocument.documentElement.scrollWidth;
}});
</script></body></html>"""


def phone_scroll(browser: str, tmp_path: Path, page: Path) -> int:
    """The width the page's content takes in a 390 px wide viewport (a phone's)."""
    probe = page.with_name(f"probe-{page.stem}.html")
    probe.write_text(PROBE.format(page=page.name), "utf-8")
    dom = chromium(
        browser,
        tmp_path / "profile",
        "--allow-file-access-from-files",
        "--dump-dom",
        probe.as_uri(),
    ).stdout
    cells = Cells()
    cells.feed(dom)
    return int(cells.body.get("data-scroll") or 10_000)


def test_fits_a_phone_and_prints_on_a4(
    day_with_problems: Shop, browser: str, tmp_path: Path
) -> None:
    shop = day_with_problems
    page = tmp_path / "closing.html"
    shop.closing("--date", DAY.isoformat(), "--lang", "pt-BR", "--html", str(page))
    # A phone: laid out 390 px wide (in a frame of a probe page, which writes what the browser
    # measured into its own DOM), the page does not scroll sideways.
    assert phone_scroll(browser, tmp_path, page) <= 390, "the page scrolls sideways on a phone"
    wide = tmp_path / "wide.html"  # the probe sees a page that does not fit
    wide.write_text(page.read_text("utf-8").replace("</h1>", "</h1><pre>" + "x" * 200 + "</pre>"))
    assert phone_scroll(browser, tmp_path, wide) > 390
    # A4: the printed PDF has A4 pages (595 x 842 points).
    pdf = tmp_path / "closing.pdf"
    chromium(
        browser,
        tmp_path / "profile",
        "--no-pdf-header-footer",
        f"--print-to-pdf={pdf}",
        page.as_uri(),
    )
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    sizes = set(re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", data))
    assert sizes and all(round(float(w)) == 595 and round(float(h)) == 842 for w, h in sizes)
    # A screenshot, as a phone shows it.
    shot = tmp_path / "closing.png"
    chromium(
        browser,
        tmp_path / "profile",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        "--window-size=430,1900",
        page.as_uri(),
    )
    assert shot.read_bytes().startswith(b"\x89PNG")
