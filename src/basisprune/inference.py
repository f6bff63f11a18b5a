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
   decided before the merges of step 4, which are then timed in that format).

The result computes the input model's function to float rounding; merged weights are computed in
float64. :func:`basisprune.export` (:mod:`basisprune.deploy`) writes it to ONNX.
"""

from __future__ import annotations

import collections
import copy
import operator
import statistics
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

_IDENTITIES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
               nn.FeatureAlphaDropout)
_CONV_BN = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


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


class _LeafTracer(fx.Tracer):
    """torch.fx's tracer, also keeping instances of ``leaf_types`` as single calls."""

    def __init__(self, leaf_types: Sequence[type] = ()):  # no-argument form: GraphModule's unpickling
        super().__init__()
        self.leaf_types = tuple(leaf_types)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaf_types) or super().is_leaf_module(m, module_qualified_name)


def _failing_module(exc: BaseException, model: nn.Module) -> nn.Module | None:
    """The innermost submodule of ``model`` (not ``model`` itself) whose ``forward`` was running
    when tracing failed, from the traceback's frames."""
    inside = {id(m) for m in model.modules() if m is not model}
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        this = frame.f_locals.get("self")
        if isinstance(this, nn.Module) and id(this) in inside:
            return this
    return None


def _trace(model: nn.Module) -> fx.GraphModule:
    """``model``'s fx graph. Where a submodule's forward cannot be traced (control flow on the
    shapes of traced values, as in EfficientNet-Lite's "SAME"-padding convs), the submodule's
    class is kept as one opaque call (a leaf) and tracing starts again, so the rest of the model
    is still rewritten. The leaf classes are listed in the graph module's ``leaf_types``."""
    leaves: list[type] = []
    while True:
        tracer = _LeafTracer(leaves)
        try:
            graph = tracer.trace(model)
        except Exception as e:  # noqa: BLE001 - any tracing failure means the same thing to the user
            culprit = _failing_module(e, model)
            if culprit is not None and type(culprit) not in leaves:
                leaves.append(type(culprit))
                continue
            raise ValueError(
                f"model: torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                "inference_form needs a model whose forward has no data-dependent control flow outside its submodules"
            ) from e
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
        gm.leaf_types = [f"{t.__module__}.{t.__qualname__}" for t in leaves]
        return gm


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


_CHOICES: dict[tuple, tuple[list[tuple[int, int]], dict[str, Any]]] = {}
"""Measured merge choices of this process, keyed by the chain's layers (their reprs and dtypes),
input shapes, memory format, batch sizes, rounds, margin and the hardware record: a form rebuilt
(or another model with the same layer) reuses the choice instead of timing again."""


def _merge_chains(gm: fx.GraphModule, merge: str, timer: bench.LayerTimer | None,
                  batch_sizes: Sequence[int], seed: int, channels_last: bool = False, *,
                  rounds: int = 5, margin: float = 0.02, cache: bool = False,
                  timed_on: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    modules = dict(gm.named_modules())
    records = []
    gen = torch.Generator().manual_seed(seed)
    chains = _chains(gm)
    # shapes first: merging a chain rewires the inputs of the nodes after it
    shapes = [([tuple(n.args[0].meta["tensor_meta"].shape[1:]) for n in chain],
               [tuple(n.meta["tensor_meta"].shape[1:]) for n in chain]) for chain in chains]
    for chain, (in_shapes, out_shapes) in zip(chains, shapes):
        layers = [modules[n.target] for n in chain]
        n = len(layers)

        def merged(i: int, j: int) -> nn.Module:
            return layers[i] if i == j else merge_layers(layers[i:j + 1])

        def macs(i: int, j: int) -> int:
            return _macs(merged(i, j), in_shapes[i], out_shapes[j])

        timing: dict[str, Any] = {}
        if merge == "flops":
            flops = {(i, j): float(macs(i, j)) for i in range(n) for j in range(i, n)}
            segments = _partition(n, lambda i, j: flops[(i, j)])
        else:
            key = (tuple((repr(m), str(m.weight.dtype)) for m in layers), tuple(in_shapes), channels_last,
                   tuple(batch_sizes), rounds, margin, tuple(sorted((timed_on or {}).items())))
            if cache and key in _CHOICES:
                segments, timing = _CHOICES[key]
                timing = {**timing, "cached": True}
            else:
                segments, timing = _timed_partition(layers, in_shapes[0], timer, batch_sizes, gen, channels_last,
                                                    rounds, margin)
                if cache:
                    _CHOICES[key] = (segments, timing)
        rec = {"layers": [c.target for c in chain], "segments": [[chain[k].target for k in range(i, j + 1)]
                                                                 for i, j in segments],
               "macs_unmerged": sum(macs(k, k) for k in range(n)),
               "macs_merged": sum(macs(i, j) for i, j in segments), **timing}
        records.append(rec)
        for i, j in segments:
            if i == j:
                continue
            set_submodule(gm, chain[i].target, merge_layers(layers[i:j + 1]))
            chain[j].replace_all_uses_with(chain[i])
            for node in reversed(chain[i + 1:j + 1]):
                gm.graph.erase_node(node)
    return records


def _timed_partition(layers: Sequence[nn.Module], in_shape: Sequence[int], timer: bench.LayerTimer,
                     batch_sizes: Sequence[int], gen: torch.Generator, channels_last: bool, rounds: int,
                     margin: float) -> tuple[list[tuple[int, int]], dict[str, Any]]:
    """The split of one chain by measured time, and its timings.

    Every segment is timed on its real input shape in interleaved rounds
    (:func:`basisprune.bench.interleaved_times`); the split with the smallest median cost (each
    batch size relative to the unmerged chain) is taken only if it is clearly faster
    (:func:`basisprune.bench.clearly_faster`) than the whole chain merged into one layer, the
    default: for a basis pair that is the unpruned layer, so a pair that does not pay is folded."""
    n = len(layers)
    w = layers[0].weight
    xs = [torch.randn((b, *in_shape), generator=gen, dtype=w.dtype).to(w.device) for b in batch_sizes]
    spans = [(i, j) for i in range(n) for j in range(i, n)]
    candidates = []
    for i, j in spans:
        module = layers[i] if i == j else merge_layers(layers[i:j + 1])
        x_in = [_prefix_output(layers[:i], x) for x in xs]
        if channels_last and x_in[0].dim() == 4:  # timed in the format the form will run in
            module = copy.deepcopy(module).to(memory_format=torch.channels_last)
            x_in = [x.contiguous(memory_format=torch.channels_last) for x in x_in]
        candidates.append((module, x_in))
    times = dict(zip(spans, bench.interleaved_times(candidates, timer, rounds)))  # [round][batch]

    def total(segs: Sequence[tuple[int, int]]) -> list[list[float]]:
        return [[sum(times[s][r][b] for s in segs) for b in range(len(xs))] for r in range(rounds)]

    def median(segs: Sequence[tuple[int, int]]) -> list[float]:
        t = total(segs)
        return [statistics.median(t[r][b] for r in range(rounds)) for b in range(len(xs))]

    unmerged = median([(k, k) for k in range(n)])
    med = {s: median([s]) for s in spans}
    best = _partition(n, lambda i, j: sum(t / max(u, 1e-12) for t, u in zip(med[(i, j)], unmerged)))
    whole = [(0, n - 1)]
    verdict = bench.clearly_faster(total(best), total(whole), margin=margin) if best != whole else None
    segments = best if verdict is not None and verdict["faster"] else whole
    timing = {"batch_sizes": list(batch_sizes), "rounds": rounds,
              "ms_unmerged": [1e3 * t for t in unmerged], "ms_merged": [1e3 * t for t in median(segments)],
              "ms_one_layer": [1e3 * t for t in median(whole)],
              "split_to_one_layer": None if verdict is None else verdict["ratio_median"],
              "split_to_one_layer_p75": None if verdict is None else verdict["ratio_p75"]}
    return segments, timing


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
        traced), ``memory_format``, ``memory_format_ms`` (medians and the paired ratio) and
        ``timed_on`` (device name, threads, torch version of the timings).

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
    cache = timer is None  # only real timings are worth remembering
    if timer is None:
        timer = (bench.onnxruntime_timer(threads, min_run_time, min_runs) if runtime == "onnxruntime"
                 else bench.benchmark_timer(min_run_time, threads, min_runs))
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
    report: dict[str, Any] = {"merge": merge, "leaf_types": gm.leaf_types}
    with bench.num_threads(threads):
        if merge == "latency" or memory_format == "auto":
            report["timed_on"] = {**bench.timed_on(threads, example.device), "runtime": runtime}
        report["dropped"] = _drop_identities(gm)
        report["bn_folded"] = _fold_batchnorms(gm)
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
            chains = _merge_chains(gm, merge, timer, sizes, seed, channels_last=fmt == "channels_last",
                                   rounds=rounds, margin=margin, cache=cache, timed_on=report.get("timed_on"))
        report["chains"] = chains
        gm, report["padded"] = _finish(gm, channel_multiple, example)
        report["memory_format"] = fmt
        if fmt == "channels_last":
            gm = _channels_last(gm)
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
