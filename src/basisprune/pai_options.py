"""Pruning at initialization: the methods, their options, and the checks of a call's input.

Part of :mod:`basisprune.pai` (import the names from there); the methods are described in its docstring.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "METHODS", "PRUNABLE_TYPES", "KEEP_LOWEST", "Batch", "Masks", "PaiOptions", "prunable_weights",
    "checked_weights", "check_sparsity", "n_batches_needed", "take_batches", "first_parameter",
]

METHODS: tuple[str, ...] = ("prospr", "prospr_first_order", "snip", "grasp", "synflow", "magnitude", "random")
# The layer types whose weights are pruned.
PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)
# Methods whose scores rank weights to *remove* high first (keep the lowest).
KEEP_LOWEST = frozenset({"grasp"})
# Methods that can run without data.
_DATA_FREE = frozenset({"magnitude", "random"})

Batch = tuple[torch.Tensor, torch.Tensor]
Masks = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PaiOptions:
    """All options accepted as ``**options`` by :func:`prune` and :func:`scores`."""

    steps: int = 3  # ProsPr inner SGD steps M
    inner_lr: float = 0.1
    inner_momentum: float = 0.0
    new_data_in_inner: bool = True
    num_batches: int = 1  # batches the (meta-)loss gradient is averaged over
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    temperature: float = 200.0  # GraSP logit temperature
    iterations: int = 100  # SynFlow rounds
    seed: int = 0  # random
    exclude: tuple[str, ...] = ()  # parameter names never pruned

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> PaiOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known options: {sorted(known)}")
        opts = dict(options)
        if "exclude" in opts:
            opts["exclude"] = tuple(opts["exclude"])
        out = cls(**opts)
        out._check()
        return out

    def _check(self) -> None:
        def _int(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"option {name} must be an integer >= {lo}, got {v!r}")

        _int("steps", 0)
        _int("num_batches", 1)
        _int("iterations", 1)
        _int("seed", 0)
        if not (isinstance(self.inner_lr, (int, float)) and math.isfinite(self.inner_lr) and self.inner_lr > 0):
            raise ValueError(f"option inner_lr must be a positive finite number, got {self.inner_lr!r}")
        if not (isinstance(self.inner_momentum, (int, float)) and 0 <= self.inner_momentum < 1):
            raise ValueError(f"option inner_momentum must be in [0, 1), got {self.inner_momentum!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"option temperature must be positive, got {self.temperature!r}")
        if not callable(self.loss_fn):
            raise ValueError("option loss_fn must be callable(outputs, targets) -> scalar")


def prunable_weights(model: nn.Module, structured: bool = False, exclude: Iterable[str] = ()) -> list[str]:
    """Names of the prunable weights: every Conv2d/Linear ``.weight`` parameter.

    In structured mode the classifier (the last ``nn.Linear`` in registration order)
    is left out, since its output channels are the classes.
    """
    params = dict(model.named_parameters())
    names = [
        f"{mname}.weight" if mname else "weight"
        for mname, m in model.named_modules()
        if isinstance(m, PRUNABLE_TYPES) and (f"{mname}.weight" if mname else "weight") in params
    ]
    if structured:
        linears = [f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if linears and linears[-1] in names:
            names.remove(linears[-1])
    skip = set(exclude)
    return [n for n in names if n not in skip]


def checked_weights(model: nn.Module, method: str, structured: bool, opts: PaiOptions) -> list[str]:
    """The prunable weights of a valid call; ``ValueError`` on an unknown method, a non-module or nothing to prune."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    names = prunable_weights(model, structured, opts.exclude)
    if not names:
        what = "Conv2d/Linear layers (besides the classifier)" if structured else "Conv2d/Linear layers"
        hint = ""
        if any(hasattr(m, "weight_orig") for m in model.modules()):
            hint = " (its weights carry masks from apply_masks: call remove_masks first)"
        raise ValueError(f"model has no prunable {what}{hint}")
    return names


def check_sparsity(sparsity: Any, what: str = "sparsity") -> float:
    """``sparsity`` as a float if it is a number in [0, 1), else ``ValueError`` naming ``what``."""
    ok = isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool) and 0.0 <= sparsity < 1.0
    if not ok:
        raise ValueError(f"{what} must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def n_batches_needed(method: str, opts: PaiOptions) -> int:
    """How many batches ``method`` consumes with these options (0 for the data-free ones)."""
    if method in ("prospr", "prospr_first_order"):
        return opts.steps + opts.num_batches if opts.new_data_in_inner else opts.num_batches
    if method in ("snip", "grasp"):
        return opts.num_batches
    if method == "synflow":
        return 1
    return 0


def take_batches(batches: Iterable[Batch] | None, n: int, method: str) -> list[Batch]:
    """Materialise ``n`` batches (cycling a short iterable); raise if there are none."""
    if batches is None:
        if method in _DATA_FREE:
            return []
        raise ValueError(f"method {method!r} needs batches of (inputs, targets); got None")
    got = list(itertools.islice(iter(batches), max(n, 1)))
    if not got:
        raise ValueError("batches is empty: need at least one (inputs, targets) batch")
    for b in got:
        if not (isinstance(b, (tuple, list)) and len(b) >= 2 and isinstance(b[0], torch.Tensor)):
            raise ValueError("each batch must be an (inputs, targets) pair of tensors")
    return [(got[i % len(got)][0], got[i % len(got)][1]) for i in range(n)]


def first_parameter(model: nn.Module) -> torch.Tensor:
    """The model's first parameter: its device and dtype are the ones inputs are moved to."""
    return next(p for p in model.parameters())
