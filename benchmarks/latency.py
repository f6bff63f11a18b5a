#!/usr/bin/env python
"""Latency of pruned models against the unpruned reference (PyTorch eager, optionally ONNX Runtime).

Two modes:

* ``--compact-models DIR``: every ``*.pt`` file in DIR (written by ``basisprune.save_model``) is
  timed next to the unpruned reference (``--reference FILE``, or ``models.load(--model,
  num_classes(--dataset))``).
* otherwise a quick *demo set* is built from the transfer model ``models.load(--model, n)``:
  basis-pruned versions whose bases are truncated by singular-value energy (90 % / 70 %, no
  training: for latency only, their accuracy is meaningless), each compacted with the parameter
  fold rule and with the latency-aware fold rule; a channel-pruned version with random masks
  (also untrained); and Torch-Pruning's magnitude-pruned model at the FLOP ratio of the 70 %
  basis model.

Writes a JSON (hardware, settings, per-model per-batch-size medians and spreads) and prints a
markdown table. Run ``.venv/bin/python benchmarks/latency.py --help``.
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
from basisprune import bench, data, models, peer
from basisprune.results import provenance, write_json

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
    cls_name, _ = models.classifier(ref)
    out = []
    decomposed = bp.decompose(ref.eval(), exclude=[cls_name]).eval()
    for energy in args.energies:
        d = copy.deepcopy(decomposed)
        truncate_by_energy(d, energy)
        tag = f"basis-E{round(energy * 100)}"
        kept = sum(l.kept for l in bp.basis_layers(d).values())
        total = sum(l.num_bases for l in bp.basis_layers(d).values())
        about = f"bases energy-truncated to {energy:.0%} ({kept}/{total} bases kept), {UNTRAINED}"
        out.append({"label": f"{tag} params-fold", "description": about + "; fold rule: fold_by_params",
                    "model": bp.compact(d).eval(), "extra": {"energy": energy}})
        if args.latency_fold:
            t0 = time.perf_counter()
            rule = bench.latency_fold_rule(d, x[:1], args.batch_sizes, threads=args.threads,
                                           min_run_time=args.fold_min_run_time, device=args.device)
            secs = time.perf_counter() - t0
            folded = sum(r["fold"] for r in rule.records)
            out.append({
                "label": f"{tag} latency-fold",
                "description": about + f"; fold rule: latency_fold_rule ({folded}/{len(rule.records)} layers folded)",
                "model": bp.compact(d, fold_rule=rule).eval(),
                "extra": {"energy": energy, "fold_rule_seconds": secs, "fold_decisions": rule.records},
            })
    c = bp.add_channel_scales(ref, x[:1], ignored=[cls_name]).eval()
    random_channel_masks(c, args.channel_keep, args.seed)
    out.append({"label": f"channel-random-{round(args.channel_keep * 100)}",
                "description": f"random channel masks keeping ~{args.channel_keep:.0%} per group, {UNTRAINED}",
                "model": bp.compact(c, x[:1]).eval(), "extra": {"channel_keep": args.channel_keep}})
    if args.tp_target is not None:
        target = args.tp_target
    else:
        anchor = [m for m in out if m["label"].endswith("params-fold")][-1:]
        ratio = bp.measure(anchor[0]["model"], x[:1], ref)["flop_pruning_ratio"] if anchor else 0.0
        target = ratio if ratio > 0.02 else 0.3
    t0 = time.perf_counter()
    tp_model, info = peer.torch_pruning_channel_prune(ref, x[:1], target, importance="magnitude",
                                                      return_info=True)
    info["seconds"] = time.perf_counter() - t0
    out.append({"label": f"torch-pruning-mag-{round(target * 100)}",
                "description": f"Torch-Pruning GroupMagnitudeImportance(p=2), global, FLOP pruning ratio >= {target:.3f}, {UNTRAINED}",
                "model": tp_model.eval(), "extra": {"torch_pruning": info}})
    return out


def saved_models(directory: Path) -> list[dict[str, Any]]:
    files = sorted(directory.glob("*.pt"))
    if not files:
        raise SystemExit(f"no *.pt files in {directory}")
    return [{"label": f.stem, "description": f"loaded from {f}", "model": bp.load_model(f).eval(), "extra": {}}
            for f in files]


# ------------------------------------------------------------------------------------ table
def markdown(rows: list[dict[str, Any]], with_onnx: bool) -> str:
    head = ["model", "params", "MFLOPs/img", "FLOP ratio", "batch", "median ms", "IQR ms", "img/s", "speedup"]
    if with_onnx:
        head += ["ORT median ms", "ORT speedup"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['params']:,}", f"{r['flops_per_image'] / 1e6:.1f}",
                 f"{r['flop_pruning_ratio']:.3f}", str(r["batch_size"]), f"{r['median_ms']:.2f}",
                 f"{r['iqr_ms']:.2f}", f"{r['throughput_ips']:.0f}", f"{r['speedup']:.2f}x"]
        if with_onnx:
            cells += [f"{r['onnx_median_ms']:.2f}" if r.get("onnx_median_ms") is not None else "-",
                      f"{r['onnx_speedup']:.2f}x" if r.get("onnx_speedup") is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time pruned models against the unpruned reference (CPU or CUDA; eval mode, "
                    "torch.inference_mode; medians and IQRs over repeated runs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Example: .venv/bin/python benchmarks/latency.py --batch-sizes 1 8 --threads 1 --out runs/latency.json",
    )
    p.add_argument("--model", default="mobilenet_v2", help="reference architecture (basisprune.models.load)")
    p.add_argument("--dataset", default="mnist5k", help="data set whose class count sizes the head")
    p.add_argument("--image-size", type=int, default=224, help="input side in pixels (3 channels)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime threads (default: torch's current count)")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per model and batch size")
    p.add_argument("--out", type=Path, default=Path("runs/latency.json"), help="JSON output file (runs/ is git-ignored)")
    p.add_argument("--compact-models", type=Path, default=None,
                   help="directory of *.pt compact models (basisprune.save_model) to time; default: build the demo set")
    p.add_argument("--reference", type=Path, default=None,
                   help="saved unpruned model (basisprune.save_model) to use as reference instead of models.load")
    p.add_argument("--no-pretrained", action="store_true", help="random reference weights (no weight files needed)")
    p.add_argument("--onnx", action="store_true", help="also export to ONNX and time ONNX Runtime (CPU)")
    p.add_argument("--onnx-repeats", type=int, default=20)
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (ONNX timings are CPU only)")
    g = p.add_argument_group("demo set")
    g.add_argument("--energies", type=float, nargs="+", default=[0.9, 0.7],
                   help="singular-value energy kept by the basis-truncated models")
    g.add_argument("--channel-keep", type=float, default=0.5, help="fraction of channels the random channel masks keep")
    g.add_argument("--tp-target", type=float, default=None,
                   help="FLOP pruning ratio for Torch-Pruning (None: that of the last basis params-fold model)")
    g.add_argument("--no-latency-fold", dest="latency_fold", action="store_false",
                   help="skip the latency-aware fold-rule variants")
    g.add_argument("--fold-min-run-time", type=float, default=0.02, help="seconds per layer timing in latency_fold_rule")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (3, args.image_size, args.image_size)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(args.seed))
    started = time.perf_counter()
    if args.reference is not None:
        ref, ref_about = bp.load_model(args.reference).eval(), f"loaded from {args.reference}"
    else:
        n = data.num_classes(args.dataset)
        ref = models.load(args.model, n, pretrained=not args.no_pretrained).eval()
        ref_about = f"{args.model}, {'ImageNet' if not args.no_pretrained else 'random'} weights, fresh {n}-class head"
    entries = [{"label": "unpruned", "description": ref_about, "model": ref, "extra": {}}]
    entries += saved_models(args.compact_models) if args.compact_models else demo_models(ref, x, args)
    build_s = time.perf_counter() - started

    ref_measure = bp.measure(ref, x[:1])
    results, rows = [], []
    ref_lat: dict[int, float] = {}
    ref_onnx: dict[int, float] = {}
    for e in entries:
        m = e["model"]
        meas = bp.measure(m, x[:1], ref_measure)
        lat = bench.latency(m, shape, args.batch_sizes, threads=args.threads, min_run_time=args.min_run_time,
                            device=args.device, label=e["label"])
        onnx = bench.onnx_latency(m, shape, args.batch_sizes, repeats=args.onnx_repeats, threads=args.threads,
                                  label=e["label"]) if args.onnx else []
        if e["label"] == "unpruned":
            ref_lat = {r["batch_size"]: r["median_ms"] for r in lat}
            ref_onnx = {r["batch_size"]: r["median_ms"] for r in onnx}
        onnx_by_bs = {r["batch_size"]: r for r in onnx}
        for r in lat:
            b = r["batch_size"]
            o = onnx_by_bs.get(b)
            rows.append({
                **r, "description": e["description"], "params": meas["params"],
                "flops_per_image": meas["flops"], "flop_pruning_ratio": meas["flop_pruning_ratio"],
                "param_pruning_ratio": meas["param_pruning_ratio"], "speedup": ref_lat[b] / r["median_ms"],
                "onnx_median_ms": o["median_ms"] if o else None, "onnx_iqr_ms": o["iqr_ms"] if o else None,
                "onnx_speedup": ref_onnx[b] / o["median_ms"] if o else None,
            })
        results.append({"label": e["label"], "description": e["description"], **meas,
                        "latency": lat, "onnx": onnx, **e["extra"]})
        print(f"timed {e['label']}", file=sys.stderr)

    record = {
        "hardware": bench.hardware(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "input_shape": list(shape),
        "reference": "unpruned",
        "build_seconds": build_s,
        "total_seconds": time.perf_counter() - started,
        "models": results,
        "rows": rows,
        "provenance": provenance(vars(args), args.seed),
    }
    write_json(args.out, record)
    hw = record["hardware"]
    print(f"\n{hw['cpu_model']}, {rows[0]['threads']} threads, torch {hw['torch']}, device {rows[0]['device_name']}, "
          f"input {args.image_size}px\n")
    print(markdown(rows, args.onnx))
    print("\nspeedup = unpruned median / model median at the same batch size.")
    for e in entries:
        print(f"- {e['label']}: {e['description']}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
