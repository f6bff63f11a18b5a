"""Run the data-size tier (sweeps/data_size.yaml) and commit its results to data/results/data_size/.

Every method of the training-set-size study (experiment ``data_size``) on Fashion-MNIST at 10 to
1,000 images per class: one results file per training size and seed, each with its provenance, and
data/results/data_size/tier.json (the processor, torch, the commit, the wall time, and the cells not
yet computed). The chapter "When does pruning without fine-tuning win?" reads it.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/data_size_tier.py [--workers 2]
    PYTHONPATH=src .venv/bin/python benchmarks/data_size_tier.py --collect-only   # copy what is done

A killed sweep started again runs only the missing cells (each cell also resumes from its checkpoints).
"""

from __future__ import annotations

from pathlib import Path

from basisprune.repro.tiers import run_tier, tier_parser

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = tier_parser(__doc__, ROOT / "sweeps" / "data_size.yaml", ROOT / "data" / "results" / "data_size")
    ap.add_argument("--collect-only", action="store_true",
                    help="run nothing: copy the cells the sweep folder holds, list the rest as missing")
    args = ap.parse_args()
    tier = run_tier(args.spec, args.out, workers=args.workers, folder=args.folder, collect_only=args.collect_only)
    done = f"{len(tier['files'])} of {tier['cells']} cells"
    print(f"{done} in {args.out} ({tier['device']}, {tier['core_seconds'] / 3600:.2f} core-hours)")


if __name__ == "__main__":
    main()
