"""Sweep results: one row per cell, mean and spread over seeds, and the report files."""

from __future__ import annotations

import fnmatch
import html
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..results import atomic_write, read_results
from .spec import SweepSpec, cell_dir, cell_status, expand, load

__all__ = ["collect", "report", "summarize", "table"]

_METRICS = ("final.accuracy_test", "final.accuracy_drop", "final.param_pruning_ratio", "final.flop_pruning_ratio",
            "reference.accuracy_test", "baselines.*.accuracy_test", "methods.*.accuracy_test",
            "methods.*.flop_pruning_ratio", "timings.compute_seconds")


def _flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix[:-1]] = float(obj)
    return out


def _metrics(record: dict[str, Any]) -> dict[str, float]:
    flat = _flatten({k: record.get(k) for k in ("final", "reference", "baselines", "methods", "timings")})
    return {k: v for pattern in _METRICS for k, v in flat.items() if fnmatch.fnmatchcase(k, pattern)}


def _grid_names(spec: SweepSpec) -> list[str]:
    return list(dict.fromkeys(n for g in spec.grids for n in g))


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # a pai run's methods: a group key


def collect(spec: str | os.PathLike | Mapping[str, Any] | SweepSpec) -> pd.DataFrame:
    """One row per cell: fingerprint, experiment, grid parameters, seed, status, error, metrics."""
    spec = spec if isinstance(spec, SweepSpec) else load(spec)
    folder = spec.folder.resolve()
    rows = []
    for c in expand(spec):
        d = cell_dir(folder, c)
        row: dict[str, Any] = {"cell": c.name, "fingerprint": c.fingerprint, "experiment": c.experiment,
                               **{n: _hashable(c.params[n]) for n in _grid_names(spec)}, "seed": c.seed,
                               "status": cell_status(folder, c), "error": None}
        if row["status"] == "done":
            row.update(_metrics(read_results(d / "results.json")))
        elif row["status"] == "failed":
            row["error"] = read_results(d / "error.json").get("error")
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(cells: pd.DataFrame, spec: SweepSpec) -> pd.DataFrame:
    """Mean and standard deviation (ddof 1) over seeds of each metric, per parameter combination.

    ``seeds_done`` / ``seeds`` count done and expected cells; a combination with no done cell keeps
    its row with empty metrics.
    """
    keys = ["experiment", *_grid_names(spec)]
    metrics = [c for c in cells.columns if c not in {*keys, "cell", "fingerprint", "seed", "status", "error"}]
    by = cells.groupby(keys, dropna=False, sort=False)
    table = by.size().rename("seeds").to_frame()
    table["seeds_done"] = by["status"].agg(lambda s: int((s == "done").sum()))
    done = cells[cells["status"] == "done"]
    if metrics and not done.empty:
        stats = done.groupby(keys, dropna=False, sort=False)[metrics].agg(["mean", "std"])
        stats.columns = [f"{m} {s}" for m, s in stats.columns]
        table = table.join(stats)
    return table.reset_index()


def _fmt(mean: float, std: float) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:.4g}" if pd.isna(std) else f"{mean:.4g} ± {std:.2g}"


def table(spec: SweepSpec, cells: pd.DataFrame | None = None) -> str:
    """The summary table as markdown: one row per parameter combination, mean ± std over seeds."""
    cells = collect(spec) if cells is None else cells
    return _shown(spec, cells, summarize(cells, spec))[0].to_markdown(index=False)


def _shown(spec: SweepSpec, cells: pd.DataFrame, table: pd.DataFrame) -> tuple[pd.DataFrame, list[str], str]:
    names = _grid_names(spec)
    varying = [n for n in names if cells[n].astype(str).nunique() > 1]  # the page shows fixed ones once
    fixed = ", ".join(f"{n}={cells[n].iloc[0]}" for n in names if n not in varying)
    metrics = [c[:-5] for c in table.columns if c.endswith(" mean")]
    shown = table[["experiment", *varying, "seeds_done", "seeds"]].copy()
    for m in metrics:
        shown[m] = [_fmt(a, b) for a, b in zip(table[f"{m} mean"], table[f"{m} std"])]
    return shown, varying, fixed


def report(spec: str | os.PathLike | Mapping[str, Any] | SweepSpec,
           folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write ``report.csv`` (means and spreads), ``report.md``, ``report.html`` and ``cells.csv``.

    Returns their paths. The markdown page holds the table (mean ± standard deviation over seeds)
    and lists the failed cells with their error and the missing ones.
    """
    if not isinstance(spec, SweepSpec):
        spec = load(spec, folder=folder)
    cells = collect(spec)
    table = summarize(cells, spec)
    out = spec.folder.resolve()
    shown, varying, fixed = _shown(spec, cells, table)
    not_done = cells[cells["status"] != "done"][["status", "cell", "experiment", *varying, "seed", "error"]]
    counts = cells["status"].value_counts()
    summary = (f"{', '.join(spec.experiments)}, profile {spec.profile}{'; ' + fixed if fixed else ''}. "
               f"{len(cells)} cells: {counts.get('done', 0)} done, {counts.get('failed', 0)} failed, "
               f"{counts.get('missing', 0)} missing. Each entry is the mean ± standard deviation (ddof 1) "
               "over the seeds done.")
    md = (f"# Sweep {spec.name}\n\n{summary}\n\n{shown.to_markdown(index=False)}\n\n## Failed and missing cells\n\n"
          f"{not_done.to_markdown(index=False) if len(not_done) else 'None.'}\n")
    page = (f"<!doctype html><meta charset='utf-8'><title>Sweep {spec.name}</title>\n<h1>Sweep {spec.name}</h1>"
            f"<p>{html.escape(summary)}</p>\n{shown.to_html(index=False)}\n<h2>Failed and missing cells</h2>\n"
            f"{not_done.to_html(index=False) if len(not_done) else '<p>None.</p>'}\n")
    paths = {}
    for name, text in (("report.csv", table.to_csv(index=False)), ("cells.csv", cells.to_csv(index=False)),
                       ("report.md", md), ("report.html", page)):
        data = text.encode("utf-8")
        paths[name] = atomic_write(out / name, lambda f, data=data: f.write(data))
    return paths
