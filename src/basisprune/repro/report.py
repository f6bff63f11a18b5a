"""What the notebooks call besides the experiments: one import for a chapter's helpers.

The chapters' steps live here: :func:`chapter_setup` (data sets, seeds, shared overrides, results
folder), :func:`run_pruning`, the lines nbval compares (``print_*``) and the glued numbers
(``glue_*``). The rest is re-exported from the modules that hold it, so a notebook needs only
``report``: :mod:`~basisprune.repro.paths` (where the project and results are),
:mod:`~basisprune.repro.plan` (which runs a chapter makes), :mod:`~basisprune.repro.stats`
(intervals and budget verdicts), :mod:`~basisprune.repro.tables` and :mod:`~basisprune.repro.plots`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .paths import RESULTS_ENV, ROOT_ENV, ProjectNotFoundError, executed_dir, repo_root, results_dir
from .plan import Run, book_runs, chapter_of, chapter_runs, selection, table_seeds
from .plots import (plot_accuracy_against_size, plot_kept, plot_margin_replay, plot_pai_accuracy,
                    plot_pruning_curves, plot_speedup_against_flops)
from .stats import BOOTSTRAP_RESAMPLES, budget_verdict, interval, mean_ci, mean_std
from .tables import (COLLAPSE_ROWS, HISTORY_COLUMNS, METHODS, TABLES_DIR, accuracy_at, ceiling_table, history_frame,
                     kept_frame, method_runs, method_table, pareto_front, peer_table, selected_frame, selected_summary,
                     show_table, target_status, transfer_table, without_models)

__all__ = [
    # the chapters' steps (this module)
    "chapter_setup", "glue_method", "glue_selected", "photo", "pick_dataset", "print_model_check", "print_selected",
    "print_targets", "run_pruning", "top5",
    # re-exported
    "BOOTSTRAP_RESAMPLES", "COLLAPSE_ROWS", "HISTORY_COLUMNS", "METHODS", "RESULTS_ENV", "ROOT_ENV", "TABLES_DIR",
    "ProjectNotFoundError", "Run", "accuracy_at", "book_runs", "budget_verdict", "ceiling_table", "chapter_of",
    "chapter_runs", "executed_dir", "history_frame", "interval", "kept_frame", "mean_ci", "mean_std", "method_runs",
    "method_table", "pareto_front", "peer_table", "plot_accuracy_against_size", "plot_kept", "plot_margin_replay", "plot_pai_accuracy",
    "plot_pruning_curves", "plot_speedup_against_flops", "repo_root", "results_dir", "selected_frame",
    "selected_summary", "selection", "show_table", "table_seeds", "target_status", "transfer_table", "without_models",
]


# ------------------------------------------------------------------------- pruning chapters (2-5, 7)
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
    results file ``<experiment>-<dataset>-seed<seed>.json`` in ``out_dir``); prints the rule and the
    budget. Returns ``(records, history, rule)``: the records by ``(dataset, seed)``, their rounds
    (:func:`history_frame`) and the pruning rule."""
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
