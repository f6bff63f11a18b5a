"""Pruning at initialization: the scores of every method (ProsPr, SNIP, GraSP, SynFlow, magnitude, random).

Part of :mod:`basisprune.pai` (import the names from there); its docstring gives each method's definition.
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

from .pai_masks import channel_view, masks_from_scores
from .pai_options import Batch, Masks, PaiOptions, checked_weights, first_parameter, n_batches_needed, take_batches

__all__ = ["scores", "raw_scores", "synflow_masks"]


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


def raw_scores(
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
    return raw_scores(model, method, names, data, structured, opts)


def synflow_masks(
    model: nn.Module, names: list[str], batches: list[Batch], sparsity: float, structured: bool, opts: PaiOptions
) -> Masks:
    """Iterative SynFlow keep-masks for validated input: ``opts.iterations`` rounds, masks applied between them."""
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
