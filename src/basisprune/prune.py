"""Pruning rules: which live units to remove this round, given their scores."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["PruningRule", "select", "apply_masks"]

_SCOPES = ("global", "layer")
_NORMALIZE = ("none", "mean", "max", "l2", "cost", "saved")


@dataclass(frozen=True)
class PruningRule:
    """How to choose the units pruned in one round.

    Attributes:
        scope: ``"global"`` ranks all units together; ``"layer"`` prunes within each layer.
        fraction: fraction of the *live* units pruned per round (in (0, 1)), or None.
        threshold: prune live units whose (normalised) score is below it, or None.
            Exactly one of ``fraction`` and ``threshold`` is set.
        normalize: divide each layer's scores by their ``mean``, ``max`` or ``l2`` norm over live
            units, by the parameters one unit costs (``cost``), or by the share of the model that
            pruning one unit actually saves (``saved``, see :func:`basisprune.basis_savings`;
            a unit that saves nothing is ranked last), before ranking; ``none`` keeps raw scores.
        min_keep: units every layer keeps whatever the scores.
        layer_floor: share of a layer's *live* units that one round always keeps (in [0, 1)): a
            round removes at most ``1 - layer_floor`` of any layer, so no single round can strip a
            layer to near nothing (a badly scored round once took a stem conv from 27 bases to 1).
            Layers still shrink geometrically over rounds. The default 0.5 is our choice; on the
            CPU calibration runs no round of the faithful schedule came near it.
    """

    scope: str = "global"
    fraction: float | None = 0.1
    threshold: float | None = None
    normalize: str = "none"
    min_keep: int = 1
    layer_floor: float = 0.5

    def __post_init__(self) -> None:
        if self.scope not in _SCOPES:
            raise ValueError(f"scope must be one of {_SCOPES}, got {self.scope!r}")
        if self.normalize not in _NORMALIZE:
            raise ValueError(f"normalize must be one of {_NORMALIZE}, got {self.normalize!r}")
        if (self.fraction is None) == (self.threshold is None):
            raise ValueError("set exactly one of fraction (share of live units per round) and threshold")
        if self.fraction is not None and not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction}")
        if self.threshold is not None and not (self.threshold >= 0 and math.isfinite(self.threshold)):
            raise ValueError(f"threshold must be a finite number >= 0, got {self.threshold}")
        if self.min_keep < 1:
            raise ValueError(f"min_keep must be >= 1 (a layer with no unit left is not allowed), got {self.min_keep}")
        if isinstance(self.layer_floor, bool) or not 0.0 <= self.layer_floor < 1.0:
            raise ValueError(f"layer_floor must be a share in [0, 1), got {self.layer_floor!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def _normalise(score: torch.Tensor, mask: torch.Tensor, how: str, cost: float | None) -> torch.Tensor:
    live = score[mask > 0]
    if how == "none" or live.numel() == 0:
        return score
    if how in ("cost", "saved"):
        if cost is None:
            raise ValueError(f"normalize={how!r} needs the cost of one unit of every layer (costs=...)")
        if how == "saved" and cost <= 0:
            return torch.full_like(score, math.inf)  # pruning it saves nothing: rank it last
        return score / cost
    denom = {"mean": live.mean(), "max": live.max(), "l2": live.norm()}[how]
    return score / denom if denom > 0 else score


def select(
    scores: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    rule: PruningRule,
    costs: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """New 0/1 masks after one round of ``rule``; pruned units stay pruned.

    Ties are broken by position (stable sort), so the result is deterministic. Every layer keeps at
    least ``max(min_keep, ceil(layer_floor * live))`` of its live units. A score that is not finite
    (NaN or inf, e.g. from a diverged run) raises :class:`ValueError` naming the layer.
    """
    if set(scores) != set(masks):
        raise ValueError(f"scores and masks name different layers: {sorted(set(scores) ^ set(masks))}")
    names = list(scores)
    for n in names:
        if scores[n].shape != masks[n].shape:
            raise ValueError(f"layer {n!r}: scores of shape {tuple(scores[n].shape)} for a mask of shape {tuple(masks[n].shape)}")
        bad = ~torch.isfinite(scores[n].detach())
        if bad.any():
            raise ValueError(f"layer {n!r} has {int(bad.sum())} non-finite importance score(s) (NaN or inf); "
                             "the run that produced them diverged or its gradients overflowed")
    normed = {n: _normalise(scores[n].detach().float().cpu(), masks[n].cpu(), rule.normalize,
                            None if costs is None else costs.get(n)) for n in names}
    new = {n: masks[n].detach().clone().float().cpu() for n in names}
    # Units each layer may still lose this round without going below its floor.
    budget = {}
    for n in names:
        live = int(new[n].sum().item())
        budget[n] = max(0, live - max(rule.min_keep, math.ceil(rule.layer_floor * live)))

    def candidates(n: str) -> list[tuple[float, str, int]]:
        live = torch.nonzero(new[n] > 0).flatten()
        return [(float(normed[n][i]), n, int(i)) for i in live]

    if rule.scope == "layer":
        for n in names:
            cands = sorted(candidates(n), key=lambda t: t[0])
            k = len(cands) if rule.threshold is not None else int(rule.fraction * len(cands))
            chosen = [c for c in cands if rule.threshold is None or c[0] < rule.threshold][:min(k, budget[n])]
            for _, _, i in chosen:
                new[n][i] = 0.0
    else:
        cands = sorted((c for n in names for c in candidates(n)), key=lambda t: t[0])
        k = len(cands) if rule.threshold is not None else int(rule.fraction * len(cands))
        taken = 0
        for s, n, i in cands:
            if taken >= k or (rule.threshold is not None and s >= rule.threshold):
                break
            if budget[n] > 0:
                new[n][i] = 0.0
                budget[n] -= 1
                taken += 1
    return {n: new[n].to(masks[n].device, masks[n].dtype) for n in names}


def apply_masks(holders: dict[str, nn.Module], masks: dict[str, torch.Tensor], *, allow_empty: bool = False) -> None:
    """Write 0/1 masks into the holders (a pruned unit's mask becomes 0).

    ``masks`` must name exactly the holders' layers, each with one entry per unit (ValueError). A
    mask that keeps no unit of a layer would make the model output a constant: it is refused unless
    ``allow_empty=True``. Nothing is written unless every mask passes.
    """
    missing, extra = sorted(set(holders) - set(masks)), sorted(set(masks) - set(holders))
    if missing or extra:
        what = [f"no mask for layer(s) {missing}"] * bool(missing) + [f"masks for unknown layer(s) {extra}"] * bool(extra)
        raise ValueError(f"masks must name exactly the layers of holders: {'; '.join(what)}; layers: {sorted(holders)}")
    for n, h in holders.items():
        if tuple(masks[n].shape) != tuple(h.mask.shape):
            raise ValueError(f"mask of layer {n!r} has shape {tuple(masks[n].shape)}, the layer has {tuple(h.mask.shape)} units")
        if not allow_empty and not bool((masks[n] != 0).any()):
            raise ValueError(f"the mask for {n!r} keeps no unit, which would empty the layer; "
                             "pass allow_empty=True to do it anyway")
    for n, h in holders.items():
        h.mask.copy_(masks[n])

