"""Measured speed of pruned models: the latency tables of chapter 7 (``notebooks/07_efficiency.ipynb``).

* :func:`speed_table` times models (PyTorch eager and ONNX Runtime) next to a reference model:
  parameters, FLOPs, FLOP pruning ratio, median latency with quartiles and the measured speedup;
  :func:`latency_pivot` lays it out per model and batch size.
* :func:`lift_pairs` / :func:`latency_compact` re-compact a saved compact model with
  :func:`basisprune.bench.latency_fold_rule`, so that a kept basis pair survives only where it is
  measurably faster than the single folded convolution.
* :func:`inference_forms` adds each model's deployable inference form (:func:`basisprune.inference_form`).

Conventions: FLOPs are for one image (:func:`basisprune.measure.count_flops`, 2 per MAC);
``flop_pruning_ratio = 1 - flops / flops_ref`` and ``flop_reduction = flops_ref / flops`` (the speedup
FLOPs promise); ``speedup = median_ref / median`` at the same batch size, threads and device.
Timings depend on the machine, its load and the thread count: nothing here asserts on them.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from .. import bench
from . import profiles
from ..compact import compact
from ..decompose import BasisConv2d, basis_layers, set_submodule
from ..measure import count_flops, count_params
from .onnx_timing import onnx_latency

__all__ = [
    "FORM",
    "inference_forms",
    "latency_compact",
    "latency_pivot",
    "lift_pairs",
    "model_stats",
    "speed_table",
    "timing_settings",
]


def timing_settings(profile: str) -> dict[str, Any]:
    """How long to time things for a profile (a copy of its ``timing`` section in
    :data:`basisprune.repro.profiles.PROFILES`)."""
    return profiles.section(profile, "timing")


def _example(input_shape: Sequence[int], device: str | torch.device = "cpu") -> torch.Tensor:
    return torch.randn((1, *[int(s) for s in input_shape]), generator=torch.Generator().manual_seed(0)).to(device)


def model_stats(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """``params`` and ``flops`` (one image of ``input_shape``, on the model's device)."""
    dev = next((t.device for t in model.parameters()), torch.device("cpu"))
    return {"params": count_params(model), "flops": count_flops(model, _example(input_shape, dev))}


def speed_table(
    models: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    batch_sizes: Iterable[int] = (1, 8, 64),
    threads: int | None = None,
    onnx: bool = True,
    *,
    min_run_time: float = 0.5,
    min_runs: int = 5,
    warmup: int = 3,
    rounds: int = 1,
    onnx_repeats: int = 20,
    onnx_exporter: str = "legacy",
    device: str | torch.device = "cpu",
    modes: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Latency of every model at every batch size, against the first model (the reference).

    Args:
        models: ``{label: model}``; the first entry is the reference (its speedup is 1).
        input_shape: one sample's shape without the batch dimension, e.g. ``(3, 32, 32)``.
        batch_sizes: batch sizes to time.
        threads: torch (and ONNX Runtime) intra-op threads for the timings (default: the current
            ``torch.get_num_threads()``).
        onnx: also export each model to ONNX and time ONNX Runtime (CPU only; skipped on CUDA),
            in every round. A model that fails to export gets ``onnx_error`` and no ONNX timings.
        min_run_time, min_runs, warmup: per model, batch size and round, see
            :func:`basisprune.bench.latency`.
        rounds: the models are timed one after the other, ``rounds`` times over. With more than one
            round, ``median_ms`` is the median of the rounds' medians, ``p25_ms`` / ``p75_ms`` the
            medians of the rounds' quartiles, and ``speedup`` the median over rounds of the ratio
            reference / model within the round (robust to a load that drifts between rounds).
        onnx_repeats: timed ``InferenceSession.run`` calls per batch size and round.
        onnx_exporter: ``"legacy"`` (TorchScript-based, fast), ``"dynamo"`` or ``"auto"``.
        device: ``"cpu"`` or a CUDA device for the PyTorch timings.
        modes: other ways to run the models besides eager PyTorch, timed in every round after
            the eager timings: ``"compile"`` (``torch.compile``, in the first round only: it
            compiles for every batch size) and, on CUDA, ``"cudagraph"``
            (:func:`basisprune.bench.latency`'s ``mode``). A model that fails gets
            ``<mode>_error`` and no timings.

    Returns:
        One dict per model and batch size: ``model``, ``params``, ``flops`` (per image),
        ``param_pruning_ratio``, ``flop_pruning_ratio``, ``flop_reduction`` (``flops_ref / flops``),
        ``batch_size``, ``median_ms``, ``p25_ms``, ``p75_ms``, ``iqr_ms``, ``runs``, ``rounds``,
        ``round_medians_ms``, ``throughput_ips``, ``threads``, ``device``, ``device_name``,
        ``speedup`` and, with ``onnx``, the same latency fields prefixed ``onnx_`` plus
        ``onnx_exporter`` and ``onnx_error``; per extra mode the same prefixed ``<mode>_`` plus
        ``<mode>_setup_s`` (compile or capture seconds) and ``<mode>_error``. Speedups are
        against the reference in the same backend.
    """
    if not models:
        raise ValueError("models is empty; pass {label: model}, the reference first")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    sizes = [int(b) for b in batch_sizes]
    dev = torch.device(device)
    extra = [str(m) for m in modes]
    bad = [m for m in extra if m not in bench.MODES or m == "eager"]
    if bad:
        raise ValueError(f"modes must be among {bench.MODES[1:]}, got {bad}")
    use_onnx = bool(onnx) and dev.type == "cpu"
    n_threads = int(threads) if threads is not None else torch.get_num_threads()
    labels = list(models)
    stats = {label: model_stats(m, input_shape) for label, m in models.items()}
    ref_stats = stats[labels[0]]
    backends = ["torch"] + (["onnx"] if use_onnx else []) + extra
    timed: dict[str, dict[str, list[dict[int, dict[str, Any]]]]] = {k: {lb: [] for lb in labels} for k in backends}
    errors: dict[str, dict[str, str]] = {k: {} for k in backends}
    for r in range(rounds):
        for backend in backends:
            if backend == "compile" and r > 0:
                continue  # compiling every model again would cost minutes a round
            for label, model in models.items():
                if label in errors[backend]:
                    continue
                try:
                    if backend == "onnx":
                        recs = onnx_latency(model, input_shape, sizes, repeats=onnx_repeats, threads=n_threads,
                                                  exporter=onnx_exporter, label=label, seed=r)
                    else:
                        recs = bench.latency(model, input_shape, sizes, threads=n_threads, min_run_time=min_run_time,
                                             min_runs=min_runs, warmup=warmup, device=dev, label=label, seed=r,
                                             mode="eager" if backend == "torch" else backend)
                except Exception as e:  # noqa: BLE001 - a model that does not export / compile keeps eager timings
                    if backend == "torch":
                        raise
                    errors[backend][label] = f"{type(e).__name__}: {str(e)[:300]}"
                    continue
                timed[backend][label].append({rec["batch_size"]: rec for rec in recs})
    rows: list[dict[str, Any]] = []
    for label in labels:
        st = stats[label]
        for b in sizes:
            recs = [rnd[b] for rnd in timed["torch"][label]]
            row = {
                "model": label, "params": st["params"], "flops": st["flops"],
                "param_pruning_ratio": 1.0 - st["params"] / ref_stats["params"],
                "flop_pruning_ratio": 1.0 - st["flops"] / ref_stats["flops"],
                "flop_reduction": ref_stats["flops"] / st["flops"] if st["flops"] else math.inf,
                "batch_size": b,
                **_combine(recs, [rnd[b] for rnd in timed["torch"][labels[0]]], ""),
                "runs": sum(x["runs"] for x in recs), "rounds": rounds,
                **{k: recs[0][k] for k in ("threads", "device", "device_name")},
            }
            row["throughput_ips"] = b / row["median_ms"] * 1e3
            for backend in backends[1:]:
                got = [rnd[b] for rnd in timed[backend][label]]
                row.update(_combine(got, [rnd[b] for rnd in timed[backend][labels[0]]], f"{backend}_"))
                row[f"{backend}_error"] = errors[backend].get(label)
                if backend == "onnx":
                    row["onnx_exporter"] = got[0]["exporter"] if got else None
                else:
                    row[f"{backend}_setup_s"] = got[0]["setup_s"] if got else None
            rows.append(row)
    return rows


def _combine(recs: Sequence[Mapping[str, Any]], refs: Sequence[Mapping[str, Any]], pre: str) -> dict[str, Any]:
    """One model's records of one batch size over rounds: the median of the round medians, the
    medians of the round quartiles, and the speedup as the median over rounds of the reference's
    median over the model's in the same round. Keys prefixed with ``pre``; None when not timed."""
    import statistics

    med = statistics.median
    if not recs:
        return {pre + k: None for k in ("median_ms", "p25_ms", "p75_ms", "iqr_ms", "round_medians_ms", "speedup")}
    p25, p75 = med([x["p25_ms"] for x in recs]), med([x["p75_ms"] for x in recs])
    pairs = [q["median_ms"] / x["median_ms"] for q, x in zip(refs, recs)]
    return {pre + "median_ms": med([x["median_ms"] for x in recs]), pre + "p25_ms": p25, pre + "p75_ms": p75,
            pre + "iqr_ms": p75 - p25, pre + "round_medians_ms": [x["median_ms"] for x in recs],
            pre + "speedup": med(pairs) if pairs else None}


def latency_pivot(rows: Sequence[Mapping[str, Any]], backend: str = "torch", digits: int = 2):
    """A table (pandas) of ``rows`` from :func:`speed_table`: one row per model, per batch size the
    median latency in ms with its interquartile range, and the speedup against the reference.
    ``backend``: ``"torch"`` (eager), ``"onnx"`` or an extra mode (``"compile"``, ``"cudagraph"``)."""
    import pandas as pd

    pre = "" if backend == "torch" else f"{backend}_"
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get(pre + "median_ms") is None:
            continue
        row = out.setdefault(r["model"], {"params (M)": r["params"] / 1e6, "MFLOPs": r["flops"] / 1e6,
                                          "FLOPs reduction": r["flop_reduction"]})
        b = r["batch_size"]
        row[f"b{b} median ms [p25-p75]"] = (f"{r[pre + 'median_ms']:.{digits}f} "
                                            f"[{r[pre + 'p25_ms']:.{digits}f}-{r[pre + 'p75_ms']:.{digits}f}]")
        row[f"b{b} speedup"] = r[pre + "speedup"]
    return pd.DataFrame.from_dict(out, orient="index").rename_axis("model")


def _is_pair(m: nn.Module) -> bool:
    """A compact basis pair: ``Sequential(conv without bias, pointwise conv)`` with matching groups."""
    if not (isinstance(m, nn.Sequential) and len(m) == 2):
        return False
    basis, proj = m[0], m[1]
    if not (isinstance(basis, nn.Conv2d) and type(proj) is nn.Conv2d) or basis.bias is not None:
        return False
    g = basis.groups
    return (proj.kernel_size == (1, 1) and proj.stride == (1, 1) and proj.dilation == (1, 1)
            and proj.padding in ((0, 0), "valid") and proj.groups == g and proj.padding_mode == "zeros"
            and proj.in_channels == basis.out_channels and basis.out_channels % g == 0)


def _lift(pair: nn.Sequential) -> BasisConv2d:
    """The :class:`BasisConv2d` (all bases kept, scales 1) computing what ``pair`` computes."""
    basis, proj = pair[0], pair[1]
    k = basis.out_channels // basis.groups
    return BasisConv2d.from_factors(copy.deepcopy(basis), proj.weight.detach().reshape(proj.out_channels, k).clone(),
                                    proj.bias)


def lift_pairs(model: nn.Module) -> nn.Module:
    """A copy of a compact model with every kept basis pair turned back into a basis layer.

    :func:`basisprune.compact` replaces a pruned basis layer by ``Sequential(basis conv, 1x1 conv)``
    (or folds it into one conv). Lifting the pairs gives a decomposed model whose layers keep all
    their bases, so :func:`basisprune.compact` can compact it again under another fold rule; the
    forward pass is unchanged.
    """
    out = copy.deepcopy(model)
    names = [n for n, m in out.named_modules() if n and _is_pair(m)]
    for name in names:
        set_submodule(out, name, _lift(out.get_submodule(name)))
    return out


def latency_compact(
    model: nn.Module,
    example_input: torch.Tensor,
    batch_sizes: Iterable[int] = (1, 8, 64),
    *,
    threads: int | None = None,
    min_run_time: float = 0.02,
    min_runs: int = 5,
    criterion: str = "each",
    timer: bench.LayerTimer | None = None,
    device: str | torch.device = "cpu",
    rounds: int = 3,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Re-compact a compact model with :func:`basisprune.bench.latency_fold_rule`.

    Every kept basis pair of ``model`` is timed against its folded single conv on the layer's
    real input shape at each batch size, in ``rounds`` interleaved rounds, and folded unless the
    pair is clearly faster (``criterion``, see :func:`basisprune.bench.latency_fold_rule`). Layers
    that were already folded stay folded.

    Returns:
        ``(compact model, decisions)``: one decision per kept pair (``name``, ``kept_per_group``,
        ``input_shape``, ``pair_ms`` and ``folded_ms`` per batch size, ``fold``, ``reason``);
        the model unchanged (a copy) and no decisions when it has no pairs.
    """
    lifted = lift_pairs(model).eval()
    if not basis_layers(lifted):
        return copy.deepcopy(model).eval(), []
    rule = bench.latency_fold_rule(lifted, example_input, batch_sizes, criterion=criterion,
                                   min_run_time=min_run_time, min_runs=min_runs, threads=threads,
                                   timer=timer, device=device, rounds=rounds)
    return compact(lifted, fold_rule=rule).eval(), rule.records


FORM = ", inference form"
"""Suffix of the label of a model's inference form in :func:`inference_forms`."""


def inference_forms(
    models: Mapping[str, nn.Module],
    example: torch.Tensor,
    batch_sizes: Iterable[int] = (1, 8, 64),
    *,
    merge: str = "latency",
    memory_format: str = "auto",
    channel_multiple: int = 8,
    threads: int | None = None,
    min_run_time: float = 0.02,
    min_runs: int = 5,
    device: str | torch.device = "cpu",
    rounds: int = 3,
) -> tuple[dict[str, nn.Module], list[dict[str, Any]]]:
    """The inference form (:func:`basisprune.inference_form`) of every model, built on ``device``
    (where its merges and memory format are timed, in ``rounds`` interleaved rounds) and returned
    on the CPU.

    Returns:
        ``({label + FORM: form}, summary)``: one summary row per model with the batch norms
        folded, the linear chains found, the chains' layers before and after merging, their
        multiply-accumulates per sample before and after, the channel widths padded and the
        memory format chosen.
    """
    from ..inference import inference_form

    forms, summary = {}, []
    dev = torch.device(device)
    for label, model in models.items():
        m = copy.deepcopy(model).to(dev).eval()
        form = inference_form(m, example.to(dev), merge=merge, memory_format=memory_format,
                              channel_multiple=channel_multiple, batch_sizes=batch_sizes, threads=threads, min_run_time=min_run_time,
                              min_runs=min_runs, rounds=rounds).cpu()
        rep = form.inference_report
        forms[label + FORM] = form
        summary.append({
            "model": label, "batch norms folded": len(rep["bn_folded"]), "chains": len(rep["chains"]),
            "chain layers": sum(len(c["layers"]) for c in rep["chains"]),
            "after merging": sum(len(c["segments"]) for c in rep["chains"]),
            "chain MMACs before": sum(c["macs_unmerged"] for c in rep["chains"]) / 1e6,
            "chain MMACs after": sum(c["macs_merged"] for c in rep["chains"]) / 1e6,
            "widths padded": len(rep["padded"]),
            "memory format": rep["memory_format"],
        })
    return forms, summary
