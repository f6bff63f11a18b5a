"""Measure pruning schedules and batch-norm handling on the default setting; keep the results.

The pruning rule and the batch-norm mode are not fixed by the paper. This script runs the variants
we compared (MobileNetV2 ImageNet -> mnist5k, 32 px, CPU) and writes one results file each to
data/calibration/, which the book reads. Usage:

    .venv/bin/python benchmarks/calibrate_schedule.py [--variants A B ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from basisprune.repro import experiments

VARIANTS = {
    "eval-global-raw": dict(bn_mode="eval", basis_scope="global", basis_normalize="none"),
    "eval-global-cost": dict(bn_mode="eval", basis_scope="global", basis_normalize="cost"),
    "eval-global-mean": dict(bn_mode="eval", basis_scope="global", basis_normalize="mean"),
    "eval-layer-raw": dict(bn_mode="eval", basis_scope="layer", basis_normalize="none"),
    "train-global-raw": dict(bn_mode="train", basis_scope="global", basis_normalize="none"),
    "eval-global-raw-5pct": dict(bn_mode="eval", basis_normalize="none", basis_fraction=0.05, basis_rounds=16),
    "eval-global-cost-5pct": dict(bn_mode="eval", basis_normalize="cost", basis_fraction=0.05, basis_rounds=16),
    "eval-global-raw-10pct-2ep": dict(bn_mode="eval", basis_normalize="none", basis_fraction=0.1, epochs_per_round=2),
}
COMMON = dict(dataset="mnist5k", basis_rounds=12, basis_fraction=0.2, warmup_epochs=3, stop_drop=0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("data/calibration"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.variants:
        start = time.perf_counter()
        rec = experiments.run("basis_pruning", profile="default", out=args.out / f"basis-{name}.json",
                              workdir=False, **{**COMMON, **VARIANTS[name]})
        f = rec["final"]
        print(f"{name}: {time.perf_counter() - start:.0f}s reference {rec['reference']['accuracy_test']:.4f} "
              f"final acc {f['accuracy_test']:.4f} params pruned {f['param_pruning_ratio']:.3f}", flush=True)


if __name__ == "__main__":
    main()
