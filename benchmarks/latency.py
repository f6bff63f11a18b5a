#!/usr/bin/env python
"""Latency of pruned models and their inference forms against the unpruned reference.

Backends: PyTorch eager, ``torch.compile`` (``--compile``), ONNX Runtime (``--onnx``, CPU) and, on
CUDA, CUDA graphs (``--device cuda``; ``--no-cuda-graphs`` to skip). Every model is timed next to
its inference form (:func:`basisprune.inference_form`: batch norms and scales folded, linear chains
merged where measured faster, channels-last where measured faster).

Two model sets:

* ``--compact-models DIR``: every ``*.pt`` file in DIR (written by ``basisprune.save_model``) is
  timed next to the unpruned reference (``--reference FILE``, or ``models.load(--model,
  num_classes(--dataset))``), and Torch-Pruning's model at the FLOPs of the last file.
* otherwise a *demo set* built from the transfer model ``models.load(--model, n)``, untrained
  (for latency only, its accuracy is meaningless): a double-pruned model (random channel masks
  keeping ``--channel-keep`` of every channel group, compacted, then bases truncated to
  ``--double-energy`` of their singular-value energy, compacted), basis-pruned models truncated to
  ``--energies``, and Torch-Pruning's magnitude channel pruning at the double-pruned model's FLOPs.

Writes a results JSON with provenance (hardware, settings, per-model measures and inference-form
reports, one row per model and batch size with every backend's median and quartiles, the speed
targets) and prints markdown tables. Run ``.venv/bin/python benchmarks/latency.py --help``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import basisprune as bp
from basisprune.repro import data, efficiency, models, peer, provenance, speed
from basisprune.repro.results import write_results
from basisprune.repro.arguments import ArgumentParser

UNTRAINED = "untrained, for latency only"


# ----------------------------------------------------------------------------- demo models
def truncate_by_energy(model: nn.Module, energy: float) -> None:
    """Keep, per basis layer and group, the fewest strongest bases holding ``energy`` of the
    squared singular values (``coef`` = U S, so column norms are the singular values)."""
    for layer in bp.basis_layers(model).values():
        out_g = layer.coef.shape[0] // layer.groups
        s = layer.coef.detach().view(layer.groups, out_g, layer.rank).norm(dim=1)  # (groups, rank)
        mask = torch.zeros_like(s)
        for g in range(layer.groups):
            order = torch.argsort(s[g], descending=True)
            cum = torch.cumsum(s[g][order] ** 2, 0) / (s[g] ** 2).sum().clamp_min(1e-30)
            k = int((cum < energy - 1e-12).sum().item()) + 1
            mask[g, order[: min(k, layer.rank)]] = 1
        layer.mask.copy_(mask.reshape(-1).to(layer.mask.dtype))


def random_channel_masks(model: nn.Module, keep: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for s in bp.channel_scales(model).values():
        m = (torch.rand(s.num_channels, generator=g) < keep).float()
        m[torch.randint(s.num_channels, (1,), generator=g)] = 1.0  # >= 1 channel per group
        s.mask.copy_(m)


def demo_models(ref: nn.Module, x: torch.Tensor, args) -> list[dict[str, Any]]:
    """[{label, description, model, extra}] of the demo set (the reference not included)."""
    head, _ = models.classifier(ref)
    out = []
    c = bp.add_channel_scales(ref, x[:1], ignored=[head]).eval()
    random_channel_masks(c, args.channel_keep, args.seed)
    channel = bp.compact(c, x[:1]).eval()
    d = bp.decompose(channel, exclude=[head]).eval()
    truncate_by_energy(d, args.double_energy)
    out.append({"label": "double", "model": bp.compact(d).eval(),
                "description": f"double pruning: random channel masks keeping ~{args.channel_keep:.0%} of every "
                               f"group, then bases truncated to {args.double_energy:.0%} energy, {UNTRAINED}",
                "extra": {"channel_keep": args.channel_keep, "energy": args.double_energy}})
    decomposed = bp.decompose(ref, exclude=[head]).eval()
    for energy in args.energies:
        d = copy.deepcopy(decomposed)
        truncate_by_energy(d, energy)
        kept = sum(l.kept for l in bp.basis_layers(d).values())
        total = sum(l.num_bases for l in bp.basis_layers(d).values())
        out.append({"label": f"basis-E{round(energy * 100)}", "model": bp.compact(d).eval(),
                    "description": f"bases truncated to {energy:.0%} energy ({kept}/{total} kept), {UNTRAINED}",
                    "extra": {"energy": energy}})
    return out


def peer_model(ref: nn.Module, x: torch.Tensor, anchor: dict[str, Any], target: float | None) -> dict[str, Any]:
    """Torch-Pruning's magnitude channel pruning at ``target`` (default the anchor's FLOP ratio)."""
    if target is None:
        target = bp.measure(anchor["model"], x[:1], ref)["flop_pruning_ratio"]
    t0 = time.perf_counter()
    tp_model, info = peer.torch_pruning_channel_prune(ref, x[:1], target, importance="magnitude", return_info=True)
    info["seconds"] = time.perf_counter() - t0
    return {"label": f"torch-pruning-{round(100 * target)}", "model": tp_model.eval(),
            "description": f"Torch-Pruning GroupMagnitudeImportance(p=2), global, FLOP pruning ratio >= {target:.3f} "
                          f"(that of {anchor['label']}), {UNTRAINED}",
            "extra": {"torch_pruning": info}}


def saved_models(directory: Path) -> list[dict[str, Any]]:
    files = sorted(directory.glob("*.pt"))
    if not files:
        raise SystemExit(f"no *.pt files in {directory}")
    return [{"label": f.stem, "description": f"loaded from {f}", "model": bp.load_model(f).eval(), "extra": {}}
            for f in files]


# ------------------------------------------------------------------------------------ tables
BACKENDS = {"torch": "PyTorch eager", "compile": "torch.compile", "cudagraph": "CUDA graphs",
            "onnx": "ONNX Runtime"}


def markdown(rows: list[dict[str, Any]], backend: str) -> str:
    """One table per backend: per model MFLOPs, FLOP reduction and, per batch size, the median
    ms [p25-p75] and the speedup against the unpruned model."""
    table = speed.latency_pivot(rows, backend)
    if table.empty:
        return ""
    table = table.drop(columns=["params (M)"]).rename(columns={"FLOPs reduction": "FLOPs red."})
    return table.to_markdown(floatfmt=".2f")


# --------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        description="Time pruned models and their inference forms against the unpruned reference (CPU or "
                    "CUDA; eval mode, torch.inference_mode; medians and IQRs over repeated runs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Example: .venv/bin/python benchmarks/latency.py --image-size 32 --threads 1 --onnx --out runs/latency.json",
    )
    p.add_argument("--model", default="mobilenet_v2", help="reference architecture (basisprune.repro.models.load)")
    p.add_argument("--dataset", default="mnist5k", help="data set whose class count sizes the head")
    p.add_argument("--image-size", type=int, default=224, help="input side in pixels (3 channels)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="batch sizes (default: 1 8 64 on the CPU, 1 8 64 256 on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime threads (default: torch's current count)")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per model, batch size and round")
    p.add_argument("--min-runs", type=int, default=5, help="timed runs per model, batch size and round (at least)")
    p.add_argument("--rounds", type=int, default=3, help="eager rounds: every model timed once per round")
    p.add_argument("--out", type=Path, default=Path("runs/latency.json"), help="JSON output file (runs/ is git-ignored)")
    p.add_argument("--compact-models", type=Path, default=None,
                   help="directory of *.pt compact models (basisprune.save_model) to time; default: build the demo set")
    p.add_argument("--reference", type=Path, default=None,
                   help="saved unpruned model (basisprune.save_model) to use as reference instead of models.load")
    p.add_argument("--no-pretrained", action="store_true", help="random reference weights (no weight files needed)")
    p.add_argument("--onnx", action="store_true", help="also export to ONNX and time ONNX Runtime (CPU)")
    p.add_argument("--onnx-repeats", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (compiled once per model and batch size)")
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (ONNX timings are CPU only)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="on CUDA, do not time CUDA-graph replay")
    f = p.add_argument_group("inference form")
    f.add_argument("--merge", choices=["latency", "flops", "none"], default="latency",
                   help="how linear chains are merged (basisprune.inference_form)")
    f.add_argument("--memory-format", choices=["auto", "contiguous", "channels_last"], default="auto")
    f.add_argument("--channel-multiple", type=int, default=8, help="pad channel widths to a multiple of this (1: none)")
    f.add_argument("--form-min-run-time", type=float, default=0.02, help="seconds per timing while building the forms")
    f.add_argument("--form-batch-sizes", type=int, nargs="+", default=None,
                   help="batch sizes the forms' merges and memory format are timed at, each weighing the same "
                        "(default: --batch-sizes); e.g. 64 for a form built for throughput")
    f.add_argument("--no-forms", dest="forms", action="store_false", help="time only the models, not their inference forms")
    g = p.add_argument_group("demo set")
    g.add_argument("--channel-keep", type=float, default=0.7,
                   help="fraction of channels the double-pruned model's random channel masks keep")
    g.add_argument("--double-energy", type=float, default=0.9, help="singular-value energy the double-pruned model keeps")
    g.add_argument("--energies", type=float, nargs="*", default=[0.7],
                   help="singular-value energy kept by the basis-pruned models")
    g.add_argument("--tp-target", type=float, default=None,
                   help="FLOP pruning ratio for Torch-Pruning (None: that of the double-pruned model)")
    g.add_argument("--no-peer", dest="peer", action="store_false", help="skip Torch-Pruning's model")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sizes = args.batch_sizes or ([1, 8, 64, 256] if dev.type == "cuda" else [1, 8, 64])
    shape = (3, args.image_size, args.image_size)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(args.seed))
    if args.reference is not None:
        ref, ref_about = bp.load_model(args.reference).eval(), f"loaded from {args.reference}"
    else:
        n = data.num_classes(args.dataset)
        ref = models.load(args.model, n, pretrained=not args.no_pretrained).eval()
        ref_about = f"{args.model}, {'ImageNet' if not args.no_pretrained else 'random'} weights, fresh {n}-class head"
    entries = [{"label": "unpruned", "description": ref_about, "model": ref, "extra": {}}]
    entries += saved_models(args.compact_models) if args.compact_models else demo_models(ref, x, args)
    if args.peer:
        entries.insert(1, peer_model(ref, x, entries[1] if not args.compact_models else entries[-1], args.tp_target))
    build_s = time.perf_counter() - started

    forms, form_summary = {}, []
    if args.forms:
        t0 = time.perf_counter()
        forms, form_summary = speed.inference_forms(
            {e["label"]: e["model"] for e in entries}, x, args.form_batch_sizes or sizes, merge=args.merge, memory_format=args.memory_format,
            channel_multiple=args.channel_multiple, threads=args.threads, min_run_time=args.form_min_run_time, device=dev)
        print(f"built {len(forms)} inference forms in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    timed: dict[str, nn.Module] = {}
    for e in entries:
        timed[e["label"]] = e["model"]
        if e["label"] + speed.FORM in forms:
            timed[e["label"] + speed.FORM] = forms[e["label"] + speed.FORM]
    modes = (["compile"] if args.compile else []) + (["cudagraph"] if dev.type == "cuda" and args.cuda_graphs else [])
    t0 = time.perf_counter()
    rows = speed.speed_table(timed, shape, sizes, threads=args.threads, onnx=args.onnx,
                                  min_run_time=args.min_run_time, min_runs=args.min_runs, rounds=args.rounds,
                                  onnx_repeats=args.onnx_repeats, device=dev, modes=modes)
    timing_s = time.perf_counter() - t0

    backends = ["torch"] + modes + (["onnx"] if args.onnx and dev.type == "cpu" else [])
    big = 64 if 64 in sizes else max(sizes)
    double = next((e["label"] for e in entries[1:] if e["label"] == "double"), entries[-1]["label"])
    tp = next((e["label"] for e in entries if e["label"].startswith("torch-pruning")), "")
    targets = {}
    for b in backends:
        for ours, other in ((double, tp), (double + speed.FORM, tp + speed.FORM)):
            if ours in timed:
                targets[f"{b}: {ours}"] = efficiency.speed_targets(
                    rows, ours=ours, pruned=double, peer=other if other in timed else tp, reference="unpruned",
                    batch_size=big, backend=b)
    describe = {e["label"]: e["description"] for e in entries}
    record = {
        "hardware": provenance.hardware(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "input_shape": list(shape), "batch_sizes": sizes, "reference": "unpruned", "backends": backends,
        "models": [{"label": e["label"], "description": e["description"], **e["extra"]} for e in entries],
        "inference_forms": {label: {"summary": s, "report": forms[label].inference_report}
                            for label, s in zip(forms, form_summary)},
        "rows": rows,
        "targets": targets,
    }
    write_results(args.out, record, {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  args.seed, {"build_seconds": build_s, "timing_seconds": timing_s,
                              "total_seconds": time.perf_counter() - started})
    hw = record["hardware"]
    print(f"\n{rows[0]['device_name']}, {rows[0]['threads']} thread(s), torch {hw['torch']}, onnxruntime "
          f"{hw['onnxruntime']}, input {args.image_size} px, {args.rounds} eager round(s)\n")
    for b in backends:
        print(f"### {BACKENDS[b]}: median ms per batch [p25-p75], speedup vs unpruned\n")
        print(markdown(rows, b) + "\n")
        errors = {r["model"]: r.get(f"{b}_error") for r in rows if r.get(f"{b}_error")}
        if errors:
            print(f"errors: {errors}\n")
    if form_summary:
        import pandas as pd

        print("### Inference forms\n")
        print(pd.DataFrame(form_summary).set_index("model").to_markdown(floatfmt=".2f") + "\n")
    print("### Targets\n")
    for key, verdict in targets.items():
        print(f"- {key}: " + " ".join(v["text"] for v in verdict.values()))
    print()
    for e in entries:
        print(f"- {e['label']}: {describe[e['label']]}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
