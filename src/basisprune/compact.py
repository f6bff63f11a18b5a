"""Turn a masked (pruned) model into a physically smaller dense model of standard modules.

* Basis layers keep only their unpruned bases: the basis conv loses filters, the 1x1 conv loses
  columns, and the scales are folded into the 1x1 weights. A layer whose kept rank would make the
  pair cost as much as the original conv or more is folded back into one conv,
  ``W' = U_k S_k diag(s_k) V_k^T``, so no layer ever grows.
* Channel groups lose their masked channels through Torch-Pruning's dependency graph, after the
  scales have been folded into the consumer weights.

Given an ``example_input``, :func:`compact` runs the compact model on it and raises
:class:`CompactionError` unless it reproduces the masked model there: it never returns a broken model.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from .channel import channel_scales, dependency_graph, remove_channel_scales
from .decompose import BasisConv2d, BasisLayer, basis_layers, set_submodule
from .errors import BasisPruneError
from .io import atomic_write

__all__ = ["CompactionError", "compact", "compact_basis_layer", "fold_all", "fold_by_params", "kept_indices",
           "pair_cost", "save_model", "load_model"]


class CompactionError(BasisPruneError, RuntimeError):
    """The compact model could not be built, cannot run, or differs from the masked model."""

FoldRule = Callable[[str, BasisLayer, int], bool]


def pair_cost(layer: BasisLayer, kept_per_group: int) -> tuple[int, int]:
    """(weights of the kept pair, weights of the original layer), biases excluded.

    Per group: ``D * r' + r' * Cout_g`` against ``D * Cout_g``; summed over groups.
    """
    d = layer.basis_matrix().shape[1]
    out = layer.coef.shape[0]
    g = layer.groups
    return g * kept_per_group * d + out * kept_per_group, out * d


def fold_by_params(name: str, layer: BasisLayer, kept_per_group: int) -> bool:
    """Default rule: fold when the pair is not strictly smaller than the original layer."""
    pair, orig = pair_cost(layer, kept_per_group)
    return pair >= orig


def fold_all(name: str, layer: BasisLayer, kept_per_group: int) -> bool:
    """Fold every basis pair back into one conv: the layer's original shape with the pruned weights
    (the comparison :func:`basisprune.inference_form`'s guard makes)."""
    return True


def kept_indices(layer: BasisLayer) -> tuple[list[torch.Tensor], int]:
    """Kept basis indices per group, padded to a common count (grouped 1x1 convs need one).

    Padding takes the strongest pruned bases; their scale is masked, so their columns are zero and
    the output does not change.
    """
    mask = layer.mask.view(layer.groups, layer.rank)
    k = max(1, int(mask.sum(1).max().item()))
    kept = []
    for gi in range(layer.groups):
        order = torch.argsort(mask[gi], descending=True, stable=True)  # kept first, then by index
        kept.append(torch.sort(order[:k]).values)
    return kept, k


def compact_basis_layer(layer: BasisLayer, fold: bool) -> nn.Module:
    """A dense replacement for one basis layer: the kept pair, or one folded conv / linear."""
    with torch.no_grad():
        if fold:
            w = layer.reconstruct().detach()
            if isinstance(layer, BasisConv2d):
                m = copy.deepcopy(layer.basis)
                m.out_channels = layer.out_channels
            else:
                m = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
                m = m.to(device=w.device, dtype=w.dtype)
            m.weight = nn.Parameter(w.clone(), requires_grad=False)
            m.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
            return m
        kept, k = kept_indices(layer)
        flat = torch.cat([gi * layer.rank + idx for gi, idx in enumerate(kept)])
        coef = layer.scaled_coef().detach()
        out_g = coef.shape[0] // layer.groups
        coef = torch.cat(
            [coef[gi * out_g:(gi + 1) * out_g][:, kept[gi]] for gi in range(layer.groups)]
        )
        bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        if isinstance(layer, BasisConv2d):
            basis = copy.deepcopy(layer.basis)
            basis.weight = nn.Parameter(layer.basis.weight[flat].clone(), requires_grad=False)
            basis.out_channels = flat.numel()
            proj = nn.Conv2d(flat.numel(), layer.out_channels, 1, groups=layer.groups, bias=bias is not None)
            proj = proj.to(device=coef.device, dtype=coef.dtype)
            proj.weight = nn.Parameter(coef.reshape(layer.out_channels, k, 1, 1).clone(), requires_grad=False)
        else:
            basis = nn.Linear(layer.in_features, k, bias=False).to(device=coef.device, dtype=coef.dtype)
            basis.weight = nn.Parameter(layer.basis.weight[flat].clone(), requires_grad=False)
            proj = nn.Linear(k, layer.out_features, bias=bias is not None).to(device=coef.device, dtype=coef.dtype)
            proj.weight = nn.Parameter(coef.clone(), requires_grad=False)
        proj.bias = bias
        return nn.Sequential(basis, proj)


def _compact_channels(model: nn.Module, example_input: torch.Tensor) -> None:
    masks = remove_channel_scales(model, fold=True)
    pruned = {root: torch.nonzero(m == 0).flatten().tolist() for root, m in masks.items()}
    pruned = {r: idx for r, idx in pruned.items() if idx}
    if not pruned:
        return
    dg = dependency_graph(model, example_input)
    for root, idxs in pruned.items():
        mod = model.get_submodule(root)
        handler = dg.get_pruner_of_module(mod).prune_out_channels
        try:
            dg.get_pruning_group(mod, handler, idxs=idxs).prune()
        except (RuntimeError, IndexError, ValueError) as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise CompactionError(f"Torch-Pruning could not remove the masked channels of the group rooted at "
                                  f"{root} ({type(e).__name__}: {first})") from e


def _outputs(y) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, (tuple, list)):
        return [t for v in y for t in _outputs(v)]
    if isinstance(y, dict):
        return [t for v in y.values() for t in _outputs(v)]
    return []


def _forward(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    was = model.training
    model.eval()  # no batch-norm statistics change, and both models compute the same function
    try:
        with torch.no_grad():
            return _outputs(model(x))
    finally:
        model.train(was)


def verify_compact(compacted: nn.Module, expected: list[torch.Tensor], x: torch.Tensor, rtol: float) -> None:
    """Raise :class:`CompactionError` unless ``compacted(x)`` matches ``expected`` (the masked model's
    outputs in eval mode): ``max |a - b| <= rtol * max(1, max |b|)`` for every output."""
    name = type(compacted).__name__
    try:
        got = _forward(compacted, x)
    except Exception as e:  # a broken compact model is the bug this check exists for
        first = (str(e).strip().splitlines() or [""])[0]
        raise CompactionError(f"the compact {name} cannot run on example_input ({type(e).__name__}: {first}); "
                              "nothing was returned") from e
    if len(got) != len(expected) or any(a.shape != b.shape for a, b in zip(got, expected)):
        raise CompactionError(f"the compact {name} returns outputs of shapes {[tuple(a.shape) for a in got]}, the "
                              f"masked model {[tuple(b.shape) for b in expected]}; nothing was returned")
    for a, b in zip(got, expected):
        err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
        bound = rtol * max(1.0, b.double().abs().max().item() if b.numel() else 0.0)
        if not err <= bound:
            raise CompactionError(f"the compact {name} differs from the masked model on example_input by {err:.3g} "
                                  f"(allowed {bound:.3g}); nothing was returned")


def compact(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    fold_rule: FoldRule = fold_by_params,
    rtol: float = 1e-3,
) -> nn.Module:
    """A physically smaller copy of ``model`` that computes what the masked model computes.

    Args:
        model: a model with basis layers and/or channel scales (masks set by pruning).
        example_input: a batch for tracing; required when the model has channel scales. When given,
            the compact model is run on it and checked against ``model`` (both in eval mode).
        fold_rule: ``(name, layer, kept_per_group) -> bool``; True folds a basis layer back into a
            single conv. The default folds whenever the pair would not be smaller.
        rtol: allowed output difference in that check, relative to ``max(1, max |output|)``.

    Raises:
        ValueError: channel scales present but no ``example_input``; or neither basis layers nor
            channel scales (nothing to compact: decompose the model or add channel scales first).
        CompactionError: the compact model cannot be built, cannot run on ``example_input`` or does
            not reproduce the masked model there (never a silently broken model).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not basis_layers(model) and not channel_scales(model):
        raise ValueError(
            f"model ({type(model).__name__}) has no basis layers and no channel scales, so there is nothing "
            "to compact; decompose() it or add_channel_scales() to it and prune first"
        )
    expected = None if example_input is None else _forward(model, example_input)
    out = copy.deepcopy(model)
    if channel_scales(out):
        if example_input is None:
            raise ValueError("compacting channel groups needs example_input (a batch the model accepts)")
        if basis_layers(out):
            raise ValueError(
                "channel scales and basis layers in one model are not supported: compact the "
                "channel-pruned model first, then decompose it (double pruning does this)"
            )
        _compact_channels(out, example_input)
    for name, layer in basis_layers(out).items():
        _, k = kept_indices(layer)
        set_submodule(out, name, compact_basis_layer(layer, fold_rule(name, layer, k)))
    for p in out.parameters():
        p.requires_grad_(False)
    if expected is not None:
        verify_compact(out, expected, example_input, rtol)
    return out


def save_model(model: nn.Module, path) -> None:
    """Save a whole (compact) model: architecture and weights in one file, written atomically
    (a killed write leaves the previous file, or none, never a truncated one)."""
    atomic_write(path, lambda f: torch.save(model, f))


def load_model(path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by :func:`save_model` (a trusted file: it is unpickled)."""
    return torch.load(path, map_location=map_location, weights_only=False)
