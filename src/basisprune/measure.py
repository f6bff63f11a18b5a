"""Parameter and FLOP counts, and pruning ratios against a reference model."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["basis_ceiling", "basis_savings", "count_params", "count_flops", "measure", "output_positions"]


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """FLOPs of one forward pass, from ``torch.utils.flop_counter.FlopCounterMode``.

    The counter reports 2 FLOPs per multiply-accumulate of convolutions and matrix products.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example_input)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def measure(
    model: nn.Module, example_input: torch.Tensor, reference: nn.Module | dict | None = None
) -> dict[str, float]:
    """Parameters and FLOPs of ``model``; with ``reference``, the fraction of each pruned.

    Args:
        model: a dense model (compact a masked model first: masks do not shrink tensors).
        example_input: one batch; FLOPs scale with its batch size.
        reference: the unpruned model, or a dict from an earlier ``measure`` of it.

    Returns:
        ``params``, ``flops`` and, with a reference, ``params_ref``, ``flops_ref``,
        ``param_pruning_ratio`` and ``flop_pruning_ratio`` (1 - kept / reference).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(model).__name__}")
    out: dict[str, float] = {"params": count_params(model), "flops": count_flops(model, example_input)}
    if reference is not None:
        ref = reference if isinstance(reference, dict) else measure(reference, example_input)
        out["params_ref"], out["flops_ref"] = ref["params"], ref["flops"]
        out["param_pruning_ratio"] = 1.0 - out["params"] / ref["params"]
        out["flop_pruning_ratio"] = 1.0 - out["flops"] / ref["flops"]
    return out


def basis_ceiling(model: nn.Module, example_input: torch.Tensor, exclude: list[str] | None = None) -> dict[str, float]:
    """How far basis pruning alone can go: ``measure`` of ``model`` with one basis left per layer
    group (every decomposable layer decomposed, except ``exclude``), compacted, against ``model``.

    Layers where a single basis pair is not cheaper fold back to one convolution, so this is the
    largest parameter and FLOP pruning ratio basis pruning can reach on the architecture: layers it
    cannot touch (depthwise convs, excluded heads, batch norms) bound it.
    """
    from .compact import compact
    from .decompose import basis_layers, decompose

    d = decompose(model, exclude=exclude or ())
    for layer in basis_layers(d).values():
        layer.mask.zero_()
        layer.mask.view(layer.groups, layer.rank)[:, 0] = 1
    return measure(compact(d), example_input, reference=model)


def output_positions(model: nn.Module, example_input: torch.Tensor, names: list[str]) -> dict[str, int]:
    """Output positions (H*W of a conv's output, tokens of a linear's) of each named module, from
    one forward pass of ``example_input``: the number of times each of its weights is used."""
    modules = dict(model.named_modules())
    missing = sorted(set(names) - set(modules))
    if missing:
        raise ValueError(f"no module(s) named {missing} in the model")
    out: dict[str, int] = {}
    hooks = [modules[n].register_forward_hook(
        lambda m, i, o, n=n: out.__setitem__(n, int(o[0].numel() // o.shape[1]) if o.dim() > 2 else 1))
        for n in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return out


def basis_savings(layers: dict[str, nn.Module], positions: dict[str, int]) -> dict[str, float]:
    """What pruning one more basis of each layer saves, aware of the fold (our extension).

    A basis layer costs ``min(pair(k), original)`` weights with ``k`` kept bases per group
    (``basisprune.compact.pair_cost``: above break-even the layer folds back into one conv, so
    pruning there saves nothing until it crosses the fold). The saving of one basis is amortised
    over the path down to one basis per group: ``(cost(k) - cost(1)) / (live - groups)``. It is
    returned as a share of the layers' resources: the mean of its share of all their weights and of
    all their multiply-accumulates (weights times ``positions``). A layer that can save nothing
    (one basis per group left, or depthwise) gets 0.
    """
    from .compact import pair_cost

    def cost(layer: nn.Module, k: int) -> int:
        pair, orig = pair_cost(layer, k)
        return min(pair, orig)

    per = {}
    total_p = total_f = 0.0
    for n, layer in layers.items():
        orig = pair_cost(layer, 1)[1]
        total_p += orig
        total_f += orig * positions[n]
        live = int(layer.mask.sum().item())
        k = int(layer.mask.view(layer.groups, layer.rank).sum(1).max().item())
        saved = cost(layer, max(k, 1)) - cost(layer, 1)
        per[n] = saved / max(live - layer.groups, 1) if k > 1 else 0.0
    return {n: 0.5 * per[n] / total_p + 0.5 * per[n] * positions[n] / total_f for n in layers}
