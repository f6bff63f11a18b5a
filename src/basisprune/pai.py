"""Pruning at initialization: ProsPr and the usual baselines.

ProsPr (Alizadeh et al., ICLR 2022, arXiv:2202.08132; reconstructed from the
official code, mil-ad/prospr):

* a keep-mask ``c = 1`` sits on every Conv2d/Linear weight, ``w_0 = c * w_init``;
* ``M`` (``steps``, default 3) plain SGD steps are taken on all parameters (biases
  and BatchNorm affine parameters are updated but not masked), BatchNorm in train
  mode, optionally with momentum, keeping the whole computation graph;
* the meta-loss ``L(w_M)`` is evaluated on the next batch and the score of a weight
  is ``|dL(w_M)/dc|`` at ``c = 1``;
* one global top-k over all scores (no per-layer quota).

Choices where the paper is silent (or the official code differs from it):

* ``inner_lr`` defaults to 0.1 and ``inner_momentum`` to 0 (the official CLI
  defaults); no weight decay in the inner loop.
* ``new_data_in_inner=True`` (default): inner step ``k`` uses batch ``k`` and the
  meta-loss uses batch ``M`` (the paper's algorithm).  ``False`` reuses batch 0
  everywhere (the official CLI default).  With ``num_batches = B > 1`` the
  meta-gradient is averaged over ``B`` batches.  Too short iterables are cycled.
* ``prospr_first_order`` drops every second-order term:
  ``score = |grad_w L(w_M) * w_init|`` with ``w_M`` computed by the same inner loop
  but not differentiated through.
* ``steps = 0`` gives SNIP exactly.
* Structured mode: one mask per output channel (shape ``(Cout,)``) on every
  Conv2d/Linear weight except the classifier (the last ``nn.Linear`` in registration
  order).  A channel's mask multiplies that channel's weights only (not the bias), so
  its derivative is the *sum* of the element-wise mask derivatives of the channel; the
  method's non-linearity (``abs`` for SNIP/ProsPr) is applied after the sum.  Magnitude
  becomes the channel's L1 norm, SynFlow/GraSP scores are summed per channel.  The
  budget counts channels, not weights.

Baselines:

* ``snip``: ``|g * w|`` (Lee et al. 2019), ``g`` averaged over ``num_batches``.
* ``grasp``: ``S = -w * (H g)`` (Wang et al. 2020) exactly as the official code
  (alecwangcq/GraSP): logits divided by ``temperature`` (default 200), ``g`` and ``H``
  restricted to the prunable weights, ``g = sum_b grad L_b`` and ``Hg = sum_b H_b g``
  over ``num_batches`` batches, and the weights with the **highest** ``S`` are removed
  (the lowest are kept).  Not reproduced: the official code's class-balanced sampling,
  its half-batch split, and its re-initialisation of Linear layers in the scoring copy.
* ``synflow``: ``|w * dR/dw|`` with ``R = sum(f(1; |theta|))`` (Tanaka et al. 2020), as
  the official code: every parameter *and buffer* replaced by its absolute value, the
  network in eval mode (so BatchNorm is the per-channel affine map with
  ``|gamma| / sqrt(|running_var| + eps)`` and ``|beta|``), an all-ones input of one
  sample, float64 to avoid overflow.  ``iterations`` (default 100) rounds with density
  ``(1 - sparsity) ** (k / iterations)`` at round ``k``, masks applied between rounds.
  ``scores()`` returns the single-round scores.
* ``magnitude``: ``|w|``;  ``random``: uniform scores from a ``seed``-ed generator.

Keep-count: ``round((1 - sparsity) * total)`` with a stable sort (ties keep the
earlier layer/index), so the density is exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from .pai_masks import (
    LayerCollapseError, apply_masks, compact_structured, masks_from_scores, remove_masks, structured_to_channel_keep,
)
from .pai_options import (
    KEEP_LOWEST, METHODS, Batch, PaiOptions, check_sparsity, checked_weights, n_batches_needed, prunable_weights,
    take_batches,
)
from .pai_scores import raw_scores, scores, synflow_masks

__all__ = [
    "METHODS", "PaiOptions", "prunable_weights", "scores", "masks_from_scores", "check_sparsity",
    "LayerCollapseError", "prune", "apply_masks", "remove_masks", "structured_to_channel_keep",
    "compact_structured",
]


def prune(
    model: nn.Module,
    method: str,
    sparsity: float,
    batches: Iterable[Batch] | None,
    structured: bool = False,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Keep-masks for pruning at initialization.

    Returns a dict from parameter name (as in ``model.named_parameters()``) to a 0/1
    tensor of the weight's shape, or of shape ``(Cout,)`` when ``structured`` (the
    classifier is then left out).  ``method`` is one of :data:`METHODS`; ``batches``
    is an iterable of ``(inputs, targets)`` (may be ``None`` for ``magnitude`` and
    ``random``); ``options`` are the fields of :class:`PaiOptions`.  Bad input raises
    ``ValueError`` before any work; the model is not modified.
    """
    opts = PaiOptions.from_kwargs(options)
    names = checked_weights(model, method, structured, opts)
    check_sparsity(sparsity)
    data = take_batches(batches, n_batches_needed(method, opts), method)

    if method == "synflow":
        masks = synflow_masks(model, names, data, sparsity, structured, opts)
    else:
        raw = raw_scores(model, method, names, data, structured, opts)
        masks = masks_from_scores(raw, sparsity, largest=method not in KEEP_LOWEST)
    params = dict(model.named_parameters())
    return {n: m.to(device=params[n].device, dtype=params[n].dtype) for n, m in masks.items()}
