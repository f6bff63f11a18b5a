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
from typing import Sequence

import torch
from torch import nn

from .decompose import set_submodule
from .groups import ChannelGraphError, dependency_graph, find_groups, unsupported_channel_groups

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
    """Sum of ``|scale|`` over the live channels of every group (the paper's L1 regulariser)."""
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
