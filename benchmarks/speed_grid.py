#!/usr/bin/env python
"""Deployment speed of the inference forms over input sizes, batch sizes and runtimes.

MobileNetV2 with ImageNet weights (1,000-class head, excluded from pruning); per input size
(``--sizes``, default 32 96 224) four inference forms (:func:`basisprune.inference_form`,
``merge="latency"``, ``memory_format="auto"``, choices timed at ``--form-batch-sizes`` in
``--form-rounds`` interleaved rounds on that input size):

* ``unpruned``: the unpruned model's own form (batch norms folded, channels padded, its memory format);
* ``bases -30%`` and ``bases -80%``: the model decomposed into bases (:func:`basisprune.decompose`)
  with the weakest 30% / 80% of every layer's bases (by singular value) masked, untrained
  (latency only); the masked model is given to the form, so its guard compares the whole form
  with the form whose pairs are all folded back (the unpruned layers' shapes);
* ``Torch-Pruning`` (unless ``--no-peer``): Torch-Pruning's magnitude channel pruning at the FLOPs
  of ``bases -80%``'s compact model, then its form.

With ``--ours channels`` our forms are instead our channel pruning (channel scales of
:func:`basisprune.add_channel_scales`, the weakest units of every group masked by the L2 norm of
the root's filters, the fraction found by bisection) and our double pruning (channels masked to half
the FLOPs reduction in log scale, compacted, decomposed, then the weakest bases masked), both at
``bases -80%``'s FLOPs like Torch-Pruning: untrained masks, for latency only.

Every form is timed at ``--batch-sizes`` (1 8 64) in PyTorch eager (:func:`basisprune.bench.latency`)
and ONNX Runtime (exported once per form with the TorchScript exporter, checked against PyTorch,
then ``session.run`` timed), in ``--rounds`` rounds with the forms in a rotated order, so that
load on the machine hits all of them alike. Speed-ups are paired within a round
(unpruned / form); the table gives their median and range over rounds. Writes a results JSON with
provenance (hardware, git commit, threads, load average before and after) and prints the table
and the issue's targets. One thread by default; on a shared machine say so when quoting it.

Per form it also records the activation elements per image (every intermediate tensor the form
writes, from ``torch.fx`` shape propagation): on small-width, memory-bound networks latency follows
the bytes moved more than the FLOPs, which ``basisprune.repro.speed_grid.traffic`` compares.

    .venv/bin/python benchmarks/speed_grid.py --out data/benchmarks/speed_grid-cpu.json
    .venv/bin/python benchmarks/speed_grid.py --ours channels --out data/benchmarks/speed_grid_channels-cpu.json
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import basisprune as bp
from basisprune import bench
from basisprune.repro import comparison, models, provenance
from basisprune.repro.speed_grid import targets, traffic
from basisprune.repro.results import write_results
from basisprune.repro.arguments import ArgumentParser


def prune_weakest(model: nn.Module, fraction: float) -> None:
    """Mask the weakest ``fraction`` of every basis layer's bases in each group (at least one
    kept), by singular value (``coef`` = U S: its column norms are the singular values)."""
    for layer in bp.basis_layers(model).values():
        out_g = layer.coef.shape[0] // layer.groups
        s = layer.coef.detach().view(layer.groups, out_g, layer.rank).norm(dim=1)
        keep = max(1, math.ceil((1 - fraction) * layer.rank))
        mask = torch.zeros_like(s)
        mask.scatter_(1, torch.argsort(s, dim=1, descending=True)[:, :keep], 1.0)
        layer.mask.copy_(mask.reshape(-1).to(layer.mask.dtype))


def mask_weakest_channels(model: nn.Module, fraction: float) -> None:
    """Mask the weakest ``fraction`` of every channel group's units (at least one kept), by the L2
    norm of the group root's output filters (Torch-Pruning's magnitude criterion, per group)."""
    for scale in bp.channel_scales(model).values():
        root = model.get_submodule(scale.root)
        while not hasattr(root, "weight"):  # a root that also reads scaled inputs is wrapped
            root = root.inner
        w = root.weight.detach()
        norms = torch.zeros(scale.num_units).index_add_(0, scale.unit_of, w.flatten(1).norm(dim=1) ** 2)
        keep = max(1, math.ceil((1 - fraction) * scale.num_units))
        mask = torch.zeros(scale.num_units)
        mask[torch.argsort(norms, descending=True)[:keep]] = 1.0
        scale.mask.copy_(mask.to(scale.mask.dtype))


def to_flops(build, target: float, x: torch.Tensor, steps: int = 12) -> tuple[float, nn.Module, nn.Module]:
    """The smallest fraction in [0, 0.95] whose ``build(fraction)`` (a masked model) compacts to at
    most ``target`` FLOPs, by bisection; that masked model and its compact model."""
    lo, hi, found = 0.0, 0.95, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        masked = build(mid)
        small = bp.compact(masked, x).eval()
        if bp.count_flops(small, x) <= target:
            hi, found = mid, (masked, small)
        else:
            lo = mid
    if found is None:
        masked = build(hi)
        found = (masked, bp.compact(masked, x).eval())
    return hi, *found


def channel_sources(ref: nn.Module, head: str, x: torch.Tensor,
                    target: float) -> dict[str, tuple[nn.Module, nn.Module, dict[str, float]]]:
    """Our channel pruning (channel scales, weakest units masked by magnitude) and double pruning
    (channels masked to half the FLOPs reduction in log scale, then the weakest bases of what is
    left) at ``target`` FLOPs; each ``(masked model, compact model, fractions)``."""
    scaled = bp.add_channel_scales(ref, x, ignored=[head]).eval()

    def channels(frac: float) -> nn.Module:
        m = copy.deepcopy(scaled)
        mask_weakest_channels(m, frac)
        return m

    f_c, only, only_small = to_flops(channels, target, x)
    half = math.sqrt(target * bp.count_flops(ref, x))  # half the reduction, in log FLOPs
    f_half, _, stage1 = to_flops(channels, half, x)
    base = bp.decompose(stage1, exclude=[head]).eval()

    def bases(frac: float) -> nn.Module:
        m = copy.deepcopy(base)
        prune_weakest(m, frac)
        return m

    f_b, double, double_small = to_flops(bases, target, x)
    return {"channels (ours)": (only, only_small, {"channels": f_c}),
            "double (ours)": (double, double_small, {"channels": f_half, "bases": f_b})}


def onnx_session(model: nn.Module, size: int, threads: int, tmp: Path, label: str):
    """An ONNX Runtime session of ``model`` (TorchScript exporter, dynamic batch), checked on a batch."""
    import onnxruntime as ort

    path = tmp / f"{label.replace(' ', '_').replace('%', '')}-{size}.onnx"
    bench.export_onnx(model, (3, size, size), path, exporter="legacy")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = model(x)
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-4), f"{label}: ONNX Runtime disagrees with PyTorch"
    return sess


def onnx_ms(sess, x: torch.Tensor, repeats: int) -> float:
    feed = {sess.get_inputs()[0].name: x.numpy()}
    sess.run(None, feed)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def activation_elements(form: nn.Module, size: int) -> int:
    """Elements of every tensor the form writes for one image (inputs and weights excluded)."""
    from torch.fx.passes.shape_prop import ShapeProp

    gm = form if isinstance(form, torch.fx.GraphModule) else torch.fx.symbolic_trace(form)
    ShapeProp(gm).propagate(torch.randn(1, 3, size, size))
    total = 0
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if node.op in ("call_module", "call_function", "call_method") and hasattr(meta, "shape"):
            total += int(torch.Size(meta.shape).numel())
    return total


def build_forms(ref: nn.Module, head: str, size: int, args) -> tuple[dict[str, dict[str, nn.Module]], dict[str, Any]]:
    """The forms at one input size, per backend (choices timed in eager PyTorch for the eager
    column, in ONNX Runtime for the ONNX Runtime column), and their FLOPs / reports."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    sources: dict[str, nn.Module] = {"unpruned": ref}  # what the forms are built from
    sizes: dict[str, nn.Module] = {"unpruned": ref}  # what FLOPs and parameters are counted on
    info: dict[str, Any] = {}
    for frac in args.depths if args.ours == "bases" else [max(args.depths)]:  # channels: the target only
        d = bp.decompose(ref, exclude=[head]).eval()
        prune_weakest(d, frac)
        sources[f"bases -{frac:.0%}"] = d  # masked: the form's guard can fold its pairs back
        sizes[f"bases -{frac:.0%}"] = bp.compact(d, x[:1]).eval()
    deepest = sizes[f"bases -{max(args.depths):.0%}"]
    if args.ours == "channels":  # our channel and double pruning at the deepest basis form's FLOPs
        target = bp.count_flops(deepest, x[:1])
        sources = {"unpruned": ref}
        sizes = {"unpruned": ref}
        for label, (m, small, fractions) in channel_sources(ref, head, x[:1], target).items():
            sources[label], sizes[label] = m, small
            info[label] = {"fractions": fractions}
    if not args.no_peer:
        ratio = 1 - bp.count_flops(deepest, x[:1]) / bp.count_flops(ref, x[:1])
        tp, tp_info = comparison.prune_to_flops(ref, x[:1], ratio)
        sources["Torch-Pruning"] = sizes["Torch-Pruning"] = tp.eval()
        info["Torch-Pruning"] = {"target_flop_ratio": ratio, **{k: v for k, v in tp_info.items() if k != "model"}}
    forms: dict[str, dict[str, nn.Module]] = {"eager": {}, "onnxruntime": {}}
    for label, m in sources.items():
        for backend, runtime in (("eager", "torch"), ("onnxruntime", "onnxruntime")):
            t0 = time.perf_counter()
            form = bp.inference_form(m, x, merge="latency", memory_format="auto", batch_sizes=args.form_batch_sizes,
                                     threads=args.threads, min_run_time=0.01, min_runs=2, rounds=args.form_rounds,
                                     runtime=runtime)
            rep = form.inference_report
            forms[backend][label] = form
            entry = info.setdefault(label, {})
            entry.setdefault("flops", bp.count_flops(sizes[label], x[:1]))
            entry.setdefault("params", bp.count_params(sizes[label]))
            entry[backend] = {
                "build_s": time.perf_counter() - t0, "memory_format": rep["memory_format"],
                "memory_format_ms": rep["memory_format_ms"], "chains": len(rep["chains"]),
                "chains_split": sum(len(c["segments"]) > 1 for c in rep["chains"]),
                "padded": len(rep["padded"]), "guard": rep["guard"], "timed_on": rep.get("timed_on"),
                "activation_elements": activation_elements(form, size), "form_flops": bp.count_flops(form, x[:1])}
    return forms, info


def time_grid(forms: dict[str, dict[str, nn.Module]], size: int, args, tmp: Path) -> list[dict[str, Any]]:
    """Per-round milliseconds of every form, backend and batch size (forms rotated each round)."""
    sessions = {label: onnx_session(f, size, args.threads, tmp, label) for label, f in forms["onnxruntime"].items()}
    labels = list(forms["eager"])
    gen = torch.Generator().manual_seed(0)
    xs = {b: torch.randn(b, 3, size, size, generator=gen) for b in args.batch_sizes}
    ms: dict[tuple[str, str, int], list[float]] = {}
    for r in range(args.rounds):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for label in order:
            recs = bench.latency(forms["eager"][label], (3, size, size), args.batch_sizes, threads=args.threads,
                                 min_run_time=args.min_run_time, min_runs=2, warmup=1, seed=r)
            for rec in recs:
                ms.setdefault((label, "eager", rec["batch_size"]), []).append(rec["median_ms"])
            for b, x in xs.items():
                ms.setdefault((label, "onnxruntime", b), []).append(onnx_ms(sessions[label], x, args.onnx_repeats))
    rows = []
    for (label, backend, b), times in ms.items():
        ref = ms[("unpruned", backend, b)]
        speedups = sorted(u / t for u, t in zip(ref, times))
        row = {"size": size, "model": label, "backend": backend, "batch_size": b, "round_ms": times,
               "median_ms": statistics.median(times), "speedup_median": statistics.median(speedups),
               "speedup_min": speedups[0], "speedup_max": speedups[-1],
               "speedup_p75": bench.quantile(speedups, 0.75)}
        if "Torch-Pruning" in labels:
            tp = ms[("Torch-Pruning", backend, b)]
            vs = sorted(p / t for p, t in zip(tp, times))
            row.update(vs_tp_median=statistics.median(vs), vs_tp_min=vs[0], vs_tp_max=vs[-1],
                       vs_tp_p75=bench.quantile(vs, 0.75))
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| px | form | backend | batch | ms | speed-up vs unpruned (min-max) | vs Torch-Pruning |",
           "|--:|:--|:--|--:|--:|:--|:--|"]
    for r in rows:
        tp = f"{r['vs_tp_median']:.2f} ({r['vs_tp_min']:.2f}-{r['vs_tp_max']:.2f})" if "vs_tp_median" in r else ""
        out.append(f"| {r['size']} | {r['model']} | {r['backend']} | {r['batch_size']} | {r['median_ms']:.2f} | "
                   f"{r['speedup_median']:.2f} ({r['speedup_min']:.2f}-{r['speedup_max']:.2f}) | {tp} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 96, 224])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--depths", type=float, nargs="+", default=[0.3, 0.8], help="fractions of bases pruned")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds (forms rotated each round)")
    ap.add_argument("--min-run-time", type=float, default=0.02, help="eager seconds per form and batch size per round")
    ap.add_argument("--onnx-repeats", type=int, default=3, help="timed session.run calls per batch size per round")
    ap.add_argument("--form-batch-sizes", type=int, nargs="+", default=[1, 8, 64],
                    help="batch sizes the forms' choices (and their guard, at each) are timed at")
    ap.add_argument("--form-rounds", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--ours", choices=["bases", "channels"], default="bases",
                    help="our forms: basis pruning at --depths, or our channel and double pruning at the deepest "
                         "basis form's FLOPs (Torch-Pruning's too)")
    ap.add_argument("--out", type=Path, default=Path("data/benchmarks/speed_grid-cpu.json"))
    ap.add_argument("--show", type=Path, help="print the table and targets of a results file (no timing)")
    args = ap.parse_args(argv)
    if args.show:
        from basisprune.repro.results import read_results

        record = read_results(args.show)
        show(record)
        return record
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    ref = models.load("mobilenet_v2", None, pretrained=True).eval()
    head = models.classifier(ref)[0]
    rows, info, seconds = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="speed-grid-") as tmp:
        for size in args.sizes:
            t1 = time.perf_counter()
            forms, info[size] = build_forms(ref, head, size, args)
            print(f"{size} px: forms built in {time.perf_counter() - t1:.0f} s", flush=True)
            rows += time_grid(forms, size, args, Path(tmp))
            seconds[f"size_{size}"] = time.perf_counter() - t1
            print(f"{size} px done in {seconds[f'size_{size}']:.0f} s", flush=True)
    hw = provenance.hardware()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    settings["model"] = "mobilenet_v2 (ImageNet weights, 1000-class head not pruned)"
    record = {"rows": rows, "forms": {str(k): v for k, v in info.items()}, "hardware": hw, "settings": settings, "load_average": {"before": load_before, "after": os.getloadavg()},
              "shared_machine": ("timed while other processes shared the CPU; round-paired ratios, not absolute ms, "
                                 "are the comparable numbers") if max(load_before[0], os.getloadavg()[0]) > 1.5 else None}
    seconds["total"] = time.perf_counter() - t0
    write_results(args.out, record, settings, 0, seconds)
    show({**record, "timings": seconds})
    return record


def show(record: dict[str, Any]) -> None:
    """Print a results file's setting line, table and targets."""
    hw, load = record["hardware"], record["load_average"]
    print(f"mobilenet_v2, {record['settings']['threads']} thread(s), {hw['cpu_model']} ({hw['cpu_count']} cores), "
          f"torch {hw['torch']}, onnxruntime {hw['onnxruntime']}, load average {load['before'][0]:.1f} -> "
          f"{load['after'][0]:.1f}, {record['settings']['rounds']} rounds, {record['timings']['total']:.0f} s")
    print(table(record["rows"]))
    for name, t in targets(record["rows"], record["forms"], record["settings"]).items():
        print(f"{name}: {'holds' if t['holds'] else 'missed'} {t.get('misses') or t.get('rows') or ''}")
    for t in traffic(record["rows"], record["forms"]):
        print(f"{t['size']} px {t['model']:>14} {t['backend']:>11} b{t['batch_size']}: FLOPs ratio "
              f"{t['flops_ratio']:.2f}, activation ratio {t['activation_ratio']:.2f}, speed-up {t['speedup']:.2f}")


if __name__ == "__main__":
    main()
