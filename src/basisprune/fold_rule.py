"""Latency-aware compaction: fold a kept basis pair back into one conv unless the pair is faster.

:func:`latency_fold_rule` builds a ``fold_rule`` for :func:`basisprune.compact` that times each basis
layer's kept pair (basis conv + 1x1 conv) against the single folded conv on the layer's real input
shape (:func:`layer_input_shapes`) with :func:`basisprune.timers.interleaved_times`, and keeps the pair
only where :func:`basisprune.timers.clearly_faster` says so, so no compacted layer is slower in
practice. :mod:`basisprune.bench` re-exports these names.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .compact import compact_basis_layer, fold_by_params, kept_indices
from .decompose import BasisLayer, basis_layers
from .timers import (LayerTimer, benchmark_timer, check_batch_sizes, clearly_faster, eval_mode, interleaved_times,
                     model_device, num_threads, timed_on)

__all__ = ["LatencyFoldRule", "latency_fold_rule", "layer_input_shapes"]


def layer_input_shapes(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """One sample's input shape (no batch dimension) of every basis layer, from forward hooks."""
    layers = basis_layers(model)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, layer in layers.items():
        def hook(mod, args, name=name):
            shapes.setdefault(name, tuple(args[0].shape[1:]))
        hooks.append(layer.register_forward_pre_hook(hook))
    try:
        with eval_mode(model), torch.inference_mode():
            model(example_input[:1])
    finally:
        for h in hooks:
            h.remove()
    missing = set(layers) - set(shapes)
    if missing:
        raise ValueError(f"basis layers never called on example_input: {sorted(missing)}")
    return shapes


class LatencyFoldRule:
    """A ``fold_rule`` for :func:`basisprune.compact` that folds slow pairs (see
    :func:`latency_fold_rule`). Call it as ``rule(name, layer, kept_per_group) -> bool``.

    Attributes:
        records: one dict per timed (or skipped) layer: ``name``, ``kept_per_group``, ``bases``,
            ``input_shape``, ``pair_ms`` / ``folded_ms`` (lists, one per batch size; empty when the
            parameter rule already folds), ``fold`` and ``reason`` (``"params"``, ``"latency"``
            or ``"pair faster"``).
    """

    def __init__(
        self,
        shapes: dict[str, tuple[int, ...]],
        batch_sizes: list[int],
        criterion: str,
        timer: LayerTimer,
        base_rule: Callable[[str, BasisLayer, int], bool],
        device: torch.device,
        seed: int,
        rounds: int = 5,
        margin: float = 0.02,
    ):
        self.shapes = shapes
        self.batch_sizes = batch_sizes
        self.criterion = criterion
        self.timer = timer
        self.base_rule = base_rule
        self.device = device
        self.seed = seed
        self.rounds = rounds
        self.margin = margin
        self.timed_on = timed_on(None, device)
        self._cache: dict[tuple[str, int], dict[str, Any]] = {}

    @property
    def records(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._cache.values()]

    def decide(self, name: str, layer: BasisLayer, kept_per_group: int) -> dict[str, Any]:
        """Time (once, then cached) and decide one layer; returns its record."""
        key = (name, int(kept_per_group))
        if key in self._cache:
            return self._cache[key]
        rec: dict[str, Any] = {
            "name": name, "kept_per_group": int(kept_per_group), "bases": layer.rank,
            "input_shape": list(self.shapes.get(name, ())), "batch_sizes": list(self.batch_sizes),
            "pair_ms": [], "folded_ms": [],
        }
        if self.base_rule(name, layer, kept_per_group):
            rec.update(fold=True, reason="params")
        elif name not in self.shapes:
            raise KeyError(f"no input shape recorded for basis layer {name!r}; build the rule on this model")
        else:
            pair = compact_basis_layer(layer, fold=False).to(self.device)
            single = compact_basis_layer(layer, fold=True).to(self.device)
            gen = torch.Generator().manual_seed(self.seed)
            xs = [torch.randn((b, *self.shapes[name]), generator=gen).to(self.device) for b in self.batch_sizes]
            t_pair, t_single = interleaved_times([(pair, xs), (single, xs)], self.timer, self.rounds)
            rec["pair_ms"] = [1e3 * statistics.median(r[b] for r in t_pair) for b in range(len(xs))]
            rec["folded_ms"] = [1e3 * statistics.median(r[b] for r in t_single) for b in range(len(xs))]
            verdict = clearly_faster(t_pair, t_single, margin=self.margin, each=self.criterion == "each")
            rec.update(fold=not verdict["faster"], reason="pair faster" if verdict["faster"] else "latency",
                       pair_to_folded=verdict["ratio_median"], pair_to_folded_p25=verdict["ratio_p25"],
                       pair_to_folded_p75=verdict["ratio_p75"], rounds=self.rounds)
        self._cache[key] = rec
        return rec

    def __call__(self, name: str, layer: BasisLayer, kept_per_group: int) -> bool:
        return bool(self.decide(name, layer, kept_per_group)["fold"])


def latency_fold_rule(
    model: nn.Module,
    example_input: torch.Tensor,
    batch_sizes: Iterable[int] = (1, 8, 64),
    *,
    criterion: str = "each",
    min_run_time: float = 0.02,
    min_runs: int = 5,
    threads: int | None = None,
    timer: LayerTimer | None = None,
    base_rule: Callable[[str, BasisLayer, int], bool] = fold_by_params,
    device: str | torch.device = "cpu",
    seed: int = 0,
    rounds: int = 5,
    margin: float = 0.02,
) -> LatencyFoldRule:
    """A fold rule that keeps a basis pair only where it is measurably faster than one conv.

    For every basis layer of ``model`` (with its current masks), the kept pair
    (basis conv + 1x1 conv, as ``basisprune.compact.compact_basis_layer`` builds it) and the
    single folded conv are timed, in eval mode, on random inputs of the layer's real input shape (captured with
    forward hooks on ``example_input``) at each batch size. The layer is folded when

    * ``base_rule`` says so (default ``basisprune.compact.fold_by_params``: the pair would
      not have fewer weights; these layers are not timed), or
    * the pair is not clearly faster (:func:`clearly_faster` over ``rounds`` interleaved rounds of
      both: median paired ratio below ``1 - margin``, upper quartile below 1): with
      ``criterion="each"`` (default) at every measured batch size; with ``criterion="sum"`` on the
      ratio averaged over batch sizes. A pair that cannot be told apart from its folded conv is
      folded: where pruning a layer does not pay, the layer stays as it was.

    So, up to timing noise, ``compact(model, fold_rule=rule)`` has no layer slower than the
    original conv at the measured batch sizes, and no layer with more weights.

    Cost: ``2 * rounds * len(batch_sizes)`` timings of about ``min_run_time`` seconds (at least
    ``min_runs`` runs of one call) per layer the parameter rule keeps, plus one warm-up pass each. The timings are done eagerly here, on the masks present now;
    a layer whose kept count differs at ``compact`` time is timed again then.

    Args:
        timer: ``timer(module, x) -> seconds`` replacing the default
            :func:`benchmark_timer` (median seconds per call over at least ``min_runs`` runs and
            ``min_run_time`` seconds), e.g. fake timings in tests.
        threads: torch threads for the default timer.
        device: where the layers are timed.
        rounds, margin: the interleaved rounds and the margin of :func:`clearly_faster`.

    Returns:
        A :class:`LatencyFoldRule`; its ``records`` list every decision with its timings (medians
        over rounds) and paired ratios, and its ``timed_on`` the hardware that made them.
    """
    if criterion not in ("each", "sum"):
        raise ValueError(f"criterion must be 'each' or 'sum', got {criterion!r}")
    sizes = check_batch_sizes(batch_sizes)
    if not basis_layers(model):
        raise ValueError("the model has no basis layers; call basisprune.decompose first")
    dev = torch.device(device)
    shapes = layer_input_shapes(model, example_input.to(model_device(model) or "cpu"))
    rule = LatencyFoldRule(shapes, sizes, criterion, timer or benchmark_timer(min_run_time, threads, min_runs),
                           base_rule, dev, seed, rounds, margin)

    with num_threads(threads):
        rule.timed_on = timed_on(threads, dev)
        for name, layer in basis_layers(model).items():
            _, k = kept_indices(layer)
            rule.decide(name, layer, k)
    return rule
