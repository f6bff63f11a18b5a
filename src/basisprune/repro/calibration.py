"""Reading the schedule calibration (``benchmarks/calibrate_schedule.py``) for the calibration chapter.

Each calibration run is an ordinary results file (with its provenance) of a pruning experiment on
the default setting with one schedule or extension changed. These helpers turn a folder of them
into the chapter's tables: one row per run, the curve of every stage, the selection and stop rules
replayed on the recorded rounds, and each extension against the faithful method seed by seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .profiles import PARAMETERS
from .results import read_results

__all__ = ["load_runs", "label", "best_within", "first_calibration", "run_summary", "stage_curves", "replay_selection", "replay_stop", "extension_gains"]

#: The schedule parameters a calibration run may change, as they are shown.
SCHEDULE = ("warmup_epochs", "epochs_per_round", "basis_fraction", "channel_fraction", "lr")
_IMAGE_SIZE = PARAMETERS["image_size"][0]


def load_runs(directory: str | Path) -> list[dict[str, Any]]:
    """Every results file in ``directory`` (sorted by name), each with its file stem as ``name``."""
    return [{**read_results(f), "name": f.stem} for f in sorted(Path(directory).glob("*.json"))]


def best_within(history: list[dict[str, Any]], max_drop: float) -> dict[str, Any]:
    """The round of ``history`` that prunes the most parameters while its test accuracy stays within
    ``max_drop`` of round 0's (the first calibration's rule, before fair references)."""
    ref = history[0]["accuracy_test"]
    return max((h for h in history if ref - h["accuracy_test"] <= max_drop), key=lambda h: h["param_pruning_ratio"])


#: What tells the first calibration's runs apart, per kind (``<kind>-*.json``), from the file stem and parameters.
_FIRST_LABELS = {
    "basis": lambda stem, p: dict(variant=stem.removeprefix("basis-"), bn_mode=p["bn_mode"], scope=p["basis_scope"],
                                  normalize=p["basis_normalize"], fraction=p["basis_fraction"],
                                  epochs_per_round=p["epochs_per_round"]),
    # runs before the option existed ranked channels by |scale|
    "channel": lambda stem, p: dict(importance=p.get("channel_importance", "magnitude")),
}


def first_calibration(directory: str | Path, kind: str, max_drop: float = 0.01):
    """The first calibration's ``<kind>-*.json`` runs (``kind``: basis or channel) in ``directory``:
    ``(curves, summary)``, one row per round (accuracies, pruning ratios, drop from round 0) and one
    per run (round 0's accuracy, rounds run, parameters pruned at :func:`best_within` ``max_drop``
    and the commit), each led by what tells the runs apart."""
    import pandas as pd

    rows, finals = [], []
    for f in sorted(Path(directory).glob(f"{kind}-*.json")):
        r = read_results(f)
        tag = _FIRST_LABELS[kind](f.stem, r["params"])
        ref = r["history"][0]["accuracy_test"]
        for h in r["history"]:
            rows.append({**tag, "round": h["round"], "accuracy_test": h["accuracy_test"],
                         "accuracy_val": h["accuracy_val"], "param_pruning_ratio": h["param_pruning_ratio"],
                         "flop_pruning_ratio": h["flop_pruning_ratio"], "drop": ref - h["accuracy_test"]})
        finals.append({**tag, "reference_accuracy": ref, "rounds_run": len(r["history"]) - 1,
                       "params_pruned_within_1pt_test": best_within(r["history"], max_drop)["param_pruning_ratio"],
                       "commit": (r["provenance"]["git"]["commit"] or "")[:8]})
    return pd.DataFrame(rows), pd.DataFrame(finals)


def label(p: dict[str, Any]) -> tuple[str, str]:
    """(schedule, extension) of a run's parameters, e.g. ``("warm-up 10, 10%/round, 2 ep/round,
    lr 0.003", "fold-aware ranking")``; the extension is ``"faithful"`` when none is on. An input
    size other than the default profile's is an extension (``"64 px"``)."""
    schedule = (f"warm-up {p['warmup_epochs']}, {100 * p['basis_fraction']:g}%/round, "
                f"{p['epochs_per_round']} ep/round, lr {p['lr']:g}")
    ext = []
    if p.get("basis_normalize", "none") == "saved":
        ext.append("fold-aware ranking")
    elif p.get("basis_normalize", "none") != "none":
        ext.append(f"normalize {p['basis_normalize']}")
    if p.get("distill", 0.0) > 0:
        ext.append(f"distillation {p['distill']:g}")
    if p.get("image_size", _IMAGE_SIZE) != _IMAGE_SIZE:
        ext.append(f"{p['image_size']} px")
    return schedule, " + ".join(ext) or "faithful"


def run_summary(runs: list[dict[str, Any]]):
    """One row per run: what it was (experiment, schedule, extension, seed) and its selected round."""
    import pandas as pd

    rows = []
    for r in runs:
        p, f = r["params"], r["final"]
        schedule, ext = label(p)
        rows.append({"name": r["name"], "experiment": r["experiment"], "schedule": schedule, "extension": ext,
                     "seed": p["seed"], "final_stage": r.get("final_stage", r["experiment"].split("_")[0]),
                     "params_pruned": f["param_pruning_ratio"], "flops_pruned": f["flop_pruning_ratio"],
                     "drop_val": f["drop_val"], "drop_test": f["accuracy_drop"], "reference_test": f["reference_test"],
                     "accuracy_test": f["accuracy_test"],
                     "minutes": r["timings"]["compute_seconds"] / 60, "commit": (r["provenance"]["git"]["commit"] or "")[:8]})
    return pd.DataFrame(rows)


def _stages(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return r["stages"] if "stages" in r else {r["experiment"].split("_")[0]: r}


def stage_curves(runs: list[dict[str, Any]]):
    """One row per round of every stage: params/FLOPs pruned, validation and test drop with SEs."""
    import pandas as pd

    rows = []
    for r in runs:
        schedule, ext = label(r["params"])
        for stage, st in _stages(r).items():
            for h in st["history"]:
                rows.append({"name": r["name"], "schedule": schedule, "extension": ext, "seed": r["params"]["seed"],
                             "stage": stage, "round": h["round"], "params_pruned": h["param_pruning_ratio"],
                             "flops_pruned": h["flop_pruning_ratio"], "drop_val": h["drop_val"],
                             "drop_se_val": h["drop_se_val"], "drop_test": h["accuracy_drop"]})
    return pd.DataFrame(rows)


def replay_selection(runs: list[dict[str, Any]], max_drop: float, margins=(0.0, 1.0, 2.0)):
    """The selection rule (:func:`~basisprune.repro.experiments.select_round`) replayed on every
    recorded stage of ``runs`` for each margin: the round it picks and its test drop. A stage's
    rounds do not depend on its own selection, so this is exact per stage (a double run's basis
    stage starts from the channel selection that ran)."""
    import pandas as pd

    from .experiments import select_round

    rows = []
    for r in runs:
        for stage, st in _stages(r).items():
            for z in margins:
                pick, _ = select_round(st["history"], max_drop, z)
                rows.append({"name": r["name"], "stage": stage, "margin": z, "params_pruned": pick["param_pruning_ratio"],
                             "drop_test": pick["accuracy_drop"], "over_budget_on_test": pick["accuracy_drop"] > max_drop})
    return pd.DataFrame(rows)


def replay_stop(runs: list[dict[str, Any]], stop_drops, max_drop: float, margin: float,
                skip_earlier_stops: bool = False):
    """Earlier stop rules replayed on every recorded stage of ``runs``: for each ``stop_drop``, the
    rounds the stage would have computed (:func:`~basisprune.repro.experiments.stops_after`, cut at
    the first round over it) and the round the selection (``max_drop``, ``margin``) then picks,
    beside the one it picks on every recorded round. Exact per stage for any ``stop_drop`` at or
    below the one the runs used (a stage's rounds do not depend on when it stops). A run that stopped
    before the largest ``stop_drop`` never computed the rounds it would add: it raises ValueError, or
    is left out with ``skip_earlier_stops``."""
    import pandas as pd

    from .experiments import select_round, stops_after

    rows = []
    for r in runs:
        recorded = r["params"]["stop_drop"]
        if max(stop_drops) > recorded:
            if skip_earlier_stops:
                continue
            raise ValueError(f"run {r['name']!r} stopped at stop_drop {recorded:g}: a replay can only stop "
                             f"earlier, got stop_drops up to {max(stop_drops):g}")
        for stage, st in _stages(r).items():
            hist = st["history"]
            full, _ = select_round(hist, max_drop, margin)
            for stop in stop_drops:
                n = next((i + 1 for i, h in enumerate(hist) if stops_after(h, stop)), len(hist))
                pick, _ = select_round(hist[:n], max_drop, margin)
                rows.append({"name": r["name"], "stage": stage, "stop_drop": stop, "rounds": n - 1,
                             "recorded_rounds": len(hist) - 1, "params_pruned": pick["param_pruning_ratio"],
                             "drop_test": pick["accuracy_drop"], "selection_changed": pick["round"] != full["round"]})
    return pd.DataFrame(rows)


def extension_gains(summary, baseline: str = "faithful"):
    """Each extension against ``baseline`` on the same schedule and seeds: mean ± std over seeds of
    params and FLOPs pruned and of the test drop, and the per-seed gain (extension minus baseline)."""
    import pandas as pd

    from .stats import mean_std

    rows = []
    for schedule, g in summary.groupby("schedule", sort=False):
        base = g[g["extension"] == baseline].set_index("seed")
        if base.empty:
            continue
        for ext, e in g.groupby("extension", sort=False):
            e = e.set_index("seed")
            seeds = sorted(set(e.index) & set(base.index))
            if not seeds:
                continue
            e, b = e.loc[seeds], base.loc[seeds]
            rows.append({"schedule": schedule, "extension": ext, "seeds": len(seeds),
                         "params pruned (%)": mean_std(e["params_pruned"], 100, 1),
                         "FLOPs pruned (%)": mean_std(e["flops_pruned"], 100, 1),
                         "test drop (pts)": mean_std(e["drop_test"], 100, 2),
                         "gain in params pruned (pts)": mean_std(e["params_pruned"] - b["params_pruned"], 100, 1),
                         "gain in FLOPs pruned (pts)": mean_std(e["flops_pruned"] - b["flops_pruned"], 100, 1),
                         "change in test drop (pts)": mean_std(e["drop_test"] - b["drop_test"], 100, 2)})
    return pd.DataFrame(rows)
