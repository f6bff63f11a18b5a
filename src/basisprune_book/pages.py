"""Pages the book builder writes from the code rather than by hand: the API reference, "How to cite",
and the tables the "Reproduce" chapter includes (every profile's settings, the measured timings), each
with a CSV download beside it.

The API reference covers every name in ``basisprune.__all__``, read when the book is built, so a name
added to ``__all__`` gets its entry without editing the book. Names are grouped into one page per
defining module (``basisprune.decompose``, ``basisprune.prune``, ...); a public submodule
(``basisprune.bench``, ``basisprune.pai``) gets a page of its own with its ``__all__``. Entries are
documented under their public path (``basisprune.decompose``, not ``basisprune.decompose.decompose``),
which is what a user imports; Sphinx autodoc renders the docstrings (napoleon reads their sections).

The citation page is rendered from ``CITATION.cff``: the software and the papers it lists under
``references``, as text and as BibTeX.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from basisprune.repro import profiles
from basisprune.repro.results import write_text

__all__ = ["API_DIR", "api_groups", "api_pages", "citation_markdown", "profiles_markdown", "timings_markdown",
           "write_page_and_csv"]

API_DIR = "book/api"  # in the build tree; _toc.yml lists book/api/index and globs its pages


def _module_of(package: ModuleType, name: str) -> str:
    """The page an exported name belongs to: its own module for a submodule, else where it is defined."""
    obj = getattr(package, name)
    if inspect.ismodule(obj):
        return obj.__name__
    module = getattr(obj, "__module__", None) or package.__name__
    # Names defined in a private helper module go to the package page.
    return module if module.startswith(package.__name__ + ".") else package.__name__


def api_groups(package: str = "basisprune") -> dict[str, list[str]]:
    """``{module: [exported names]}`` for every name in ``package.__all__``, modules in import order."""
    pkg = importlib.import_module(package)
    names = list(getattr(pkg, "__all__", []))
    if not names:
        raise ValueError(f"{package}.__all__ is empty or missing: the API reference documents its names")
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_module_of(pkg, name), []).append(name)
    return dict(sorted(groups.items()))


def _first_paragraph(doc: str | None) -> str:
    text = inspect.cleandoc(doc or "")
    return text.split("\n\n")[0].replace("\n", " ").strip()


def _entry(package: str, name: str, obj: Any) -> str:
    full = f"{package}.{name}"
    if inspect.isclass(obj):
        return f".. autoclass:: {full}\n   :members:\n   :show-inheritance:\n"
    if callable(obj):
        return f".. autofunction:: {full}\n"
    return f".. autodata:: {full}\n"


def api_pages(package: str = "basisprune") -> dict[str, str]:
    """The API reference as ``{file name: MyST text}``: ``index.md`` and one page per module."""
    pkg = importlib.import_module(package)
    groups = api_groups(package)
    pages: dict[str, str] = {}
    for module, names in groups.items():
        mod = importlib.import_module(module)
        title = f"`{module}`"
        if module != package and len(names) == 1 and getattr(pkg, names[0]) is mod:
            # A public submodule: automodule documents its own __all__.
            body = f"```{{eval-rst}}\n.. automodule:: {module}\n   :members:\n```\n"
        else:
            summary = _first_paragraph(mod.__doc__)
            entries = "\n".join(_entry(package, n, getattr(pkg, n)) for n in names)
            intro = f"```{{eval-rst}}\n{summary}\n```\n\n" if summary and module != package else ""
            body = (f"{intro}Imported from `{package}`: "
                    + ", ".join(f"{{py:obj}}`{package}.{n}`" for n in names)
                    + f".\n\n```{{eval-rst}}\n.. currentmodule:: {package}\n\n{entries}```\n")
        pages[f"{module}.md"] = f"# {title}\n\n{body}"
    listing = []
    for module, names in groups.items():
        listing.append(f"## {{doc}}`{module} <{module}>`\n\n```{{eval-rst}}\n.. autosummary::\n\n"
                       + "".join(f"   {package}.{n}\n" for n in names) + "```\n")
    pages["index.md"] = (
        "(api-reference)=\n# API reference\n\n"
        f"Every name that `import {package}` exports (`{package}.__all__`), generated from the docstrings "
        "when the book is built. The reproduction harness (`basisprune.repro`: data, models, training, "
        "experiments, the `basisprune` command) is not part of the library's API; its source is in "
        "`src/basisprune/repro/` of the repository.\n\n" + "\n".join(listing)
    )
    return pages


# ------------------------------------------------------------------------------------ citation
def _authors(people: list[dict[str, Any]]) -> list[str]:
    out = []
    for p in people or []:
        if "family-names" in p:
            out.append(f"{p['family-names']}, {p.get('given-names', '')}".strip(", "))
        elif "name" in p:
            out.append(str(p["name"]))
    return out


def _key(entry: dict[str, Any]) -> str:
    first = _authors(entry.get("authors", []))[:1] or ["anon"]
    word = re.sub(r"[^a-z]", "", first[0].split(",")[0].lower()) or "anon"
    title = re.sub(r"[^a-z ]", "", str(entry.get("title", "")).lower()).split()
    return f"{word}{entry.get('year', '')}{title[0] if title else ''}"


def _bibtex(entry: dict[str, Any], software: bool = False) -> str:
    kind = {"article": "article", "conference-paper": "inproceedings"}.get(entry.get("type", ""), "misc")
    if software:
        kind = "software"
    fields = {"title": entry.get("title"), "author": " and ".join(_authors(entry.get("authors", [])))}
    if kind == "article":
        fields["journal"] = entry.get("journal")
    if kind == "inproceedings":
        fields["booktitle"] = (entry.get("conference") or {}).get("name")
    fields["year"] = entry.get("year")
    if software:
        fields["version"] = entry.get("version")
        fields["license"] = entry.get("license")
    notes = [i.get("value") for i in entry.get("identifiers", []) if i.get("value")]
    if notes:
        fields["note"] = "; ".join(notes)
    body = ",\n".join(f"  {k} = {{{v}}}" for k, v in fields.items() if v)
    key = "basisprune" if software else _key(entry)
    return f"@{kind}{{{key},\n{body}\n}}"


def citation_markdown(cff: str | Path) -> str:
    """MyST text for the "How to cite" page, from a ``CITATION.cff`` file."""
    import yaml

    data = yaml.safe_load(Path(cff).read_text(encoding="utf-8"))
    message = " ".join(str(data.get("message", "")).split())
    lines = [message, "", "**The software**", "",
             f"{', '.join(_authors(data.get('authors', [])))}. *{data.get('title')}*, version "
             f"{data.get('version')} ({data.get('license')} licence).", "",
             "```bibtex", _bibtex(data, software=True), "```", ""]
    refs = data.get("references") or []
    if refs:
        lines += ["**The papers**", ""]
        for r in refs:
            venue = r.get("journal") or (r.get("conference") or {}).get("name") or ""
            ids = ", ".join(i.get("value") for i in r.get("identifiers", []) if i.get("value"))
            lines.append(f"- {'; '.join(_authors(r.get('authors', [])))}. {r.get('title')}. *{venue}*, "
                         f"{r.get('year')}" + (f" ({ids})." if ids else "."))
        lines += ["", "```bibtex", "\n\n".join(_bibtex(r) for r in refs), "```", ""]
    return "\n".join(lines)


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 90:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min ({s:.0f} s)"


def timings_markdown(record: dict[str, Any]) -> str:
    """The measured timings as a MyST table (included by book/reproduce.md)."""
    hw = record.get("hardware", {})
    lines = [
        f"Measured for the **{record.get('profile', '?')}** profile of this build "
        f"(executed {record.get('executed_utc', '?')}, built {record.get('built_utc', 'n/a')}) on "
        f"{hw.get('cpu_model') or 'an unknown CPU'}, {hw.get('usable_cores') or hw.get('cpu_count', '?')} cores"
        f"{', GPU ' + hw['cuda_device'] if hw.get('cuda_device') else ', no GPU'}; Python {hw.get('python', '?')}. "
        f"Kernel threads: {record.get('threads') or 'default (OMP_NUM_THREADS unset)'}"
        f"{'; resumed from earlier checkpoints, so the times are not those of a full run' if record.get('resumed') else ''}. "
        "Generated from `timings.json` by `python -m basisprune_book build`.",
        "",
        "| step | status | wall time |",
        "|:--|:--|--:|",
    ]
    for name, v in record.get("runs", {}).items():
        lines.append(f"| compute the shared runs `{name}` | {v.get('status', '?')} | {_fmt_seconds(v.get('seconds'))} |")
    for name, v in record.get("notebooks", {}).items():
        lines.append(f"| execute `{name}.ipynb` | {v.get('status', '?')} | {_fmt_seconds(v.get('seconds'))} |")
    lines.append(f"| **execute, all notebooks and runs (summed)** | | **{_fmt_seconds(record.get('execute_seconds'))}** |")
    if record.get("wall_seconds") is not None:
        lines.append(f"| **execute, wall time ({record.get('jobs', 1)} side by side)** | | "
                     f"**{_fmt_seconds(record.get('wall_seconds'))}** |")
    lines.append(f"| **build the book (jupyter-book)** | | **{_fmt_seconds(record.get('build_seconds'))}** |")
    lines.append(f"| **execute + build** | | **{_fmt_seconds(record.get('total_seconds'))}** |")
    return "\n".join(lines) + "\n"


def profiles_markdown() -> str:
    """Every setting of every profile (:data:`basisprune.repro.profiles.PROFILES`, the experiment
    parameters and the ``pai`` and ``timing`` sections) as a MyST table (included by
    book/reproduce.md)."""
    names = list(profiles.PROFILES)
    values = {n: profiles.get(n) for n in names}
    keys = ["datasets", "seeds", "table_seeds", "per_dataset", *profiles.PARAMETERS]
    for n in names:  # per-dataset overrides are not merged by get() without a dataset
        values[n]["per_dataset"] = profiles.PROFILES[n].get("per_dataset", {})
    section_help = {}
    for n in names:  # the sections, one row per setting: pai.scratch.epochs, timing.rounds, ...
        for part, settings in profiles.section(n, "pai").items():
            for k, v in settings.items():
                values[n][f"pai.{part}.{k}"] = v
                section_help[f"pai.{part}.{k}"] = f"chapter 6, {part} (`pai_{part}`)"
        for k, v in profiles.section(n, "timing").items():
            values[n][f"timing.{k}"] = v
            section_help[f"timing.{k}"] = "chapter 7, latency timing (`speed`)"
    keys += list(section_help)

    def cell(v: Any) -> str:
        if isinstance(v, dict):
            def inner(x: Any) -> str:
                if isinstance(x, dict):
                    return ", ".join(f"{k2}={x2!r}" for k2, x2 in x.items())
                return ", ".join(map(str, x)) if isinstance(x, (list, tuple)) else repr(x)

            text = "; ".join(f"{k}: {inner(x)}" for k, x in v.items()) if v else "–"
        elif isinstance(v, (list, tuple)):
            text = ", ".join(map(str, v))
        else:
            text = repr(v)
        return text.replace("|", "\\|")

    help_ = {"datasets": "data sets the notebooks loop over", "seeds": "seeds the notebooks loop over",
             "table_seeds": "seeds of the main table (chapter 5), per data set (else `seeds`)",
             "per_dataset": "parameters that differ for one data set"}
    lines = ["| parameter | " + " | ".join(f"`{n}`" for n in names) + " | meaning |",
             "|:--|" + "--:|" * len(names) + ":--|"]
    for k in keys:
        row = [cell(values[n].get(k)) for n in names]
        default = values["default"].get(k) if "default" in values else None
        marks = [f"**{c}**" if n != "default" and values[n].get(k) != default else c for n, c in zip(names, row)]
        meaning = help_.get(k) or section_help.get(k) or profiles.PARAMETERS[k][1]
        lines.append(f"| `{k}` | " + " | ".join(marks) + f" | {meaning.replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n\nBold: differs from the `default` profile.\n"


def _markdown_table_csv(markdown: str) -> str:
    """The first Markdown table of ``markdown`` as CSV text (emphasis and code marks dropped)."""
    import csv
    import io

    rows = []
    for line in markdown.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue
        rows.append([re.sub(r"\*\*|`", "", c).replace("\\|", "|") for c in cells])
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def write_page_and_csv(page: Path, markdown: str, name: str, source: str) -> None:
    """Write a generated page that the "Reproduce" chapter includes, with its table as a CSV
    download beside it (like the chapters' tables, :func:`basisprune.repro.report.show_table`)."""
    write_text(page.with_name(f"{name}.csv"), _markdown_table_csv(markdown))
    source = f"{{download}}`{source} <{source}>`" if source.endswith(".json") else source
    write_text(page, f"{markdown}\nDownload this table: {{download}}`{name}.csv <{name}.csv>`; computed from {source}.\n")
