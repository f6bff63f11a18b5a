"""Run the seeds tier (sweeps/seeds.yaml) and commit its results to data/results/seeds/.

Chapter 5's main table (channel, basis and double pruning on the default profile) over 10 seeds on
mnist5k and 5 on Fashion-MNIST with its whole 10,000-image test split: one results file per run, each
with its provenance, and data/results/seeds/tier.json (the processor, torch, the commit, the sweep's
wall time). Chapter 5 reads it with :func:`basisprune.repro.tiers.load_tier` and
:func:`basisprune.repro.tiers.tier_check`.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/seeds_tier.py [--workers 2]
    PYTHONPATH=src .venv/bin/python benchmarks/seeds_tier.py --estimate    # wall time, from committed timings

A killed sweep started again runs only the missing cells (each cell also resumes from its checkpoints).
"""

from __future__ import annotations

from pathlib import Path

from basisprune.repro import sweep
from basisprune.repro.results import read_results
from basisprune.repro.tiers import run_tier, tier_parser

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "data" / "results" / "default"


def estimate(spec_path: Path, workers: int | None = None) -> dict[str, float]:
    """Core-seconds and wall seconds of the spec's cells, from the committed default-profile runs:
    per experiment and data set, the mean over the committed seeds of the pipeline's compute time plus
    its fair reference's. A cell whose test split is larger than the committed run's is scaled by the
    extra evaluation, counting one evaluated image as a third of a trained one (forward pass only):
    per round, model and reference train ``epochs_per_round`` epochs and evaluate val + test once."""
    spec = sweep.load(spec_path)
    workers = workers or spec.options.get("local", {}).get("workers", 1)
    cells = sweep.expand(spec)
    seconds, total = {}, 0.0
    for c in cells:
        key = (c.experiment, c.params["dataset"])
        if key not in seconds:
            runs = [read_results(f) for f in sorted(COMMITTED.glob(f"{c.experiment}-{c.params['dataset']}-seed*.json"))]
            if not runs:
                raise SystemExit(f"no committed {c.experiment} run on {c.params['dataset']} in {COMMITTED} to time")
            mean = sum(r["timings"]["compute_seconds"] + r["timings"]["reference_seconds"] for r in runs) / len(runs)
            sizes, p = runs[0]["split_sizes"], runs[0]["params"]
            test = sizes["test"] if c.params["subset_test"] == p["subset_test"] else \
                (10_000 if c.params["subset_test"] is None else c.params["subset_test"])
            trained = p["epochs_per_round"] * sizes["train"]
            scale = (trained + (sizes["val"] + test) / 3) / (trained + (sizes["val"] + sizes["test"]) / 3)
            seconds[key] = mean * scale
        total += seconds[key]
    longest = max(seconds.values())
    return {"cells": len(cells), "core_seconds": total, "workers": workers,
            "wall_seconds": max(total / workers, longest),
            "per_cell_seconds": {f"{e} {d}": round(s) for (e, d), s in seconds.items()}}


def main() -> None:
    ap = tier_parser(__doc__, ROOT / "sweeps" / "seeds.yaml", ROOT / "data" / "results" / "seeds")
    ap.add_argument("--estimate", action="store_true", help="print the estimated wall time and stop")
    args = ap.parse_args()
    if args.estimate:
        e = estimate(args.spec, args.workers)
        workers = e["workers"]
        print(f"{e['cells']} cells, {e['core_seconds'] / 3600:.1f} core-hours, about {e['wall_seconds'] / 3600:.1f} h "
              f"of wall time with {workers} worker(s); per cell (s): {e['per_cell_seconds']}")
        return
    tier = run_tier(args.spec, args.out, workers=args.workers, folder=args.folder)
    print(f"{len(tier['files'])} results in {args.out} ({tier['device']}, {tier['wall_seconds'] / 60:.0f} min)")


if __name__ == "__main__":
    main()
