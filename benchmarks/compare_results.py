"""Compare the per-round ``history`` of two results files (and their stages'), number by number.

    python benchmarks/compare_results.py data/results/default/basis_pruning-mnist5k-seed0.json new.json

Prints the largest absolute and relative difference over every number in every round, and exits 1
when one exceeds ``--rtol``/``--atol`` (or the rounds or their keys differ), 0 otherwise.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterator

from basisprune.repro.arguments import ArgumentParser


def _numbers(a: Any, b: Any, path: str) -> Iterator[tuple[str, float, float]]:
    """(path, a, b) for every number of two nested values; raises ValueError where their shapes differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            raise ValueError(f"{path}: keys differ: {sorted(set(a) ^ set(b))}")
        for k in sorted(a):
            yield from _numbers(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            raise ValueError(f"{path}: {len(a)} entries against {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
        yield path, float(a), float(b)
    elif a != b:
        raise ValueError(f"{path}: {a!r} against {b!r}")


def histories(record: dict[str, Any]) -> dict[str, Any]:
    """The run's ``history`` and ``final``, and each stage's (double pruning), by name."""
    out = {"history": record["history"], "final": record["final"]}
    for stage, rec in record.get("stages", {}).items():
        out[f"stages.{stage}.history"], out[f"stages.{stage}.final"] = rec["history"], rec["final"]
    return out


def compare(old: dict[str, Any], new: dict[str, Any]) -> tuple[float, float, str]:
    """Largest absolute difference, largest relative difference and where the latter is."""
    max_abs = max_rel = 0.0
    where = "-"
    for path, a, b in _numbers(histories(old), histories(new), ""):
        diff = abs(a - b)
        rel = diff / max(abs(a), abs(b)) if diff else 0.0
        max_abs = max(max_abs, diff)
        if rel > max_rel:
            max_rel, where = rel, path
    return max_abs, max_rel, where


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="results file (e.g. the committed one)")
    ap.add_argument("new", help="results file to compare with it")
    ap.add_argument("--rtol", type=float, default=1e-6, help="largest relative difference allowed (default 1e-6)")
    ap.add_argument("--atol", type=float, default=0.0, help="largest absolute difference allowed (default 0)")
    args = ap.parse_args(argv)
    with open(args.old) as f, open(args.new) as g:
        old, new = json.load(f), json.load(g)
    try:
        max_abs, max_rel, where = compare(old, new)
    except ValueError as e:
        print(f"{args.new}: differs from {args.old}: {e}")
        return 1
    n = len(old["history"]) + sum(len(s["history"]) for s in old.get("stages", {}).values())
    ok = max_abs <= args.atol or max_rel <= args.rtol
    print(f"{args.new} vs {args.old}: {n} rounds, max |diff| {max_abs:.3g}, max relative diff {max_rel:.3g}"
          f" (at {where}): {'equal within' if ok else 'DIFFERENT beyond'} rtol={args.rtol:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
