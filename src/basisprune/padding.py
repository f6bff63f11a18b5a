"""Padding channel widths (step 5 of :func:`basisprune.inference.inference_form`).

A channel space (channels that convs write and convs or linear layers read, through element-wise
activations, depthwise convs, additions and global pooling) whose width is not a multiple of the
kernels' block size is padded with zero channels up to one: the function is unchanged, and odd
pruned widths stop running several times slower in ONNX Runtime.
"""

from __future__ import annotations

import collections
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .fx_passes import module_calls, only_input

__all__ = ["pad_channels"]

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
        if isinstance(m, _CHANNELWISE) and only_input(n) is not None:
            return "inner"
        if forward and only_input(n) is not None:
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


def pad_channels(gm: fx.GraphModule, multiple: int) -> list[dict[str, Any]]:
    """Round every channel space whose width is not a multiple of ``multiple`` up to one, where
    that is exact: zero filters (and biases) in the convs that write it, depthwise convs inside it
    widened with zero filters, zero input columns in the convs and linear layers that read it;
    whatever the padded channels hold then never reaches an output. Kernels that block channels by
    8 or 16 (oneDNN, ONNX Runtime's NCHWc) run odd widths much slower."""
    calls = module_calls(gm)
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
