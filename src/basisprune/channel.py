"""Channel scaling (Wong, Kashyap, Moradi, arXiv 2103.12228) on any architecture.

The paper puts a trainable per-channel weight after each frozen conv's activation, penalises it
with L1 and removes the channels whose weight falls under a threshold. In a plain chain (VGG) the
activation output of conv ``k`` is exactly the input of conv ``k+1``. To make the same idea exact in
networks with residual additions and concatenations, we attach one scale vector to each
Torch-Pruning *dependency group* (the set of layers that must lose a channel together) and apply it
at the input of every conv / linear layer that consumes the group's channels. A channel whose scale
is masked to 0 then reaches no consumer, so removing the whole group channel with Torch-Pruning
gives exactly the masked model's outputs. (Our construction; the paper only treats chains.)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from .decompose import set_submodule

__all__ = [
    "ChannelScale",
    "ScaledInput",
    "add_channel_scales",
    "channel_scales",
    "l1_penalty",
    "remove_channel_scales",
]


class ChannelScale(nn.Module):
    """Trainable per-channel scale of one dependency group (``scale``) and its 0/1 ``mask``."""

    def __init__(self, channels: int, root: str):
        super().__init__()
        self.root = root  # qualified name of the layer whose output channels this group owns
        self.scale = nn.Parameter(torch.ones(channels))
        self.register_buffer("mask", torch.ones(channels))

    @property
    def kept(self) -> int:
        return int(self.mask.sum().item())

    @property
    def num_channels(self) -> int:
        return self.scale.numel()

    def effective_scale(self) -> torch.Tensor:
        return self.scale * self.mask

    def extra_repr(self) -> str:
        return f"root={self.root}, kept={self.kept}/{self.num_channels}"


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
        m = self.multiplier()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.inner(x * m.view(shape).to(x.dtype))


@dataclass
class _Group:
    root: str
    channels: int
    consumers: list[tuple[str, list[int], list[int]]]  # (module name, positions, root channels)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning dependency graph traced in eval mode (tracing must not touch BN statistics)."""
    was_training = model.training
    flags = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)  # the tracer follows autograd nodes; frozen weights leave none
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
        model.train(was_training)


def find_groups(
    model: nn.Module, example_input: torch.Tensor, ignored: list[str] | tuple[str, ...] = ()
) -> list[_Group]:
    """The channel dependency groups rooted at Conv2d layers, with their consumer layers."""
    names = {m: n for n, m in model.named_modules()}
    dg = dependency_graph(model, example_input)
    ignored_mods = [model.get_submodule(n) for n in ignored]
    groups = []
    for group in dg.get_all_groups(ignored_layers=ignored_mods, root_module_types=[nn.Conv2d]):
        items = group.items
        root_mod = items[0].dep.target.module
        root_idxs = list(items[0].idxs)
        consumers = []
        for it in items:
            mod = it.dep.target.module
            if it.dep.handler.__name__ != "prune_in_channels" or _is_depthwise(mod):
                continue
            if not isinstance(mod, (nn.Conv2d, nn.Linear)):
                raise ValueError(
                    f"channel scaling supports Conv2d and Linear consumers; {names.get(mod)} is a "
                    f"{type(mod).__name__}"
                )
            pos = list(it.idxs)
            per = len(pos) // len(root_idxs)  # > 1 after a flatten: each channel feeds `per` inputs
            consumers.append((names[mod], pos, [j // per for j in range(len(pos))]))
        if consumers and names.get(root_mod) is not None:
            groups.append(_Group(names[root_mod], len(root_idxs), consumers))
    return groups


def add_channel_scales(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    ignored: list[str] | tuple[str, ...] = (),
    roots: list[str] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Attach a trainable ``ChannelScale`` to each channel group of ``model``.

    Args:
        model: a plain model (no channel scales yet).
        example_input: a batch the model accepts, used to trace the dependency graph.
        ignored: layers whose *output* channels must not be pruned (the classifier).
        roots: restrict to groups rooted at these layers (default: every conv-rooted group).
        inplace: modify ``model`` itself instead of a copy.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(model).__name__}")
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
    if not groups:
        raise ValueError("the model has no prunable channel group (a Conv2d whose output feeds a Conv2d or Linear)")
    out = model if inplace else copy.deepcopy(model)
    ref = next(out.parameters())
    wrappers: dict[str, ScaledInput] = {}
    for g in groups:
        scale = ChannelScale(g.channels, g.root).to(device=ref.device, dtype=ref.dtype)
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

    Returns the masks by group root, so a caller can remove the masked channels afterwards.
    """
    masks = {root: s.mask.detach().clone() for root, s in channel_scales(model).items()}
    for name, m in list(model.named_modules()):
        if isinstance(m, ScaledInput):
            if fold:
                fold_scale_into(m.inner, m.multiplier().detach())
            set_submodule(model, name, m.inner)
    return masks
