#!/usr/bin/env python
"""Seconds per pruning round against the pruning ratio: the masked model against the shrunk one.

For every round of a basis-pruning results file (default: the committed default-profile run,
``data/results/default/basis_pruning-mnist5k-seed0.json``), the decomposed default-profile model
gets that round's kept bases per layer (the largest singular values; which ones does not change the
time) and one training step (forward, backward, Adam on the scales and the classifier, as the
pruning stages train) is timed with ``torch.utils.benchmark`` (``blocked_autorange``) on the masked
model, which the harness trains today, and on the model whose pruned bases :meth:`basisprune.Pruner.shrink`
dropped. The two are timed in turn, ``--repeats`` times, so load on a shared machine hits both alike;
a round's seconds are the median step times ``steps per round`` (training batches times
``epochs_per_round``). Writes a results JSON with provenance and prints a markdown table.

    .venv/bin/python benchmarks/round_seconds.py [--threads 1] [--out data/benchmarks/round_seconds-cpu.json]
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb

import basisprune as bp
from basisprune.repro import models, profiles
from basisprune.repro.results import write_results
from basisprune.repro.train import freeze, set_memory_format
from basisprune.repro.arguments import ArgumentParser


def step_seconds(model: torch.nn.Module, head: str, x: torch.Tensor, y: torch.Tensor, min_run_time: float) -> float:
    """Median seconds of one training step of the scales and the head."""
    opt = torch.optim.Adam(freeze(model, lambda n, p: n.endswith(".scale") or n.startswith(head + ".")), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return tb.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time).median


def at_round(d: torch.nn.Module, kept: dict[str, int], shrink: bool) -> torch.nn.Module:
    """A copy of ``d`` keeping ``kept[name]`` bases of each layer (masked, or shrunk)."""
    m = copy.deepcopy(d)
    for n, h in bp.basis_layers(m).items():
        h.mask.zero_()
        h.mask[:kept[n]] = 1  # groups=1 in MobileNetV2's basis layers
    if shrink:
        bp.Pruner(m, "basis").shrink()
    return m


def main(argv: list[str] | None = None) -> dict:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("data/results/default/basis_pruning-mnist5k-seed0.json"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the book runs one per process)")
    ap.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per model and repeat")
    ap.add_argument("--repeats", type=int, default=3, help="times each round's two models are timed in turn")
    ap.add_argument("--out", type=Path, default=Path("data/benchmarks/round_seconds-cpu.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rec = json.loads(args.results.read_text())
    p = {**profiles.get(rec["profile"]), **rec["params"]}
    steps = math.ceil(rec["split_sizes"]["train"] / p["batch_size"]) * p["epochs_per_round"]
    torch.manual_seed(0)
    base = models.load(p["model"], 10, pretrained=True).eval()
    head = models.classifier(base)[0]
    d = bp.decompose(base, exclude=[head])
    x = torch.randn(p["batch_size"], 3, p["image_size"], p["image_size"])
    y = torch.randint(0, 10, (p["batch_size"],))
    rows, load_start = [], os.getloadavg()
    for h in rec["history"]:
        forms = {mode: at_round(d, h["kept"], mode == "shrunk") for mode in ("masked", "shrunk")}
        for m in forms.values():
            set_memory_format(m, p["memory_format"])
        times = {mode: [] for mode in forms}
        for _ in range(args.repeats):
            for mode, m in forms.items():
                times[mode].append(step_seconds(m, head, x, y, args.min_run_time))
        med = {mode: statistics.median(t) for mode, t in times.items()}
        rows.append({"round": h["round"], "param_pruning_ratio": h["param_pruning_ratio"],
                     "bases_kept": sum(h["kept"].values()), "bases_total": sum(h["total"].values()),
                     **{f"{mode}_step_s": med[mode] for mode in med},
                     **{f"{mode}_round_s": med[mode] * steps for mode in med},
                     "speedup": med["masked"] / med["shrunk"]})
        print(rows[-1], flush=True)
    total = {mode: sum(r[f"{mode}_round_s"] for r in rows[1:]) for mode in ("masked", "shrunk")}
    settings = {"results": str(args.results), "profile": rec["profile"], "model": p["model"],
                "image_size": p["image_size"], "batch_size": p["batch_size"], "steps_per_round": steps,
                "threads": args.threads, "min_run_time": args.min_run_time, "repeats": args.repeats,
                "load_average_start": load_start, "load_average_end": os.getloadavg()}
    out = {"settings": settings, "rows": rows, "pruning_rounds_seconds": total,
           "pruning_rounds_speedup": total["masked"] / total["shrunk"]}
    written = write_results(args.out, out, settings, 0, {})
    print("| round | param pruning ratio | bases kept | masked s/round | shrunk s/round | speedup |")
    print("|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['round']} | {r['param_pruning_ratio']:.3f} | {r['bases_kept']}/{r['bases_total']} | "
              f"{r['masked_round_s']:.1f} | {r['shrunk_round_s']:.1f} | {r['speedup']:.2f} |")
    print(f"pruning rounds (1-{rows[-1]['round']}): masked {total['masked']:.1f} s, shrunk {total['shrunk']:.1f} s, "
          f"{out['pruning_rounds_speedup']:.2f}x; load average {load_start} at the start, {os.getloadavg()} at the end")
    return written


if __name__ == "__main__":
    main()
