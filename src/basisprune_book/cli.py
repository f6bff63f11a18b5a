"""Execute the notebooks and build the book, offline.

Two commands (the Makefile's ``notebooks``, ``test-notebooks`` and ``book`` targets call them)::

    python -m basisprune_book execute --profile smoke --out notebooks/_executed/smoke [--only 01]
    python -m basisprune_book build --profile smoke

``execute`` is :func:`basisprune_book.execute.execute`, ``build`` is
:func:`basisprune_book.build.build`; ``html`` prints where a profile's HTML is. Bad input is one line
on stderr and status 2; a failed notebook or build, status 1.
"""

from __future__ import annotations

import argparse
from typing import Any

from basisprune import errors
from basisprune.errors import ParameterError
from basisprune.repro.arguments import ArgumentParser

from .build import build
from .execute import execute
from .layout import PROFILES, html_dir

__all__ = ["main"]


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m basisprune_book", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="execute the notebooks with papermill")
    ex.add_argument("--profile", default="default", choices=PROFILES)
    ex.add_argument("--out", help="folder for the executed copies (default notebooks/_executed/PROFILE)")
    ex.add_argument("--only", action="append", metavar="NAME", help="only this notebook (stem or prefix, e.g. 04); repeatable")
    ex.add_argument(
        "-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"), default=[],
        help="another parameter to inject (VALUE parsed as YAML), e.g. -p dataset fashion_mnist",
    )
    ex.add_argument("--fail-fast", action="store_true", help="stop at the first failing notebook")
    ex.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    ex.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the kernels")
    ex.add_argument("--jobs", type=int, default=1, help="notebooks executed side by side (default 1)")
    ex.add_argument("--resume", action="store_true", help="reuse the checkpoints of an earlier (interrupted) run in OUT/runs")
    bd = sub.add_parser("build", help="build the HTML book from the executed notebooks")
    bd.add_argument("--profile", default="default", choices=PROFILES)
    bd.add_argument("--executed", help="folder of executed notebooks (default notebooks/_executed/PROFILE)")
    wh = sub.add_parser("html", help="print the HTML folder of a profile")
    wh.add_argument("--profile", default="default", choices=PROFILES)
    for p in (ex, bd, wh):  # --debug after the subcommand too (SUPPRESS: no override of the first)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (one line, status 2) and --help (status 0)
        return exc.code if isinstance(exc.code, int) else errors.EXIT_ERROR
    try:
        if args.command == "execute":
            params = {k: _parse_value(v) for k, v in args.parameter}
            if "profile" in params:
                raise ParameterError("profile", "give the profile with --profile, not -p profile")
            execute(
                args.profile, args.out, only=args.only, parameters=params,
                fail_fast=args.fail_fast, timeout=args.timeout, threads=args.threads, resume=args.resume,
                jobs=args.jobs,
            )
        elif args.command == "build":
            build(args.profile, args.executed)
        else:
            print(html_dir(args.profile))
    except errors.REPORTED as e:
        return errors.report(e, debug=args.debug)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
