"""Pruning at initialization: keep-masks from scores, applying them to a model, and structured compaction.

Part of :mod:`basisprune.pai` (import the names from there).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn as nn
from torch.nn.utils import prune as torch_prune

from .pai_options import PRUNABLE_TYPES, check_sparsity, first_parameter

__all__ = [
    "LayerCollapseError", "masks_from_scores", "channel_view", "apply_masks", "remove_masks",
    "structured_to_channel_keep", "compact_structured",
]


class LayerCollapseError(ValueError):
    """A mask would remove every entry of a layer; ``layers`` names them."""

    def __init__(self, message: str, layers: list[str]):
        self.layers = layers
        super().__init__(message)


def masks_from_scores(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    largest: bool = True,
    dtype: torch.dtype | None = torch.float32,
    *,
    allow_empty: bool = False,
) -> dict[str, torch.Tensor]:
    """Global top-k keep-masks: keep ``round((1 - sparsity) * total)`` entries.

    ``largest=False`` keeps the lowest scores (GraSP).  Ties are broken by a stable
    sort (earlier layer / earlier index wins), so the count is exact.  ``dtype=None`` gives
    each mask its score's dtype.  Raises :class:`LayerCollapseError` (a ``ValueError``)
    if a layer would lose every entry, naming the layer(s), unless ``allow_empty`` (then
    such a layer's mask is all zeros: the collapse a pruning method causes, kept to study it).
    """
    check_sparsity(sparsity)
    if not scores:
        raise ValueError("scores is empty")
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).to(torch.float64).cpu() for n in names])
    if torch.isnan(flat).any():
        bad = [n for n in names if torch.isnan(scores[n]).any()]
        raise ValueError(f"scores contain NaN in {bad}")
    total = flat.numel()
    n_keep = int(round((1.0 - sparsity) * total))
    order = torch.argsort(flat, descending=largest, stable=True)
    keep = torch.zeros(total, dtype=torch.bool)
    keep[order[:n_keep]] = True

    masks: dict[str, torch.Tensor] = {}
    start = 0
    for n in names:
        s = scores[n]
        masks[n] = keep[start : start + s.numel()].reshape(s.shape).to(device=s.device, dtype=dtype or s.dtype)
        start += s.numel()
    empty = [] if allow_empty else [n for n in names if masks[n].sum() == 0]
    if empty:
        raise LayerCollapseError(
            f"sparsity {sparsity} would remove every entry of layer(s) {empty}; "
            "lower the sparsity or exclude the layer", empty
        )
    return masks


# ----------------------------------------------------------------------------- applying masks


def channel_view(mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Broadcastable view of a (Cout,) mask over a weight tensor."""
    return mask.reshape(-1, *([1] * (weight.dim() - 1)))


def _full_mask(mask: torch.Tensor, weight: torch.Tensor, name: str) -> torch.Tensor:
    if mask.shape == weight.shape:
        return mask.to(weight).clone()
    if mask.dim() == 1 and mask.shape[0] == weight.shape[0]:
        return channel_view(mask.to(weight), weight).expand_as(weight).clone()
    raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, weight has {tuple(weight.shape)}")


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Attach keep-masks in place so pruned weights stay exactly zero during training.

    Uses ``torch.nn.utils.prune.custom_from_mask``: the parameter becomes
    ``<name>_orig`` and ``<name> = <name>_orig * <name>_mask`` is recomputed before
    every forward, so gradients (and therefore momentum and weight decay) never
    reach pruned entries.  The pruned entries of ``<name>_orig`` are zeroed too, so
    they also stay exactly zero.  A structured ``(Cout,)`` mask is broadcast over the
    output-channel dim and also masks the layer's bias.  Returns ``model``.
    """
    modules = dict(model.named_modules())
    todo = []
    for name, mask in masks.items():
        mname, _, pname = name.rpartition(".")
        module = modules.get(mname)
        weight = getattr(module, pname, None) if module is not None else None
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"model has no parameter {name!r}")
        full = _full_mask(mask, weight, name)
        todo.append((module, pname, full))
        bias = getattr(module, "bias", None)
        if mask.dim() == 1 and pname == "weight" and weight.dim() > 1 and isinstance(bias, torch.Tensor):
            todo.append((module, "bias", mask.to(bias).clone()))
    for module, pname, full in todo:
        # Zero the stored parameter itself (``<name>_orig`` if the layer is already masked).
        stored = getattr(module, f"{pname}_orig", None)
        with torch.no_grad():
            (stored if isinstance(stored, torch.Tensor) else getattr(module, pname)).mul_(full)
        torch_prune.custom_from_mask(module, pname, full)
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Make masks applied by :func:`apply_masks` permanent (plain parameters again)."""
    for module in model.modules():
        for pname in ("weight", "bias"):
            if hasattr(module, f"{pname}_orig") and hasattr(module, f"{pname}_mask"):
                torch_prune.remove(module, pname)
    return model


# ----------------------------------------------------------------------------- structured


def structured_to_channel_keep(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Kept output-channel indices (int64, sorted) per module name, for every ``(Cout,)`` mask."""
    return {
        name.rpartition(".")[0]: torch.nonzero(mask.detach().reshape(-1) != 0).reshape(-1).cpu()
        for name, mask in masks.items()
        if mask.dim() == 1
    }


def compact_structured(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    example_input: torch.Tensor,
    rule: str = "all",
) -> nn.Module:
    """Physically remove pruned output channels; returns a smaller deep copy.

    Uses Torch-Pruning's DependencyGraph, so each removal goes through the whole
    dependency group (the BatchNorm after a conv, the next layer's input channels,
    and every conv coupled through a residual add).  Within a group, a channel is
    removed if ``rule="all"`` masked convs/linears of the group prune it (default,
    conservative: residual-coupled channels survive unless every coupled layer
    agrees), or if ``"any"`` of them does.  A group containing an unmasked
    conv/linear (e.g. the classifier) keeps that layer's channels under ``"all"``.
    The returned model computes what the masked model computes when the pruned
    channels are zeroed through the whole group (conv weight and bias, and the
    BatchNorm weight and bias).
    """
    import torch_pruning as tp

    if rule not in ("all", "any"):
        raise ValueError(f"rule must be 'all' or 'any', got {rule!r}")
    # Module name -> bool keep vector over its output channels.
    keep = {n.rpartition(".")[0]: m.detach().reshape(-1).cpu() != 0 for n, m in masks.items() if m.dim() == 1}
    net = copy.deepcopy(model)
    names = {m: n for n, m in net.named_modules()}
    missing = sorted(set(keep) - set(names.values()))
    if missing:
        raise ValueError(f"model has no module(s) {missing} named by the masks")
    was_training = net.training
    net.eval()  # tracing must not touch BatchNorm running stats
    ref = first_parameter(net)
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=example_input.to(ref.device, ref.dtype))

    groups = list(dg.get_all_groups(root_module_types=PRUNABLE_TYPES))
    for group in groups:
        n_root = len(group[0].idxs)
        votes: list[list[bool]] = [[] for _ in range(n_root)]  # per root channel: pruned?
        for item in group:
            module = item.dep.target.module
            if not (dg.is_out_channel_pruning_fn(item.dep.handler) and isinstance(module, PRUNABLE_TYPES)):
                continue
            mk = keep.get(names.get(module, ""))
            for idx, root in zip(item.idxs, item.root_idxs):
                votes[root].append(False if mk is None else not bool(mk[idx]))
        if rule == "all":
            removable = [r for r, v in enumerate(votes) if v and all(v)]
        else:
            removable = [r for r, v in enumerate(votes) if any(v)]
        if not removable:
            continue
        if len(removable) >= n_root:
            root_name = names.get(group[0].dep.target.module)
            raise ValueError(f"structured masks would remove every channel of the group rooted at {root_name!r}")
        group.prune(idxs=removable)
    net.train(was_training)
    return net
