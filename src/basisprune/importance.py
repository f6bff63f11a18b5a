"""Importance of prunable units (bases or channels), pluggable.

A *unit holder* is any module with a ``scale`` parameter and a 0/1 ``mask`` buffer of the same
shape: :class:`~basisprune.decompose.BasisLayer` (one unit per basis) and
:class:`~basisprune.channel.ChannelScale` (one unit per channel group channel). An importance
object turns holders into one score per unit; higher means keep: it has ``reset()``,
``accumulate(holders)`` (after each backward pass) and ``scores(holders)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .channel import channel_scales
from .decompose import basis_layers

__all__ = ["TaylorImportance", "ScaleMagnitude", "holders"]


def holders(model: nn.Module, kind: str) -> dict[str, nn.Module]:
    """Unit holders of ``kind`` ("basis" or "channel") by name."""
    if kind == "basis":
        found = basis_layers(model)
    elif kind == "channel":
        found = channel_scales(model)
    else:
        raise ValueError(f"kind must be 'basis' or 'channel', got {kind!r}")
    if not found:
        what = "basisprune.decompose(model)" if kind == "basis" else "basisprune.add_channel_scales(model, x)"
        raise ValueError(f"the model has no {kind} units; call {what} first")
    return found


class TaylorImportance:
    """First-order Taylor estimate of the loss change when a unit's scale goes to 0.

    Removing unit ``i`` moves ``s_i`` to 0, so ``L(s - s_i e_i) - L(s) ~ -s_i dL/ds_i``.
    Per mini-batch we take ``|s_i * dL/ds_i|`` and average over the batches seen since ``reset`` (the
    paper accumulates over an epoch; summing absolute values per batch, as Molchanov et al. do, is
    our choice). Call :meth:`accumulate` after ``loss.backward()`` (and after unscaling, under a
    gradient scaler) and before the optimizer step.

    Scores are always accumulated in float32 from the gradients of the (float32) scale parameters,
    whatever autocast precision the forward pass ran in. A step in which any scale gradient is not
    finite (a float16 overflow that a ``GradScaler`` skips, say) adds nothing: it is counted in
    :attr:`skipped` instead, so one bad step cannot decide which units survive.
    """

    def __init__(self) -> None:
        self._acc: dict[str, torch.Tensor] = {}
        self.batches = 0
        self.skipped = 0

    def reset(self) -> None:
        self._acc.clear()
        self.batches = 0
        self.skipped = 0

    def accumulate(self, holders: dict[str, nn.Module]) -> bool:
        """Add this step's ``|s * dL/ds|``; returns False (and adds nothing) if a gradient is not finite."""
        contribs = {}
        for name, h in holders.items():
            if h.scale.grad is None:
                raise ValueError(
                    f"{name}.scale has no gradient: the scales must require grad and accumulate() "
                    "must run after loss.backward()"
                )
            contrib = (h.scale.detach().float() * h.scale.grad.detach().float()).abs() * h.mask
            if not bool(torch.isfinite(contrib).all()):
                self.skipped += 1
                return False
            contribs[name] = contrib
        for name, contrib in contribs.items():
            self._acc[name] = self._acc.get(name, 0) + contrib
        self.batches += 1
        return True

    def state_dict(self) -> dict:
        """Accumulated state, so a checkpointed run resumes with the same scores."""
        return {"acc": {k: v.detach().cpu().clone() for k, v in self._acc.items()}, "batches": self.batches,
                "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self._acc = {k: v.clone() for k, v in state["acc"].items()}
        self.batches = state["batches"]
        self.skipped = state.get("skipped", 0)

    def scores(self, holders: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        if self.batches == 0:
            why = f" ({self.skipped} step(s) had non-finite gradients)" if self.skipped else ""
            raise ValueError(f"no batch accumulated{why}: run training batches with accumulate() first")
        return {n: self._acc[n] / self.batches for n in holders}


class ScaleMagnitude:
    """``|s_i|``: the channel-scaling paper's criterion (needs no gradients)."""

    def reset(self) -> None:
        pass

    def accumulate(self, holders: dict[str, nn.Module]) -> None:
        pass

    def scores(self, holders: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        return {n: h.scale.detach().abs() * h.mask for n, h in holders.items()}
