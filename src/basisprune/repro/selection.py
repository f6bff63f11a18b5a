"""How the selection of a round behaves on committed runs: why the test drop exceeds the validation drop.

A pruning stage records every round's drop against the fair reference on the validation split (which
selects: :func:`basisprune.repro.stages.select_round`) and on the test split (which decides nothing).
Two things can make the selected round lose more on test than on validation:

* **the split**: a test partition that is harder for pruned models than the validation draws. It
  shows at every round, selected or not, and follows the partition (``benchmarks/split_gap.py``
  rotates mnist5k's test fold; its summary is ``data/calibration/split_gap.json``,
  read by :func:`split_rotation`);
* **the selection**: among many rounds, the kept one is partly the one whose validation sample
  flattered it (the winner's curse). It shows at the selected round only (:func:`gap_by_round`).

:func:`selection_gap` measures the bias at the selected round; :func:`margin_replay` replays the
selection with other margins on the recorded histories (no training: stopping does not depend on the
margin), which shows what a stricter selection buys and costs.
"""

from __future__ import annotations

from typing import Any, Iterable

from .stages import select_round
from .stats import format_interval

__all__ = ["GAP_KINDS", "stage_histories", "selection_gap", "gap_by_round", "gap_by_fold", "margin_replay", "replay_table", "split_rotation",
           "gaps_text", "selected_drop_se", "rotation_summary", "margin_sentences"]

#: The round kinds of :func:`gap_by_round`, in order.
GAP_KINDS = ("round 0 (unpruned)", "pruned, not selected", "selected")


def stage_histories(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per pruning stage of each results file: data set, seed, the pipeline (channel
    pruning, basis pruning, or a stage of double pruning), its per-round ``history``, the round it
    selected and the budget and margin it selected with.

    A stage recorded twice is kept once: double pruning's channel stage is the same computation as
    channel pruning alone with the same seed, and counting its rounds again would weigh them twice."""
    out, seen = [], set()
    for r in records:
        p = r["params"]
        stages = ([(r["experiment"].replace("_", " "), r)] if "stages" not in r else
                  [(f"double pruning ({name} stage)", st) for name, st in r["stages"].items()])
        for pipeline, st in stages:
            key = (p["dataset"], p["seed"], repr([sorted(h.items()) for h in st["history"]]))
            if key in seen:
                continue
            seen.add(key)
            out.append({"dataset": p["dataset"], "seed": p["seed"], "test_split": p.get("test_split"), "pipeline": pipeline,
                        "history": st["history"], "selected": st["final"]["round"], "max_drop": p["max_drop"],
                        "margin": p["select_margin"]})
    return out


def _per_seed_gaps(df, keys: list[str], sort: bool = False) -> list[dict[str, Any]]:
    """Per group of ``keys`` in ``df`` (columns seed and gap): the mean over seeds of each seed's mean
    gap with its 95% interval, and the seeds it rests on. One value per seed: a seed's rounds and
    pipelines share their data (and double and channel pruning their channel stage), so they are
    not independent draws."""
    from .stats import interval

    out = []
    for key, g in df.groupby(keys, sort=sort):
        m, lo, hi = interval(g.groupby("seed")["gap"].mean())
        out.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), "n": len(g),
                    "seeds": g["seed"].nunique(), "gap": m, "gap_low": lo, "gap_high": hi})
    return out


def selection_gap(rows: list[dict[str, Any]]):
    """Per data set of a tier's :func:`basisprune.repro.tiers.tier_rows`: how much more the selected
    round loses on the test split than on the validation split that selected it (test drop minus
    validation drop, as a fraction), mean over seeds (each the mean of its runs) with its 95% interval
    (:func:`basisprune.repro.stats.interval`).

    The selected round is the most pruned one whose validation drop looked within the budget: among
    many rounds, the one whose validation sample happened to look best. Its validation drop is biased
    low (the winner's curse); a positive gap on independent test images measures that bias."""
    import pandas as pd

    df = pd.DataFrame(rows)
    df["gap"] = df["val_change"] - df["change"]
    return pd.DataFrame(_per_seed_gaps(df, ["dataset"])).rename(columns={"n": "runs"})[
        ["dataset", "runs", "seeds", "gap", "gap_low", "gap_high"]]


def _kind(row: dict[str, Any], selected: int) -> str:
    if row["round"] == 0:
        return GAP_KINDS[0]
    return GAP_KINDS[2] if row["round"] == selected else GAP_KINDS[1]


def gap_by_round(records: Iterable[dict[str, Any]]):
    """Per data set and round kind (:data:`GAP_KINDS`: round 0, a pruned round not selected, the
    selected pruned round), the test drop minus the validation drop against the fair reference, as a
    fraction: the mean over seeds (each seed the mean over its stages' rounds of that kind) with its
    95% interval, and how many rounds it rests on.

    A split that is harder on test shows in every kind; the winner's curse only in ``selected``. A
    stage that selected round 0 contributes no selected row (round 0 is the unpruned model)."""
    import pandas as pd

    rows = [{"dataset": s["dataset"], "seed": s["seed"], "rounds": _kind(h, s["selected"]),
             "gap": h["accuracy_drop"] - h["drop_val"]}
            for s in stage_histories(records) for h in s["history"]]
    df = pd.DataFrame(rows)
    datasets = list(dict.fromkeys(df["dataset"]))
    out = sorted(_per_seed_gaps(df, ["dataset", "rounds"]),
                 key=lambda r: (datasets.index(r["dataset"]), GAP_KINDS.index(r["rounds"])))
    return pd.DataFrame(out).rename(columns={"n": "n_rounds"})[
        ["dataset", "rounds", "n_rounds", "seeds", "gap", "gap_low", "gap_high"]]


def gap_by_fold(records: Iterable[dict[str, Any]], dataset: str):
    """Per test fold of ``dataset`` (a data set cut into folds, e.g. mnist5k, whose runs chose their
    fold with ``test_split``), the test drop minus the validation drop at the pruned rounds the
    selection did not keep: the mean over the fold's seeds with its 95% interval, and how many rounds
    and seeds it rests on. Without the selection in play, a fold that differs from the others is the
    split's doing."""
    import pandas as pd

    from .data import test_fold

    rows = [{"dataset": dataset, "test_fold": f"fold{test_fold(s['test_split'], s['seed'])}", "seed": s["seed"],
             "gap": h["accuracy_drop"] - h["drop_val"]}
            for s in stage_histories(records) if s["dataset"] == dataset and s["test_split"] is not None
            for h in s["history"] if _kind(h, s["selected"]) == GAP_KINDS[1]]
    out = pd.DataFrame(_per_seed_gaps(pd.DataFrame(rows), ["dataset", "test_fold"], sort=True))
    return out.rename(columns={"n": "n_rounds"})[["dataset", "test_fold", "seeds", "n_rounds", "gap", "gap_low", "gap_high"]]


def margin_replay(records: Iterable[dict[str, Any]], margins: Iterable[float]):
    """The selection replayed with each of ``margins`` (standard errors of the validation drop kept
    below the budget) on the recorded histories: per data set, pipeline and margin, the mean over
    runs, each with its 95% interval over seeds, of the selected round's test drop and parameters
    pruned, the mean validation drop, and how many runs' test drops are within the budget.

    Exact for a single-stage pipeline: a stage records every round until its stop rule, which does
    not look at the margin, so another margin only picks another recorded round. For double
    pruning's basis stage it holds its channel stage as selected (that stage's own margin would
    change what the basis stage starts from), so those rows read "given its channel stage"."""
    import pandas as pd

    from .stats import interval

    stages = stage_histories(records)
    out = []
    for margin in margins:
        rows = []
        for s in stages:
            best, _ = select_round(s["history"], s["max_drop"], float(margin))
            rows.append({"dataset": s["dataset"], "seed": s["seed"], "pipeline": s["pipeline"],
                         "test_drop": best["accuracy_drop"], "val_drop": best["drop_val"],
                         "params_pruned": best["param_pruning_ratio"], "within": best["accuracy_drop"] <= s["max_drop"]})
        df = pd.DataFrame(rows)
        for (ds, pipe), g in df.groupby(["dataset", "pipeline"], sort=False):
            t, t_lo, t_hi = interval(g.groupby("seed")["test_drop"].mean())
            q, q_lo, q_hi = interval(g.groupby("seed")["params_pruned"].mean())
            out.append({"dataset": ds, "pipeline": pipe, "margin": float(margin), "runs": len(g),
                        "test_drop": t, "test_drop_low": t_lo, "test_drop_high": t_hi,
                        "val_drop": float(g["val_drop"].mean()), "gap": t - float(g["val_drop"].mean()),
                        "params_pruned": q, "params_pruned_low": q_lo, "params_pruned_high": q_hi,
                        "runs_within_budget": int(g["within"].sum())})
    return pd.DataFrame(out)


def split_rotation(summary: dict[str, Any]):
    """The test-fold rotation of ``benchmarks/split_gap.py`` (its ``split_gap.json``), one row per
    run: the test partition, the test drop minus the validation drop over the recorded pruned rounds
    (the stop rule off, so no round was kept for its validation drop) with its interval over rounds,
    and the reference's test minus validation accuracy (the split's effect on the unpruned model)."""
    import pandas as pd

    from .data import FOLDED

    out = []
    for name, run in summary["rotation"].items():
        g, ref = run["gap_rounds_1_6"], run["reference_test_minus_val"]
        test = run["test_split"] if run["dataset"] in FOLDED else "its own test split"
        out.append({"run": name, "dataset": run["dataset"], "test_split": test, "rounds": g["n"], "gap": g["mean"],
                    "gap_low": g["lo"], "gap_high": g["hi"], "reference_test_minus_val": ref["mean"]})
    return pd.DataFrame(out)


def replay_table(replay):
    """:func:`margin_replay` for reading: points and percent, each mean with its 95% interval, and the
    runs within the budget out of all."""
    import pandas as pd

    def ci(m: float, lo: float, hi: float, digits: int) -> str:
        return format_interval(m, lo, hi, 100, digits)

    return pd.DataFrame([{"dataset": r.dataset, "pipeline": r.pipeline, "margin (SE)": r.margin,
                          "test drop (pts)": ci(r.test_drop, r.test_drop_low, r.test_drop_high, 2),
                          "validation drop (pts)": f"{100 * r.val_drop:.2f}",
                          "params pruned (%)": ci(r.params_pruned, r.params_pruned_low, r.params_pruned_high, 1),
                          "runs within budget": f"{r.runs_within_budget} of {r.runs}"}
                         for r in replay.itertuples()])


def gaps_text(frame, label: str) -> str:
    """One glued phrase per row of a gap table (:func:`selection_gap`, :func:`gap_by_round`,
    :func:`gap_by_fold`): the gap in points with its 95% interval, then ``label`` formatted with the
    row's columns (e.g. ``"on {dataset}"``), joined by semicolons."""
    return "; ".join(f"{format_interval(r['gap'], r['gap_low'], r['gap_high'], 100, 2, signed=True)} "
                     f"{label.format(**r)}" for r in frame.to_dict(orient="records"))


def selected_drop_se(records: Iterable[dict[str, Any]]) -> float:
    """The median paired standard error of the validation drop at the selected pruned rounds."""
    import statistics

    return float(statistics.median(h["drop_se_val"] for s in stage_histories(records) for h in s["history"]
                                   if h["round"] == s["selected"] and h["round"] > 0))


def rotation_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The glued phrases of the test-fold rotation (:func:`split_rotation`) on mnist5k: fold 0's gap,
    the other folds', the mean over folds with its 95% interval over folds, the folds' standard
    deviation, Fashion-MNIST's gap on its own test split, the rounds each rests on, and the file."""
    from .stats import interval

    rotation = split_rotation(summary)
    folds = rotation[rotation["dataset"] == "mnist5k"].set_index("test_split")
    fm = rotation[rotation["dataset"] == "fashion_mnist"]
    info = summary["file"]

    def pts(r) -> str:
        return format_interval(r["gap"], r["gap_low"], r["gap_high"], 100, 2, signed=True)

    return {"rounds": int(folds["rounds"].iloc[0]), "fold0": pts(folds.loc["fold0"]),
            "others": ", ".join(f"{100 * g:+.2f}" for f, g in folds["gap"].items() if f != "fold0"),
            "over_folds": format_interval(*interval(folds["gap"]), 100, 2, signed=True),
            "fold_sd": f"{100 * folds['gap'].std():.2f}",
            "fashion": pts(fm.iloc[0]) if len(fm) else "(not run)",
            "file": f"{info['images']:,} images sorted by class ({info['label_changes_in_file_order']} label changes "
                    f"in file order); every fold holds {min(info['folds']['fold0']['class_counts'])} images of each class"}


def margin_sentences(replay, own: float, stricter: float) -> dict[str, str]:
    """The glued phrases of :func:`margin_replay` at the margin used (``own``): each pipeline's mean
    test drop with its interval, the pipeline whose interval reaches highest and how high, and what a
    ``stricter`` margin would change (parameters pruned and test drop, from the one to the other)."""
    at = replay.set_index(["margin", "dataset", "pipeline"])
    mine = at.loc[own]
    reach = mine["test_drop_high"].fillna(mine["test_drop"])  # one seed: no interval, its mean
    worst = reach.idxmax()
    return {"own": f"{own:g}", "stricter": f"{stricter:g}",
            "own_drops": "; ".join(f"{p} on {d} {format_interval(r.test_drop, r.test_drop_low, r.test_drop_high, 100, 2)}"
                                   for (d, p), r in mine.iterrows()),
            "worst": f"{worst[1]} on {worst[0]}", "worst_high": f"{100 * reach[worst]:.2f}",
            "stricter_cost": "; ".join(
                f"{p} on {d} {100 * mine.loc[(d, p), 'params_pruned']:.1f}% → {100 * r.params_pruned:.1f}% of parameters, "
                f"test drop {100 * mine.loc[(d, p), 'test_drop']:.2f} → {100 * r.test_drop:.2f} points"
                for (d, p), r in at.loc[stricter].iterrows())}
