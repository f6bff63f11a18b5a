"""Channel dependency groups: which channels must be removed together, and which cannot be.

Torch-Pruning's dependency graph gives, for each layer that roots a group (a Conv2d or Linear), every
layer that must lose a channel with it. On top of it this module works out what channel scaling
(:mod:`basisprune.channel`) needs: the consumer layers and the input positions each root channel
feeds, the *units* that grouped convs tie together, and why a group cannot be removed exactly (its
channels pass through a layer that mixes channels, or a reshape that splits the channel dimension).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import BasisPruneError

__all__ = ["ChannelGraphError", "dependency_graph", "find_groups", "unsupported_channel_groups"]


class ChannelGraphError(BasisPruneError, ValueError):
    """Channel scaling cannot handle the model (or one of its channel groups); the message says why."""


@dataclass
class _Group:
    root: str
    channels: int
    consumers: list[tuple[str, list[int], list[int]]]  # (module name, positions, root channels)
    unit_of: list[int] = field(default_factory=list)  # unit of each root channel (grouped-conv ties)
    unsupported: str | None = None  # why the group cannot be scaled and removed exactly


#: Layer kinds a channel group may pass through: they act on each channel alone (or only move
#: channels), so removing a channel changes nothing else. Anything else mixes channels.
_CHANNELWISE = {tp.ops.OPTYPE.CONV, tp.ops.OPTYPE.DEPTHWISE_CONV, tp.ops.OPTYPE.LINEAR, tp.ops.OPTYPE.BN,
                tp.ops.OPTYPE.PRELU, tp.ops.OPTYPE.IN, tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT,
                tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.PARAMETER, tp.ops.OPTYPE.RESHAPE, tp.ops.OPTYPE.UNBIND,
                tp.ops.OPTYPE.EXPAND, tp.ops.OPTYPE.SLICE, tp.ops.OPTYPE.OUTPUT}
_SUPPORTED = ("Conv2d (grouped and depthwise too) and Linear (channels-last too) layers, batch norms, "
             "element-wise ops, residual additions, concatenations, splits and flattens")


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.out_channels


def _graph_failure_site(exc: BaseException) -> str:
    """The autograd node Torch-Pruning was mapping when it failed (a reshape, usually), if any."""
    tb, site = exc.__traceback__, ""
    while tb is not None:
        node = tb.tb_frame.f_locals.get("reshape_node", tb.tb_frame.f_locals.get("node"))
        if getattr(node, "name", None):
            site = f" at {node.name}"
        tb = tb.tb_next
    return site


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning dependency graph traced in eval mode (tracing must not touch BN statistics).

    Raises:
        ChannelGraphError: Torch-Pruning cannot trace the model's channel dependencies (e.g. a
            channel shuffle, a reshape that splits the channel dimension).
    """
    was_training = model.training
    flags = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)  # the tracer follows autograd nodes; frozen weights leave none
    try:
        with _ReshapeRecorder() as rec:
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
        dg.basisprune_reshapes = rec.shapes  # grad_fn -> (input shape, output shape), see _check_reshape
        return dg
    except (ZeroDivisionError, IndexError, KeyError, AssertionError) as e:  # Torch-Pruning's index mapping
        first = (str(e).strip().splitlines() or [""])[0]
        raise ChannelGraphError(
            f"channel scaling cannot trace the channel dependencies of {type(model).__name__}: Torch-Pruning "
            f"failed{_graph_failure_site(e)} ({type(e).__name__}: {first}), as it does on reshapes that split "
            f"the channel dimension such as a channel shuffle; supported: {_SUPPORTED}"
        ) from e
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
        model.train(was_training)


_RESHAPES = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.flatten, torch.Tensor.flatten,
             torch.Tensor.unflatten, torch.unflatten}


class _ReshapeRecorder(TorchFunctionMode):
    """Records the shapes of every reshape during a trace, by the output's autograd node."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _RESHAPES and isinstance(out, torch.Tensor) and out.grad_fn is not None:
            self.shapes[out.grad_fn] = (tuple(args[0].shape), tuple(out.shape))
        return out


def _check_reshape(dg: tp.DependencyGraph, node, name: str) -> str | None:
    """Why a reshape breaks channel identity (it splits or merges the channel dimension with
    another one than the spatial ones, e.g. a channel shuffle), or None for a flatten / unflatten."""
    shapes = getattr(dg, "basisprune_reshapes", {}).get(getattr(node, "grad_fn", None))
    if shapes is None:
        return None
    src, dst = shapes
    if len(src) < 2 or len(dst) < 2 or src[0] != dst[0] or src[1] == dst[1]:
        return None if src[:2] == dst[:2] else f"its channels pass through a reshape {src} -> {dst} at {name}"
    rest = lambda shape: math.prod(shape[1:])  # noqa: E731
    if dst[1] == rest(src) or src[1] == rest(dst):
        return None  # flatten of (C, H, W) into C*H*W features, or its inverse
    return (f"its channels pass through a reshape {src} -> {dst} at {name} that splits the channel dimension "
            f"(a channel shuffle?): removing channels would mix up the kept ones")


def _tie_units(channels: int, grouped: list[tuple[int, list[int], list[int]]]) -> list[int]:
    """Units of root channels: channels that a grouped conv reads or writes at the same in-group
    position (``pos % period``) must go together. ``grouped``: (period, positions, root channels)."""
    parent = list(range(channels))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for period, pos, src in grouped:
        first: dict[int, int] = {}
        for p, r in zip(pos, src):
            k = p % period
            if k in first:
                parent[find(r)] = find(first[k])
            else:
                first[k] = r
    ids: dict[int, int] = {}
    return [ids.setdefault(find(c), len(ids)) for c in range(channels)]


def _check_member(mod: nn.Module, name: str, optype, out_side: bool, pos: list[int]) -> tuple[str | None, int]:
    """(why the group cannot be removed exactly through this member or None, its tying period or 0)."""
    kind = type(mod).__name__
    if optype not in _CHANNELWISE:
        if optype == tp.ops.OPTYPE.GN and mod.num_groups == mod.num_channels:
            return None, 0  # one channel per group: per-channel statistics
        return (f"its channels pass through {name} ({kind}), which mixes channels: removing some would change "
                f"what the kept ones compute"), 0
    if isinstance(mod, nn.Module) and optype in (tp.ops.OPTYPE.CONV, tp.ops.OPTYPE.DEPTHWISE_CONV) \
            and not isinstance(mod, nn.Conv2d):
        return f"its channels reach {name} ({kind}); channel scaling supports {_SUPPORTED}", 0
    if isinstance(mod, nn.Conv2d) and mod.groups > 1 and not _is_depthwise(mod):
        width = mod.out_channels if out_side else mod.in_channels
        period = width // mod.groups
        seen = set(pos)
        if any(p % period + j * period not in seen for p in pos for j in range(mod.groups)):
            return (f"grouped conv {name} (groups={mod.groups}) {'writes' if out_side else 'reads'} its channels "
                    f"together with channels of another group, so they cannot be removed consistently in "
                    f"every conv group"), 0
        return None, period
    return None, 0


def find_groups(
    model: nn.Module, example_input: torch.Tensor, ignored: list[str] | tuple[str, ...] = ()
) -> list[_Group]:
    """The channel dependency groups rooted at Conv2d and Linear layers, with their consumer layers.

    Groups that cannot be scaled and removed exactly come back with ``unsupported`` set to the reason.
    """
    names = {m: n for n, m in model.named_modules()}
    unknown = sorted(set(ignored) - set(names.values()))
    if unknown:
        raise ValueError(f"ignored names layers the model does not have: {unknown}")
    dg = dependency_graph(model, example_input)
    ignored_mods = [model.get_submodule(n) for n in ignored]
    groups = []
    for group in dg.get_all_groups(ignored_layers=ignored_mods, root_module_types=[nn.Conv2d, nn.Linear]):
        items = group.items
        root_mod = items[0].dep.target.module
        root_name = names.get(root_mod)
        if root_name is None:
            continue
        channels = len(items[0].idxs)
        consumers, grouped, why = [], [], None
        for it in items:
            target = it.dep.target
            mod, handler = target.module, it.dep.handler.__name__
            name = names.get(mod, target.name) if isinstance(mod, nn.Module) else target.name
            pos, src = [int(i) for i in it.idxs], [int(r) for r in it.root_idxs]
            reason, period = _check_member(mod, name, target.type, handler == "prune_out_channels", pos)
            if target.type == tp.ops.OPTYPE.RESHAPE:
                reason = reason or _check_reshape(dg, target, name)
            why = why or reason
            if period:
                grouped.append((period, pos, src))
            if handler != "prune_in_channels" or _is_depthwise(mod) or not isinstance(mod, (nn.Conv2d, nn.Linear)):
                continue
            consumers.append((name, pos, src))
        if not consumers:
            continue
        groups.append(_Group(root_name, channels, consumers, _tie_units(channels, grouped), why))
    return groups


def unsupported_channel_groups(
    model: nn.Module, example_input: torch.Tensor, ignored: list[str] | tuple[str, ...] = ()
) -> dict[str, str]:
    """Channel groups (by root layer) that :func:`add_channel_scales` leaves without a scale, and why."""
    return {g.root: g.unsupported for g in find_groups(model, example_input, ignored) if g.unsupported}
