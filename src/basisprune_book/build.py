"""Building the HTML book of a profile from its executed notebooks, offline.

``build`` copies ``_config.yml``, ``_toc.yml`` (without the entries whose notebook was not executed),
``book/``, ``_static/`` and the executed notebooks of the profile, with their ``results/`` (results
files and the tables' CSV downloads), into ``_build/src-<profile>/``, writes the API reference
(``book/api/``, :mod:`basisprune_book.pages`) and the citation page there, and runs
``jupyter-book build _build/src-<profile> -W -n --keep-going`` there (notebooks are not executed
again: ``execute_notebooks: "off"``). The HTML is in ``_build/src-<profile>/_build/html``
(:func:`html_dir`). Math is rendered by a local MathJax copy (sphinx-mathjax-offline); the build
fails if any page loads a script or style sheet from an http(s) URL.

The measured wall times (execution and book build) are written to ``timings.json`` and rendered
into ``book/_timings.md`` of the build tree, which the "Reproduce" chapter includes. Because the
build time is only known once the build is over, the book is built twice: the first, full build is
the one timed; the second only re-renders the pages that include the timings.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from basisprune.repro import profiles
from basisprune.repro.paths import executed_dir, repo_root
from basisprune.repro.results import write_json, write_text

from . import pages
from .layout import NOTEBOOK_PATTERN, TIMINGS_FILE, BookError, build_dir, html_dir, read_json, utc_now

__all__ = ["build", "remote_assets"]

TIMINGS_PAGE = "_timings.md"
PROFILES_PAGE = "_profiles.md"
CITATION_PAGE = "_citation.md"


def _toc_without_missing(toc_text: str, present: set[str]) -> tuple[str, list[str]]:
    """Drop ``- file: notebooks/NN_x`` lines whose notebook is not in ``present`` (stems)."""
    kept, dropped = [], []
    for line in toc_text.splitlines(keepends=True):
        m = re.match(r"^\s*-\s*file:\s*notebooks/([^\s#]+?)(?:\.ipynb)?\s*(#.*)?$", line)
        if m and m.group(1) not in present:
            dropped.append(m.group(1))
            continue
        kept.append(line)
    return "".join(kept), dropped


def _jupyter_book_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("jupyter-book")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    return [sys.executable, "-m", "jupyter_book.cli.main"]


_REMOTE_ASSET = re.compile(
    r"""<script[^>]*\bsrc=["'](?:https?:)?//[^"']+["']|<link[^>]*\bhref=["'](?:https?:)?//[^"']+\.css[^"']*["']""",
    re.IGNORECASE,
)


def remote_assets(html: str | os.PathLike) -> dict[str, list[str]]:
    """Scripts / style sheets loaded from http(s) URLs, by page (empty dict: fully offline)."""
    found: dict[str, list[str]] = {}
    for page in sorted(Path(html).rglob("*.html")):
        hits = _REMOTE_ASSET.findall(page.read_text(encoding="utf-8", errors="replace"))
        if hits:
            found[str(page.relative_to(html))] = hits
    return found


def _run_jupyter_book(src: Path, extra: Sequence[str] = ()) -> tuple[int, str]:
    cmd = [*_jupyter_book_cmd(), "build", str(src), "-W", "-n", "--keep-going", *extra]
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def _error_outputs(executed: Path) -> list[str]:
    """``notebook: cell n (ename)`` for every error output not in a cell tagged ``raises-exception``."""
    import nbformat

    found = []
    for path in sorted(executed.iterdir()):
        if not NOTEBOOK_PATTERN.match(path.name):
            continue
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or "raises-exception" in cell.get("metadata", {}).get("tags", []):
                continue
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    found.append(f"{path.stem}: cell {i} ({out.get('ename')})")
    return found


def _copy_for_readers(executed: Path, dest: Path) -> None:
    """Copy an executed notebook into the build tree without the cell papermill injected (the
    profile it names is printed by the chapter's setup cell and on the "Reproduce" page)."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(nb, dest)


def _set_aside(html: Path) -> None:
    """Move the HTML of a failed build to ``html.failed`` so that it is not taken for a good book."""
    failed = html.with_name("html.failed")
    if failed.exists():
        shutil.rmtree(failed)
    if html.exists():
        html.rename(failed)


def _warnings(log: str) -> str:
    """The warning and error lines of a jupyter-book log (else its tail), without colour codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln) for ln in log.splitlines()]
    hits = [ln for ln in lines if "WARNING" in ln or "ERROR" in ln or "Error" in ln]
    return "\n".join(hits[:40] if hits else lines[-40:])


def build(
    profile: str,
    executed: str | os.PathLike | None = None,
    *,
    root: str | os.PathLike | None = None,
) -> Path:
    """Build the HTML book of ``profile`` from its executed notebooks; returns the HTML directory."""
    profiles.check_profile(profile)
    root = Path(root or repo_root())
    executed = Path(executed) if executed is not None else executed_dir(profile, root)
    if not executed.is_dir() or not any(NOTEBOOK_PATTERN.match(p.name) for p in executed.iterdir()):
        raise BookError(
            f"no executed notebooks in {executed}; run "
            f"`python -m basisprune_book execute --profile {profile} --out {executed}` first"
        )
    timings_path = executed / TIMINGS_FILE
    record = read_json(timings_path)
    failed = [k for k, v in record.get("notebooks", {}).items() if v.get("status") != "ok"]
    if failed:
        raise BookError(f"notebook(s) failed when executed, not building: {', '.join(failed)}")

    errors = _error_outputs(executed)
    if errors:
        raise BookError(f"executed notebooks contain error outputs, not building: {'; '.join(errors)}")

    src = build_dir(profile, root)
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    shutil.copy2(root / "_config.yml", src / "_config.yml")
    shutil.copytree(root / "book", src / "book", ignore=shutil.ignore_patterns("_build", ".*"))
    (src / "notebooks").mkdir()
    present = set()
    for nb in sorted(executed.iterdir()):
        if NOTEBOOK_PATTERN.match(nb.name):
            _copy_for_readers(nb, src / "notebooks" / nb.name)
            present.add(nb.stem)
    toc, dropped = _toc_without_missing((root / "_toc.yml").read_text(encoding="utf-8"), present)
    write_text(src / "_toc.yml", toc)
    if dropped:
        print(f"[{profile}] not in this build (no executed notebook): {', '.join(dropped)}")
    # The results files and the tables' CSV files the notebooks wrote (report.show_table links them
    # as {download} from notebooks/results/...), the style sheet, the API reference and the citation.
    if (executed / "results").is_dir():
        shutil.copytree(executed / "results", src / "notebooks" / "results", ignore=shutil.ignore_patterns(".*"))
    if (root / "_static").is_dir():
        shutil.copytree(root / "_static", src / "_static")
    for name, text in pages.api_pages().items():
        write_text(src / pages.API_DIR / name, text)
    write_text(src / "book" / CITATION_PAGE, pages.citation_markdown(root / "CITATION.cff"))
    page = src / "book" / TIMINGS_PAGE
    pages.write_page_and_csv(page, pages.timings_markdown(record), "timings", "timings.json")
    write_json(src / "book" / TIMINGS_FILE, record)
    pages.write_page_and_csv(src / "book" / PROFILES_PAGE, pages.profiles_markdown(), "profiles",
                              "`src/basisprune/repro/profiles.py` in the repository")

    print(f"[{profile}] jupyter-book build {src} -W -n --keep-going ...", flush=True)
    t0 = time.perf_counter()
    rc, log = _run_jupyter_book(src)
    build_seconds = time.perf_counter() - t0
    write_text(src / "build.log", log)
    if rc != 0:
        _set_aside(html_dir(profile, root))
        raise BookError(f"jupyter-book build failed (exit {rc}); full log in {src / 'build.log'}\n{_warnings(log)}")
    print(f"[{profile}] book built in {build_seconds:.1f} s", flush=True)

    record.update(
        build_seconds=round(build_seconds, 2),
        # Side by side, the execution took its wall time, not the sum of the notebooks' times.
        total_seconds=round((record.get("wall_seconds") or record.get("execute_seconds", 0.0)) + build_seconds, 2),
        built_utc=utc_now(),
    )
    write_json(timings_path, record)
    # Second pass: put the measured build time into the timings page (only it is re-rendered).
    pages.write_page_and_csv(page, pages.timings_markdown(record), "timings", "timings.json")
    write_json(src / "book" / TIMINGS_FILE, record)
    t1 = time.perf_counter()
    rc, log2 = _run_jupyter_book(src)
    write_text(src / "build.log", log + "\n--- timings pass ---\n" + log2)
    if rc != 0:
        _set_aside(html_dir(profile, root))
        raise BookError(f"jupyter-book build (timings pass) failed (exit {rc}); log in {src / 'build.log'}\n{_warnings(log2)}")
    print(f"[{profile}] timings page re-rendered in {time.perf_counter() - t1:.1f} s", flush=True)
    shutil.copy2(timings_path, src / TIMINGS_FILE)

    html = html_dir(profile, root)
    remote = remote_assets(html)
    if remote:
        listing = "; ".join(f"{p}: {h[:2]}" for p, h in list(remote.items())[:5])
        raise BookError(f"pages load scripts/styles from the internet (the book must work offline): {listing}")
    if not (html / "_static" / "mathjax" / "tex-chtml.js").is_file():
        raise BookError(f"the local MathJax copy is missing from {html / '_static' / 'mathjax'}")
    print(f"[{profile}] HTML: {html}/index.html  (offline: no http(s) scripts or style sheets)")
    return html
