"""What the notebooks call besides the experiments: where results go, which data sets and seeds a
chapter covers, and the tables, figures and glued numbers of the chapters.

The notebooks hold parameters, one call per experiment, these helpers and glue; the book builder
(:mod:`basisprune_book`) finds the project with :func:`repo_root` and tells the kernels where to
write results through ``$BASISPRUNE_RESULTS`` (:func:`results_dir`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .paths import RESULTS_ENV, ROOT_ENV, ProjectNotFoundError, executed_dir, repo_root, results_dir
from .stats import BOOTSTRAP_RESAMPLES, budget_verdict, interval, mean_ci, mean_std
from .tables import (COLLAPSE_ROWS, HISTORY_COLUMNS, METHODS, TABLES_DIR, accuracy_at, ceiling_table, history_frame,
                     kept_frame, method_runs, method_table, pareto_front, peer_table, selected_frame, selected_summary,
                     show_table, target_status, transfer_table, without_models)
from .plan import Run, book_runs, chapter_of, chapter_runs, selection, table_seeds

__all__ = [
    "RESULTS_ENV",
    "book_runs",
    "chapter_runs",
    "ROOT_ENV",
    "ProjectNotFoundError",
    "ceiling_table",
    "executed_dir",
    "history_frame",
    "kept_frame",
    "budget_verdict",
    "interval",
    "mean_ci",
    "mean_std",
    "plot_pruning_curves",
    "repo_root",
    "results_dir",
    "selected_frame",
    "selected_summary",
    "selection",
    "show_table",
    "table_seeds",
]




def plot_pruning_curves(history, title: str):
    """Test accuracy against parameters and FLOPs pruned, one line per run, the selected rounds
    ringed, and dashed the fair reference (unpruned, trained as long) at every round."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    plot = history.assign(accuracy=100 * history["accuracy_test"], reference=100 * history["reference_test"],
                          params_pruned=100 * history["param_pruning_ratio"],
                          flops_pruned=100 * history["flop_pruning_ratio"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x, label in zip(axes, ["params_pruned", "flops_pruned"], ["parameters pruned (%)", "FLOPs pruned (%)"]):
        sns.lineplot(data=plot, x=x, y="accuracy", hue="dataset", style="seed", markers=True, dashes=False,
                     estimator=None, sort=False, ax=ax, legend=ax is axes[0])
        for _, g in plot.groupby(["dataset", "seed"]):
            ax.plot(g[x], g["reference"], ls="--", lw=0.8, color="grey")
        sel = plot[plot["selected"]]
        ax.scatter(sel[x], sel["accuracy"], s=160, facecolors="none", edgecolors="black", lw=1.5, zorder=5)
        ax.set(xlabel=label, ylabel="test accuracy (%)")
    fig.suptitle(title + " (ringed: selected round; dashed: unpruned reference trained as long)")
    return fig


# ------------------------------------------------------------------------- pruning chapters (3, 4)


def chapter_setup(experiment: str, profile: str, *, datasets=None, seeds=None, dataset=None, seed=None, model=None,
                  image_size=None, overrides=None, results=None,
                  chapter: str | None = None) -> tuple[list[str], list[int], dict, dict, Path]:
    """A chapter's data sets and seeds (:func:`selection`), the parameter overrides every run shares
    (``model``, ``image_size`` and ``overrides``), the parameters of its first run, and the results
    folder (:func:`results_dir` of ``results``); sets the plot and table style and prints one line
    saying what runs. ``chapter`` (a key of :data:`basisprune.repro.plan.CHAPTERS`) narrows the data
    sets and seeds to the first of each where the chapter runs only those (chapter 7), and the line
    shows the main table's seeds per data set where the chapter runs those (chapter 5)."""
    import pandas as pd
    import seaborn as sns

    from . import experiments
    from .plan import CHAPTERS

    rule = CHAPTERS[chapter].seeds if chapter is not None else "all"
    shown = table_seeds(profile, datasets=datasets, seeds=seeds, dataset=dataset, seed=seed) if rule == "table" else None
    datasets, seeds = selection(profile, datasets=datasets, seeds=seeds, dataset=dataset, seed=seed)
    if rule == "first":
        datasets, seeds = datasets[:1], seeds[:1]
    common = {k: v for k, v in {"model": model, "image_size": image_size}.items() if v is not None} | dict(overrides or {})
    p = experiments.resolve_params(experiment, profile, dataset=datasets[0], seed=seeds[0], **common)
    out_dir = results_dir(profile, results)
    sns.set_theme(context="notebook", style="whitegrid")
    pd.set_option("display.precision", 3)
    where = (f"dataset={datasets[0]} seed={seeds[0]}" if rule == "first"
             else f"datasets={datasets} seeds={seeds if shown is None else shown}")
    print(f"profile={profile} model={p['model']} image_size={p['image_size']} {where}")
    return datasets, seeds, common, p, out_dir


def run_pruning(experiment: str, profile: str, datasets, seeds, common: dict, out_dir: Path):
    """Run one pruning experiment per data set and seed, as its chapter's plan says (:func:`chapter_runs`;
    results file ``<experiment>-<dataset>-seed<seed>.json`` in ``out_dir``); prints the rule and the budget. Returns ``(records, history, rule)``: the records by
    ``(dataset, seed)``, their rounds (:func:`history_frame`) and the pruning rule."""
    import pandas as pd

    from . import experiments

    records = {}
    for exp, ds, s in chapter_runs(chapter_of(experiment), profile, datasets=datasets, seeds=seeds):
        records[ds, s] = experiments.run(exp, profile=profile, dataset=ds, seed=s,
                                         out=out_dir / f"{exp}-{ds}-seed{s}.json", **common)
    first = next(iter(records.values()))
    rule, p = first["rule"], first["params"]
    rounds = p["channel_rounds"] if experiment == "channel_pruning" else p["basis_rounds"]
    print("pruning rule:", rule)
    print("budget: max_drop =", p["max_drop"], "| stop_drop =", p["stop_drop"], "| rounds =", rounds)
    history = pd.concat([history_frame(r, dataset=ds, seed=s) for (ds, s), r in records.items()], ignore_index=True)
    return records, history, rule


def plot_kept(record: dict[str, Any], dataset: str, seed: int, unit: str):
    """Bar chart of the kept and total ``unit`` (bases or channels) per layer at the selected round."""
    import matplotlib.pyplot as plt

    final = record["final"]
    kept = kept_frame(final)
    fig, ax = plt.subplots(figsize=(max(8, 0.25 * len(kept)), 3.8))
    ax.bar(kept["layer"], kept["total"], color="lightgrey", label="total")
    ax.bar(kept["layer"], kept["kept"], color="tab:blue", label="kept")
    ax.set_yscale("log")
    ax.set(ylabel=unit, xlabel="", title=f"{dataset}, seed {seed}, round {final['round']}: "
           f"{kept['kept'].sum():,} of {kept['total'].sum():,} {unit} kept")
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.legend()
    return fig


def print_selected(records: dict[tuple[str, int], dict[str, Any]]) -> None:
    """One rounded line per run: rounds run, the selected round, its test accuracy and pruning ratios."""
    for (ds, s), r in records.items():
        f = r["final"]
        print(f"{ds} seed {s}: rounds {len(r['history']) - 1}, selected round {f['round']}, "
              f"test accuracy {round(f['accuracy_test'], 2)}, params pruned {round(f['param_pruning_ratio'], 2)}, "
              f"FLOPs pruned {round(f['flop_pruning_ratio'], 2)}")


def glue_selected(prefix: str, final, summary, dataset: str) -> None:
    """Glue a pruning chapter's numbers for the text, as ``<prefix>_acc``, ``<prefix>_delta``, ...: the
    selected rounds of ``dataset`` (mean over seeds with its 95% interval) and the ``summary`` table."""
    from myst_nb import glue

    sel = final[final["dataset"] == dataset]
    glue(f"{prefix}_dataset", dataset, display=False)
    glue(f"{prefix}_acc", mean_ci(sel["accuracy_test"], 100, 1), display=False)
    glue(f"{prefix}_ref_acc", mean_ci(sel["reference_accuracy"], 100, 1), display=False)
    glue(f"{prefix}_delta", mean_ci(sel["accuracy_drop"], -100, 2, se=sel["drop_se_test"]), display=False)
    glue(f"{prefix}_round0_acc", mean_ci(sel["round0_accuracy"], 100, 1), display=False)
    glue(f"{prefix}_se", f"{100 * sel['drop_se_test'].mean():.2f}", display=False)
    glue(f"{prefix}_params_pruned", mean_ci(sel["param_pruning_ratio"], 100, 1), display=False)
    glue(f"{prefix}_flops_pruned", mean_ci(sel["flop_pruning_ratio"], 100, 1), display=False)
    glue(f"{prefix}_summary", summary, display=False)


# ------------------------------------------------------------------------- double pruning (chapter 5)


def plot_accuracy_against_size(history, runs, datasets, title: str):
    """Test accuracy against parameters, per data set: every round of every run (thin), each method's
    Pareto front (thick) and the selected rounds (stars; double pruning's is its result)."""
    import matplotlib.pyplot as plt

    curves = history.copy()
    curves.loc[curves["method"].str.startswith("double"), "method"] = "double pruning"
    curves = curves[curves["method"].isin(["channel pruning", "basis pruning", "double pruning"])]
    curves = curves.assign(accuracy=100 * curves["accuracy_test"], params_m=curves["params"] / 1e6)
    palette = {"channel pruning": "tab:orange", "basis pruning": "tab:blue", "double pruning": "tab:green"}
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False, sharey=False)
    for ax, ds in zip(axes[0], datasets):
        c = curves[curves["dataset"] == ds]
        for m, g in c.groupby("method"):
            for s, gs in g.groupby("seed"):
                ax.plot(gs["params_m"], gs["accuracy"], "o-", ms=3, lw=0.6, alpha=0.45, color=palette[m])
            front = pareto_front(g[["params_m", "accuracy"]].rename(columns={"params_m": "params"}))
            ax.step(front["params"], front["accuracy"], where="post", color=palette[m], lw=2, label=m)
            sel = g[g["selected"]]
            if m == "double pruning":  # the basis stage's selected round (each stage has its own)
                sel = runs[(runs["dataset"] == ds) & (runs["method"] == "double pruning")].assign(
                    params_m=lambda d: d["params"] / 1e6, accuracy=lambda d: 100 * d["after"])
            ax.scatter(sel["params_m"], sel["accuracy"], s=90, marker="*", color=palette[m], edgecolors="black", zorder=5)
        ax.set_xscale("log")
        ax.set(title=ds, xlabel="parameters (millions, log scale)", ylabel="test accuracy (%)")
        ax.legend(fontsize=8)
    fig.suptitle(title + " (stars: selected rounds)")
    return fig


def pick_dataset(candidates, datasets, fallback: str) -> str:
    """The first of ``candidates`` among ``datasets``, else ``fallback``."""
    return next((d for d in candidates if d in datasets), fallback)


def glue_method(prefix: str, runs, ds: str, method: str) -> None:
    """Glue one method's numbers on one data set (mean over seeds of :func:`method_runs`, 95% interval) as
    ``<prefix>_acc``, ``<prefix>_before``, ``<prefix>_delta``, sizes and ratios."""
    from myst_nb import glue

    g = runs[(runs["dataset"] == ds) & (runs["method"] == method)]
    glue(f"{prefix}_acc", mean_ci(g["after"], 100, 1), display=False)
    glue(f"{prefix}_before", mean_ci(g["before"], 100, 1), display=False)
    glue(f"{prefix}_delta", mean_ci(g["change"], 100, 2, se=g["se"]), display=False)
    glue(f"{prefix}_params", mean_ci(g["params"], 1e-6, 3), display=False)
    glue(f"{prefix}_flops", mean_ci(g["flops"], 1e-6, 2), display=False)
    glue(f"{prefix}_params_pruned", mean_ci(g["params_pruned"], 100, 1), display=False)
    glue(f"{prefix}_flops_pruned", mean_ci(g["flops_pruned"], 100, 1), display=False)


# ------------------------------------------------------------------------- other chapters (1, 6, 7)
def photo(name: str, mean, std, size: int = 224):
    """One of scikit-learn's sample photos (``china.jpg``, ``flower.jpg``) as an ImageNet input:
    shorter side resized to 256 (antialiased), centre crop ``size``, normalised with ``mean``/``std``;
    shape ``(1, 3, size, size)``."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_sample_image

    img = torch.from_numpy(load_sample_image(name).copy()).permute(2, 0, 1).float().div(255)[None]
    h, w = img.shape[-2:]
    scale = 256 / min(h, w)
    img = F.interpolate(img, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
    top, left = (img.shape[-2] - size) // 2, (img.shape[-1] - size) // 2
    img = img[..., top:top + size, left:left + size].clamp(0, 1)
    return (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def top5(logits, categories) -> list[str]:
    """The five most likely classes of one image's ``logits`` as ``"name (p%)"``."""
    return [f"{categories[i]} ({p:.0%})" for p, i in zip(*logits.softmax(-1).topk(5))]


# ------------------------------------------------------------------------------ efficiency (chapter 7)
def plot_speedup_against_flops(rows, onnx: bool, title: str):
    """Measured speedup against FLOP reduction of every model of a speed table, with the ideal line
    and target (a)'s half of it; PyTorch and, with ``onnx``, ONNX Runtime."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    plot = pd.DataFrame(rows)
    frames = [plot.assign(backend="PyTorch", measured=plot["speedup"])]
    if onnx and plot["onnx_speedup"].notna().any():
        frames.append(plot.assign(backend="ONNX Runtime", measured=plot["onnx_speedup"]))
    plot = pd.concat(frames, ignore_index=True).dropna(subset=["measured"])
    plot["batch"] = plot["batch_size"].astype(str)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    sns.scatterplot(data=plot, x="flop_reduction", y="measured", hue="model", style="batch", size="backend",
                    sizes={"PyTorch": 90, "ONNX Runtime": 40}, ax=ax)
    hi = max(plot["flop_reduction"].max(), plot["measured"].max(), 1.0) * 1.3
    lo = min(plot["measured"].min(), 0.5) / 1.3
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="ideal: speedup = FLOP reduction")
    ax.plot([lo, hi], [lo / 2, hi / 2], color="black", lw=1, ls="--", label="target (a): half of it")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(0.8, hi)
    ax.set_ylim(lo, hi)
    ax.set(xlabel="FLOP reduction  $F_{ref}/F = 1/(1-\\mathrm{FLOP\\ ratio})$", ylabel="measured speedup", title=title)
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def print_model_check(rows, peers: dict[str, Any], form: str) -> None:
    """Rounded sizes of the models whose layers do not depend on timings, and each peer comparison's
    accuracies and epochs (what nbval compares)."""
    seen = set()
    for r in rows:  # the latency-fold models and inference forms are left out: their layers depend on timings
        if r["model"] not in seen and "latency fold" not in r["model"] and form not in r["model"]:
            seen.add(r["model"])
            print(f"{r['model']:30s} params {r['params']:>9,d}  FLOPs {r['flops']:>11,d}  "
                  f"FLOPs pruned {round(r['flop_pruning_ratio'], 2)}")
    for n, c in peers.items():
        print(f"{n}: ours accuracy {round(c['ours']['accuracy_test'], 2)}; Torch-Pruning FLOPs pruned "
              f"{round(c['peer']['flop_pruning_ratio'], 2)}, epochs {c['peer']['epochs_run']} of {c['peer']['epochs']}, "
              f"accuracy {round(c['peer']['accuracy_test'], 2)}")


def print_targets(verdict, folded_verdict, form_targets, slower, where: str) -> None:
    """Chapter 7's verdicts in words: targets (a)-(c), the latency-fold variant's, the inference
    form's, and the models slower than the unpruned one; ``where`` says what was measured on."""
    print(f"Measured on {where}:")
    for k in "abc":
        print(" ", verdict[k]["text"])
    print("  latency-fold variant of the double-pruned model:")
    for k in "ab":
        print("   ", folded_verdict[k]["text"])
    print("   ", folded_verdict["c"]["text"].replace("(c)", "(c, double pruning)"))
    for b, v in form_targets.items():
        print(f"  inference form of the double-pruned model, {'PyTorch eager' if b == 'torch' else 'ONNX Runtime'} "
              "(ratio: at least 0.7 of the compact model's FLOP reduction; peer: Torch-Pruning's inference form):")
        for k in ("ratio", "peer"):
            print("   ", v[k]["text"])
    print("Slower than the unpruned model (median) at batch sizes:")
    for v in slower:
        print(f"  {v['model']:30s} {v['slower_median_at'] or 'none'} (clearly, quartiles apart: "
              f"{v['clearly_slower_at'] or 'none'}); lowest speedup {v['min_speedup']:.2f}x")


# ------------------------------------------------------------------- pruning at initialization (chapter 6)
def plot_pai_accuracy(runs, order, title: str):
    """Test accuracy against sparsity (log scale of the weights kept) of chapter 6's scratch runs, one
    line per method of ``order`` (mean and std over seeds), the dense baseline dashed."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    pruned = runs[runs["method"] != "dense"].assign(accuracy=lambda d: 100 * d["accuracy_test"],
                                                    kept_pct=lambda d: (100 * (1 - d["sparsity"])).round(6))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    sns.lineplot(data=pruned, x="kept_pct", y="accuracy", hue="method", hue_order=order, style="method",
                 style_order=order, markers=True, dashes=False, errorbar="sd", err_style="bars", ax=ax)
    dense = runs.loc[runs["method"] == "dense", "accuracy_test"]
    if len(dense):
        ax.axhline(100 * dense.mean(), color="black", ls="--", lw=1, label="dense")
    ax.set_xscale("log")
    ticks = sorted(pruned["kept_pct"].unique())
    ax.set_xticks(ticks, [f"{round(100 - k, 4):g}%" for k in ticks])
    ax.minorticks_off()
    ax.invert_xaxis()  # sparser to the right
    ax.set(xlabel="sparsity (% of prunable weights removed; log scale of the weights kept)",
           ylabel="test accuracy (%)", title=title)
    ax.legend(fontsize=8, ncol=2)
    return fig


