"""Reader test: open the built book in headless Chromium and check what a reader would see.

Runs against the HTML of the ``smoke`` profile (``$BASISPRUNE_BOOK_PROFILE`` picks another), built by
``make book PROFILE=smoke`` (``python -m basisprune_book build --profile smoke``). Skipped, with the
reason, when that build or Chromium is absent, except under ``BASISPRUNE_REQUIRE_BOOK=1`` where that is
an error: ``make test-book`` sets it (``.ci/run``: ``make test``, ``make book PROFILE=smoke``, ``make
test-book``). ``make test`` leaves this file out (a book left over from an earlier build may be stale).
Chromium comes from Debian's ``chromium`` package (``make browser-deps``) or ``$CHROMIUM``.

Each page is loaded with ``--dump-dom`` after its scripts ran (MathJax included), so the checks see
the rendered DOM, not just the HTML files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

bs4 = pytest.importorskip("bs4", reason="beautifulsoup4 is needed to read the rendered pages")

PROFILE = os.environ.get("BASISPRUNE_BOOK_PROFILE", "smoke")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=10000",  # let deferred scripts (MathJax) run before the DOM is dumped
)


def _html_dir() -> Path | None:
    try:
        from basisprune_book import layout as book
    except ImportError:
        return None
    try:
        return book.html_dir(PROFILE)
    except Exception:  # noqa: BLE001 - no checkout (installed package): nothing to test
        return None


def _chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env:
        return env if shutil.which(env) or Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


HTML = _html_dir()
CHROMIUM = _chromium()

MISSING = []
if HTML is None or not (HTML / "index.html").is_file():
    MISSING.append(f"no built {PROFILE} book ({HTML}); run `make book PROFILE={PROFILE}` first")
if CHROMIUM is None:
    MISSING.append("headless Chromium not found (apt-get install chromium, or set $CHROMIUM)")
if MISSING and os.environ.get("BASISPRUNE_REQUIRE_BOOK") == "1":
    # `make test-book` (CI) sets this: a missing build or browser must fail, not skip.
    raise RuntimeError("BASISPRUNE_REQUIRE_BOOK=1 but " + "; ".join(MISSING))
needs_book = pytest.mark.skipif(bool(MISSING), reason="; ".join(MISSING))


@lru_cache(maxsize=None)
def rendered(relpath: str) -> "bs4.BeautifulSoup":
    """The page's DOM after Chromium loaded it and ran its scripts."""
    page = HTML / relpath
    assert page.is_file(), f"{relpath} is missing from the built book {HTML}"
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile_dir:
        proc = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "--dump-dom", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert proc.returncode == 0 and "<html" in proc.stdout, (
        f"chromium could not render {relpath} (exit {proc.returncode}): {proc.stderr[-2000:]}"
    )
    return bs4.BeautifulSoup(proc.stdout, "html.parser")


def main_text(soup) -> str:
    """Visible text of the page's article (no scripts, styles or navigation)."""
    main = soup.find("main") or soup
    main = bs4.BeautifulSoup(str(main), "html.parser")
    for tag in main(["script", "style", "noscript"]):
        tag.decompose()
    return re.sub(r"\s+", " ", main.get_text(" "))


def pages() -> list[str]:
    if HTML is None or not HTML.is_dir():
        return []
    return sorted(str(p.relative_to(HTML)) for d in ("book", "notebooks") for p in (HTML / d).glob("*.html"))


def api_page_files() -> list[str]:
    if HTML is None or not (HTML / "book" / "api").is_dir():
        return []
    return sorted(str(p.relative_to(HTML)) for p in (HTML / "book" / "api").glob("*.html"))



@needs_book
def test_double_pruning_page_shows_main_table_and_figures():
    """The double-pruning chapter shows the main table (paper form) and at least one PNG figure."""
    soup = rendered("notebooks/05_double_pruning.html")
    anchor = soup.find(id="main-table")
    assert anchor is not None, "the 'Main table' section (label main-table) is missing"
    section = anchor if anchor.name == "section" else anchor.find_parent("section") or anchor
    tables = section.find_all("table") or anchor.find_all_next("table")
    assert tables, "no table after the 'Main table' heading"
    header = " ".join(th.get_text(" ", strip=True) for th in tables[0].find_all("th"))
    for column in ("accuracy after (%)", "change (pts)", "params (M)", "FLOPs (M)", "params pruned (%)", "FLOPs pruned (%)"):
        assert column in header, f"main table lacks the column {column!r}; header: {header}"
    body = tables[0].get_text(" ", strip=True)
    for method in ("channel pruning", "basis pruning", "double pruning"):
        assert method in body, f"main table has no row for {method!r}"
    assert re.search(r"\d+\.\d", body), "main table has no numbers"

    imgs = [img for img in soup.find_all("img") if img.get("src", "").endswith(".png")]
    assert imgs, "no PNG figure on the double-pruning page"
    for img in imgs:
        png = (HTML / "notebooks" / img["src"]).resolve()
        assert png.is_file(), f"figure {img['src']} does not exist ({png})"
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, f"{png} is not a real PNG figure"


@needs_book
def test_results_page_has_every_glued_number():
    """Every {glue:text} reference of the results chapter resolved to a value; no '??' anywhere."""
    source = (HTML.parent.parent / "book" / "results.md").read_text(encoding="utf-8")
    expected = len(re.findall(r"\{glue:text\}`[^`]+::[^`]+`", source))
    assert expected > 20, f"the results chapter should glue its numbers; found {expected} references"
    soup = rendered("book/results.html")
    pasted = soup.select("span.pasted-text")
    assert len(pasted) == expected, f"{expected} glue references in results.md, {len(pasted)} pasted values"
    values = [p.get_text(strip=True) for p in pasted]
    assert all(values), "an empty glued value"
    assert sum(bool(re.search(r"\d", v)) for v in values) >= expected - 10, f"glued values without numbers: {values}"
    text = main_text(soup)
    assert "??" not in text, "unresolved reference ('??') on the results page"
    for word in ("NaN", "nan ±", "None"):
        assert word not in values, f"a glued value is {word!r}"
    assert "paper claims" in text.lower() and "our measurements" in text.lower()


@needs_book
@pytest.mark.parametrize("relpath", pages() or ["(no pages)"])
def test_no_page_shows_an_error(relpath):
    """No chapter shows a notebook error: no error output area, no traceback, no unresolved '??'."""
    if relpath == "(no pages)":
        pytest.skip("no pages")
    soup = rendered(relpath)
    # myst-nb renders an error output as class "output traceback" (nbconvert: "output_error").
    for cls in ("traceback", "output_error"):
        hits = soup.select(f"main .{cls}")
        assert not hits, f"{relpath}: an error output ({cls}): {hits[0].get_text(' ', strip=True)[:300]}"
    text = main_text(soup)
    assert "Traceback (most recent call last)" not in text, f"{relpath} shows a traceback"
    assert not re.search(r"\bename\b", text), f"{relpath} shows an error name field"
    for stderr in soup.select("main .stderr"):
        out = stderr.get_text(" ", strip=True)
        assert not re.search(r"\w+Error\b", out), f"{relpath}: an error printed on stderr: {out[:300]}"
    assert "??" not in text, f"{relpath}: unresolved reference ('??')"


@needs_book
def test_math_renders_offline():
    """The method chapter's equations are typeset by the local MathJax copy (no CDN)."""
    soup = rendered("book/method.html")
    scripts = [s.get("src", "") for s in soup.find_all("script") if s.get("src")]
    mathjax = [s for s in scripts if "mathjax" in s.lower()]
    assert mathjax and all(not re.match(r"(https?:)?//", s) for s in mathjax), f"MathJax not local: {mathjax}"
    assert soup.find("mjx-container") is not None, "no equation was typeset (mjx-container missing)"


@needs_book
def test_table_of_contents_lists_the_chapters():
    """The navigation links every chapter whose page was built."""
    soup = rendered("book/intro.html")
    links = {a.get("href", "") for a in soup.select("nav a")}
    for page in pages():
        if page == "book/intro.html":  # the page itself (the root) is linked as its own title
            continue
        name = Path(page).name
        assert any(h.endswith(name) for h in links), f"{page} is not in the navigation"


# ------------------------------------------------------------------ the build's own safeguards (no browser)
def test_toc_drops_only_missing_notebooks():
    """Entries of notebooks that were not executed leave the toc; everything else stays."""
    from basisprune_book.build import _toc_without_missing

    toc = "root: book/intro\nchapters:\n  - file: book/method\n  - file: notebooks/01_a\n  - file: notebooks/06_b.ipynb\n"
    text, dropped = _toc_without_missing(toc, {"01_a"})
    assert dropped == ["06_b"]
    assert "notebooks/01_a" in text and "06_b" not in text and "book/method" in text


def test_build_refuses_notebooks_with_error_outputs(tmp_path):
    """An executed notebook with an error output never becomes a page."""
    nbformat = pytest.importorskip("nbformat")
    from basisprune_book.build import _error_outputs

    nb = nbformat.v4.new_notebook()
    ok = nbformat.v4.new_code_cell("1")
    bad = nbformat.v4.new_code_cell("1/0")
    bad.outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="x", traceback=[])]
    expected = nbformat.v4.new_code_cell("1/0", metadata={"tags": ["raises-exception"]})
    expected.outputs = list(bad.outputs)
    nb.cells = [ok, bad, expected]
    nbformat.write(nb, tmp_path / "09_x.ipynb")
    assert _error_outputs(tmp_path) == ["09_x: cell 1 (ZeroDivisionError)"]


# ------------------------------------------------------------------ what a reader who uses or cites the work needs
def _static(relpath: str) -> "bs4.BeautifulSoup":
    """The built HTML of a page as written (no browser): for checks that do not need scripts run."""
    return bs4.BeautifulSoup((HTML / relpath).read_text(encoding="utf-8"), "html.parser")


def _main(soup):
    return soup.find("main") or soup


@needs_book
def test_api_pages_document_every_public_name():
    """Every name in ``basisprune.__all__`` has an entry (anchor ``basisprune.NAME``, or the module's
    anchor for a submodule) on an API page, and the API index lists it and is in the navigation."""
    import basisprune

    api = sorted((HTML / "book" / "api").glob("*.html"))
    assert api, "no API reference pages in book/api"
    ids = set()
    for page in api:
        ids |= {tag.get("id") for tag in _static(str(page.relative_to(HTML))).find_all(id=True)}
    for name in basisprune.__all__:
        obj = getattr(basisprune, name)
        anchor = f"module-{obj.__name__}" if isinstance(obj, type(basisprune)) else f"basisprune.{name}"
        assert anchor in ids, f"basisprune.{name} has no entry on the API pages ({anchor!r} not found)"
    index = main_text(rendered("book/api/index.html"))
    missing = [n for n in basisprune.__all__ if f"basisprune.{n}" not in index]
    assert not missing, f"the API index does not list {missing}"
    nav = {a.get("href", "") for a in rendered("book/intro.html").select("nav a")}
    assert any(h.endswith("api/index.html") for h in nav), "the API reference is not in the navigation"


@needs_book
@pytest.mark.parametrize("relpath", pages() + api_page_files() or ["(no pages)"])
def test_library_references_link_to_the_api_pages(relpath):
    """Every cross-reference to a ``basisprune`` name is a link to its API entry (an unresolved one
    renders as bare code, which the strict build should also refuse)."""
    if relpath == "(no pages)":
        pytest.skip("no pages")
    for code in _main(_static(relpath)).select("code.xref"):
        text = code.get_text(strip=True)
        if not text.startswith("basisprune"):
            continue
        link = code.find_parent("a")
        assert link is not None, f"{relpath}: the reference {text!r} links nowhere"
        if not relpath.startswith("book/api/"):
            assert "api/" in link.get("href", ""), f"{relpath}: {text!r} links to {link.get('href')}, not the API pages"


def _download_links(soup) -> list[str]:
    return [a["href"] for a in _main(soup).select("a.download") if a.get("href", "").endswith(".csv")]


def _data_tables(soup, relpath: str) -> list:
    """The tables of results on a page: a chapter's output tables (not the tables of its prose, which
    describe rather than measure), every table of the results and reproduce pages."""
    tables = [t for t in _main(soup).find_all("table") if t.find_parent("table") is None]
    if relpath.startswith("notebooks/"):
        tables = [t for t in tables if t.find_parent(class_="cell_output") is not None]
    return tables


@needs_book
@pytest.mark.parametrize("relpath", [p for p in pages() if p.startswith("notebooks/")] + ["book/results.html", "book/reproduce.html"])
def test_every_table_has_a_csv_download(relpath):
    """Each table of a chapter is followed, before the next table, by a CSV download of it; every
    download is in the book and is a CSV file with a header and at least one row of the same width."""
    import csv
    import io

    soup = _static(relpath)
    tables = _data_tables(soup, relpath)
    if not tables:
        pytest.skip(f"{relpath} has no table")
    for i, table in enumerate(tables):
        nxt = tables[i + 1] if i + 1 < len(tables) else None
        link = table.find_next("a", class_="download")
        assert link is not None and (nxt is None or any(a is link for a in nxt.find_all_previous("a", class_="download"))), \
            f"{relpath}: table {i + 1} of {len(tables)} has no download link under it"
    for href in _download_links(soup):
        path = (HTML / relpath).parent / href
        assert path.is_file(), f"{relpath}: the download {href} is not in the built book"
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
        assert len(rows) >= 2 and all(len(r) == len(rows[0]) for r in rows), f"{href} is not a rectangular CSV table"


_UNOPENABLE = re.compile(r"\bGUIDE\b|\bissues?\s+#?\d+|\bPR\s*#\d+|(?<![\w.])/(?:work|home|tmp)/\w")


@needs_book
@pytest.mark.parametrize("relpath", pages() + api_page_files() or ["(no pages)"])
def test_no_reference_a_reader_cannot_open(relpath):
    """No text names a developer's document, an issue number or a local path, and every link inside
    the book points to a file that exists."""
    if relpath == "(no pages)":
        pytest.skip("no pages")
    soup = _static(relpath)
    text = main_text(soup)
    hit = _UNOPENABLE.search(text)
    assert hit is None, f"{relpath}: a reference a reader cannot open: ...{text[max(0, hit.start() - 80):hit.end() + 40]}..."
    for a in _main(soup).find_all("a", href=True):
        href = a["href"].split("#")[0]
        if not href or re.match(r"^[a-z][a-z0-9+.-]*:", href):
            continue
        assert ((HTML / relpath).parent / href).exists(), f"{relpath}: the link {a['href']} leads nowhere"


_TABLE_CHECK = """<script>
window.addEventListener('load', () => {
  document.querySelectorAll('details').forEach(d => d.open = true);
  const main = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const edge = main.getBoundingClientRect().right + 1;
  const bad = [];
  main.querySelectorAll('table').forEach((t, i) => {
    if (t.getBoundingClientRect().right <= edge) return;
    for (let el = t; el && el !== main; el = el.parentElement) {
      const o = getComputedStyle(el).overflowX;
      if ((o === 'auto' || o === 'scroll') && el.getBoundingClientRect().right <= edge) return;
    }
    bad.push(i + ': ' + (t.innerText || '').slice(0, 60).replace(/\\s+/g, ' '));
  });
  document.body.setAttribute('data-wide-tables', JSON.stringify(bad));
});
</script>"""


@needs_book
@pytest.mark.parametrize("relpath", [p for p in pages() if p.startswith("notebooks/")] + ["book/results.html", "book/reproduce.html"])
def test_tables_fit_the_page_or_scroll(relpath):
    """At 1,400 px, every table (toggled ones opened) ends inside the article column or sits in a box
    that scrolls horizontally inside it: no column is cut off at the page edge."""
    import json

    page = HTML / relpath
    with tempfile.TemporaryDirectory(prefix="chromium-") as tmp:
        html = page.read_text(encoding="utf-8").replace("<head>", f'<head><base href="{page.parent.as_uri()}/">', 1)
        probe = Path(tmp) / "page.html"
        probe.write_text(html.replace("</body>", _TABLE_CHECK + "</body>"), encoding="utf-8")
        proc = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, "--window-size=1400,1000", f"--user-data-dir={tmp}/profile", "--dump-dom",
             probe.as_uri()], capture_output=True, text=True, timeout=180)
    soup = bs4.BeautifulSoup(proc.stdout, "html.parser")
    result = soup.body.get("data-wide-tables") if soup.body else None
    assert result is not None, f"{relpath}: the table check did not run: {proc.stderr[-1000:]}"
    assert json.loads(result) == [], f"{relpath}: tables cut off at the page edge: {json.loads(result)}"


@needs_book
@pytest.mark.parametrize("relpath", [p for p in pages() if p.startswith("notebooks/")])
def test_chapters_keep_checks_and_markers_out_of_sight(relpath):
    """No test marker or papermill parameter cell reaches a chapter; code cells shown open (not in a
    toggle) are few: the chapters show results, code is a click away."""
    soup = _static(relpath)
    text = main_text(soup)
    for marker in ("NBVAL_CHECK_OUTPUT", "# Parameters", "injected-parameters"):
        assert marker not in text, f"{relpath} shows {marker!r}"
    cells = _main(soup).select("div.cell")
    shown = [c for c in cells if c.select_one("div.cell_input") and "tag_hide-input" not in (c.get("class") or [])]
    assert len(shown) <= 2, f"{relpath}: {len(shown)} code cells shown in full"


@needs_book
def test_how_to_cite_gives_the_software_and_the_papers():
    """The "How to cite" page quotes CITATION.cff: BibTeX for the software and each paper it lists."""
    import yaml

    cff = yaml.safe_load((HTML.parent.parent.parent.parent / "CITATION.cff").read_text(encoding="utf-8"))
    text = main_text(rendered("book/cite.html"))
    assert "@software{basisprune," in text.replace(" ", "")
    for ref in cff.get("references", []):
        assert ref["title"] in text, f"the citation page lacks {ref['title']!r}"
    footer = rendered("book/intro.html").get_text(" ")
    assert "2026" in footer, "the copyright year is not 2026"


def test_api_reference_covers_every_exported_name():
    """The generated API pages document each name of ``basisprune.__all__`` exactly once, under its
    public path, and the index lists them all."""
    import basisprune
    from basisprune_book.pages import api_groups, api_pages

    grouped = [n for names in api_groups().values() for n in names]
    assert sorted(grouped) == sorted(basisprune.__all__)
    text = "\n".join(api_pages().values())
    for name in basisprune.__all__:
        assert f"basisprune.{name}\n" in text, f"basisprune.{name} is not documented"


def test_citation_page_lists_the_software_and_every_paper(tmp_path):
    """The "How to cite" text is rendered from CITATION.cff: the software's BibTeX and one entry per reference."""
    from basisprune_book.pages import citation_markdown

    cff = tmp_path / "CITATION.cff"
    cff.write_text(
        "cff-version: 1.2.0\nmessage: Cite us.\ntitle: tool\nversion: 1.0\nlicense: MIT\nauthors:\n  - name: devs\n"
        "references:\n  - type: article\n    title: A paper\n    authors:\n      - family-names: Doe\n"
        "        given-names: Jo\n    journal: J\n    year: 2023\n", encoding="utf-8")
    text = citation_markdown(cff)
    assert "@software{basisprune" in text and "@article{doe2023a" in text and "A paper" in text
