"""Our pipeline against the Torch-Pruning peer, on the same model, data and epoch budget (chapter 7).

* :func:`timed_run` runs (or loads) an experiment and says how long the pipeline took to compute;
  :func:`training_epochs` counts the epochs it trained.
* :func:`peer_comparison` prunes the same transfer model with Torch-Pruning's magnitude channel
  pruning (:func:`prune_to_flops`) to the FLOPs of one of our models and fine-tunes all its weights
  (:func:`basisprune.repro.peer.finetune`) with the epoch budget our pipeline used, recording when
  it first reaches our accuracy.

Conventions: ``flop_pruning_ratio = 1 - flops / flops_ref`` (:func:`basisprune.measure.count_flops`).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from . import experiments
from ..compact import load_model, save_model
from ..measure import count_flops, count_params
from .results import write_json

__all__ = ["peer_comparison", "prune_to_flops", "timed_run", "training_epochs"]


def _stage_epochs(history: Sequence[Mapping[str, Any]], epochs_per_round: int, start: int = 0) -> int:
    """Epochs a stage trained: its warm-up (round 0's epochs, counted from ``start``) plus
    ``epochs_per_round`` per round run after it, selected or not."""
    return int(history[0]["epochs"]) - int(start) + (len(history) - 1) * epochs_per_round


def training_epochs(record: Mapping[str, Any]) -> dict[str, int]:
    """Training epochs a pruning record used: warm-up plus ``epochs_per_round`` per round run.

    For double pruning both stages count; its basis stage starts from the channel stage's selected
    model, whose epochs its rows count on from, so its warm-up is what it added (the one scoring
    epoch), not the profile's ``warmup_epochs``. Returns ``{"channel": ..., "basis": ..., "total": ...}``.
    """
    epr = int(record["params"]["epochs_per_round"])
    out = {"channel": 0, "basis": 0}
    if record.get("stages"):
        ch, ba = record["stages"]["channel"], record["stages"]["basis"]
        out["channel"] = _stage_epochs(ch["history"], epr)
        out["basis"] = _stage_epochs(ba["history"], epr, start=ch["final"]["epochs"])
    elif record.get("experiment") == "channel_pruning":
        out["channel"] = _stage_epochs(record["history"], epr)
    else:
        out["basis"] = _stage_epochs(record["history"], epr)
    out["total"] = out["channel"] + out["basis"]
    return out


def timed_run(experiment: str, profile: str = "default", **params: Any) -> dict[str, Any]:
    """:func:`basisprune.repro.experiments.run` plus the wall time the pipeline took to *compute*.

    A run that loads its rounds from checkpoints returns at once, so its ``timings.total_seconds``
    is not the pipeline's cost; its ``timings.compute_seconds`` is (the stages keep their compute
    time in their checkpoints, so it survives resumes). Returns the record with
    ``pipeline_seconds``, ``pipeline_seconds_source``, ``epochs`` (:func:`training_epochs`) and
    ``workdir`` added.
    """
    p = experiments.resolve_params(experiment, profile, **params)
    record = experiments.run(experiment, profile=profile, **params)
    record["pipeline_seconds"] = float(record["timings"]["compute_seconds"])
    record["pipeline_seconds_source"] = "recorded"
    record["epochs"] = training_epochs(record)
    record["workdir"] = str(experiments.default_workdir(p))
    return record


def prune_to_flops(reference: nn.Module, example_input: torch.Tensor, target_ratio: float,
                   importance: str = "magnitude") -> tuple[nn.Module, dict[str, Any]]:
    """Torch-Pruning's channel pruning of a copy of ``reference`` to FLOPs at most
    ``(1 - target_ratio) * flops_ref`` (:func:`basisprune.repro.peer.torch_pruning_channel_prune`);
    below a ratio of 0.005 there is nothing to prune and the copy is returned as it is."""
    from . import peer as _peer

    if target_ratio > 0.005:
        return _peer.torch_pruning_channel_prune(reference, example_input, target_ratio, importance=importance,
                                                 return_info=True)
    return copy.deepcopy(reference), {"pruning_ratio": 0.0, "iterations": 0}


def _prefix(history: Sequence[Mapping[str, Any]], epochs: int, stop_at_target: bool,
            target: float) -> list[Mapping[str, Any]]:
    """The part of a fine-tuning history a request for ``epochs`` (stopping at ``target``) needs."""
    out = []
    for h in history:
        if h["epoch"] > epochs:
            break
        out.append(h)
        if stop_at_target and h["accuracy_test"] >= target:
            break
    return out


def _covers(history: Sequence[Mapping[str, Any]], epochs: int, stop_at_target: bool, target: float) -> bool:
    """Whether a stored history holds a request: fine-tuning is seeded and the same whatever its
    length, so a longer run's first epochs are the shorter run."""
    pre = _prefix(history, epochs, stop_at_target, target)
    return bool(pre) and (pre[-1]["epoch"] == epochs or (stop_at_target and pre[-1]["accuracy_test"] >= target))


def peer_comparison(
    profile: str = "default",
    dataset: str | None = None,
    seed: int | None = None,
    *,
    experiment: str = "double_pruning",
    importance: str = "magnitude",
    epochs: int | None = None,
    stop_at_target: bool = False,
    record: Mapping[str, Any] | None = None,
    cache: bool = True,
    **params: Any,
) -> dict[str, Any]:
    """Torch-Pruning's channel pruning of our transfer model to our FLOPs, fine-tuned with our budget.

    1. Our run: :func:`timed_run` of ``experiment`` (double pruning by default) with the profile's
       parameters (``dataset``, ``seed`` and ``params`` override them), or ``record`` if given.
    2. The peer starts from the same transfer model our pipelines start from (pretrained backbone,
       new classifier initialised from the run's seed), and
       :func:`basisprune.repro.peer.torch_pruning_channel_prune` (global ``GroupMagnitudeImportance(p=2)``
       by default) removes channel groups until its FLOPs are at most ours (FLOP pruning ratio
       within 0.01 above ours).
    3. It is fine-tuned like the full fine-tuning baseline (all weights, Adam at ``full_lr``,
       BatchNorm in train mode) for ``epochs`` epochs, by default as many as our pipeline trained
       (:func:`training_epochs`: warm-up plus rounds of every stage), on the same data; the
       test split is evaluated after every epoch to find when it first reaches our test accuracy.
       ``stop_at_target`` stops there (to measure the time to our accuracy only).

    The peer's run is cached in our run's checkpoint directory, per importance and FLOP target; as
    fine-tuning is seeded, a cached longer run answers a shorter request with its first epochs (the
    returned ``peer_model`` then has the longer run's weights: the same architecture, so the same
    latency).

    Returns:
        ``ours`` (accuracy_test, params, flops, ratios, pipeline_seconds and its source, epochs,
        compact_model path), ``peer`` (accuracy_test after the last epoch, params, flops, ratios,
        prune_seconds, seconds, epochs_run, history, reached_epoch / reached_seconds: the first
        epoch, and the cumulative wall seconds including pruning, at which the peer's test accuracy
        is at least ours, or ``None``), ``target_accuracy``, ``budget_epochs`` and the models
        ``peer_model`` and ``reference_model`` (the unpruned transfer model).
    """
    from .devices import seed_everything

    overrides = {k: v for k, v in {"dataset": dataset, "seed": seed, **params}.items() if v is not None}
    p = experiments.resolve_params(experiment, profile, **overrides)
    rec = dict(record) if record is not None else timed_run(experiment, profile, **overrides)
    budget = training_epochs(rec)["total"]
    n_epochs = int(budget if epochs is None else epochs)
    target_ratio = float(rec["final"]["flop_pruning_ratio"])
    target_acc = float(rec["final"]["accuracy_test"])
    ctx = experiments.Context(p)
    reference = ctx.fresh_model().eval()
    wd = Path(rec.get("workdir") or experiments.default_workdir(p))
    key = f"peer-{importance}-r{target_ratio:.4f}"
    meta_path, model_path = wd / f"{key}.json", wd / f"{key}.pt"
    run, stored = None, None
    if cache and meta_path.exists() and model_path.exists():
        stored = json.loads(meta_path.read_text(encoding="utf-8"))
        if _covers(stored["history"], n_epochs, stop_at_target, target_acc):
            run, peer_model = stored, load_model(model_path).eval()
    cached = run is not None
    if run is None:
        seed_everything(p["seed"])
        t0 = time.perf_counter()
        peer_model, info = prune_to_flops(reference, ctx.example, target_ratio, importance)
        prune_seconds = time.perf_counter() - t0
        from . import peer as _peer  # imported by prune_to_flops already (torch_pruning is slow to import)

        hist = _peer.finetune(peer_model, ctx.loaders, n_epochs, p["full_lr"], ctx.device, target=target_acc,
                              stop_at_target=stop_at_target, start_seconds=prune_seconds,
                              memory_format=p["memory_format"])
        peer_model = peer_model.cpu().eval()
        stats = {"params": count_params(peer_model), "flops": count_flops(peer_model, ctx.example.cpu())}
        run = {
            "importance": importance,
            "pruning_ratio": info.get("pruning_ratio"),
            "bisection_iterations": info.get("iterations"),
            **stats,
            "param_pruning_ratio": 1.0 - stats["params"] / rec["reference"]["params"],
            "flop_pruning_ratio": 1.0 - stats["flops"] / rec["reference"]["flops"],
            "prune_seconds": prune_seconds,
            "lr": p["full_lr"],
            "threads": torch.get_num_threads(),
            "device": str(ctx.device),
            "history": hist,
        }
        if cache and (stored is None or len(hist) >= len(stored["history"])):
            wd.mkdir(parents=True, exist_ok=True)
            save_model(peer_model, model_path)
            write_json(meta_path, run)
    hist = _prefix(run["history"], n_epochs, stop_at_target, target_acc)
    reached = next((h for h in hist if h["accuracy_test"] >= target_acc), None)
    result = {
        **{k: v for k, v in run.items() if k != "history"},
        "accuracy_test": hist[-1]["accuracy_test"],
        "seconds": hist[-1]["wall_seconds"],
        "epochs": n_epochs,
        "epochs_run": hist[-1]["epoch"],
        "stop_at_target": stop_at_target,
        "history": hist,
        "reached_epoch": reached["epoch"] if reached else None,
        "reached_seconds": reached["wall_seconds"] if reached else None,
        "cached": cached,
    }
    fin = rec["final"]
    ours = {
        "experiment": experiment,
        "accuracy_test": target_acc,
        "accuracy_val": fin.get("accuracy_val"),
        "params": fin["params"], "flops": fin["flops"],
        "param_pruning_ratio": fin["param_pruning_ratio"], "flop_pruning_ratio": target_ratio,
        "pipeline_seconds": rec.get("pipeline_seconds"),
        "pipeline_seconds_source": rec.get("pipeline_seconds_source"),
        "epochs": training_epochs(rec),
        "compact_model": rec.get("compact_model"),
    }
    return {
        "experiment": experiment, "dataset": p["dataset"], "seed": p["seed"], "model": p["model"],
        "image_size": p["image_size"], "input_shape": tuple(ctx.example.shape[1:]),
        "reference": dict(rec["reference"]), "ours": ours, "peer": result,
        "target_accuracy": target_acc, "budget_epochs": budget,
        "record": rec, "peer_model": peer_model, "reference_model": reference.cpu(),
        "example_input": ctx.example.cpu(),
    }
