"""Channel scaling (Wong, Kashyap, Moradi, arXiv 2103.12228) on any architecture.

The paper puts a trainable per-channel weight after each frozen conv's activation, penalises it
with L1 and removes the channels whose weight falls under a threshold. In a plain chain (VGG) the
activation output of conv ``k`` is exactly the input of conv ``k+1``. To make the same idea exact in
networks with residual additions and concatenations, we attach one scale vector to each
Torch-Pruning *dependency group* (the set of layers that must lose a channel together) and apply it
at the input of every conv / linear layer that consumes the group's channels. A channel whose scale
is masked to 0 then reaches no consumer, so removing the whole group channel with Torch-Pruning
gives exactly the masked model's outputs. (Our construction; the paper only treats chains.)

Three kinds of layer need more than one scale per channel:

* A grouped conv (``1 < groups < channels``) can only lose the same positions in every group
  (Torch-Pruning slices one in-group weight pattern). Channels that a grouped conv ties together
  share one scale and one mask entry (one *unit*), so every mask a pruning rule writes can be
  compacted. Without grouped convs a unit is a channel.
* A pointwise ``nn.Linear`` on channels-last tensors (ConvNeXt) is scaled along its last
  dimension, the one it reads.
* A group whose channels pass through a layer that mixes channels (a LayerNorm over the channel
  dimension, a GroupNorm, attention) cannot be removed exactly: removing channels changes what the
  kept ones compute. Such groups get no scale; :func:`unsupported_channel_groups` says which and
  why, and ``add_channel_scales(..., on_unsupported="raise")`` refuses them in one line. A model
  whose graph Torch-Pruning cannot trace (a channel shuffle) is refused in one line.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

from .decompose import set_submodule
from .errors import BasisPruneError

__all__ = [
    "ChannelGraphError",
    "ChannelScale",
    "ScaledInput",
    "add_channel_scales",
    "channel_scales",
    "l1_penalty",
    "remove_channel_scales",
    "unsupported_channel_groups",
]


class ChannelGraphError(BasisPruneError, ValueError):
    """Channel scaling cannot handle the model (or one of its channel groups); the message says why."""


class ChannelScale(nn.Module):
    """Trainable scale of one dependency group (``scale``) and its 0/1 ``mask``, one entry per unit.

    A unit is a channel, or the channels a grouped conv ties together; ``unit_of[c]`` is the unit
    of channel ``c`` (``arange(channels)`` when nothing is tied).
    """

    def __init__(self, channels: int, root: str, unit_of: Sequence[int] | None = None):
        super().__init__()
        self.root = root  # qualified name of the layer whose output channels this group owns
        units = torch.arange(channels) if unit_of is None else torch.as_tensor(list(unit_of), dtype=torch.long)
        if units.numel() != channels:
            raise ValueError(f"unit_of has {units.numel()} entries for {channels} channels")
        n = int(units.max().item()) + 1
        self.scale = nn.Parameter(torch.ones(n))
        self.register_buffer("mask", torch.ones(n))
        # Not saved in state dicts: add_channel_scales recomputes it from the graph.
        self.register_buffer("unit_of", units, persistent=False)

    @property
    def kept(self) -> int:
        """Live units."""
        return int(self.mask.sum().item())

    @property
    def num_units(self) -> int:
        return self.scale.numel()

    @property
    def num_channels(self) -> int:
        return self.unit_of.numel()

    def effective_scale(self) -> torch.Tensor:
        """Per-channel scale times mask (length ``num_channels``)."""
        return (self.scale * self.mask)[self.unit_of]

    def channel_mask(self) -> torch.Tensor:
        """Per-channel 0/1 mask (length ``num_channels``)."""
        return self.mask[self.unit_of]

    def extra_repr(self) -> str:
        tied = f", units={self.num_units}" if self.num_units != self.num_channels else ""
        return f"root={self.root}, kept={self.kept}/{self.num_units}{tied}, channels={self.num_channels}"


class ScaledInput(nn.Module):
    """Multiplies selected input channels of ``inner`` by group scales, then calls ``inner``.

    ``pos_i[j]`` is an input position of ``inner`` and ``src_i[j]`` the channel of group ``i``
    that feeds it (several positions per channel after a flatten).
    """

    def __init__(self, inner: nn.Module, in_features: int):
        super().__init__()
        self.inner = inner
        self.in_features = in_features
        self.scales = nn.ModuleList()

    def add(self, scale: ChannelScale, pos: list[int], src: list[int]) -> None:
        i = len(self.scales)
        self.scales.append(scale)
        self.register_buffer(f"pos_{i}", torch.as_tensor(pos, dtype=torch.long))
        self.register_buffer(f"src_{i}", torch.as_tensor(src, dtype=torch.long))

    def multiplier(self) -> torch.Tensor:
        ref = self.scales[0].scale
        mult = torch.ones(self.in_features, dtype=ref.dtype, device=ref.device)
        for i, s in enumerate(self.scales):
            pos, src = getattr(self, f"pos_{i}"), getattr(self, f"src_{i}")
            mult = mult.index_put((pos,), s.effective_scale()[src])
        return mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.multiplier().to(x.dtype)
        if isinstance(self.inner, nn.Linear):
            return self.inner(x * m)  # a linear layer reads the last dimension (channels-last too)
        return self.inner(x * m.view((1, -1) + (1,) * (x.dim() - 2)))


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
SUPPORTED = ("Conv2d (grouped and depthwise too) and Linear (channels-last too) layers, batch norms, "
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
        raise ChannelGraphError(
            f"channel scaling cannot trace the channel dependencies of {type(model).__name__}: Torch-Pruning "
            f"failed{_graph_failure_site(e)} ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}), "
            f"as it does on reshapes that split the channel dimension such as a channel shuffle; supported: {SUPPORTED}"
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
        return f"its channels reach {name} ({kind}); channel scaling supports {SUPPORTED}", 0
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


def add_channel_scales(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    ignored: list[str] | tuple[str, ...] = (),
    roots: list[str] | None = None,
    on_unsupported: str = "skip",
    inplace: bool = False,
) -> nn.Module:
    """Attach a trainable ``ChannelScale`` to each channel group of ``model``.

    Args:
        model: a plain model (no channel scales yet).
        example_input: a batch the model accepts, used to trace the dependency graph.
        ignored: layers whose *output* channels must not be pruned (the classifier).
        roots: restrict to groups rooted at these layers (default: every conv- or linear-rooted group).
        on_unsupported: ``"skip"`` leaves groups that cannot be removed exactly (their channels pass
            through a layer that mixes channels; :func:`unsupported_channel_groups` lists them)
            unscaled; ``"raise"`` refuses the model, naming the first such group.
        inplace: modify ``model`` itself instead of a copy.

    Raises:
        ChannelGraphError: Torch-Pruning cannot trace the model, an unsupported group with
            ``on_unsupported="raise"`` (or named in ``roots``), or no group can be scaled.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if on_unsupported not in ("skip", "raise"):
        raise ValueError(f"on_unsupported must be 'skip' or 'raise', got {on_unsupported!r}")
    if channel_scales(model):
        raise ValueError("the model already has channel scales; call remove_channel_scales first")
    groups = find_groups(model, example_input, ignored)
    if roots is not None:
        unknown = set(roots) - {g.root for g in groups}
        if unknown:
            raise ValueError(
                f"no channel group is rooted at {sorted(unknown)}; groups are rooted at "
                f"{[g.root for g in groups]}"
            )
        groups = [g for g in groups if g.root in set(roots)]
    bad = [g for g in groups if g.unsupported]
    if bad and (on_unsupported == "raise" or roots is not None):
        raise ChannelGraphError(f"channel group rooted at {bad[0].root} is not supported: {bad[0].unsupported}"
                                + (f" (and {len(bad) - 1} more group(s))" if len(bad) > 1 else ""))
    groups = [g for g in groups if not g.unsupported]
    if not groups:
        why = f"; e.g. the group rooted at {bad[0].root}: {bad[0].unsupported}" if bad else ""
        raise ChannelGraphError(
            f"{type(model).__name__} has no channel group that channel scaling can remove exactly (a Conv2d or "
            f"Linear whose output feeds a Conv2d or Linear){why}"
        )
    out = model if inplace else copy.deepcopy(model)
    ref = next(out.parameters())
    wrappers: dict[str, ScaledInput] = {}
    for g in groups:
        scale = ChannelScale(g.channels, g.root, g.unit_of).to(device=ref.device, dtype=ref.dtype)
        for name, pos, src in g.consumers:
            if name not in wrappers:
                inner = out.get_submodule(name)
                n_in = inner.in_channels if isinstance(inner, nn.Conv2d) else inner.in_features
                wrappers[name] = ScaledInput(inner, n_in).to(ref.device)
                set_submodule(out, name, wrappers[name])
            wrappers[name].add(scale, pos, src)
    return out


def channel_scales(model: nn.Module) -> dict[str, ChannelScale]:
    """The model's channel scales, keyed by the name of the layer that roots each group."""
    found: dict[str, ChannelScale] = {}
    for m in model.modules():
        if isinstance(m, ScaledInput):
            for s in m.scales:
                found.setdefault(s.root, s)
    return found


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |scale| over the live channels of every group (the paper's L1 regulariser)."""
    scales = list(channel_scales(model).values())
    if not scales:
        raise ValueError("the model has no channel scales; call add_channel_scales first")
    return sum(s.effective_scale().abs().sum() for s in scales)


def fold_scale_into(inner: nn.Module, mult: torch.Tensor) -> None:
    """Multiply the input-channel slices of a conv / linear weight by ``mult`` (exact folding)."""
    with torch.no_grad():
        w = inner.weight
        if isinstance(inner, nn.Conv2d):
            g = inner.groups
            view = w.view(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
            view.mul_(mult.view(g, 1, w.shape[1], 1, 1).to(w.dtype))
        else:
            w.mul_(mult.view(1, -1).to(w.dtype))


def remove_channel_scales(model: nn.Module, *, fold: bool = True) -> dict[str, torch.Tensor]:
    """Unwrap every ``ScaledInput`` in place; with ``fold`` the scales go into the consumer weights.

    Returns the per-channel masks by group root, so a caller can remove the masked channels afterwards.
    """
    masks = {root: s.channel_mask().detach().clone() for root, s in channel_scales(model).items()}
    for name, m in list(model.named_modules()):
        if isinstance(m, ScaledInput):
            if fold:
                fold_scale_into(m.inner, m.multiplier().detach())
            set_submodule(model, name, m.inner)
    return masks
