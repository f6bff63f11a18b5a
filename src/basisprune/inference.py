"""The inference form of a pruned model, and its ONNX export checked in ONNX Runtime.

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
   decided before the merges of step 4, which are then timed in that format).

The result computes the input model's function to float rounding; merged weights are computed in
float64. :func:`export` writes an ONNX file only after ONNX Runtime has reproduced PyTorch's outputs.
"""

from __future__ import annotations

import collections
import copy
import operator
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from . import bench
from .channel import channel_scales
from .compact import compact
from .decompose import basis_layers, set_submodule
from .io import atomic_write

__all__ = [
    "ExportCheckError",
    "InferenceCheckError",
    "MERGE_MODES",
    "export",
    "inference_form",
]

MERGE_MODES = ("flops", "latency", "none")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")

_IDENTITIES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
               nn.FeatureAlphaDropout)
_CONV_BN = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


class InferenceCheckError(RuntimeError):
    """The inference form's outputs differ from the input model's beyond the tolerance."""


class ExportCheckError(RuntimeError):
    """ONNX Runtime's outputs differ from PyTorch's beyond the tolerance (nothing was written)."""


# ------------------------------------------------------------------------------------ helpers
def _check_inputs(model: object, example: object) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor) or example.dim() < 1 or example.shape[0] < 1:
        raise ValueError(f"example must be a batch tensor (batch dimension first), got {example!r:.80}")


def _max_diff(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> tuple[bool, float]:
    """(close, max |got - want|): close when the largest difference is at most
    ``atol + rtol * max |want|`` (a tolerance relative to the output's scale, not per element)."""
    if got.shape != want.shape:
        return False, float("inf")
    if not want.numel():
        return True, 0.0
    diff = float((got.double() - want.double()).abs().max())
    return diff <= atol + rtol * float(want.double().abs().max()), diff


def _module_calls(gm: fx.GraphModule) -> collections.Counter:
    return collections.Counter(n.target for n in gm.graph.nodes if n.op == "call_module")


def _only_input(node: fx.Node) -> fx.Node | None:
    """The node's single tensor input when it is called as ``module(x)``, else None."""
    if len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node):
        return node.args[0]
    return None


def _single_use(gm: fx.GraphModule, calls: collections.Counter, node: fx.Node) -> bool:
    """A call_module node whose module is called nowhere else and whose output one node reads."""
    return node.op == "call_module" and calls[node.target] == 1 and len(node.users) == 1


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means the same thing to the user
        raise ValueError(
            f"model: torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {str(e)[:200]}); "
            "inference_form needs a model whose forward has no data-dependent control flow"
        ) from e


# ----------------------------------------------------------------------------------- passes
def _drop_identities(gm: fx.GraphModule) -> list[str]:
    modules = dict(gm.named_modules())
    dropped = []
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(modules[node.target], _IDENTITIES):
            src = _only_input(node)
            if src is not None:
                node.replace_all_uses_with(src)
                gm.graph.erase_node(node)
                dropped.append(node.target)
    return dropped


def _fold_batchnorms(gm: fx.GraphModule) -> list[str]:
    """Fold every batch norm into the conv / linear layer feeding only it; returns their names."""
    modules = dict(gm.named_modules())
    calls = _module_calls(gm)
    folded = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        bn = modules[node.target]
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
            continue  # without running statistics a batch norm normalises by the batch even in eval
        prev = _only_input(node)
        if prev is None or not _single_use(gm, calls, prev):
            continue
        layer = modules[prev.target]
        if type(layer) is nn.Linear and type(bn) is nn.BatchNorm1d:
            fused = fuse_linear_bn_eval(layer, bn)
        elif any(isinstance(layer, c) and type(bn) is b for c, b in _CONV_BN.items()):
            fused = fuse_conv_bn_eval(layer, bn)
        else:
            continue
        set_submodule(gm, prev.target, fused)
        modules[prev.target] = fused
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded.append(node.target)
    return folded


def _follows(first: nn.Module, nxt: nn.Module) -> bool:
    """Whether ``nxt`` applied to ``first``'s output can be multiplied into ``first``."""
    if type(first) is nn.Linear:
        return type(nxt) is nn.Linear and nxt.in_features == first.out_features
    if not isinstance(first, nn.Conv2d) or type(nxt) is not nn.Conv2d:
        return False
    return (nxt.kernel_size == (1, 1) and nxt.stride == (1, 1) and nxt.dilation == (1, 1)
            and nxt.padding in ((0, 0), "valid") and nxt.groups == first.groups
            and nxt.in_channels == first.out_channels)


def merge_layers(layers: Sequence[nn.Module]) -> nn.Module:
    """One layer computing ``layers[-1](...layers[1](layers[0](x)))`` for a chain of linear layers
    (a conv followed by 1x1 convs with its groups, or linear layers), computed in float64.

    The merged conv is a copy of ``layers[0]`` (same class, stride, padding, dilation) with the
    product weight; biases are carried through the chain.
    """
    first = layers[0]
    for a, b in zip(layers, layers[1:]):
        if not _follows(a, b):
            raise ValueError(f"layers: {type(b).__name__} cannot be merged into the chain starting with {first}")
    dtype = first.weight.dtype
    with torch.no_grad():
        if type(first) is nn.Linear:
            w = first.weight.double()
            bias = None if first.bias is None else first.bias.double()
            for m in layers[1:]:
                mw = m.weight.double()
                w, bias = mw @ w, None if bias is None else mw @ bias
                if m.bias is not None:
                    bias = m.bias.double() + (0.0 if bias is None else bias)
            out = nn.Linear(first.in_features, w.shape[0], bias=bias is not None)
            out = out.to(device=first.weight.device, dtype=dtype)
        else:
            g = first.groups
            tail = first.weight.shape[1:]
            w = first.weight.double().reshape(g, first.out_channels // g, -1)
            bias = None if first.bias is None else first.bias.double().reshape(g, -1, 1)
            for m in layers[1:]:
                mw = m.weight.double().reshape(g, m.out_channels // g, m.in_channels // g)
                w, bias = torch.bmm(mw, w), None if bias is None else torch.bmm(mw, bias)
                if m.bias is not None:
                    bias = m.bias.double().reshape(g, -1, 1) + (0.0 if bias is None else bias)
            out = copy.deepcopy(first)
            out.out_channels = w.shape[0] * w.shape[1]
            w = w.reshape(out.out_channels, *tail)
            bias = None if bias is None else bias.reshape(-1)
        out.weight = nn.Parameter(w.to(dtype), requires_grad=False)
        out.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)
    return out


def _macs(layer: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one call on one sample (shapes without the batch dimension)."""
    if isinstance(layer, nn.Conv2d):
        positions = int(torch.Size(out_shape[1:]).numel())
        k = layer.weight.shape[1] * layer.weight.shape[2] * layer.weight.shape[3]
        return positions * layer.out_channels * k
    rows = int(torch.Size(in_shape).numel()) // layer.in_features
    return rows * layer.in_features * layer.out_features


def _chains(gm: fx.GraphModule) -> list[list[fx.Node]]:
    """Maximal chains of call_module nodes ``n0 -> n1 -> ...`` that :func:`merge_layers` accepts
    pairwise, each inner output read only by the next link."""
    modules = dict(gm.named_modules())
    calls = _module_calls(gm)
    nxt: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if not _single_use(gm, calls, node):
            continue
        user = next(iter(node.users))
        if (user.op == "call_module" and calls[user.target] == 1 and _only_input(user) is node
                and _follows(modules[node.target], modules[user.target])):
            nxt[node] = user
    inner = set(nxt.values())
    starts = [n for n in nxt if n not in inner]
    chains = []
    for n in starts:
        chain = [n]
        while chain[-1] in nxt:
            chain.append(nxt[chain[-1]])
        chains.append(chain)
    return chains


def _partition(n: int, cost: Callable[[int, int], float]) -> list[tuple[int, int]]:
    """Split ``0..n-1`` into contiguous segments ``(i, j)`` minimising the summed ``cost(i, j)``;
    among equal costs, the fewest segments (fewer kernels)."""
    best: list[tuple[float, int]] = [(0.0, 0)] + [(float("inf"), 0)] * n
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(1, j + 1):
            cand = (best[i - 1][0] + cost(i - 1, j - 1), best[i - 1][1] + 1)
            if cand < best[j]:
                best[j], start[j] = cand, i
    segments, j = [], n
    while j > 0:
        segments.append((start[j] - 1, j - 1))
        j = start[j] - 1
    return segments[::-1]


def _merge_chains(gm: fx.GraphModule, merge: str, timer: bench.LayerTimer | None,
                  batch_sizes: Sequence[int], seed: int, channels_last: bool = False) -> list[dict[str, Any]]:
    modules = dict(gm.named_modules())
    records = []
    gen = torch.Generator().manual_seed(seed)
    chains = _chains(gm)
    # shapes first: merging a chain rewires the inputs of the nodes after it
    shapes = [([tuple(n.args[0].meta["tensor_meta"].shape[1:]) for n in chain],
               [tuple(n.meta["tensor_meta"].shape[1:]) for n in chain]) for chain in chains]
    for chain, (in_shapes, out_shapes) in zip(chains, shapes):
        layers = [modules[n.target] for n in chain]
        memo: dict[tuple[int, int], Any] = {}

        def merged(i: int, j: int) -> nn.Module:
            return layers[i] if i == j else merge_layers(layers[i:j + 1])

        def macs(i: int, j: int) -> int:
            return _macs(merged(i, j), in_shapes[i], out_shapes[j])

        if merge == "flops":
            def cost(i: int, j: int) -> float:
                return memo.setdefault((i, j), float(macs(i, j)))
        else:
            w = layers[0].weight
            xs = [torch.randn((b, *in_shapes[0]), generator=gen, dtype=w.dtype).to(w.device) for b in batch_sizes]

            def seconds(i: int, j: int) -> list[float]:
                if (i, j) not in memo:
                    x_in = [_prefix_output(layers[:i], x) for x in xs]
                    module = merged(i, j)
                    if channels_last and x_in[0].dim() == 4:  # timed in the format the form will run in
                        module = copy.deepcopy(module).to(memory_format=torch.channels_last)
                        x_in = [x.contiguous(memory_format=torch.channels_last) for x in x_in]
                    memo[(i, j)] = [float(timer(module, x)) for x in x_in]
                return memo[(i, j)]

            unmerged = [sum(seconds(k, k)[b] for k in range(len(layers))) for b in range(len(batch_sizes))]

            def cost(i: int, j: int) -> float:  # each batch size weighs the same
                return sum(t / max(u, 1e-12) for t, u in zip(seconds(i, j), unmerged))
        segments = _partition(len(chain), cost)
        rec = {"layers": [n.target for n in chain], "segments": [[chain[k].target for k in range(i, j + 1)]
                                                                 for i, j in segments],
               "macs_unmerged": sum(macs(k, k) for k in range(len(chain))),
               "macs_merged": sum(macs(i, j) for i, j in segments)}
        if merge == "latency":
            rec["batch_sizes"] = list(batch_sizes)
            rec["ms_unmerged"] = [1e3 * sum(memo[(k, k)][b] for k in range(len(chain))) for b in range(len(batch_sizes))]
            rec["ms_merged"] = [1e3 * sum(memo[s][b] for s in segments) for b in range(len(batch_sizes))]
        records.append(rec)
        for i, j in segments:
            if i == j:
                continue
            set_submodule(gm, chain[i].target, merge_layers(layers[i:j + 1]))
            chain[j].replace_all_uses_with(chain[i])
            for node in reversed(chain[i + 1:j + 1]):
                gm.graph.erase_node(node)
    return records


def _prefix_output(layers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """A chain segment's real input: the earlier links applied to the chain's input."""
    with torch.inference_mode():
        for m in layers:
            x = m(x)
    return x.clone()


_CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU,
                nn.Sigmoid, nn.Tanh, nn.ELU, nn.Mish, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_ADDS = (operator.add, torch.add)
_ACTIVATIONS = (torch.relu, F.relu, F.relu6, F.hardtanh, F.hardswish, F.silu, F.gelu, torch.sigmoid, torch.tanh)
_POOLS = (F.adaptive_avg_pool2d, F.adaptive_max_pool2d)


def _padded(t: torch.Tensor | None, dim: int, size: int) -> nn.Parameter | None:
    """``t`` with zeros appended along ``dim`` up to ``size`` (a frozen parameter)."""
    if t is None:
        return None
    pad = list(t.shape)
    pad[dim] = size - t.shape[dim]
    return nn.Parameter(torch.cat([t.detach(), t.new_zeros(pad)], dim), requires_grad=False)


class _Region:
    """The tensors that share one channel space: grown from a conv's output through element-wise
    activations, adaptive pooling, depthwise convs, additions (both ways) and a flatten of a 1x1 map,
    up to the convs / linear layers that read it (consumers) and the convs that write it (producers)."""

    def __init__(self, gm: fx.GraphModule, calls: collections.Counter, start: fx.Node, channels: int):
        self.modules = dict(gm.named_modules())
        self.calls, self.c = calls, channels
        self.producers: set[fx.Node] = set()
        self.consumers: set[fx.Node] = set()
        self.inner: set[fx.Node] = set()
        self.ok = self._grow(start)

    def _module(self, n: fx.Node) -> nn.Module | None:
        if n.op == "call_module" and self.calls[n.target] == 1:
            return self.modules[n.target]
        return None

    def _kind(self, n: fx.Node, forward: bool) -> str | None:
        """``"inner"``, ``"consumer"`` (reached forward), ``"producer"`` (reached backward) or None
        (the region cannot be padded)."""
        m = self._module(n)
        if type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels == self.c:
            return "inner"  # depthwise: one filter per channel
        if isinstance(m, _CHANNELWISE) and _only_input(n) is not None:
            return "inner"
        if forward and _only_input(n) is not None:
            if type(m) is nn.Conv2d and m.groups == 1 and m.in_channels == self.c:
                return "consumer"
            meta = n.args[0].meta.get("tensor_meta")
            if type(m) is nn.Linear and m.in_features == self.c and meta is not None and len(meta.shape) == 2:
                return "consumer"
        if not forward and type(m) is nn.Conv2d and m.groups == 1 and m.out_channels == self.c:
            return "producer"
        if n.op == "call_function" and (n.target in _ADDS or n.target in _POOLS or n.target in _ACTIVATIONS):
            return "inner"
        if n.op == "call_function" and n.target is torch.flatten and tuple(n.args[1:]) == (1,) and not n.kwargs:
            meta = n.args[0].meta.get("tensor_meta")
            return "inner" if meta is not None and all(d == 1 for d in meta.shape[2:]) else None
        return None

    def _grow(self, start: fx.Node) -> bool:
        self.producers.add(start)
        sets = {"inner": self.inner, "consumer": self.consumers, "producer": self.producers}
        todo = [start]
        while todo:
            node = todo.pop()
            near = [(user, True) for user in node.users]
            if node not in self.producers:  # a producer's input is another channel space
                near += [(arg, False) for arg in node.all_input_nodes]
            for other, forward in near:
                # a conv can read and write one space (x + conv(x)): consumer forward, producer backward
                if other in self.inner or other in (self.consumers if forward else self.producers):
                    continue
                kind = self._kind(other, forward)
                if kind is None:
                    return False
                sets[kind].add(other)
                if kind != "consumer":
                    todo.append(other)
        return bool(self.consumers)


def _pad_channels(gm: fx.GraphModule, multiple: int) -> list[dict[str, Any]]:
    """Round every channel space whose width is not a multiple of ``multiple`` up to one, where
    that is exact: zero filters (and biases) in the convs that write it, depthwise convs inside it
    widened with zero filters, zero input columns in the convs and linear layers that read it;
    whatever the padded channels hold then never reaches an output. Kernels that block channels by
    8 or 16 (oneDNN, ONNX Runtime's NCHWc) run odd widths much slower."""
    calls = _module_calls(gm)
    modules = dict(gm.named_modules())
    seen: set[fx.Node] = set()
    padded = []
    for node in list(gm.graph.nodes):
        m = modules.get(node.target) if node.op == "call_module" else None
        if node in seen or type(m) is not nn.Conv2d or m.groups != 1 or calls[node.target] != 1:
            continue
        c = m.out_channels
        if c % multiple == 0:
            continue
        region = _Region(gm, calls, node, c)
        seen |= region.producers
        if not region.ok:
            continue
        size = -(-c // multiple) * multiple
        for n in region.producers:
            p = modules[n.target]
            p.weight, p.bias, p.out_channels = _padded(p.weight, 0, size), _padded(p.bias, 0, size), size
        for n in region.inner:
            d = modules.get(n.target) if n.op == "call_module" else None
            if isinstance(d, nn.Conv2d):
                d.weight, d.bias = _padded(d.weight, 0, size), _padded(d.bias, 0, size)
                d.in_channels = d.out_channels = d.groups = size
        for n in region.consumers:
            q = modules[n.target]
            q.weight = _padded(q.weight, 1, size)
            if isinstance(q, nn.Conv2d):
                q.in_channels = size
            else:
                q.in_features = size
        padded.append({"producers": sorted(n.target for n in region.producers),
                       "consumers": sorted(n.target for n in region.consumers), "channels": c, "padded_to": size})
    return padded


def _finish(gm: fx.GraphModule, channel_multiple: int, example: torch.Tensor) -> tuple[fx.GraphModule, list]:
    """Pad channel widths, drop what is unused, freeze: the final ``InferenceForm`` and the padding."""
    padded = []
    if channel_multiple > 1:
        gm.recompile()
        ShapeProp(gm).propagate(example[:1])  # merges changed shapes; flatten needs them
        padded = _pad_channels(gm, channel_multiple)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    out = fx.GraphModule(gm, gm.graph, class_name="InferenceForm")
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval(), padded


def _pick_format(gm: fx.GraphModule, timer: bench.LayerTimer, sizes: Sequence[int], example: torch.Tensor,
                 seed: int) -> tuple[str, dict[str, Any]]:
    """``"channels_last"`` when the whole model is faster so (summed over batch sizes, each
    relative to contiguous), else ``"contiguous"``; and the timings."""
    cl = _channels_last(gm)
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn((b, *example.shape[1:]), generator=gen, dtype=example.dtype).to(example.device) for b in sizes]
    ms = {"contiguous": [1e3 * timer(gm, x) for x in xs], "channels_last": [1e3 * timer(cl, x) for x in xs]}
    faster = sum(c / max(d, 1e-12) for c, d in zip(ms["channels_last"], ms["contiguous"])) < len(sizes)
    return ("channels_last" if faster else "contiguous"), {"batch_sizes": list(sizes), **ms}


def _channels_last(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy taking its input in channels-last format (converted on entry) with 4-D weights in it."""
    out = copy.deepcopy(gm)
    ph = next(n for n in out.graph.nodes if n.op == "placeholder")
    with out.graph.inserting_after(ph):
        cl = out.graph.call_method("contiguous", (ph,), {"memory_format": torch.channels_last})
    ph.replace_all_uses_with(cl, delete_user_cb=lambda user: user is not cl)
    out.recompile()
    return out.to(memory_format=torch.channels_last)


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
            multiply-accumulates; ties merge), ``"latency"`` (shortest measured time, each batch
            size weighing the same: each segment is timed on its real input shape), ``"none"``.
        memory_format: ``"contiguous"``, ``"channels_last"`` (input converted on entry, 4-D
            weights stored channels-last) or ``"auto"``: channels-last where the whole model is
            measured faster (summed over ``batch_sizes``, each relative to contiguous).
        channel_multiple: round every channel width that convs write and convs / linear layers
            read (through element-wise activations, adaptive pooling, depthwise convs, additions)
            up to a multiple of this, with zero filters and zero input columns (exact). ONNX
            Runtime's and oneDNN's kernels block channels by 8 or 16: pruned odd widths can run
            several times slower there. 1 pads nothing.
        batch_sizes, threads, min_run_time, min_runs: the timings of ``"latency"`` and ``"auto"``
            (:func:`basisprune.bench.benchmark_timer`).
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
        padded_to), ``memory_format`` and ``memory_format_ms``.

    Raises:
        ValueError: bad arguments, or a model ``torch.fx`` cannot trace.
    """
    _check_inputs(model, example)
    if merge not in MERGE_MODES:
        raise ValueError(f"merge must be one of {MERGE_MODES}, got {merge!r}")
    if not isinstance(channel_multiple, int) or channel_multiple < 1:
        raise ValueError(f"channel_multiple must be an int >= 1, got {channel_multiple!r}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
    sizes = bench._check_batch_sizes(batch_sizes)
    if memory_format == "channels_last" and example.dim() != 4:
        raise ValueError(f"memory_format='channels_last' needs a 4-D example (N, C, H, W), got shape {tuple(example.shape)}")
    timer = timer or bench.benchmark_timer(min_run_time, threads, min_runs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model(example)
        if basis_layers(model) or channel_scales(model):
            base = compact(model, example)
        else:
            base = copy.deepcopy(model)
    finally:
        model.train(was_training)
    base.eval()
    gm = _trace(base)
    gm.eval()
    report: dict[str, Any] = {"merge": merge}
    with bench._num_threads(threads):
        report["dropped"] = _drop_identities(gm)
        report["bn_folded"] = _fold_batchnorms(gm)
        gm.graph.lint()
        gm.recompile()
        fmt, report["memory_format_ms"] = memory_format, None
        if memory_format == "auto":
            # decided first, on the padded form without merges, so merges are timed in that format
            fmt = "contiguous"
            if example.dim() == 4:
                probe, _ = _finish(copy.deepcopy(gm), channel_multiple, example)
                fmt, report["memory_format_ms"] = _pick_format(probe, timer, sizes, example, seed)
        chains: list[dict[str, Any]] = []
        if merge != "none":
            ShapeProp(gm).propagate(example[:1])
            chains = _merge_chains(gm, merge, timer, sizes, seed, channels_last=fmt == "channels_last")
        report["chains"] = chains
        gm, report["padded"] = _finish(gm, channel_multiple, example)
        report["memory_format"] = fmt
        if fmt == "channels_last":
            gm = _channels_last(gm)
    gm.inference_report = report
    if check:
        with torch.no_grad():
            got = gm(example)
        ok, diff = _max_diff(got, want, rtol, atol)
        if not ok:
            raise InferenceCheckError(
                f"the inference form's output differs from the model's by {diff:.3g} "
                f"(allowed {atol} + {rtol} * max |output|)"
            )
        report["max_abs_diff"] = diff
    return gm


def export(
    model: nn.Module,
    path: str | os.PathLike,
    example: torch.Tensor,
    *,
    exporter: str = "auto",
    opset_version: int | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    threads: int | None = None,
) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``path``, after checking ONNX Runtime reproduces PyTorch.

    The model is exported on the CPU in eval mode with a dynamic batch axis
    (:func:`basisprune.bench.export_onnx`; ``exporter="auto"`` tries the ``torch.export``-based
    exporter, then the TorchScript one). ONNX Runtime (``CPUExecutionProvider``) runs the exported
    graph on ``example`` and on a batch of another size; both outputs must match PyTorch's within
    ``atol + rtol * max |output|``. Only then is the file written, atomically
    (``basisprune.io.atomic_write``), so a failed check leaves no file and an existing
    file untouched. Export :func:`inference_form` of a model to ship its folded form.

    Returns:
        ``path``, ``exporter`` (the one that worked), ``batch_sizes`` checked, ``max_abs_diff``
        (the largest over them) and ``bytes``.

    Raises:
        ValueError: bad arguments.
        ExportCheckError: ONNX Runtime's outputs differ from PyTorch's.
    """
    import onnxruntime as ort

    _check_inputs(model, example)
    cpu = bench._model_device(model)
    m = model if cpu is None or cpu.type == "cpu" else copy.deepcopy(model).cpu()
    x = example.detach().cpu()
    sizes = [x.shape[0], x.shape[0] + 1]
    gen = torch.Generator().manual_seed(0)
    batches = [x, torch.randn((sizes[1], *x.shape[1:]), generator=gen, dtype=x.dtype)]
    with tempfile.TemporaryDirectory(prefix="basisprune-export-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        kind = bench.export_onnx(m, tuple(x.shape[1:]), onnx_path, exporter=exporter, opset_version=opset_version)
        data = onnx_path.read_bytes()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.log_severity_level = 3
    sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    worst = 0.0
    with bench._eval_mode(m), torch.no_grad():
        for b in batches:
            want = m(b)
            got = torch.from_numpy(sess.run(None, {name: b.numpy()})[0])
            ok, diff = _max_diff(got, want, rtol, atol)
            if not ok:
                raise ExportCheckError(
                    f"ONNX Runtime's output differs from PyTorch's at batch {b.shape[0]}: max |diff| {diff:.3g}, "
                    f"shapes {tuple(got.shape)} vs {tuple(want.shape)} (allowed {atol} + {rtol} * max |output|); "
                    f"{path} was not written"
                )
            worst = max(worst, diff)
    atomic_write(path, lambda f: f.write(data))
    return {"path": str(path), "exporter": kind, "batch_sizes": sizes, "max_abs_diff": worst, "bytes": len(data)}
