"""Command line: ``basisprune run EXPERIMENT [--param value ...]``, ``list``, ``sweep``, ``sweep-report``.

Runs the same function as the notebooks (:func:`basisprune.repro.experiments.run`) and writes the same
results file. Every input is checked before any work starts; an error is one line on stderr,
``basisprune: error: ...``, with exit status 2 (``--debug``: the traceback instead).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from .. import errors
from . import profiles
from .experiments import EXPERIMENTS, resolve_params, run

__all__ = ["main"]


def _parse_value(text: str, spec: profiles.Spec) -> Any:
    """Parse a parameter value in its kind (bool/int/float/str); "none" for parameters that allow None."""
    if spec.optional and text.lower() in ("none", "null"):
        return None
    if spec.kind == "bool":
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    if spec.kind in ("int", "float"):
        kind = int if spec.kind == "int" else float
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {spec.describe()}, got {text!r}") from None
    return text


def _parser() -> argparse.ArgumentParser:
    epilog = "experiments: " + ", ".join(sorted(EXPERIMENTS)) + "\n\nparameters (default profile):\n" + profiles.describe()
    ap = errors.ArgumentParser(
        prog="basisprune", description="Basis scaling / channel scaling / double pruning experiments.",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one experiment and write its results JSON", epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    # Also after the subcommand; SUPPRESS keeps it from overriding a --debug given before it.
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    r.add_argument("experiment", choices=sorted(EXPERIMENTS))
    r.add_argument("--profile", default="default", choices=sorted(profiles.PROFILES))
    r.add_argument("--out", type=Path, default=None, help="results JSON (default: results/<experiment>-<model>-<dataset>-s<seed>.json)")
    r.add_argument("--workdir", type=Path, default=None, help="checkpoint directory (resume after a kill)")
    for name, (default, help_) in profiles.PARAMETERS.items():
        r.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar="VALUE",
                       type=lambda t, s=profiles.SPECS[name]: _parse_value(t, s),
                       help=f"{help_}: {profiles.SPECS[name].describe()} (default {default!r})")
    sub.add_parser("list", help="list experiments, profiles and parameters")
    sw = sub.add_parser("sweep", help="run every missing cell of a grid spec (YAML); see basisprune.repro.sweep")
    sw.add_argument("spec", type=Path, help="grid spec (YAML), e.g. sweeps/smoke.yaml")
    sw.add_argument("--backend", default=None, choices=("local", "slurm", "submitit-local"),
                    help="default: the spec's")
    sw.add_argument("--workers", type=int, default=None,
                    help="local backends: processes at a time (default: the spec's, else cores)")
    sw.add_argument("--folder", type=Path, default=None,
                    help="sweep folder (default: the spec's, else runs/sweeps/NAME)")
    sw.add_argument("--dry-run", action="store_true", help="list the cells and their status; run nothing")
    rep = sub.add_parser("sweep-report",
                         help="table of a sweep's cells: mean and spread over seeds, failed and missing cells")
    rep.add_argument("spec", type=Path, help="the grid spec the sweep ran")
    rep.add_argument("--folder", type=Path, default=None, help="sweep folder (default: the spec's)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 after an error reported in one line)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (one line, status 2) and --help (status 0)
        return exc.code if isinstance(exc.code, int) else errors.EXIT_ERROR
    if args.command == "list":
        print("experiments:", ", ".join(sorted(EXPERIMENTS)))
        print("profiles:", ", ".join(sorted(profiles.PROFILES)))
        print(profiles.describe())
        return 0
    if args.command in ("sweep", "sweep-report"):
        try:
            return _sweep(args)
        except errors.REPORTED as exc:  # a bad spec: one clear line, before any job starts
            return errors.report(exc, debug=args.debug)
    params = {k: getattr(args, k) for k in profiles.PARAMETERS if getattr(args, k) is not None}
    try:
        out = args.out
        if out is None:
            p = resolve_params(args.experiment, args.profile, **params)
            out = Path("results") / f"{args.experiment}-{p['model']}-{p['dataset']}-s{p['seed']}.json"
        record = run(args.experiment, profile=args.profile, out=out, workdir=args.workdir, **params)
    except errors.REPORTED as exc:
        return errors.report(exc, debug=args.debug)
    summary = record.get("final") or record.get("baselines")
    print(json.dumps({"out": str(out), "summary": summary}, indent=2, default=str)[:4000])
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from . import sweep  # pandas, yaml and submitit load only for sweeps

    if args.command == "sweep-report":
        paths = sweep.report(args.spec, folder=args.folder)
        print(paths["report.md"].read_text(encoding="utf-8"))
        print("written:", ", ".join(str(p) for p in paths.values()))
        return 0
    done = sweep.run(args.spec, backend=args.backend, workers=args.workers, folder=args.folder,
                     dry_run=args.dry_run)
    return 1 if done.failed else 0  # some cell failed: its error is in its folder


if __name__ == "__main__":
    raise SystemExit(main())
