"""Parameter and FLOP counts, and pruning ratios against a reference model."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["basis_ceiling", "count_params", "count_flops", "measure"]


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
