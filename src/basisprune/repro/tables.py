"""The chapters' tables: results records turned into data frames (rounds, selected rounds, the
main table's methods, the peer and transfer comparisons) and :func:`show_table`, which displays one
with a CSV download of it and links to the results it comes from."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .paths import ProjectNotFoundError, repo_root
from .stats import budget_verdict, mean_ci, mean_std

__all__ = [
    "COLLAPSE_ROWS", "HISTORY_COLUMNS", "METHODS", "TABLES_DIR", "accuracy_at", "ceiling_table", "history_frame",
    "kept_frame", "method_runs", "method_table", "pareto_front", "peer_table", "selected_frame", "selected_summary",
    "show_table", "target_status", "transfer_table", "without_models",
]


#: Folder of ``results_dir`` that holds the CSV copy of every table a chapter shows.
TABLES_DIR = "tables"


#: Tables longer than this are shown behind a "show the rows" toggle (the CSV has them all).
COLLAPSE_ROWS = 25


def _book_link(path: Path, results: Path) -> str:
    """A MyST link a reader can open: a {download} of a file the book builder copies (under
    ``results``, copied to ``notebooks/results/``), else the file's path in the repository."""
    path = Path(path).resolve()
    try:
        rel = path.relative_to(results.resolve())
    except ValueError:
        try:
            rel = path.relative_to(repo_root())
        except (ValueError, ProjectNotFoundError):
            rel = Path(path.name)
        return f"`{rel.as_posix()}{'/' if path.is_dir() else ''}` in the repository"
    return f"{{download}}`{rel.as_posix()} <results/{rel.as_posix()}>`"


def show_table(table, name: str, results: str | os.PathLike, sources=(), *, collapse: bool | None = None) -> None:
    """Display a chapter's table with, under it, a CSV download of it and the results it comes from.

    ``table`` is a data frame or a pandas ``Styler``; its data (all rows, full precision, the index
    when it is not the default range) is written to ``<results>/tables/<name>.csv``, which the book
    builder copies into the book with the results files. ``sources`` are the results files or
    folders the table is computed from: a file under ``results`` becomes a download, anything else
    is named by its path in the repository. A table longer than :data:`COLLAPSE_ROWS` rows is shown
    behind a toggle (``collapse`` forces it either way). The links are MyST Markdown (rendered by the
    book with ``nb_render_markdown_format: myst``: a missing file fails the build).
    """
    import pandas as pd
    from IPython.display import HTML, Markdown, display
    from pandas.io.formats.style import Styler

    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ValueError(f"table name must be letters, digits, '_' or '-' (it names a CSV file), got {name!r}")
    if not isinstance(table, (pd.DataFrame, Styler)):
        raise TypeError(f"show_table takes a pandas DataFrame or Styler, got {type(table).__name__}")
    frame = table.data if isinstance(table, Styler) else table
    results = Path(results)
    csv = results / TABLES_DIR / f"{name}.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv, index=not isinstance(frame.index, pd.RangeIndex))
    if len(frame) > COLLAPSE_ROWS if collapse is None else collapse:
        body = table.to_html() if isinstance(table, Styler) else table.to_html(max_rows=None, border=0)
        display(HTML(f'<details class="table-toggle"><summary>Show the table ({len(frame)} rows, '
                     f"{frame.shape[1]} columns)</summary>{body}</details>"))
    else:
        display(table)
    links = [f"Download this table: {{download}}`{name}.csv <results/{TABLES_DIR}/{name}.csv>`"]
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if sources:
        links.append("computed from " + ", ".join(_book_link(Path(s), results) for s in sources))
    display(Markdown("; ".join(links) + "."))


def history_frame(record: dict[str, Any], **labels: Any):
    """One row per pruning round of a record (or of one stage of it), with ``selected`` marking the
    round the experiment kept; ``labels`` (dataset, seed, method, ...) become leading columns."""
    import pandas as pd

    rows = []
    final_round = record["final"]["round"]
    for h in record["history"]:
        row = {k: v for k, v in h.items() if k not in ("kept", "total")}
        row["selected"] = h["round"] == final_round
        rows.append({**labels, **row})
    return pd.DataFrame(rows)


def kept_frame(row: dict[str, Any], **labels: Any):
    """Per-layer kept and total units (bases or channels) of one history row."""
    import pandas as pd

    return pd.DataFrame(
        [{**labels, "layer": name, "kept": row["kept"][name], "total": row["total"][name]} for name in row["total"]]
    )


def ceiling_table(names, image_size: int, num_classes: int = 10):
    """Per architecture (randomly initialised: only shapes matter), its parameters and FLOPs with a
    ``num_classes`` head and the share basis pruning alone removes at one basis per layer
    (:func:`basisprune.basis_ceiling`; the classifier is not decomposed)."""
    import pandas as pd
    import torch

    from ..measure import basis_ceiling
    from . import models

    rows = []
    for name in names:
        net = models.load(name, num_classes, pretrained=False).eval()
        x = torch.zeros(1, 3, image_size, image_size)
        c = basis_ceiling(net, x, exclude=[models.classifier(net)[0]])
        rows.append({"model": name, "params (M)": c["params_ref"] / 1e6, "FLOPs (M)": c["flops_ref"] / 1e6,
                     "params pruned at the ceiling (%)": 100 * c["param_pruning_ratio"],
                     "FLOPs pruned at the ceiling (%)": 100 * c["flop_pruning_ratio"]})
    return pd.DataFrame(rows)


def selected_frame(records: dict[tuple[str, int], dict[str, Any]]):
    """One row per run ``{(dataset, seed): record}``: the selected round, its fair reference (the
    unpruned model trained as many epochs) and the run's round 0 (the undertrained warm-up model)."""
    import pandas as pd

    return pd.DataFrame([
        {"dataset": ds, "seed": s, **{k: v for k, v in r["final"].items() if k not in ("kept", "total")},
         "reference_accuracy": r["reference"]["accuracy_test"], "round0_accuracy": r["reference"]["round0_accuracy_test"]}
        for (ds, s), r in records.items()])


def selected_summary(final):
    """Per data set, the mean over seeds with its 95% interval (:func:`mean_ci`) of a
    :func:`selected_frame`: accuracy of the fair reference, of round 0 and of the selected round, the
    change against the reference (one seed: ± 1.96 paired standard errors) with its paired standard
    error (the mean over seeds), and the pruning ratios."""
    import pandas as pd

    rows = []
    for ds, g in final.groupby("dataset", sort=False):
        rows.append({"dataset": ds,
                     "reference (%)": mean_ci(g["reference_accuracy"], 100, 1),
                     "round 0 (%)": mean_ci(g["round0_accuracy"], 100, 1),
                     "accuracy after (%)": mean_ci(g["accuracy_test"], 100, 1),
                     "change (pts)": mean_ci(g["accuracy_drop"], -100, 2, se=g["drop_se_test"]),
                     "paired SE (pts)": f"{100 * float(g['drop_se_test'].mean()):.2f}",
                     "params pruned (%)": mean_ci(g["param_pruning_ratio"], 100, 1),
                     "FLOPs pruned (%)": mean_ci(g["flop_pruning_ratio"], 100, 1),
                     "seeds": g["seed"].nunique()})
    return pd.DataFrame(rows).set_index("dataset")


#: The columns of a pruning chapter's round-by-round table.
HISTORY_COLUMNS = ["dataset", "seed", "round", "epochs", "accuracy_test", "reference_test", "accuracy_drop",
                   "drop_se_test", "accuracy_val", "drop_val", "param_pruning_ratio", "flop_pruning_ratio", "selected"]


#: The methods of chapter 5's main table, in its order.
METHODS = ["channel pruning", "basis pruning", "double: channel stage", "double pruning"]


def _stage_row(method: str, ds: str, s: int, final: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    return {"dataset": ds, "method": method, "seed": s, "before": final["reference_test"],
            "round0": reference["round0_accuracy_test"], "after": final["accuracy_test"],
            "change": -final["accuracy_drop"], "se": final["drop_se_test"], "params": final["params"],
            "flops": final["flops"], "params_pruned": final["param_pruning_ratio"],
            "flops_pruned": final["flop_pruning_ratio"], "ref_params": reference["params"], "ref_flops": reference["flops"]}


def method_runs(records: dict[tuple[str, str, int], dict[str, Any]]):
    """One row per run ``{(experiment, dataset, seed): record}`` and method of :data:`METHODS` (double
    pruning gives two: its channel stage and its result): the selected round's accuracy, its fair
    reference (``before``), round 0, the change with its paired standard error, sizes and ratios."""
    import pandas as pd

    rows = []
    for (exp, ds, s), r in records.items():
        if exp == "double_pruning":
            rows.append(_stage_row("double: channel stage", ds, s, r["stages"]["channel"]["final"], r["reference"]))
            rows.append(_stage_row("double pruning", ds, s, r["final"], r["reference"]))
        else:
            rows.append(_stage_row(exp.replace("_", " "), ds, s, r["final"], r["reference"]))
    runs = pd.DataFrame(rows)
    runs["method"] = pd.Categorical(runs["method"], METHODS)
    return runs


def method_table(runs, datasets, max_drop: float | None = None):
    """Chapter 5's main table: per data set (in the order of ``datasets``) and method, the mean over
    seeds of :func:`method_runs`' columns with its 95% interval (:func:`mean_ci`; the change of a
    single run: ± 1.96 paired standard errors), and where the change stands against ``max_drop``
    (:func:`budget_verdict`) when it is given."""
    import pandas as pd

    out = []
    for (ds, m), g in runs.groupby(["dataset", "method"], sort=True, observed=True):
        out.append({"dataset": ds, "method": m,
                    "reference (%)": mean_ci(g["before"], 100, 1),
                    "round 0 (%)": mean_ci(g["round0"], 100, 1),
                    "accuracy after (%)": mean_ci(g["after"], 100, 1),
                    "change (pts)": mean_ci(g["change"], 100, 2, se=g["se"]),
                    "paired SE (pts)": f"{100 * g['se'].mean():.2f}",
                    "params (M)": mean_ci(g["params"], 1e-6, 3),
                    "FLOPs (M)": mean_ci(g["flops"], 1e-6, 2),
                    "params pruned (%)": mean_ci(g["params_pruned"], 100, 1),
                    "FLOPs pruned (%)": mean_ci(g["flops_pruned"], 100, 1),
                    "seeds": g["seed"].nunique(),
                    **({} if max_drop is None else {"budget": budget_verdict(g["change"], max_drop, se=g["se"])})})
    ds_order = {d: i for i, d in enumerate(datasets)}
    return pd.DataFrame(out).sort_values("dataset", key=lambda c: c.map(ds_order), kind="stable").reset_index(drop=True)


def pareto_front(df):
    """The rows of ``df`` (``params``, ``accuracy``) that no smaller model beats in accuracy."""
    import numpy as np

    df = df.sort_values(["params", "accuracy"], ascending=[True, False])
    best, keep = -np.inf, []
    for i, row in df.iterrows():
        if row["accuracy"] > best:
            keep.append(i)
            best = row["accuracy"]
    return df.loc[keep]


def accuracy_at(runs, method: str, sparsity: float):
    """Test accuracies (one per seed) of ``method`` at ``sparsity`` in chapter 6's scratch runs."""
    return runs[(runs["method"] == method) & (runs["sparsity"] == sparsity)]["accuracy_test"]


def target_status(verdict: dict[str, Any]) -> str:
    """``met``, ``not met`` or ``not measured`` for one of chapter 7's target verdicts."""
    return {True: "met", False: "not met", None: "not measured"}[verdict["met"]]


def without_models(comparison: dict[str, Any]) -> dict[str, Any]:
    """A peer comparison (:func:`basisprune.repro.comparison.peer_comparison`) without its models,
    example input and full record: what its results file keeps."""
    return {k: v for k, v in comparison.items() if k not in ("peer_model", "reference_model", "example_input", "record")}


def peer_table(comparison: dict[str, Any], rows, onnx: bool, form: str):
    """Our double-pruned model (compact, latency fold, inference form) beside Torch-Pruning's at the
    same FLOPs (and its inference form): accuracy, size, training and latency per batch size."""
    import pandas as pd

    c = comparison
    peer_rows = []
    for label, who, acc in (("double pruning", "ours", c["ours"]["accuracy_test"]),
                            ("double pruning, latency fold", "ours", c["ours"]["accuracy_test"]),
                            ("double pruning" + form, "ours", c["ours"]["accuracy_test"]),
                            ("Torch-Pruning, double's FLOPs", "peer", c["peer"]["accuracy_test"]),
                            ("Torch-Pruning, double's FLOPs" + form, "peer", c["peer"]["accuracy_test"])):
        src = c[who]
        row = {"model": label, "accuracy": acc, "params": src["params"], "FLOPs": src["flops"],
               "FLOPs pruned": src["flop_pruning_ratio"],
               "training": (f"{c['ours']['epochs']['total']} epochs, scales + classifier" if who == "ours"
                            else f"{c['peer']['epochs_run']} epochs, all weights")}
        for r in rows:
            if r["model"] == label:
                row[f"b{r['batch_size']} ms"] = r["median_ms"]
                if onnx and r.get("onnx_median_ms") is not None:
                    row[f"b{r['batch_size']} ORT ms"] = r["onnx_median_ms"]
        peer_rows.append(row)
    return pd.DataFrame(peer_rows).set_index("model")


def transfer_table(targets_used, transfer_rows):
    """Chapter 6's transfer table: per target and method (the pruning runs that set the targets
    first), parameters kept, sparsity and test accuracy over seeds; prints what was fine-tuned.
    An empty frame (and a line saying so) when the comparison did not run."""
    import pandas as pd

    rows = []
    for s, targets in targets_used.items():
        for label, t in targets.items():
            if t["experiment"] is not None:
                rows.append({"target": label, "method": label, "seed": s, "params": t["final_params"],
                             "sparsity": None, "accuracy_test": t["accuracy_test"]})
    for r in transfer_rows:
        rows.append({"target": r["target"], "method": r["method"], "seed": r["seed"], "params": r["params_nonzero"],
                     "sparsity": r["sparsity"], "accuracy_test": r["accuracy_test"]})
    transfer_df = pd.DataFrame(rows)
    if not len(transfer_df):
        print("transfer comparison skipped in this profile")
        return pd.DataFrame()
    ref_params = transfer_rows[0]["params_reference"]
    table = (transfer_df.groupby(["target", "method"], sort=False)
             .agg(params=("params", lambda v: f"{v.mean() / 1e6:.3f} M"),
                  params_kept=("params", lambda v: f"{100 * v.mean() / ref_params:.1f}%"),
                  sparsity=("sparsity", lambda v: "" if v.isna().all() else f"{100 * v.mean():.1f}%"),
                  accuracy=("accuracy_test", lambda v: mean_std(v, 100, 1)),
                  seeds=("seed", "nunique"))
             .reset_index())
    r0 = transfer_rows[0]
    print(f"{r0['model']} on {r0['dataset']} at {r0['image_size']} px: {ref_params:,} parameters before pruning; "
          f"fine-tuning {r0['epochs']} epoch(s), Adam lr {r0['lr']}, BatchNorm {r0['bn_mode']}")
    return table
