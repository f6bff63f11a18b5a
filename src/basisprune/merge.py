"""Merging chains of linear layers (step 4 of :func:`basisprune.inference.inference_form`).

A chain is a conv followed by 1x1 convs with stride 1 and the same groups (or linear layers) with
nothing between them; :func:`merge_layers` multiplies such a run into one layer (float64), and
:func:`merge_chains` splits every chain of a graph into merged segments by dynamic programming over
a cost: multiply-accumulates (``merge="flops"``) or the segments timed on their real input shapes
(``merge="latency"``, interleaved and kept only where clearly faster).
"""

from __future__ import annotations

import copy
import statistics
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
from torch import nn

from . import bench
from .decompose import set_submodule
from .fx_passes import module_calls, only_input, single_use

__all__ = ["merge_chains", "merge_layers"]

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
    calls = module_calls(gm)
    nxt: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if not single_use(gm, calls, node):
            continue
        user = next(iter(node.users))
        if (user.op == "call_module" and calls[user.target] == 1 and only_input(user) is node
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


def merge_chains(gm: fx.GraphModule, merge: str, timer: bench.LayerTimer | None,
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
