"""The fair reference: the unpruned model trained on beside a pruning run, epoch for epoch, and the
paired accuracy drop against it; with the training loop and snapshots the pruning stages share.
"""

from __future__ import annotations

import copy
import math
import time
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from .checkpoints import restore_streams, stream_state
from .train import distillation_loss, train_epoch

if TYPE_CHECKING:  # annotations only: experiments imports this module
    from .experiments import Context


def _train(ctx: Context, model: nn.Module, optimizer, epochs: int, *, bn_mode: str,
           regularizer: Callable | None = None, callback: Callable | None = None, desc: str = "train",
           teacher: nn.Module | None = None) -> None:
    """``epochs`` epochs; with a ``teacher`` and ``distill`` > 0, on the distillation loss."""
    extra = {}
    if teacher is not None and ctx.p["distill"] > 0:
        extra = {"teacher": teacher, "loss_fn": distillation_loss(ctx.p["distill"], ctx.p["distill_temperature"])}
    for e in range(epochs):
        train_epoch(model, ctx.loaders["train"], optimizer, device=ctx.device, bn_mode=bn_mode,
                    regularizer=regularizer, callback=callback, desc=f"{desc} {e + 1}/{epochs}",
                    amp=ctx.p["precision"], scaler=ctx.scaler, memory_format=ctx.p["memory_format"], **extra)


def _snapshot_keys(model: nn.Module, bn_mode: str) -> list[str]:
    """State that changes while scales and head train: trainable params, masks (BN stats in train mode)."""
    keys = [n for n, p in model.named_parameters() if p.requires_grad]
    for n, _ in model.named_buffers():
        if n.endswith(".mask") or (bn_mode == "train" and ("running_" in n or "num_batches" in n)):
            keys.append(n)
    return keys


def _snapshot(model: nn.Module, keys: list[str]) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: state[k].detach().cpu().clone() for k in keys}


def _paired_drop(ref: torch.Tensor, new: torch.Tensor) -> tuple[float, float]:
    """Accuracy drop ``ref - new`` measured on the same images, and its standard error.

    Paired: only images on which the two models disagree carry information, so the error is
    ``sqrt((b + c)/n - d^2) / sqrt(n)`` with ``b``, ``c`` the two kinds of disagreement and ``d``
    the drop; far smaller than the error of either accuracy alone.
    """
    n = len(ref)
    b, c = int((ref & ~new).sum()), int((~ref & new).sum())
    d = (b - c) / n
    return d, math.sqrt(max((b + c) / n - d * d, 0.0) / n)


class _ReferenceTrack:
    """The fair reference: the unpruned model trained on beside a pruning run, epoch for epoch.

    It forks from a stage's round 0 (after the warm-up) with the optimizer, RNG and loader-generator
    states of that moment, so it sees the same batches in the same order as the pruned run; only
    the pruning differs. Accuracies (with per-image hits) are measured at the epochs the rounds ask
    for, so a pruned round trained for ``e`` epochs in all is compared with the reference trained
    for ``e`` epochs.
    ``teacher`` is a frozen copy of the model at the fork, the unpruned model that distillation
    (``distill`` > 0) learns from: the pruned run and the reference both train on that loss.
    """

    def __init__(self, ctx: Context, model: nn.Module, optimizer: torch.optim.Optimizer,
                 regularizer: Callable | None, epochs: int, row: dict[str, Any]):
        self.ctx, self.regularizer = ctx, regularizer
        self.model = copy.deepcopy(model)
        self.keys = _snapshot_keys(self.model, ctx.p["bn_mode"])
        self.teacher = None
        if ctx.p["distill"] > 0:
            self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        self.optimizer = type(optimizer)([q for q in self.model.parameters() if q.requires_grad], **optimizer.defaults)
        # A copy: load_state_dict keeps the given tensors, and two optimizers sharing Adam's moments
        # would update each other's.
        self.optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        self.epochs = epochs
        self.rows = {epochs: {k: v for k, v in row.items() if k.startswith(("accuracy_", "correct_"))}}
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.streams = stream_state(ctx.loaders, ctx.device)
        self.seconds = 0.0

    def at(self, epochs: int) -> dict[str, Any]:
        """Accuracies of the reference trained for ``epochs`` epochs in all (trains it that far)."""
        if epochs < min(self.rows):
            raise ValueError(f"the reference starts at epoch {min(self.rows)}, asked for {epochs}")
        ctx = self.ctx
        if epochs in self.rows:
            return self.rows[epochs]
        if epochs < self.epochs:  # trained past it (double pruning's basis stage): evaluate its snapshot
            tic = time.perf_counter()
            past = copy.deepcopy(self.model)
            sd = past.state_dict()
            sd.update(self.snapshots[epochs])
            past.load_state_dict(sd)
            self.rows[epochs] = ctx.evaluate(past, correct=True)
            self.seconds += time.perf_counter() - tic
            return self.rows[epochs]
        tic = time.perf_counter()
        # Swap in the reference's random streams so the pruned run's own stay untouched.
        run_streams = stream_state(ctx.loaders, ctx.device)
        restore_streams(self.streams, ctx.loaders, ctx.device)
        while self.epochs < epochs:
            _train(ctx, self.model, self.optimizer, 1, bn_mode=ctx.p["bn_mode"], regularizer=self.regularizer,
                   desc=f"reference epoch {self.epochs + 1}", teacher=self.teacher)
            self.epochs += 1
            # Evaluated only where a round asks; the epochs between are kept as snapshots (the
            # trainable state, a few hundred kB) in case a later stage asks for one of them.
            self.snapshots[self.epochs] = _snapshot(self.model, self.keys)
        self.rows[epochs] = ctx.evaluate(self.model, correct=True)
        self.streams = stream_state(ctx.loaders, ctx.device)
        restore_streams(run_streams, ctx.loaders, ctx.device)
        self.seconds += time.perf_counter() - tic
        return self.rows[epochs]

    def state_dict(self) -> dict[str, Any]:
        return {"snapshot": _snapshot(self.model, self.keys), "optimizer": self.optimizer.state_dict(),
                "epochs": self.epochs, "rows": self.rows, "snapshots": self.snapshots, **self.streams,
                "seconds": self.seconds,
                "teacher": None if self.teacher is None else _snapshot(self.teacher, self.keys)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the model must have the reference's architecture)."""
        sd = self.model.state_dict()
        sd.update(state["snapshot"])
        self.model.load_state_dict(sd)
        if self.teacher is not None:
            td = self.teacher.state_dict()
            td.update(state["teacher"])
            self.teacher.load_state_dict(td)
        self.optimizer.load_state_dict(state["optimizer"])
        self.epochs, self.rows, self.seconds = state["epochs"], state["rows"], state["seconds"]
        self.snapshots = state["snapshots"]
        self.streams = {"rng": state["rng"], "generators": state["generators"]}
