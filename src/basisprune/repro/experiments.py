"""The experiments behind the book and the CLI: one function each, same results either way.

* ``transfer``: the baselines (head only; basis scales + head; channel scales + head; full fine-tune).
* ``channel_pruning``: channel scaling with L1, iterative channel removal.
* ``basis_pruning``: basis scaling, iterative Taylor-importance basis pruning.
* ``double_pruning``: channel pruning, compaction, then basis pruning of what remains.
* ``data_size``: every method of the training-set-size study on one subset and seed
  (:mod:`basisprune.repro.data_size`).
* ``pai_scratch``, ``pai_transfer``, ``pai_cost``: pruning at initialization (chapter 6,
  :mod:`basisprune.repro.pruning_at_init`, :mod:`~basisprune.repro.pai_transfer`,
  :mod:`~basisprune.repro.pai_cost`); their parameters are the profile's ``pai`` settings
  (:func:`basisprune.repro.profiles.pai_params`).

Pretrained weights stay frozen in every pruning pipeline: only scaling factors and the classifier
train. Each round is checkpointed under ``workdir``; a killed run started again resumes from the
last finished round and ends with the same numbers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import data, data_size as _data_size, models, pai_cost, pai_transfer, profiles, pruning_at_init
from ..channel import add_channel_scales, channel_scales
from ..compact import compact, save_model
from ..decompose import decompose
from ..errors import ParameterError
from .checkpoints import load_checkpoint, save_checkpoint
from .devices import pick_device, seed_everything
from .pai_parameters import PAI_EXPERIMENTS
from .reference import _train
from .results import Timer, check_writable, clean_stale_temporaries, write_results
from .stages import _basis_stage, _channel_stage, _size, select_round, stops_after
from .train import evaluate, freeze, make_scaler
# stage_lock: re-exported for the callers that import it from here.
from .workdir import (
    FINGERPRINT_FILE,
    STAGE_CHECKPOINTS,
    _check_workdir,
    _ck,
    _open_workdir,
    default_workdir,
    fingerprint,
    stage_lock,
)

__all__ = ["EXPERIMENTS", "FINGERPRINT_FILE", "LOADERS", "PAI_EXPERIMENTS", "STAGE_CHECKPOINTS", "Context", "context",
           "parameter_specs", "run", "transfer_setup", "resolve_params", "default_workdir", "fingerprint", "select_round", "stops_after"]


# ------------------------------------------------------------------------------------ setup
class Context:
    """Data, loaders, example input and gradient scaler shared by the stages of one run (and by
    :mod:`basisprune.repro.efficiency`, which starts its peer from the same transfer model).

    ``loaders``: how to build ``(loaders, num_classes)`` from ``p`` when the run's data is not the
    transfer model's (the pruning-at-initialization experiments, :data:`LOADERS`).
    """

    def __init__(self, p: dict[str, Any], loaders: Callable[[dict[str, Any]], tuple[dict, int]] | None = None):
        self.p = p
        self.device = pick_device(p.get("device", "auto"))  # pai_transfer: its experiments profile's
        seed_everything(p["seed"])
        if loaders is None:
            mean, std = models.normalization(p["model"])
            self.loaders = data.make_loaders(
                p["dataset"], p["image_size"], p["batch_size"], subset_train=p["subset_train"],
                subset_test=p["subset_test"], seed=p["seed"], mean=mean, std=std, root=p["data_root"],
                val_fraction=p["val_fraction"], test_split=p["test_split"],
            )
            self.num_classes = data.num_classes(p["dataset"], p["data_root"])
        else:
            self.loaders, self.num_classes = loaders(p)
        self.example = next(iter(self.loaders["test"]))[0][:1].to(self.device) if "test" in self.loaders else None
        # One gradient scaler for the whole run (float16 only): a fresh one per epoch restarts its
        # scale search and skips steps each time.
        self.scaler = make_scaler(p.get("precision", "fp32"), self.device)

    def fresh_model(self) -> nn.Module:
        """The transfer model: pretrained backbone, new head initialised from the run's seed."""
        torch.manual_seed(self.p["seed"])
        m = models.load(self.p["model"], self.num_classes, pretrained=self.p["pretrained"])
        return m.to(self.device)

    def head(self, model: nn.Module) -> str:
        return models.classifier(model)[0]

    def evaluate(self, model: nn.Module, correct: bool = False) -> dict[str, Any]:
        """``accuracy_val`` and ``accuracy_test`` (with ``correct``: per-image hits, for paired drops)."""
        out: dict[str, Any] = {}
        for split in ("val", "test"):
            if split in self.loaders:
                # Evaluating must not draw from the global RNG (a DataLoader iterator does), so that
                # the reference, evaluated between epochs, trains on the pruned run's random stream.
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    r = evaluate(model, self.loaders[split], device=self.device, desc=split,
                                 amp=self.p["precision"], return_correct=correct)
                out[f"accuracy_{split}"] = r["accuracy"]
                if correct:
                    out[f"correct_{split}"] = r["correct"]
        if "accuracy_val" not in out:  # without a validation split, select on test (flagged in params)
            out["accuracy_val"] = out["accuracy_test"]
            if correct:
                out["correct_val"] = out["correct_test"]
        return out


# ------------------------------------------------------------------------------ experiments
def _pruning_record(out: dict, size: dict) -> dict[str, Any]:
    """The record of a run; ``reference`` is the fair reference at the selected round's epochs."""
    first, best = out["history"][0], out["final"]
    return {
        "reference": {"accuracy_test": best["reference_test"], "accuracy_val": best["reference_val"],
                      "epochs": best["epochs"], "round0_accuracy_test": first["accuracy_test"],
                      "round0_accuracy_val": first["accuracy_val"], "params": size["params"], "flops": size["flops"]},
        "history": out["history"], "final": best, "rule": out["rule"],
        "compute_seconds": out["seconds"], "reference_seconds": out["reference_seconds"],
    }


def _save_compact(ctx: Context, model: nn.Module, workdir: Path | None, experiment: str, record: dict) -> dict:
    """Keep the selected model as a compact file (for latency benchmarks and reuse)."""
    if workdir is not None:
        path = workdir / f"{experiment}-compact.pt"
        save_model(compact(model, ctx.example if channel_scales(model) else None).cpu(), path)
        record["compact_model"] = str(path)
    return record


def _single_stage(ctx: Context, workdir: Path | None, kind: str) -> dict[str, Any]:
    model = ctx.fresh_model()
    size = _size(ctx, model)
    stage = _channel_stage if kind == "channel" else _basis_stage
    experiment = f"{kind}_pruning"
    pruned, out = stage(ctx, model, size, _ck(workdir, STAGE_CHECKPOINTS[experiment][0]))
    return _save_compact(ctx, pruned, workdir, experiment, _pruning_record(out, size))


def channel_pruning(ctx: Context, workdir: Path | None) -> dict[str, Any]:
    """Channel scaling and iterative channel pruning of the transfer model."""
    return _single_stage(ctx, workdir, "channel")


def basis_pruning(ctx: Context, workdir: Path | None) -> dict[str, Any]:
    """Basis scaling and iterative basis pruning of the transfer model."""
    return _single_stage(ctx, workdir, "basis")


def double_pruning(ctx: Context, workdir: Path | None) -> dict[str, Any]:
    """Channel pruning, compaction, then basis pruning; ratios against the unpruned transfer model.

    One budget for both stages: the basis stage's rounds are judged against the unpruned
    (channel-scaled) model trained for as many epochs in all, the reference the channel stage forked.
    """
    model = ctx.fresh_model()
    size = _size(ctx, model)
    channel_ck, basis_ck = STAGE_CHECKPOINTS["double_pruning"]
    s, ch = _channel_stage(ctx, model, size, _ck(workdir, channel_ck))
    small = compact(s, ctx.example)
    # The channel stage already trained the head; the decomposed model starts equal to it, so the
    # basis stage's warm-up is the one scoring epoch (more would mix extra training into the drop).
    d, ba = _basis_stage(ctx, small, size, _ck(workdir, basis_ck), warmup_epochs=1,
                         reference=ch["track"], epoch_offset=ch["final"]["epochs"])
    final_model, out = d, ba
    if not ba["within_budget"]:
        # Not even the basis stage's round 0 (one epoch more) keeps the budget against the reference
        # trained as long: basis pruning adds nothing, and the double-pruned model is the channel
        # stage's selection, which kept it.
        final_model, out = s, {**ba, "final": ch["final"]}
    rec = _pruning_record(out, size)
    rec["final_stage"] = "basis" if ba["within_budget"] else "channel"
    rec["stages"] = {"channel": {"history": ch["history"], "final": ch["final"], "seconds": ch["seconds"]},
                     "basis": {"history": ba["history"], "final": ba["final"], "seconds": ba["seconds"]}}
    rec["compute_seconds"] = ch["seconds"] + ba["seconds"]
    rec["reference_seconds"] = ba["reference_seconds"]
    rec["reference"]["round0_accuracy_test"] = ch["history"][0]["accuracy_test"]  # the unpruned model's
    rec["reference"]["round0_accuracy_val"] = ch["history"][0]["accuracy_val"]
    return _save_compact(ctx, final_model, workdir, "double_pruning", rec)


def transfer_setup(ctx: Context, model: nn.Module, kind: str) -> tuple[nn.Module, list[nn.Parameter], str, float]:
    """What a transfer baseline trains: ``(model, trainable parameters, bn_mode, lr)`` for ``kind``
    ``head_only``, ``basis_scales_head`` (decomposed), ``channel_scales_head`` (channel scales added)
    or ``full_finetune`` (every weight, BatchNorm in train mode, ``full_lr``); everything else frozen."""
    p = ctx.p
    head = ctx.head(model)
    bn_mode, lr = p["bn_mode"], p["lr"]
    if kind == "head_only":
        trainable = freeze(model, lambda n, prm: n.startswith(head + "."))
    elif kind == "basis_scales_head":
        model = decompose(model, exclude=[head])
        trainable = freeze(model, lambda n, prm: n.endswith(".scale") or n.startswith(head + "."))
    elif kind == "channel_scales_head":
        model = add_channel_scales(model, ctx.example, ignored=[head])
        trainable = freeze(model, lambda n, prm: n.endswith(".scale") or n.startswith(head + "."))
    elif kind == "full_finetune":
        trainable = freeze(model, lambda n, prm: True)
        bn_mode, lr = "train", p["full_lr"]
    else:
        raise ValueError(f"unknown transfer baseline {kind!r}")
    return model, trainable, bn_mode, lr


def transfer(ctx: Context, workdir: Path | None) -> dict[str, Any]:
    """The four transfer baselines, each from the same pretrained model and seed."""
    p = ctx.p
    results: dict[str, Any] = {}
    for name in ("head_only", "basis_scales_head", "channel_scales_head", "full_finetune"):
        ck = _ck(workdir, f"transfer-{name}.pt")
        if ck is not None and ck.exists():
            results[name] = load_checkpoint(ck, weights_only=False)["result"]
            continue
        seed_everything(p["seed"])
        model, trainable, bn_mode, lr = transfer_setup(ctx, ctx.fresh_model(), name)
        opt = torch.optim.Adam(trainable, lr=lr)
        start = time.perf_counter()
        _train(ctx, model, opt, p["transfer_epochs"], bn_mode=bn_mode, desc=name)
        seconds = time.perf_counter() - start
        results[name] = {**ctx.evaluate(model), "seconds": seconds,
                         "trainable_params": sum(t.numel() for t in trainable), "bn_mode": bn_mode, "lr": lr}
        if ck is not None:
            save_checkpoint(ck, result=results[name])
    return {"baselines": results}


EXPERIMENTS: dict[str, Callable[[Context, Path | None], dict[str, Any]]] = {
    "transfer": transfer,
    "channel_pruning": channel_pruning,
    "basis_pruning": basis_pruning,
    "double_pruning": double_pruning,
    "data_size": _data_size.data_size,
    "pai_scratch": pruning_at_init.scratch,
    "pai_transfer": pai_transfer.transfer,
    "pai_cost": pai_cost.cost,
}

#: How :class:`Context` builds the loaders (and number of classes) of the experiments whose data is
#: not the transfer model's (the cost experiment has none: random inputs).
LOADERS: dict[str, Callable[[dict[str, Any]], tuple[dict, int]]] = {
    "pai_scratch": pruning_at_init.scratch_loaders, "pai_transfer": pai_transfer.transfer_loaders,
    "pai_cost": lambda p: ({}, 10),
}


# ------------------------------------------------------------------------------ entry point
def _check_experiment(experiment: Any) -> str:
    if not isinstance(experiment, str) or experiment not in EXPERIMENTS:
        raise ParameterError("experiment", f"experiment must be one of {sorted(EXPERIMENTS)} (known experiments), "
                             f"got {experiment!r}", experiment)
    return experiment


def parameter_specs(experiment: str) -> dict[str, profiles.Spec]:
    """The parameters :func:`resolve_params` takes for ``experiment``, each with what it accepts:
    :data:`basisprune.repro.profiles.SPECS`, or for the pruning-at-initialization experiments their
    ``pai`` part's settings (:func:`basisprune.repro.profiles.pai_specs`). The CLI and sweep specs
    offer and parse these names."""
    if _check_experiment(experiment) in PAI_EXPERIMENTS:
        return profiles.pai_specs(PAI_EXPERIMENTS[experiment])
    return dict(profiles.SPECS)


def resolve_params(experiment: str, profile: str = "default", **params: Any) -> dict[str, Any]:
    """The profile's parameters with ``params`` applied, validated before any work starts.

    ``None`` for a parameter means the profile's value (except where None is a value of its own).
    The pruning-at-initialization experiments take the settings of their ``pai`` part instead.
    Raises :class:`~basisprune.errors.ParameterError` (a ValueError) naming the parameter and
    what it allows (see :func:`basisprune.repro.profiles.validate`); nothing is loaded or written.
    """
    _check_experiment(experiment)
    profiles.check_profile(profile)
    if experiment in PAI_EXPERIMENTS:
        return profiles.pai_params(PAI_EXPERIMENTS[experiment], profile, **params)
    unknown = sorted(set(params) - set(profiles.PARAMETERS))
    if unknown:
        raise ParameterError(unknown[0], f"unknown parameter(s) {unknown}; allowed: {sorted(profiles.PARAMETERS)}")
    dataset = params.get("dataset")
    p = profiles.get(profile, dataset if isinstance(dataset, str) else None)
    p.update({k: v for k, v in params.items() if v is not None or profiles.PARAMETERS[k][0] is None})
    for k in ("datasets", "seeds", "table_seeds"):
        p.pop(k)
    return profiles.validate(p)


def context(experiment: str, profile: str = "default", **params: Any) -> Context:
    """The :class:`Context` of one run of ``experiment`` (its data loaded, nothing trained or
    written): what :func:`run` hands the experiment; for tests and notebooks that call one step."""
    return Context(resolve_params(experiment, profile, **params), LOADERS.get(experiment))


def run(experiment: str, *, profile: str = "default", out: str | Path | None = None,
        workdir: str | Path | None | bool = None, **params: Any) -> dict[str, Any]:
    """Run one experiment and return its record (also written to ``out`` as JSON with provenance).

    Every input is checked before any work starts, and nothing is written when one is refused:
    the parameters (:func:`resolve_params`), ``out`` and ``workdir`` (writable), the workdir's
    fingerprint (a workdir made with other parameters or code is refused, naming the parameters
    that differ), then, once the data is loaded, the subset sizes and labels. The record carries
    the run's ``fingerprint`` (code hash, digest); the workdir holds :data:`FINGERPRINT_FILE`.

    Args:
        experiment: one of :data:`EXPERIMENTS`.
        profile: ``smoke``, ``default`` or ``paper`` (see :mod:`basisprune.repro.profiles`).
        out: results file to write (JSON with provenance and timings).
        workdir: checkpoint directory (default :func:`default_workdir`; ``False``: no checkpoints).
        **params: overrides of the profile's parameters.
    """
    p = resolve_params(experiment, profile, **params)
    if workdir is True or not (workdir is None or workdir is False or isinstance(workdir, (str, os.PathLike))):
        raise ParameterError("workdir", f"workdir must be a folder path, None (the default) or False (no "
                             f"checkpoints), got {workdir!r}", workdir)
    wd = None if workdir is False else check_writable(workdir or default_workdir(p), "workdir", directory=True)
    out = None if out is None else check_writable(out, "out")
    fp = fingerprint(p)
    if wd is not None:
        _check_workdir(wd, fp)
    timings: dict[str, float] = {}
    with Timer(timings, "total_seconds"):
        ctx = Context(p, LOADERS.get(experiment))
        data.check_labels(ctx.loaders, ctx.num_classes)
        if wd is not None:
            _open_workdir(wd, fp)
        if out is not None:
            clean_stale_temporaries(out.parent)
        record = EXPERIMENTS[experiment](ctx, wd)
    record = {"experiment": experiment, "profile": profile, "params": p,
              "split_sizes": {k: len(v.dataset) for k, v in ctx.loaders.items()}, **record,
              "fingerprint": {k: fp[k] for k in ("code", "digest")}}
    # Compute time of the pipeline itself, summed over resumes (total_seconds is this call only).
    timings["compute_seconds"] = record.pop("compute_seconds", timings["total_seconds"])
    # Training the fair reference is the evaluation protocol's cost, not the pipeline's.
    timings["reference_seconds"] = record.pop("reference_seconds", 0.0)
    if out is not None:
        record = write_results(out, record, p, p["seed"], timings)
    else:
        record["timings"] = timings
    return record
