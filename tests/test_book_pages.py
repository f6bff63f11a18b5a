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
        from basisprune_book import build as book
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
