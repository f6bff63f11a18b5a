"""The inference form of a pruned model: what runs fast, computing what the pruned model computes.

A compact model (:func:`basisprune.compact`) computes what the masked model computes with fewer
weights, but not with fewer kernels: every kept basis pair is two convolutions, every batch norm a
separate operation. :func:`inference_form` rewrites the model's ``torch.fx`` graph for inference
(eval mode, batch-norm statistics frozen, as in all our pipelines):

1. the model is compacted if it still has basis layers or channel scales, so every basis scale
   and channel scale is folded into a weight (the 1x1 coefficient convolution, or the consumer of
   a channel group);
2. identities (``nn.Identity``, dropout in eval mode) are dropped;
3. every batch norm that follows a convolution (or a linear layer) whose output it alone reads is
   folded into it (``torch.nn.utils.fusion``);
4. chains of linear layers with nothing between them (a conv, then 1x1 convs with stride 1 and the
   same groups; or linear layers) are multiplied out where that is not slower. A basis pair is
   such a chain (basis conv, then its 1x1 coefficient conv, whose batch norm step 3 folded), and
   so is MobileNetV2's projection (no activation) followed by the next block's expansion where no
   residual reads the projection. The split of each chain into merged segments minimises a cost,
   by dynamic programming over the chain: ``merge="flops"`` counts multiply-accumulates,
   ``merge="latency"`` times every segment on its real input shape at each batch size;
5. channel widths (a space of channels that convs write and convs or linear layers read, through
   element-wise activations, depthwise convs, additions and global pooling) are padded with zero
   channels to a multiple of ``channel_multiple`` (8), the block size of oneDNN's and ONNX
   Runtime's convolution kernels: odd pruned widths run several times slower in ONNX Runtime;
6. channels-last memory format is used where it is measured to be faster (``memory_format``;
   decided before the merges of step 4, which are then timed in that format);
7. with ``merge="latency"`` and a masked model, the whole form is timed against the same form
   built with every basis pair folded back into one conv (``guard``): the pairs are kept only
   where they are clearly faster together, so the form is never slower than the unpruned layers.

The result computes the input model's function to float rounding; merged weights are computed in
float64. :func:`basisprune.export` (:mod:`basisprune.deploy`) writes it to ONNX. Steps 2 and 3 live in
``basisprune.fx_passes``, step 4 in ``basisprune.merge``, step 5 in ``basisprune.padding``.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from . import bench
from .channel import channel_scales
from .compact import compact, fold_all
from .decompose import basis_layers
from .fx_passes import drop_identities, fold_batchnorms, trace
from .measure import count_params
from .merge import merge_chains
from .padding import pad_channels

__all__ = [
    "ExportCheckError",
    "InferenceCheckError",
    "MERGE_MODES",
    "check_inputs",
    "inference_form",
    "max_diff",
    "outputs",
]

MERGE_MODES = ("flops", "latency", "none")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
RUNTIMES = ("torch", "onnxruntime")



class InferenceCheckError(RuntimeError):
    """The inference form's outputs differ from the input model's beyond the tolerance."""


class ExportCheckError(RuntimeError):
    """ONNX Runtime's outputs differ from PyTorch's beyond the tolerance (nothing was written)."""


# ------------------------------------------------------------------------------------ helpers
def check_inputs(model: object, example: object) -> None:
    """``ValueError`` unless ``model`` is a module and ``example`` a batch of at least one sample."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor) or example.dim() < 1 or example.shape[0] < 1:
        what = f"a tensor of shape {tuple(example.shape)}" if isinstance(example, torch.Tensor) else type(example).__name__
        raise ValueError(f"example must be a batch tensor (batch dimension first, at least one sample), got {what}")


def outputs(y: object) -> list[torch.Tensor]:
    """A model's output as a list of tensors: a tensor, or a tuple / list of tensors; anything else
    (dicts, nested or non-tensor outputs) raises a one-line ValueError."""
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, (tuple, list)) and y and all(isinstance(t, torch.Tensor) for t in y):
        return list(y)
    raise ValueError(
        f"model: its output is a {type(y).__name__}; inference forms and ONNX export take models returning "
        "a tensor or a tuple of tensors (wrap the model to return those)"
    )


def max_diff(got: torch.Tensor | Sequence[torch.Tensor], want: object, rtol: float, atol: float) -> tuple[bool, float]:
    """(close, max |got - want|) over the outputs: close when each output's largest difference is
    at most ``atol + rtol * max |want|`` (a tolerance relative to the output's scale)."""
    gots, wants = outputs(got) if not isinstance(got, list) else got, outputs(want)
    if len(gots) != len(wants):
        return False, float("inf")
    if len(wants) > 1:
        pairs = [max_diff(g, w, rtol, atol) for g, w in zip(gots, wants)]
        return all(ok for ok, _ in pairs), max(d for _, d in pairs)
    got, want = gots[0], wants[0]
    if got.shape != want.shape:
        return False, float("inf")
    if not want.numel():
        return True, 0.0
    diff = float((got.double() - want.double()).abs().max())
    return diff <= atol + rtol * float(want.double().abs().max()), diff


def _finish(gm: fx.GraphModule, channel_multiple: int, example: torch.Tensor) -> tuple[fx.GraphModule, list]:
    """Pad channel widths, drop what is unused, freeze: the final ``InferenceForm`` and the padding."""
    padded = []
    if channel_multiple > 1:
        gm.recompile()
        ShapeProp(gm).propagate(example[:1])  # merges changed shapes; flatten needs them
        padded = pad_channels(gm, channel_multiple)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    out = fx.GraphModule(gm, gm.graph, class_name="InferenceForm")
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval(), padded


def _pick_format(gm: fx.GraphModule, timer: bench.LayerTimer, sizes: Sequence[int], example: torch.Tensor,
                 seed: int, rounds: int = 5, margin: float = 0.02) -> tuple[str, dict[str, Any]]:
    """``"channels_last"`` when the whole model is clearly faster so (interleaved rounds, paired
    ratio averaged over batch sizes: :func:`basisprune.bench.clearly_faster`), else
    ``"contiguous"``; and the timings (medians over rounds) with the paired ratio."""
    cl = _channels_last(gm)
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn((b, *example.shape[1:]), generator=gen, dtype=example.dtype).to(example.device) for b in sizes]
    t_contig, t_cl = bench.interleaved_times([(gm, xs), (cl, xs)], timer, rounds)
    verdict = bench.clearly_faster(t_cl, t_contig, margin=margin)
    ms = {name: [1e3 * statistics.median(r[b] for r in t) for b in range(len(xs))]
          for name, t in (("contiguous", t_contig), ("channels_last", t_cl))}
    return ("channels_last" if verdict["faster"] else "contiguous"), {
        "batch_sizes": list(sizes), "rounds": rounds, **ms, "channels_last_to_contiguous": verdict["ratio_median"],
        "channels_last_to_contiguous_p25": verdict["ratio_p25"], "channels_last_to_contiguous_p75": verdict["ratio_p75"]}


def _channels_last(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy taking its input in channels-last format (converted on entry) with 4-D weights in it."""
    out = copy.deepcopy(gm)
    ph = next(n for n in out.graph.nodes if n.op == "placeholder")
    with out.graph.inserting_after(ph):
        cl = out.graph.call_method("contiguous", (ph,), {"memory_format": torch.channels_last})
    ph.replace_all_uses_with(cl, delete_user_cb=lambda user: user is not cl)
    out.recompile()
    return out.to(memory_format=torch.channels_last)


def _build(base: nn.Module, example: torch.Tensor, *, merge: str, memory_format: str, channel_multiple: int,
           sizes: list[int], threads: int | None, rounds: int, margin: float, runtime: str,
           timer: bench.LayerTimer, cache: bool, seed: int) -> tuple[fx.GraphModule, dict[str, Any]]:
    """Steps 2-6 on a compact (or unpruned) model: the form and its report."""
    base.eval()
    gm = trace(base)
    gm.eval()
    report: dict[str, Any] = {"merge": merge, "leaf_types": gm.leaf_types}
    if merge == "latency" or memory_format == "auto":
        report["timed_on"] = {**bench.timed_on(threads, example.device), "runtime": runtime}
    report["dropped"] = drop_identities(gm)
    report["bn_folded"] = fold_batchnorms(gm)
    gm.graph.lint()
    gm.recompile()
    fmt, report["memory_format_ms"] = memory_format, None
    if memory_format == "auto":
        # decided first, on the padded form without merges, so merges are timed in that format
        fmt = "contiguous"
        if example.dim() == 4 and runtime == "torch":
            probe, _ = _finish(copy.deepcopy(gm), channel_multiple, example)
            fmt, report["memory_format_ms"] = _pick_format(probe, timer, sizes, example, seed, rounds, margin)
    chains: list[dict[str, Any]] = []
    if merge != "none":
        ShapeProp(gm).propagate(example[:1])
        chains = merge_chains(gm, merge, timer, sizes, seed, channels_last=fmt == "channels_last",
                               rounds=rounds, margin=margin, cache=cache, timed_on=report.get("timed_on"))
    report["chains"] = chains
    gm, report["padded"] = _finish(gm, channel_multiple, example)
    report["memory_format"] = fmt
    if fmt == "channels_last":
        gm = _channels_last(gm)
    return gm, report


def _guard(gm: fx.GraphModule, report: dict[str, Any], fallback: tuple[fx.GraphModule, dict[str, Any]],
           timer: bench.LayerTimer, sizes: Sequence[int], example: torch.Tensor, seed: int, rounds: int,
           margin: float) -> tuple[fx.GraphModule, dict[str, Any]]:
    """The form with its kept basis pairs if it is clearly faster than the form with every pair
    folded back (the unpruned layers' shapes) at every batch size, else the folded one; the
    report's ``guard`` records the whole-model timings (medians over rounds) and paired ratios."""
    folded, folded_report = fallback
    gen = torch.Generator().manual_seed(seed + 1)
    xs = [torch.randn((b, *example.shape[1:]), generator=gen, dtype=example.dtype).to(example.device) for b in sizes]
    t_pairs, t_folded = bench.interleaved_times([(gm, xs), (folded, xs)], timer, rounds)
    verdict = bench.clearly_faster(t_pairs, t_folded, margin=margin, each=True)
    keep = verdict["faster"]
    out, out_report = (gm, report) if keep else (folded, folded_report)
    out_report["guard"] = {
        "kept": "pairs" if keep else "folded", "batch_sizes": list(sizes), "rounds": rounds,
        "pairs_ms": [1e3 * statistics.median(r[b] for r in t_pairs) for b in range(len(xs))],
        "folded_ms": [1e3 * statistics.median(r[b] for r in t_folded) for b in range(len(xs))],
        "pairs_to_folded": verdict["ratio_median"], "pairs_to_folded_p25": verdict["ratio_p25"],
        "pairs_to_folded_p75": verdict["ratio_p75"]}
    return out, out_report


# --------------------------------------------------------------------------------------- API
def inference_form(
    model: nn.Module,
    example: torch.Tensor,
    *,
    merge: str = "flops",
    memory_format: str = "contiguous",
    channel_multiple: int = 8,
    batch_sizes: Iterable[int] = (1, 8, 64),
    threads: int | None = None,
    min_run_time: float = 0.02,
    min_runs: int = 5,
    rounds: int = 5,
    margin: float = 0.02,
    runtime: str = "torch",
    guard: bool = True,
    timer: bench.LayerTimer | None = None,
    check: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    seed: int = 0,
) -> fx.GraphModule:
    """The inference form of ``model``: scales and batch norms folded, linear chains merged.

    Args:
        model: a compact model, or a pruned one with masks (basis layers and / or channel scales;
            it is compacted first with :func:`basisprune.compact`). Not modified.
        example: a batch the model accepts, on the model's device (traces shapes; its batch
            size does not matter).
        merge: how chains of linear layers are split into merged segments: ``"flops"`` (fewest
            multiply-accumulates; ties merge), ``"latency"`` (each segment timed on its real input
            shape; the fastest split, each batch size weighing the same, is kept only where it is
            clearly faster than the chain merged into one layer, else the chain is merged: a basis
            pair that does not pay becomes the unpruned layer again), ``"none"``.
        memory_format: ``"contiguous"``, ``"channels_last"`` (input converted on entry, 4-D
            weights stored channels-last) or ``"auto"``: channels-last where the whole model is
            clearly faster so (each batch size relative to contiguous), else contiguous.
        channel_multiple: round every channel width that convs write and convs / linear layers
            read (through element-wise activations, adaptive pooling, depthwise convs, additions)
            up to a multiple of this, with zero filters and zero input columns (exact). ONNX
            Runtime's and oneDNN's kernels block channels by 8 or 16: pruned odd widths can run
            several times slower there. 1 pads nothing.
        batch_sizes, threads, min_run_time, min_runs: the timings of ``"latency"`` and ``"auto"``
            (:func:`basisprune.bench.benchmark_timer`).
        rounds, margin: every timed choice times its candidates in ``rounds`` interleaved rounds
            and takes the alternative to the default only when the median paired ratio is below
            ``1 - margin`` and its upper quartile below 1 (:func:`basisprune.bench.clearly_faster`).
            Choices made with the default timer are remembered for the process (``"cached"`` in
            their record) with the hardware that made them.
        runtime: where the form will run, so where its choices are timed: ``"torch"`` (eager
            PyTorch on the example's device) or ``"onnxruntime"`` (every candidate exported and
            timed in ONNX Runtime, :func:`basisprune.bench.onnxruntime_timer`; the memory format
            is then contiguous, ONNX Runtime picking its own layouts).
        guard: with ``merge="latency"`` and a model that still has basis layers (pass the masked
            model, not its compact copy), also build the form with every basis pair folded back into
            one conv (the unpruned layers' shapes, ``basisprune.compact.fold_all``), time both
            whole forms in ``rounds`` interleaved rounds at ``batch_sizes``, and keep the pairs only
            where they are clearly faster at every batch size: where the pruned pairs do not pay
            together, the layers stay as they were, so the form is not slower than the unpruned
            model's form there (up to timing noise). Recorded as ``guard`` in the report.
        timer: ``timer(module, x) -> seconds`` replacing the default timer (e.g. in tests).
        check: compare the outputs on ``example`` with ``model``'s; raise
            :class:`InferenceCheckError` when the largest difference exceeds
            ``atol + rtol * max |output|``.
        seed: seed of the random timing inputs.

    Returns:
        A ``torch.fx.GraphModule`` in eval mode with frozen parameters. Its ``inference_report``
        dict lists what was done: ``dropped`` (identities), ``bn_folded``, ``chains`` (each chain's
        layers, the merged ``segments``, multiply-accumulates per sample before and after, and the
        timings under ``"latency"``), ``merge``, ``padded`` (producer, consumer, channels,
        padded_to), ``leaf_types`` (submodule classes kept whole because their forward cannot be
        traced), ``guard`` (``None`` where no guard ran; else ``kept``: ``"pairs"`` or
        ``"folded"``, both forms' medians and the paired ratio), ``memory_format``,
        ``memory_format_ms`` (medians and the paired ratio) and ``timed_on`` (device name, threads, torch version of the timings).

    Raises:
        ValueError: bad arguments, or a model ``torch.fx`` cannot trace.
    """
    check_inputs(model, example)
    if merge not in MERGE_MODES:
        raise ValueError(f"merge must be one of {MERGE_MODES}, got {merge!r}")
    if not isinstance(channel_multiple, int) or channel_multiple < 1:
        raise ValueError(f"channel_multiple must be an int >= 1, got {channel_multiple!r}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
    sizes = bench.check_batch_sizes(batch_sizes)
    if memory_format == "channels_last" and example.dim() != 4:
        raise ValueError(f"memory_format='channels_last' needs a 4-D example (N, C, H, W), got shape {tuple(example.shape)}")
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if not isinstance(guard, bool):
        raise ValueError(f"guard must be True or False, got {guard!r}")
    cache = timer is None  # only real timings are worth remembering
    if timer is None:
        timer = (bench.onnxruntime_timer(threads, min_run_time, min_runs) if runtime == "onnxruntime"
                 else bench.benchmark_timer(min_run_time, threads, min_runs))
    was_training = model.training
    model.eval()
    folded = None
    try:
        with torch.no_grad():
            want = model(example)
        if basis_layers(model) or channel_scales(model):
            base = compact(model, example)
            if guard and merge == "latency" and basis_layers(model):
                folded = compact(model, example, fold_rule=fold_all)
                if count_params(folded) == count_params(base):  # compaction kept no pair: nothing to guard
                    folded = None
        else:
            base = copy.deepcopy(model)
    finally:
        model.train(was_training)
    opts = dict(merge=merge, memory_format=memory_format, channel_multiple=channel_multiple, sizes=sizes,
                threads=threads, rounds=rounds, margin=margin, runtime=runtime, timer=timer, cache=cache, seed=seed)
    with bench.num_threads(threads):
        gm, report = _build(base, example, **opts)
        if folded is not None:
            gm, report = _guard(gm, report, _build(folded, example, **opts), timer, sizes, example, seed, rounds,
                                margin)
    report.setdefault("guard", None)
    gm.inference_report = report
    if check:
        with torch.no_grad():
            got = gm(example)
        ok, diff = max_diff(got, want, rtol, atol)
        if not ok:
            raise InferenceCheckError(
                f"the inference form's output differs from the model's by {diff:.3g} "
                f"(allowed {atol} + {rtol} * max |output|)"
            )
        report["max_abs_diff"] = diff
    return gm
