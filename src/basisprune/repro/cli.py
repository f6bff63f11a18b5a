"""Command line: ``basisprune run EXPERIMENT [--param value ...]``, ``list``, ``sweep SPEC``,
``sweep report SPEC`` (also ``sweep-report``), ``sweep clean SPEC``.

Runs the same function as the notebooks (:func:`basisprune.repro.experiments.run`) and writes the same
results file. Every input is checked before any work starts; an error is one line on stderr,
``basisprune: error: ...``, with exit status 2 (``--debug``: the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from .. import errors
from . import profiles
from .arguments import ArgumentParser
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
    ap = ArgumentParser(
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
    sw = sub.add_parser("sweep", help="run every missing cell of a grid spec (YAML); see basisprune.repro.sweep",
                        description="Run every missing cell of a grid spec. Also: `basisprune sweep report SPEC` "
                        "(the table of a sweep's results) and `basisprune sweep clean SPEC` (drop the checkpoints "
                        "of finished cells).")
    sw.add_argument("spec", type=Path, help="grid spec (YAML), e.g. sweeps/smoke.yaml")
    sw.add_argument("--backend", default=None, choices=("local", "slurm", "submitit-local"),
                    help="default: the spec's")
    sw.add_argument("--workers", type=int, default=None,
                    help="local backends: processes at a time (default: the spec's, else cores)")
    sw.add_argument("--folder", type=Path, default=None,
                    help="sweep folder (default: the spec's, else runs/sweeps/NAME)")
    sw.add_argument("--dry-run", action="store_true", help="list the cells and their status; run nothing")
    sw.add_argument("--keep-checkpoints", action=argparse.BooleanOptionalAction, default=True,
                    help="keep each finished cell's checkpoints under its runs/ (default: keep; about 17 MB "
                    "per smoke cell)")
    for name, help_ in (("sweep-report", "`sweep report SPEC`: table of a sweep's cells: mean and spread over "
                                         "seeds, failed and missing cells"),
                        ("sweep-clean", "`sweep clean SPEC`: drop the checkpoints of a sweep's finished cells")):
        rep = sub.add_parser(name, help=help_)
        rep.add_argument("spec", type=Path, help="the grid spec the sweep ran")
        rep.add_argument("--folder", type=Path, default=None, help="sweep folder (default: the spec's)")
    return ap


def _sweep_subcommands(argv: list[str]) -> list[str]:
    """``sweep report SPEC`` / ``sweep clean SPEC`` -> ``sweep-report SPEC`` / ``sweep-clean SPEC``
    (argparse cannot have ``sweep SPEC`` and ``sweep report SPEC`` side by side)."""
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] == "sweep" and argv[first + 1:first + 2] in (["report"], ["clean"]):
        return [*argv[:first], f"sweep-{argv[first + 1]}", *argv[first + 2:]]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 after an error reported in one line)."""
    try:
        args = _parser().parse_args(_sweep_subcommands(list(sys.argv[1:] if argv is None else argv)))
    except SystemExit as exc:  # usage errors (one line, status 2) and --help (status 0)
        return exc.code if isinstance(exc.code, int) else errors.EXIT_ERROR
    if args.command == "list":
        print("experiments:", ", ".join(sorted(EXPERIMENTS)))
        print("profiles:", ", ".join(sorted(profiles.PROFILES)))
        print(profiles.describe())
        return 0
    if args.command in ("sweep", "sweep-report", "sweep-clean"):
        return _sweep_command(args)
    params = {k: getattr(args, k) for k in profiles.PARAMETERS if getattr(args, k) is not None}
    try:
        out = args.out
        if out is None:
            p = resolve_params(args.experiment, args.profile, **params)
            what = "-".join(str(p[k]) for k in ("model", "net", "dataset") if p.get(k))  # pai runs lack some
            out = Path("results") / f"{args.experiment}-{what}-s{p['seed']}.json"
        record = run(args.experiment, profile=args.profile, out=out, workdir=args.workdir, **params)
    except errors.REPORTED as exc:
        return errors.report(exc, debug=args.debug)
    summary = next((record[k] for k in ("final", "baselines", "runs", "methods") if record.get(k)), None)
    print(json.dumps({"out": str(out), "summary": summary}, indent=2, default=str)[:4000])
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops a sweep as Ctrl-C does: workers stopped, one line


def _sweep_command(args: argparse.Namespace) -> int:
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _sweep(args)
    except KeyboardInterrupt as exc:
        text = str(exc) if str(exc) else "interrupted; run the same command again to resume"
        print(f"basisprune: {text}", file=sys.stderr)
        return 130
    except (*errors.REPORTED, ImportError) as exc:  # a bad spec, a missing package: one line, before any job
        return errors.report(exc, debug=args.debug)
    finally:
        signal.signal(signal.SIGTERM, old)


def _sweep(args: argparse.Namespace) -> int:
    from . import sweep  # pandas, yaml and submitit load only for sweeps

    if args.command == "sweep-report":
        paths = sweep.report(args.spec, folder=args.folder)
        print(paths["report.md"].read_text(encoding="utf-8"))
        print("written:", ", ".join(str(p) for p in paths.values()))
        return 0
    if args.command == "sweep-clean":
        n, freed = sweep.clean(args.spec, folder=args.folder)
        print(f"dropped the checkpoints of {n} finished cell(s): {freed / 1e6:.1f} MB")
        return 0
    done = sweep.run(args.spec, backend=args.backend, workers=args.workers, folder=args.folder,
                     dry_run=args.dry_run, keep_checkpoints=args.keep_checkpoints)
    if not args.dry_run:
        print(sweep.table(done.spec))
    return 1 if done.failed else 0  # some cell failed: its error is in its folder


if __name__ == "__main__":
    raise SystemExit(main())
