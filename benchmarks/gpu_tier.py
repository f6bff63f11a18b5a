"""Run the GPU tier (sweeps/gpu_tier.yaml) and commit its results to data/results/gpu/.

On a machine with a GPU (the `gpu` profile asks for device cuda):

    python benchmarks/gpu_tier.py [--workers 12]

writes one results file per run (each with its provenance) and data/results/gpu/tier.json (device,
driver, torch, commit, wall time); the book's GPU-tier chapter reads them. ``--smoke --out DIR``
runs the same code on a CPU at tiny sizes (the smoke profile's digits), for tests.
"""

from __future__ import annotations

from pathlib import Path

from basisprune.repro.tiers import run_tier, tier_parser

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = tier_parser(__doc__, ROOT / "sweeps" / "gpu_tier.yaml", ROOT / "data" / "results" / "gpu")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (checks the code path)")
    args = ap.parse_args()
    tier = run_tier(args.spec, args.out, workers=args.workers, folder=args.folder, smoke=args.smoke)
    print(f"{len(tier['files'])} results in {args.out} ({tier['device']}, driver {tier['cuda_driver']}, "
          f"{tier['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
