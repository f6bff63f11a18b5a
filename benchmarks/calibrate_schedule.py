"""Measure pruning schedules, selection and extensions on the default setting; keep the results.

The papers fix neither the schedule (share pruned a round, training between rounds, warm-up), nor
the selection, nor batch-norm handling. This script runs the variants we compared (MobileNetV2
ImageNet -> mnist5k, 32 px, CPU) and writes one results file each, with provenance, which the
calibration chapter reads. Two grids:

* ``first`` (data/calibration/): the first pass, before the fair reference: batch-norm mode,
  ranking normalisation, scope and step size of basis pruning, judged against round 0.
* ``fair`` (data/calibration/fair/): double and basis pruning judged against the fair reference:
  the step size, epochs per round, warm-up and learning rate, then the extensions (fold-aware
  ranking, distillation, a 64 px input) on the chosen schedule over three seeds.

    .venv/bin/python benchmarks/calibrate_schedule.py --grid fair [--variants A B ...] [--threads 1]

A variant whose results file exists is skipped; each run checkpoints under runs/calibration/ and
resumes after a kill. On 2 CPU cores a ``fair`` double-pruning run takes 10 to 25 minutes at 32 px.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from basisprune.repro import experiments
from basisprune.repro.arguments import ArgumentParser

FIRST = {
    "eval-global-raw": dict(bn_mode="eval", basis_scope="global", basis_normalize="none"),
    "eval-global-cost": dict(bn_mode="eval", basis_scope="global", basis_normalize="cost"),
    "eval-global-mean": dict(bn_mode="eval", basis_scope="global", basis_normalize="mean"),
    "eval-layer-raw": dict(bn_mode="eval", basis_scope="layer", basis_normalize="none"),
    "train-global-raw": dict(bn_mode="train", basis_scope="global", basis_normalize="none"),
    "eval-global-raw-5pct": dict(bn_mode="eval", basis_normalize="none", basis_fraction=0.05, basis_rounds=16),
    "eval-global-cost-5pct": dict(bn_mode="eval", basis_normalize="cost", basis_fraction=0.05, basis_rounds=16),
    "eval-global-raw-10pct-2ep": dict(bn_mode="eval", basis_normalize="none", basis_fraction=0.1, epochs_per_round=2),
}
FIRST_COMMON = dict(experiment="basis_pruning", dataset="mnist5k", basis_rounds=12, basis_fraction=0.2,
                    warmup_epochs=3, stop_drop=0.1, select_margin=0.0)

# The fair grid: every run is judged against its fair reference; stop at 4 points (a round that far
# out is never selected, and stopping there keeps the grid affordable on a CPU). Its first runs were
# made before select_margin and memory_format existed: later runs pin the values those runs had,
# so that every run of the grid is comparable with its seed's faithful run.
_FAIR = dict(dataset="mnist5k", stop_drop=0.04, channel_rounds=12, select_margin=0.0, memory_format="contiguous")
_W10 = dict(warmup_epochs=10, epochs_per_round=2, basis_fraction=0.1, basis_rounds=20)
_LR3 = dict(_W10, lr=3e-3)
FAIR = {
    "d-b10e2r20-c15r12": dict(experiment="double_pruning", epochs_per_round=2, basis_fraction=0.1, basis_rounds=20),
    "d-w10-b10e2": dict(_W10, experiment="double_pruning"),
    "d-w10-b10e2-saved-s0": dict(_W10, experiment="double_pruning", basis_normalize="saved"),
    "d-w10-b10e2-lr3": dict(_LR3, experiment="double_pruning"),
    "b-w10-b10e2-lr3": dict(_LR3, experiment="basis_pruning"),
}
for _s in (0, 1, 2):  # the extensions on the chosen schedule, three seeds
    if _s:
        FAIR[f"d-w10-b10e2-lr3-s{_s}"] = dict(_LR3, experiment="double_pruning", seed=_s)
    FAIR[f"d-w10-b10e2-lr3-saved-s{_s}"] = dict(_LR3, experiment="double_pruning", seed=_s, basis_normalize="saved")
    FAIR[f"d-w10-b10e2-lr3-distill-s{_s}"] = dict(_LR3, experiment="double_pruning", seed=_s, distill=0.5)
# A larger input on the chosen schedule, three seeds. Four times the pixels cost about three times the
# training time, so these runs take the layout and the stop rule the default profile uses now (both
# cut the time; the layout changes results only by rounding, and the stop rule, replayed on the runs
# above, changed no selection).
for _s in (0, 1, 2):
    FAIR[f"d-w10-b10e2-lr3-px64-s{_s}"] = dict(_LR3, experiment="double_pruning", seed=_s, image_size=64,
                                               memory_format="channels_last", stop_drop=0.02)
GRIDS = {"first": (FIRST, FIRST_COMMON, Path("data/calibration")),
         "fair": (FAIR, _FAIR, Path("data/calibration/fair"))}


def main() -> None:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", choices=sorted(GRIDS), default="fair")
    ap.add_argument("--variants", nargs="*", default=None, help="default: every variant of the grid")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="default: the grid's folder")
    args = ap.parse_args()
    variants, common, folder = GRIDS[args.grid]
    unknown = sorted(set(args.variants or ()) - set(variants))
    if unknown:
        ap.error(f"unknown variant(s) {unknown} of grid {args.grid}; known: {', '.join(variants)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or folder
    for name in args.variants or list(variants):
        path = out / f"{name}.json"
        if path.exists():
            continue
        kw = {**common, **variants[name]}
        experiment = kw.pop("experiment")
        start = time.perf_counter()
        rec = experiments.run(experiment, profile="default", out=path, workdir=Path("runs/calibration") / name, **kw)
        f = rec["final"]
        print(f"{name}: {time.perf_counter() - start:.0f}s params pruned {f['param_pruning_ratio']:.3f} "
              f"FLOPs pruned {f['flop_pruning_ratio']:.3f} val drop {f['drop_val']:.4f} test drop {f['accuracy_drop']:.4f}",
              flush=True)


if __name__ == "__main__":
    main()
