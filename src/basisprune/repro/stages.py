"""The pruning stages: warm up, then prune round after round against the fair reference, checkpoint
each round, stop, and select the most pruned round that keeps the accuracy budget.

:func:`_channel_stage` and :func:`_basis_stage` build one stage of the experiments of
:mod:`basisprune.repro.experiments`; :func:`_prune_stage` runs it (a :class:`_Stage`);
:func:`select_round` and :func:`stops_after` are the selection and stop rules.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from ..channel import add_channel_scales, channel_scales, l1_penalty
from ..compact import compact
from ..decompose import basis_layers, decompose
from ..importance import ScaleMagnitude, TaylorImportance
from ..measure import basis_savings, measure, output_positions
from ..prune import PruningRule
from ..pruner import Pruner
from .checkpoints import load_checkpoint, restore_streams, save_checkpoint, stream_state
from .reference import _paired_drop, _ReferenceTrack, _snapshot, _snapshot_keys, _train
from .train import DivergenceError, freeze
from .workdir import stage_lock

if TYPE_CHECKING:  # annotations only: experiments imports this module
    from .experiments import Context

__all__ = ["select_round", "stops_after"]


def _check_not_collapsed(ctx: Context, row: dict[str, Any], previous: dict[str, Any] | None, kind: str) -> None:
    """Raise :class:`DivergenceError` when the warm-up ends at chance, or one round falls to chance
    from far above it: that is a broken run (diverged training, overflowing precision), not a result.

    A gradual slide to chance over several rounds is over-pruning: the stop rule and the selection
    deal with it.
    """
    chance = 1.0 / ctx.num_classes
    if row["accuracy_val"] > chance + 0.02:
        return
    if previous is None:
        when = "after the warm-up"
    elif previous["accuracy_val"] >= chance + 0.25:
        when = f"after {kind} pruning round {row['round']} (from {previous['accuracy_val']:.3f} one round before)"
    else:
        return
    raise DivergenceError(
        f"{kind} stage: validation accuracy {row['accuracy_val']:.3f} is at chance ({chance:.3f}) {when}; "
        f"the run diverged or collapsed (lr={ctx.p['lr']}, precision={ctx.p['precision']}); no result is written"
    )


class _Stage:
    """One pruning stage: the model, its optimizer and :class:`~basisprune.Pruner`, the fair reference,
    and the rounds recorded so far. Each method has one job (train, record a round, checkpoint,
    resume, restore the selected round); :func:`_prune_stage` runs them in order."""

    def __init__(self, ctx: Context, model: nn.Module, *, kind: str, rule: PruningRule, regularizer: Callable | None,
                 checkpoint: Path | None, measure_fn: Callable[[nn.Module], dict[str, float]],
                 reference: _ReferenceTrack | None, epoch_offset: int, warmup_epochs: int) -> None:
        p = ctx.p
        self.ctx, self.model, self.kind, self.regularizer, self.checkpoint = ctx, model, kind, regularizer, checkpoint
        self.measure_fn, self.track, self.epoch_offset, self.warmup_epochs = measure_fn, reference, epoch_offset, warmup_epochs
        head = ctx.head(model)
        self.optimizer = torch.optim.Adam(
            freeze(model, lambda n, prm: n.endswith(".scale") or n.startswith(head + ".")), lr=p["lr"])
        # Channels: the paper ranks by |scale| after L1 training to convergence; with a few epochs the
        # scales stay near 1 and |scale| barely ranks anything, so Taylor is the default (our choice).
        self.taylor = kind == "basis" or p["channel_importance"] == "taylor"
        self.pruner = Pruner(model, kind, rule, TaylorImportance() if self.taylor else ScaleMagnitude(),
                             costs=_stage_costs(ctx, model, kind, rule))
        self.keys = _snapshot_keys(model, p["bn_mode"])
        # With shrink_bases, pruned bases leave the model after each round. Its state is then saved and
        # snapshotted in the full model's coordinates (``index``: each unit's place there), so that
        # selection and resume see one model; ``full`` keeps the frozen weights of the dropped bases.
        self.shrinks = kind == "basis" and p["shrink_bases"]
        self.total = {n: h.mask.numel() for n, h in self.pruner.holders.items()}
        self.index = {n: torch.arange(t) for n, t in self.total.items()}
        self.full = copy.deepcopy(model) if self.shrinks else None
        # seconds: compute time of the stage so far, kept across resumes (a reload costs nothing).
        self.round, self.history, self.snapshots, self.seconds = -1, [], [], 0.0

    def train(self, epochs: int, desc: str, score: bool = True) -> None:
        """``epochs`` epochs, the pruner gathering scores after every backward pass when ``score``."""
        gather = (lambda *_: self.pruner.accumulate()) if score and self.taylor else None
        _train(self.ctx, self.model, self.optimizer, epochs, bn_mode=self.ctx.p["bn_mode"], regularizer=self.regularizer,
               callback=gather, desc=f"{self.kind} {desc}", teacher=self.track and self.track.teacher)

    def evaluate(self, r: int) -> dict[str, Any]:
        """Round ``r``'s row: accuracies, sizes, kept units, and drops against the fair reference at
        as many epochs (forked here, at this stage's round 0, when the stage has none)."""
        ctx, hs = self.ctx, self.pruner.holders
        epochs = self.epoch_offset + self.warmup_epochs + r * ctx.p["epochs_per_round"]
        row = {"round": r, "epochs": epochs, **ctx.evaluate(self.model, correct=True), **self.measure_fn(self.model),
               "kept": {n: h.kept for n, h in hs.items()}, "total": dict(self.total)}
        if self.track is None:
            self.track = _ReferenceTrack(ctx, self.model, self.optimizer, self.regularizer, epochs, row)
        ref = self.track.at(epochs)
        row["reference_val"], row["reference_test"] = ref["accuracy_val"], ref["accuracy_test"]
        row["accuracy_drop"], row["drop_se_test"] = _paired_drop(ref["correct_test"], row.pop("correct_test"))
        row["drop_val"], row["drop_se_val"] = _paired_drop(ref["correct_val"], row.pop("correct_val"))
        _check_not_collapsed(ctx, row, self.history[-1] if self.history else None, self.kind)
        return row

    def finish(self, r: int, since: float) -> dict[str, Any]:
        """Record round ``r`` (trained since ``since``), keep its state for selection, checkpoint.
        The reference's training is the protocol's cost, not the pipeline's: kept apart."""
        ref_before = self.track.seconds if self.track is not None else 0.0
        row = self.evaluate(r)
        self.round = r
        self.history.append(row)
        self.snapshots.append(self.full_coordinates(_snapshot(self.model, self.keys)))
        self.seconds += time.perf_counter() - since - (self.track.seconds - ref_before)
        self.save()
        return row

    def prune(self) -> None:
        """One round of the pruner; with ``shrink_bases``, the pruned bases then leave the model."""
        self.pruner.step()
        if self.shrinks:
            self.index = {n: self.index[n][kept.cpu()] for n, kept in self.pruner.shrink(self.optimizer).items()}

    def _full(self, name: str, units: torch.Tensor) -> torch.Tensor:
        """Per-unit values of basis layer ``name`` in the full model's coordinates (dropped units 0)."""
        full = units.new_zeros(self.total[name])
        full[self.index[name].to(full.device)] = units
        return full

    def full_coordinates(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` (entries named like the model's) with the basis layers' scales and masks in the full
        model's coordinates; the identity unless the stage shrinks."""
        if not self.shrinks:
            return state
        return {**state, **{f"{n}.{k}": self._full(n, state[f"{n}.{k}"]) for n in self.index for k in ("scale", "mask")}}

    def _saved_state(self) -> tuple[dict, dict]:
        """The model's and the optimizer's state, in full coordinates (Adam's moments of a scale alike)."""
        if not self.shrinks:
            return self.model.state_dict(), self.optimizer.state_dict()
        opt = copy.deepcopy(self.optimizer.state_dict())
        slot = {id(q): i for i, q in enumerate(self.optimizer.param_groups[0]["params"])}
        for n, h in self.pruner.holders.items():
            st = opt["state"].get(slot[id(h.scale)], {})
            st.update({k: self._full(n, v) for k, v in st.items() if torch.is_tensor(v) and v.shape == h.scale.shape})
        return self.full_coordinates(_snapshot(self.model, self.keys)), opt

    def save(self) -> None:
        if self.checkpoint is not None:
            model_state, optimizer_state = self._saved_state()
            save_checkpoint(self.checkpoint, model=model_state, optimizer=optimizer_state,
                            pruner=self.pruner.state_dict(), **stream_state(self.ctx.loaders, self.ctx.device),
                            reference=None if self.track is None else self.track.state_dict(), round=self.round,
                            history=self.history, snapshots=self.snapshots, seconds=self.seconds)

    def resume(self) -> None:
        """Continue from the stage's checkpoint, if there is one."""
        if self.checkpoint is None or not self.checkpoint.exists():
            return
        saved = load_checkpoint(self.checkpoint, weights_only=False)
        sd = self.model.state_dict()
        sd.update(saved["model"])  # everything, or (shrink_bases) what trains: the rest is as built
        self.model.load_state_dict(sd)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.pruner.load_state_dict(saved["pruner"])
        restore_streams(saved, self.ctx.loaders, self.ctx.device)
        self.round, self.history, self.snapshots, self.seconds = (saved[k] for k in ("round", "history", "snapshots", "seconds"))
        if saved["reference"] is not None:
            if self.track is None:  # forked in this stage: rebuild it on a copy of this stage's model
                self.track = _ReferenceTrack(self.ctx, self.model, self.optimizer, self.regularizer, 0, {})
            self.track.load_state_dict(saved["reference"])
        if self.shrinks:  # drop the bases pruned so far, as the interrupted run had
            self.index = {n: kept.cpu() for n, kept in self.pruner.shrink(self.optimizer).items()}

    def restore(self, r: int) -> nn.Module:
        """Round ``r``'s model: its trainable state and masks put back (into the full model when the
        stage shrank it)."""
        model = self.full if self.shrinks else self.model
        sd = model.state_dict()
        sd.update(self.snapshots[r])
        model.load_state_dict(sd)
        return model


def _stage_costs(ctx: Context, model: nn.Module, kind: str, rule: PruningRule) -> Any:
    """What the rule's ``normalize`` divides scores by: fold-aware savings, recomputed every round
    as layers shrink (``saved``), or the weights one basis costs (basis stages), else nothing."""
    if kind != "basis":
        return None
    hs = basis_layers(model)
    if rule.normalize == "saved":
        positions = output_positions(model, ctx.example, list(hs))
        return lambda holders: basis_savings(holders, positions)
    return _unit_costs(hs)


def _prune_stage(ctx: Context, model: nn.Module, *, kind: str, rule: PruningRule, rounds: int, warmup_epochs: int,
                 regularizer: Callable | None, checkpoint: Path | None, measure_fn: Callable[[nn.Module], dict[str, float]],
                 reference: _ReferenceTrack | None = None, epoch_offset: int = 0) -> dict[str, Any]:
    """Warm up, then prune ``rounds`` times; returns history, the selected round, and restores it.

    Round r: the pruner prunes with the scores gathered during the previous training epochs, then
    ``epochs_per_round`` epochs train (recovering and gathering the next scores), evaluate, measure.
    Every round is judged against the fair reference trained for as many epochs (``reference``, or
    one forked from this stage's round 0); ``epoch_offset`` is the training the model had before this
    stage. The selected round is the most pruned one whose validation drop plus ``select_margin``
    standard errors is within ``max_drop``.
    """
    p = ctx.p
    st = _Stage(ctx, model, kind=kind, rule=rule, regularizer=regularizer, checkpoint=checkpoint, measure_fn=measure_fn,
                reference=reference, epoch_offset=epoch_offset, warmup_epochs=warmup_epochs)
    st.resume()
    tic = time.perf_counter()
    if st.round < 0:
        # Scores come from the last warm-up epoch only: earlier gradients reflect a random head.
        st.train(max(warmup_epochs - 1, 0), "warm-up", score=False)
        st.pruner.reset()
        st.train(1, "warm-up (scoring)")
        st.finish(0, tic)
    stop = stops_after(st.history[-1], p["stop_drop"])
    bar = tqdm(range(st.round + 1, rounds + 1), desc=f"{kind} pruning", leave=False)
    for r in bar:
        if stop:
            break
        tic = time.perf_counter()
        st.prune()
        st.train(p["epochs_per_round"], f"round {r}")
        row = st.finish(r, tic)
        bar.set_postfix(acc=f"{row['accuracy_test']:.3f}", pruned=f"{row['param_pruning_ratio']:.3f}")
        stop = stops_after(row, p["stop_drop"])

    best, within = select_round(st.history, p["max_drop"], p["select_margin"])
    return {"model": st.restore(best["round"]), "history": st.history, "final": dict(best), "rule": rule.as_dict(), "seconds": st.seconds,
            "reference_seconds": st.track.seconds, "track": st.track, "within_budget": within}


def select_round(history: list[dict[str, Any]], max_drop: float, margin: float) -> tuple[dict[str, Any], bool]:
    """The selected round of a stage's ``history`` and whether any round kept the budget.

    Selection on validation: the most pruned round whose drop against the fair reference is within
    ``max_drop``. The drop is noisy (its paired SE is about half the usual one-point budget), so a
    round counts only when it stays there with ``margin`` standard errors to spare. Without one,
    round 0.
    """
    ok = [h for h in history if h["drop_val"] + margin * h["drop_se_val"] <= max_drop]
    return max(ok or history[:1], key=lambda h: (h["param_pruning_ratio"], h["round"])), bool(ok)


def stops_after(row: dict[str, Any], stop_drop: float) -> bool:
    """Whether a stage stops pruning after the round recorded in ``row``: its validation drop
    against the fair reference is over ``stop_drop``. One rule, which the calibration's replay
    (:func:`basisprune.repro.calibration.replay_stop`) also calls."""
    return row["drop_val"] > stop_drop


def _unit_costs(holders: dict[str, nn.Module]) -> dict[str, float]:
    """Weights one basis costs in its layer (D + Cout per group), for ``normalize='cost'``."""
    return {n: float(h.basis_matrix().shape[1] + h.coef.shape[0] // h.groups) for n, h in holders.items()}


def _measure_fn(ctx: Context, reference: dict[str, float]) -> Callable[[nn.Module], dict[str, float]]:
    def fn(model: nn.Module) -> dict[str, float]:
        c = compact(model, ctx.example if channel_scales(model) else None)
        m = measure(c, ctx.example, reference)
        return {k: m[k] for k in ("params", "flops", "param_pruning_ratio", "flop_pruning_ratio")}
    return fn


def _size(ctx: Context, model: nn.Module) -> dict[str, float]:
    return measure(model, ctx.example)


def _channel_stage(ctx: Context, model: nn.Module, size: dict, ckpt: Path | None):
    p = ctx.p
    s = add_channel_scales(model, ctx.example, ignored=[ctx.head(model)])
    rule = (PruningRule(fraction=None, threshold=p["channel_threshold"], layer_floor=p["layer_floor"])
            if p["channel_threshold"] is not None
            else PruningRule(fraction=p["channel_fraction"], layer_floor=p["layer_floor"]))
    warm = p["channel_warmup_epochs"] if p["channel_warmup_epochs"] is not None else p["warmup_epochs"]
    with stage_lock(ckpt):
        out = _prune_stage(ctx, s, kind="channel", rule=rule, rounds=p["channel_rounds"], warmup_epochs=warm,
                           regularizer=lambda m: p["channel_l1"] * l1_penalty(m), checkpoint=ckpt,
                           measure_fn=_measure_fn(ctx, size))
    return out["model"], out


def _basis_stage(ctx: Context, model: nn.Module, size: dict, ckpt: Path | None,
                 warmup_epochs: int | None = None, **track: Any):
    p = ctx.p
    d = decompose(model, exclude=[ctx.head(model)])
    rule = PruningRule(scope=p["basis_scope"], fraction=p["basis_fraction"], normalize=p["basis_normalize"],
                       layer_floor=p["layer_floor"])
    warm = p["warmup_epochs"] if warmup_epochs is None else warmup_epochs
    with stage_lock(ckpt):
        out = _prune_stage(ctx, d, kind="basis", rule=rule, rounds=p["basis_rounds"], warmup_epochs=warm,
                           regularizer=None, checkpoint=ckpt, measure_fn=_measure_fn(ctx, size), **track)
    return out["model"], out
