"""The chapters' figures (matplotlib and seaborn, imported when a figure is drawn): pruning curves,
kept units per layer, accuracy against size with each method's Pareto front, measured speedup
against FLOP reduction, pruning at initialization's accuracy against sparsity, and what the
selection's margin trades."""

from __future__ import annotations

from typing import Any

from .tables import kept_frame, pareto_front

__all__ = ["plot_accuracy_against_size", "plot_kept", "plot_pai_accuracy", "plot_pruning_curves", "plot_traffic",
           "plot_speedup_against_flops", "plot_margin_replay"]


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


def plot_margin_replay(replay, max_drop: float, title: str):
    """One panel per data set of :func:`basisprune.repro.selection.margin_replay`: each pipeline's mean
    test drop (with its 95% interval) against its parameters pruned, one point per margin, labelled,
    and the budget as a line."""
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(replay["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for pipe, g in replay[replay["dataset"] == ds].groupby("pipeline", sort=False):
            g = g.sort_values("margin")
            x, y = 100 * g["params_pruned"], 100 * g["test_drop"]
            err = [100 * (g["test_drop"] - g["test_drop_low"]), 100 * (g["test_drop_high"] - g["test_drop"])]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=pipe)
            for xi, yi, m in zip(x, y, g["margin"]):
                ax.annotate(f"{m:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(100 * max_drop, color="black", lw=1, ls="--", label="budget")
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set(xlabel="parameters pruned (%)", ylabel="test drop against the fair reference (points)", title=ds)
    axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_traffic(traffic, title: str):
    """Measured speed-up of each pruned form against its FLOPs ratio (left) and its activation
    ratio (right), both against the unpruned form, with the line where they are equal."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from matplotlib.ticker import NullFormatter, ScalarFormatter

    t = pd.DataFrame(traffic)
    t["px"] = t["size"].astype(str) + " px"
    sizes = dict(zip(sorted(t["px"].unique(), key=lambda p: int(p.split()[0])), (40, 80, 140, 200)))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, col, label in ((axes[0], "flops_ratio", "FLOPs ratio (unpruned / form)"),
                           (axes[1], "activation_ratio", "activation elements ratio (unpruned / form)")):
        sns.scatterplot(data=t, x=col, y="speedup", hue="model", style="backend", size="px", sizes=sizes,
                        ax=ax, legend=ax is axes[1])
        hi = max(t[col].max(), t["speedup"].max()) * 1.25
        lo = min(t[col].min(), t["speedup"].min()) / 1.25
        ax.plot([lo, hi], [lo, hi], color="black", lw=1)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlabel=label, ylabel="measured speed-up (median over rounds)")
        ticks = [v for v in (0.75, 1, 1.5, 2, 3, 4, 6, 8) if lo <= v <= hi]
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_ticks(ticks)
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
    axes[1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
