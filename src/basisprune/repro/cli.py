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
from .experiments import EXPERIMENTS, PAI_EXPERIMENTS, parameter_specs, resolve_params, run

__all__ = ["main"]


def _parse_value(text: str, spec: profiles.Spec) -> Any:
    """Parse a parameter value in its kind (bool/int/float/str); "none" for parameters that allow None;
    a list as comma-separated items, a mapping as comma-separated ``label=value`` pairs."""
    if spec.optional and text.lower() in ("none", "null"):
        return None
    if spec.kind == "list":
        return [_parse_value(t.strip(), spec.item) for t in text.split(",") if t.strip()]
    if spec.kind == "mapping":
        pairs = [t.partition("=") for t in text.split(",") if t.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise argparse.ArgumentTypeError(f"expected label=value pairs separated by commas, got {text!r}")
        return {k.strip(): _parse_value(v.strip(), spec.item) for k, _, v in pairs}
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


def _pai_options() -> dict[str, list[str]]:
    """The settings of the pruning-at-initialization experiments that are no experiment parameter:
    name -> the experiments that take it."""
    out: dict[str, list[str]] = {}
    for experiment in sorted(PAI_EXPERIMENTS):
        for name in parameter_specs(experiment):
            if name not in profiles.PARAMETERS:
                out.setdefault(name, []).append(experiment)
    return dict(sorted(out.items()))


def _describe_pai() -> str:
    """One line per pruning-at-initialization experiment: the settings it takes instead."""
    return "\n".join(f"{e} takes instead: " + ", ".join("--" + n.replace("_", "-") for n in sorted(parameter_specs(e)))
                     for e in sorted(PAI_EXPERIMENTS))


def _run_params(ap: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The parameters given on the command line, parsed by the experiment's own specs
    (:func:`basisprune.repro.experiments.parameter_specs`); a name the experiment does not take is a
    usage error naming those it does."""
    specs = parameter_specs(args.experiment)
    params = {}
    for name in [*profiles.PARAMETERS, *_pai_options()]:
        text = getattr(args, name, None)
        if text is None:
            continue
        flag = "--" + name.replace("_", "-")
        if name not in specs:
            ap.error(f"argument {flag}: {args.experiment} has no parameter {name}; its parameters: "
                     + ", ".join("--" + n.replace("_", "-") for n in sorted(specs)))
        try:
            params[name] = _parse_value(text, specs[name])
        except argparse.ArgumentTypeError as exc:
            ap.error(f"argument {flag}: {exc}")
    return params


def _parser() -> argparse.ArgumentParser:
    epilog = ("experiments: " + ", ".join(sorted(EXPERIMENTS)) + "\n\nparameters (default profile):\n"
              + profiles.describe() + "\n\n" + _describe_pai())
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
    # Parsed once the experiment is known (_run_params): a pai setting may differ from the parameter of its name.
    for name, (default, help_) in profiles.PARAMETERS.items():
        r.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar="VALUE",
                       help=f"{help_}: {profiles.SPECS[name].describe()} (default {default!r})")
    for name, takers in _pai_options().items():
        spec = parameter_specs(takers[0])[name]
        r.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar="VALUE",
                       help=f"setting of {', '.join(takers)} (the profile's pai section): {spec.describe()}"
                            + (" (comma-separated)" if spec.kind in ("list", "mapping") else ""))
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
        ap = _parser()
        args = ap.parse_args(_sweep_subcommands(list(sys.argv[1:] if argv is None else argv)))
    except SystemExit as exc:  # usage errors (one line, status 2) and --help (status 0)
        return exc.code if isinstance(exc.code, int) else errors.EXIT_ERROR
    if args.command == "list":
        print("experiments:", ", ".join(sorted(EXPERIMENTS)))
        print("profiles:", ", ".join(sorted(profiles.PROFILES)))
        print(profiles.describe())
        print(_describe_pai())
        return 0
    if args.command in ("sweep", "sweep-report", "sweep-clean"):
        return _sweep_command(args)
    try:
        params = _run_params(ap, args)
    except SystemExit as exc:  # a usage error, in one line
        return exc.code if isinstance(exc.code, int) else errors.EXIT_ERROR
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
