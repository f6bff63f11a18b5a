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

import copy
import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.func import functional_call

from .pai_masks import (
    LayerCollapseError, apply_masks, channel_view, compact_structured, masks_from_scores, remove_masks,
    structured_to_channel_keep,
)
from .pai_options import (
    KEEP_LOWEST, METHODS, Batch, Masks, PaiOptions, check_sparsity, checked_weights,
    first_parameter, n_batches_needed, prunable_weights, take_batches,
)

__all__ = [
    "METHODS", "PaiOptions", "prunable_weights", "scores", "masks_from_scores", "check_sparsity",
    "LayerCollapseError", "prune", "apply_masks", "remove_masks", "structured_to_channel_keep",
    "compact_structured",
]


# ----------------------------------------------------------------------------- helpers


def _to_model(batch: Batch, ref: torch.Tensor) -> Batch:
    """Move a batch to the model's device and floating inputs to the model's dtype."""
    x, y = batch
    x = x.to(ref.device, dtype=ref.dtype if x.is_floating_point() else x.dtype)
    return x, y.to(ref.device)


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """Sum a weight-shaped tensor over everything but the output-channel dim."""
    return t.reshape(t.shape[0], -1).sum(dim=1)


def _grads(out: torch.Tensor, inputs: Sequence[torch.Tensor], **kw: Any) -> list[torch.Tensor]:
    """autograd.grad that returns zeros for inputs the output does not depend on."""
    gs = torch.autograd.grad(out, list(inputs), allow_unused=True, **kw)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, inputs)]


# ----------------------------------------------------------------------------- scores


def _snip(net: nn.Module, names: list[str], batches: list[Batch], opts: PaiOptions) -> Masks:
    """Signed ``g * w`` with ``g`` the loss gradient averaged over the batches."""
    net.train()
    params = dict(net.named_parameters())
    weights = [params[n] for n in names]
    acc = [torch.zeros_like(w) for w in weights]
    for batch in batches:
        x, y = _to_model(batch, weights[0])
        for a, g in zip(acc, _grads(opts.loss_fn(net(x), y), weights)):
            a.add_(g / len(batches))
    return {n: (g * w).detach() for n, g, w in zip(names, acc, weights)}


def _sgd_step(
    params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor | None], opts: PaiOptions
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """One out-of-place SGD step with the same momentum rule as torch.optim.SGD."""
    new_params, new_bufs = [], []
    for p, g, b in zip(params, grads, bufs):
        if opts.inner_momentum:
            b = g if b is None else b * opts.inner_momentum + g
            g = b
        new_bufs.append(b)
        new_params.append(p - opts.inner_lr * g)
    return new_params, new_bufs


def _prospr(net: nn.Module, names: list[str], batches: list[Batch], opts: PaiOptions, first_order: bool) -> Masks:
    """Signed element-wise meta-gradient ``dL(w_M)/dc`` at ``c = 1``.

    ``first_order=True`` returns ``grad_w L(w_M) * w_init`` instead (no gradient
    through the inner loop).
    """
    net.train()
    all_names = [n for n, _ in net.named_parameters()]
    init = {n: p.detach() for n, p in net.named_parameters()}
    # Private buffer copies: train-mode BatchNorm updates running stats in place.
    buffers = {n: b.detach().clone() for n, b in net.named_buffers()}
    ref = init[names[0]]
    masked = set(names)

    masks = {n: torch.ones_like(init[n], requires_grad=True) for n in names}
    fast: list[torch.Tensor] = []
    for n in all_names:
        if n in masked and not first_order:
            fast.append(init[n] * masks[n])
        else:
            fast.append(init[n].clone().requires_grad_(True))

    def loss_at(params: list[torch.Tensor], batch: Batch) -> torch.Tensor:
        x, y = _to_model(batch, ref)
        out = functional_call(net, {**dict(zip(all_names, params)), **buffers}, (x,))
        return opts.loss_fn(out, y)

    inner = [batches[k] if opts.new_data_in_inner else batches[0] for k in range(opts.steps)]
    meta = batches[opts.steps :] if opts.new_data_in_inner else batches[: opts.num_batches]

    bufs: list[torch.Tensor | None] = [None] * len(fast)
    for batch in inner:
        g = _grads(loss_at(fast, batch), fast, create_graph=not first_order)
        fast, bufs = _sgd_step(fast, g, bufs, opts)
        if first_order:
            # Cut the graph: w_M is treated as a constant function of nothing.
            fast = [p.detach().requires_grad_(True) for p in fast]
            bufs = [None if b is None else b.detach() for b in bufs]

    idx = {n: i for i, n in enumerate(all_names)}
    acc = {n: torch.zeros_like(init[n]) for n in names}
    for j, batch in enumerate(meta):
        loss = loss_at(fast, batch)
        if first_order:
            gs = _grads(loss, [fast[idx[n]] for n in names])
            gs = [g * init[n] for g, n in zip(gs, names)]
        else:
            gs = _grads(loss, [masks[n] for n in names], retain_graph=j < len(meta) - 1)
        for n, g in zip(names, gs):
            acc[n] += g.detach() / len(meta)
    return acc


def _grasp(net: nn.Module, names: list[str], batches: list[Batch], opts: PaiOptions) -> Masks:
    """``-w * (H g)`` with ``g = sum_b grad L_b``, ``Hg = sum_b H_b g`` (official GraSP)."""
    net.train()
    params = dict(net.named_parameters())
    weights = [params[n] for n in names]

    def loss_of(batch: Batch) -> torch.Tensor:
        x, y = _to_model(batch, weights[0])
        return opts.loss_fn(net(x) / opts.temperature, y)

    g = [torch.zeros_like(w) for w in weights]
    for batch in batches:
        for a, gb in zip(g, _grads(loss_of(batch), weights)):
            a.add_(gb)
    hg = [torch.zeros_like(w) for w in weights]
    for batch in batches:
        gb = _grads(loss_of(batch), weights, create_graph=True)
        z = sum((a.detach() * b).sum() for a, b in zip(g, gb))
        for a, h in zip(hg, _grads(z, weights)):  # type: ignore[arg-type]
            a.add_(h)
    return {n: (-w * h).detach() for n, w, h in zip(names, weights, hg)}


def _synflow_round(
    net: nn.Module, names: list[str], x: torch.Tensor, masks: Masks | None, structured: bool
) -> Masks:
    """``|w * dR/dw|`` on a net whose params/buffers are already |.|-ed, float64, eval."""
    params = {n: p.detach() for n, p in net.named_parameters()}
    buffers = dict(net.named_buffers())
    w = {n: params[n].clone().requires_grad_(True) for n in names}
    eff = {}
    for n in names:
        if masks is None:
            eff[n] = w[n]
        else:
            m = masks[n] if not structured else channel_view(masks[n], w[n])
            eff[n] = w[n] * m
    r = functional_call(net, {**params, **eff, **buffers}, (x,)).sum()
    gs = _grads(r, [w[n] for n in names])
    return {n: (g * w[n]).abs().detach() for n, g in zip(names, gs)}


def _synflow_prepare(model: nn.Module, batches: list[Batch]) -> tuple[nn.Module, torch.Tensor]:
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in itertools.chain(net.parameters(), net.buffers()):
            if t.is_floating_point():
                t.abs_()
    x0 = batches[0][0]
    x = torch.ones((1, *x0.shape[1:]), dtype=torch.float64, device=first_parameter(net).device)
    return net, x


def _raw_scores(
    model: nn.Module, method: str, names: list[str], batches: list[Batch], structured: bool, opts: PaiOptions
) -> Masks:
    """Scores for validated input; ``model`` is never modified (work on a deep copy)."""
    if method == "magnitude":
        params = dict(model.named_parameters())
        out = {n: params[n].detach().abs().clone() for n in names}
        return {n: _per_channel(s) for n, s in out.items()} if structured else out
    if method == "random":
        gen = torch.Generator().manual_seed(opts.seed)
        params = dict(model.named_parameters())
        shapes = {n: (params[n].shape[0],) if structured else params[n].shape for n in names}
        return {n: torch.rand(shapes[n], generator=gen, dtype=torch.float64).to(params[n]) for n in names}
    if method == "synflow":
        net, x = _synflow_prepare(model, batches)
        out = _synflow_round(net, names, x, None, False)
        return {n: _per_channel(s) for n, s in out.items()} if structured else out

    net = copy.deepcopy(model)
    if method == "snip":
        signed = _snip(net, names, batches, opts)
    elif method == "grasp":
        signed = _grasp(net, names, batches, opts)
    else:
        signed = _prospr(net, names, batches, opts, first_order=method == "prospr_first_order")
    if structured:
        signed = {n: _per_channel(s) for n, s in signed.items()}
    if method == "grasp":
        return signed
    return {n: s.abs() for n, s in signed.items()}


def scores(
    model: nn.Module,
    method: str,
    batches: Iterable[Batch] | None,
    structured: bool = False,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Raw pruning scores, one tensor per prunable weight (weight-shaped, or ``(Cout,)`` if structured).

    Higher means more important for every method except ``grasp``, whose signed
    score ``-w * Hg`` is kept lowest-first.  For ``synflow`` this is a single round
    (no iterative masking) and the scores are float64.  ``batches`` may be ``None``
    for ``magnitude`` and ``random``.  The model is not modified.
    """
    opts = PaiOptions.from_kwargs(options)
    names = checked_weights(model, method, structured, opts)
    data = take_batches(batches, n_batches_needed(method, opts), method)
    return _raw_scores(model, method, names, data, structured, opts)


def _synflow_iterative(
    model: nn.Module, names: list[str], batches: list[Batch], sparsity: float, structured: bool, opts: PaiOptions
) -> Masks:
    net, x = _synflow_prepare(model, batches)
    params = dict(net.named_parameters())
    masks: Masks = {
        n: torch.ones(params[n].shape[:1] if structured else params[n].shape, dtype=torch.float64, device=x.device)
        for n in names
    }
    for k in range(1, opts.iterations + 1):
        s = _synflow_round(net, names, x, masks, structured)
        if structured:
            s = {n: _per_channel(v) for n, v in s.items()}
        # Already-pruned entries must stay pruned even when live scores are 0 too.
        s = {n: v.masked_fill(masks[n] == 0, -math.inf) for n, v in s.items()}
        density = (1.0 - sparsity) ** (k / opts.iterations)
        masks = masks_from_scores(s, 1.0 - density, dtype=torch.float64)
    return masks


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
        masks = _synflow_iterative(model, names, data, sparsity, structured, opts)
    else:
        raw = _raw_scores(model, method, names, data, structured, opts)
        masks = masks_from_scores(raw, sparsity, largest=method not in KEEP_LOWEST)
    params = dict(model.named_parameters())
    return {n: m.to(device=params[n].device, dtype=params[n].dtype) for n, m in masks.items()}
