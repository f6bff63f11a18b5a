#!/usr/bin/env python
"""Training speed of the pruning stages' models with contiguous and channels_last weights.

One training step (forward, backward, Adam on the scales and the classifier, as the pruning stages
train) of the transfer model with channel scales and in basis form, timed with
``torch.utils.benchmark`` (``blocked_autorange``: the median over many runs) in both memory
layouts, on the default profile's model, input size and batch. Writes a results JSON with
provenance (hardware, torch, settings) and prints a markdown table. This is the measurement behind
the ``memory_format`` parameter's default (``channels_last``).

    .venv/bin/python benchmarks/memory_format.py [--threads 1] [--out data/benchmarks/memory_format-cpu.json]
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb

import basisprune as bp
from basisprune.repro import models, profiles, provenance
from basisprune.repro.results import write_results
from basisprune.repro.train import freeze, set_memory_format
from basisprune.repro.arguments import ArgumentParser


def step_seconds(model: torch.nn.Module, head: str, x: torch.Tensor, y: torch.Tensor, min_run_time: float) -> dict:
    """Median and interquartile range of one training step of the scales and the head (seconds)."""
    trainable = freeze(model, lambda n, p: n.endswith(".scale") or n.startswith(head + "."))
    opt = torch.optim.Adam(trainable, lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    m = tb.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time)
    return {"median_s": m.median, "iqr_s": m.iqr, "runs": len(m.times)}


def main(argv: list[str] | None = None) -> dict:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default", help="experiments profile (model, image size, batch)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the book runs one per process)")
    ap.add_argument("--min-run-time", type=float, default=3.0, help="seconds of timing per model and layout")
    ap.add_argument("--out", type=Path, default=Path("data/benchmarks/memory_format-cpu.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = profiles.get(args.profile)
    torch.manual_seed(0)
    base = models.load(p["model"], 10, pretrained=True).eval()
    head = models.classifier(base)[0]
    x = torch.randn(p["batch_size"], 3, p["image_size"], p["image_size"])
    y = torch.randint(0, 10, (p["batch_size"],))
    forms = {"channel scales": bp.add_channel_scales(base, x[:1], ignored=[head]),
             "basis form": bp.decompose(base, exclude=[head])}
    rows = []
    for name, model in forms.items():
        for fmt in ("contiguous", "channels_last"):
            set_memory_format(model, fmt)
            rows.append({"model": name, "memory_format": fmt, **step_seconds(model, head, x, y, args.min_run_time)})
    for r in rows:
        base_row = next(b for b in rows if b["model"] == r["model"] and b["memory_format"] == "contiguous")
        r["speedup"] = base_row["median_s"] / r["median_s"]
    hw = provenance.hardware()
    print(f"{p['model']}, {p['image_size']} px, batch {p['batch_size']}, {args.threads} thread(s), "
          f"{hw['cpu_model']}, torch {torch.__version__}")
    print("| model | memory format | median step (ms) | IQR (ms) | runs | speed-up |\n|:--|:--|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['model']} | {r['memory_format']} | {1e3 * r['median_s']:.1f} | {1e3 * r['iqr_s']:.1f} | "
              f"{r['runs']} | {r['speedup']:.2f} |")
    settings = {"profile": args.profile, "model": p["model"], "image_size": p["image_size"],
                "batch_size": p["batch_size"], "threads": args.threads, "min_run_time": args.min_run_time}
    record = {"rows": rows, "hardware": hw, "settings": settings}
    write_results(args.out, record, settings, 0, {})
    return record


if __name__ == "__main__":
    main()
