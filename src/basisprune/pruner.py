"""Iterative pruning inside the user's own training loop, shaped like ``torch.optim.Optimizer``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import torch
from torch import nn

from .channel import channel_scales
from .compact import compact, kept_indices
from .importance import TaylorImportance, holders
from .prune import PruningRule, apply_masks, select

__all__ = ["Pruner", "PruneStep"]


@dataclass(frozen=True)
class PruneStep:
    """What :meth:`Pruner.step` did in round ``round``: units ``removed`` and ``kept`` per layer."""

    round: int
    removed: dict[str, int]
    kept: dict[str, int]

    @property
    def total_removed(self) -> int:
        return sum(self.removed.values())


class Pruner:
    """Prunes the ``kind`` units ("basis" or "channel") of ``model``, one round per :meth:`step`.

    Call :meth:`accumulate` after each ``loss.backward()`` (after ``scaler.unscale_``), before
    ``optimizer.step()``; :meth:`step` removes the units ``rule`` picks by the scores gathered since
    the last step, then gathers afresh. ``costs`` (a dict, or a function of the holders called at
    each step) is what ``normalize="cost"`` or ``"saved"`` divides by. Double pruning: a channel
    pruner, :meth:`compact`, :func:`~basisprune.decompose`, then a basis pruner. No data, no files::

        pruner = bp.Pruner(d, "basis", bp.PruningRule(fraction=0.1), bp.TaylorImportance())
        for x, y in loader:  # an epoch; then pruner.step() and train on
            opt.zero_grad(); loss_fn(d(x), y).backward(); pruner.accumulate(); opt.step()
    """

    def __init__(self, model: nn.Module, kind: str = "basis", rule: PruningRule | None = None,
                 importance: Any = None, *, costs: Union[dict, Callable[[dict], dict], None] = None) -> None:
        rule, importance = rule or PruningRule(), importance or TaylorImportance()
        for what, value, kind_ in (("model", model, nn.Module), ("rule", rule, PruningRule)):
            if not isinstance(value, kind_):
                raise TypeError(f"{what} must be a {kind_.__name__}, got {type(value).__name__}")
        if not all(callable(getattr(importance, a, None)) for a in ("reset", "accumulate", "scores")):
            raise TypeError(f"importance must have reset(), accumulate(holders) and scores(holders) "
                            f"(bp.TaylorImportance, bp.ScaleMagnitude), got {type(importance).__name__}")
        self.holders = holders(model, kind)  # refuses another kind, or a model without such units
        if kind == "basis" and channel_scales(model):
            raise ValueError("the model has channel scales and basis layers: for double pruning, compact the "
                             "channel-pruned model (pruner.compact(x)), then decompose it and prune its bases")
        self.model, self.kind, self.rule, self.importance, self.costs, self.rounds = model, kind, rule, importance, costs, 0

    def accumulate(self) -> None:
        """Add this backward pass's gradients to the scores (nothing for gradient-free importances)."""
        self.importance.accumulate(self.holders)

    def reset(self) -> None:
        """Forget the scores gathered so far (those of a warm-up with a random head, say)."""
        self.importance.reset()

    def step(self) -> PruneStep:
        """Prune one round with the scores gathered since the last step; returns what it removed."""
        hs = self.holders
        costs = self.costs(hs) if callable(self.costs) else self.costs
        before = {n: h.kept for n, h in hs.items()}
        apply_masks(hs, select(self.importance.scores(hs), {n: h.mask for n, h in hs.items()}, self.rule, costs))
        self.importance.reset()
        self.rounds += 1
        return PruneStep(self.rounds, {n: before[n] - h.kept for n, h in hs.items()}, {n: h.kept for n, h in hs.items()})

    def compact(self, example_input: torch.Tensor | None = None) -> nn.Module:
        """A physically smaller copy of the model for inference (:func:`basisprune.compact`)."""
        return compact(self.model, example_input)

    def shrink(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, torch.Tensor]:
        """Drop pruned bases in place (call it after :meth:`step`), so later rounds train a smaller model
        computing the same; ``optimizer``'s state of each scale is sliced alike. Returns the indices
        kept per layer (a grouped layer keeps its largest group's count, the others padded, masked)."""
        if self.kind != "basis":
            raise ValueError("shrink() drops pruned bases; channel pruners compact once: pruner.compact(x)")
        out = {}
        for name, h in self.holders.items():
            kept, k = kept_indices(h)
            flat = torch.cat([g * h.rank + i for g, i in enumerate(kept)]).to(h.mask.device)
            out_g = h.coef.shape[0] // h.groups
            state = optimizer.state.get(h.scale, {}) if optimizer is not None else {}
            state.update({key: v[flat] for key, v in state.items() if torch.is_tensor(v) and v.shape == h.scale.shape})
            h.coef.data = torch.cat([h.coef.data[g * out_g:(g + 1) * out_g][:, i] for g, i in enumerate(kept)])
            h.basis.weight.data, h.scale.data, h.mask.data = h.basis.weight.data[flat], h.scale.data[flat], h.mask[flat]
            h.rank, out[name] = k, flat
            setattr(h.basis, "out_channels" if isinstance(h.basis, nn.Conv2d) else "out_features", flat.numel())
        return out

    def state_dict(self) -> dict[str, Any]:
        """The pruner's own state (rounds, gathered scores); masks live in the model's state_dict."""
        imp = getattr(self.importance, "state_dict", None)
        return {"kind": self.kind, "layers": sorted(self.holders), "rounds": self.rounds, "importance": imp and imp()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` of a pruner of the same kind on the same layers."""
        if (state["kind"], state["layers"]) != (self.kind, sorted(self.holders)):
            raise ValueError(f"the state is of a {state['kind']} pruner on {len(state['layers'])} layers, this is a "
                             f"{self.kind} pruner on {len(self.holders)}: load it into the model it was saved from")
        self.rounds = state["rounds"]
        if state["importance"] is not None:
            self.importance.load_state_dict(state["importance"])
