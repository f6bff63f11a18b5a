"""The experiments behind the book and the CLI: one function each, same results either way.

* ``transfer``: the baselines (head only; basis scales + head; channel scales + head; full fine-tune).
* ``channel_pruning``: channel scaling with L1, iterative channel removal.
* ``basis_pruning``: basis scaling, iterative Taylor-importance basis pruning.
* ``double_pruning``: channel pruning, compaction, then basis pruning of what remains.

Pretrained weights stay frozen in every pruning pipeline: only scaling factors and the classifier
train. Each round is checkpointed under ``workdir``; a killed run started again resumes from the
last finished round and ends with the same numbers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from . import data, models, profiles
from .channel import add_channel_scales, channel_scales, l1_penalty
from .compact import compact, save_model
from .decompose import basis_layers, decompose
from .errors import ParameterError, WorkdirMismatchError
from .importance import ScaleMagnitude, TaylorImportance
from .measure import measure
from .prune import PruningRule, apply_masks, select
from .results import Timer, check_writable, clean_stale_temporaries, read_results, to_jsonable, write_json, write_results
from .train import (
    _loader_generators,
    _rng_state,
    _set_rng_state,
    evaluate,
    freeze,
    load_checkpoint,
    pick_device,
    save_checkpoint,
    seed_everything,
    train_epoch,
)

__all__ = ["EXPERIMENTS", "FINGERPRINT_FILE", "run", "resolve_params", "default_workdir", "fingerprint"]


# ------------------------------------------------------------------------------------ setup
class _Context:
    """Data, model and reference measures shared by the stages of one run."""

    def __init__(self, p: dict[str, Any]):
        self.p = p
        self.device = pick_device(p["device"])
        seed_everything(p["seed"])
        mean, std = models.normalization(p["model"])
        self.loaders = data.make_loaders(
            p["dataset"], p["image_size"], p["batch_size"], subset_train=p["subset_train"],
            subset_test=p["subset_test"], seed=p["seed"], mean=mean, std=std, root=p["data_root"],
            val_fraction=p["val_fraction"],
        )
        self.num_classes = data.num_classes(p["dataset"], p["data_root"])
        self.example = next(iter(self.loaders["test"]))[0][:1].to(self.device)

    def fresh_model(self) -> nn.Module:
        """The transfer model: pretrained backbone, new head initialised from the run's seed."""
        torch.manual_seed(self.p["seed"])
        m = models.load(self.p["model"], self.num_classes, pretrained=self.p["pretrained"])
        return m.to(self.device)

    def head(self, model: nn.Module) -> str:
        return models.classifier(model)[0]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        out = {}
        for split in ("val", "test"):
            if split in self.loaders:
                out[f"accuracy_{split}"] = evaluate(model, self.loaders[split], device=self.device, desc=split)["accuracy"]
        if "accuracy_val" not in out:  # without a validation split, select on test (flagged in params)
            out["accuracy_val"] = out["accuracy_test"]
        return out


def _train(ctx: _Context, model: nn.Module, optimizer, epochs: int, *, bn_mode: str,
           regularizer: Callable | None = None, callback: Callable | None = None, desc: str = "train") -> None:
    for e in range(epochs):
        train_epoch(model, ctx.loaders["train"], optimizer, device=ctx.device, bn_mode=bn_mode,
                    regularizer=regularizer, callback=callback, desc=f"{desc} {e + 1}/{epochs}")


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


# ----------------------------------------------------------------------------- pruning loop
def _prune_stage(
    ctx: _Context,
    model: nn.Module,
    *,
    kind: str,
    rule: PruningRule,
    rounds: int,
    warmup_epochs: int,
    regularizer: Callable | None,
    checkpoint: Path | None,
    measure_fn: Callable[[nn.Module], dict[str, float]],
) -> dict[str, Any]:
    """Warm up, then prune ``rounds`` times; returns history, the selected round, and restores it.

    Round r: prune with the scores gathered during the previous training epochs, train
    ``epochs_per_round`` (recovering and gathering the next scores), evaluate, measure.
    """
    p = ctx.p
    get_holders = (lambda m: basis_layers(m)) if kind == "basis" else (lambda m: channel_scales(m))
    head = ctx.head(model)
    trainable = freeze(model, lambda n, prm: n.endswith(".scale") or n.startswith(head + "."))
    optimizer = torch.optim.Adam(trainable, lr=p["lr"])
    # Channels: the paper ranks by |scale| after L1 training to convergence; with a few epochs the
    # scales stay near 1 and |scale| barely ranks anything, so Taylor is the default (our choice).
    taylor = kind == "basis" or p["channel_importance"] == "taylor"
    importance = TaylorImportance() if taylor else ScaleMagnitude()
    costs = _unit_costs(get_holders(model)) if kind == "basis" else None
    keys = _snapshot_keys(model, p["bn_mode"])

    def gather(m, *_):
        importance.accumulate(get_holders(m))

    # seconds: compute time of the stage so far, kept across resumes (a reload costs nothing).
    state: dict[str, Any] = {"round": -1, "history": [], "snapshots": [], "seconds": 0.0}
    if checkpoint is not None and checkpoint.exists():
        saved = load_checkpoint(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if taylor:
            importance.load_state_dict(saved["importance"])
        for name, g in _loader_generators(ctx.loaders).items():
            g.set_state(saved["generators"][name])
        _set_rng_state(saved["rng"], ctx.device)
        state = {k: saved[k] for k in ("round", "history", "snapshots", "seconds")}

    def save() -> None:
        if checkpoint is None:
            return
        save_checkpoint(
            checkpoint, model=model.state_dict(), optimizer=optimizer.state_dict(),
            importance=importance.state_dict() if taylor else None,
            generators={n: g.get_state() for n, g in _loader_generators(ctx.loaders).items()},
            rng=_rng_state(ctx.device), **state,
        )

    def record(r: int) -> dict[str, Any]:
        hs = get_holders(model)
        row = {"round": r, **ctx.evaluate(model), **measure_fn(model),
               "kept": {n: h.kept for n, h in hs.items()}, "total": {n: h.mask.numel() for n, h in hs.items()}}
        ref_acc = state["history"][0]["accuracy_test"] if state["history"] else row["accuracy_test"]
        row["accuracy_drop"] = ref_acc - row["accuracy_test"]  # against this stage's round 0
        return row

    tic = time.perf_counter()

    def finish(r: int) -> dict[str, Any]:
        """Record round ``r``, keep its state for selection, add its compute time, checkpoint."""
        nonlocal tic
        row = record(r)
        state["round"] = r
        state["history"].append(row)
        state["snapshots"].append(_snapshot(model, keys))
        state["seconds"] += time.perf_counter() - tic
        save()
        tic = time.perf_counter()
        return row

    if state["round"] < 0:
        # Scores come from the last warm-up epoch only: earlier gradients reflect a random head.
        _train(ctx, model, optimizer, max(warmup_epochs - 1, 0), bn_mode=p["bn_mode"], regularizer=regularizer,
               desc=f"{kind} warm-up")
        importance.reset()
        _train(ctx, model, optimizer, 1, bn_mode=p["bn_mode"], regularizer=regularizer,
               callback=gather if taylor else None, desc=f"{kind} warm-up (scoring)")
        finish(0)
    ref_val = state["history"][0]["accuracy_val"]
    stop = state["history"][-1]["accuracy_val"] < ref_val - p["stop_drop"]
    bar = tqdm(range(state["round"] + 1, rounds + 1), desc=f"{kind} pruning", leave=False)
    for r in bar:
        if stop:
            break
        hs = get_holders(model)
        masks = select(importance.scores(hs), {n: h.mask for n, h in hs.items()}, rule, costs)
        apply_masks(hs, masks)
        importance.reset()
        _train(ctx, model, optimizer, p["epochs_per_round"], bn_mode=p["bn_mode"], regularizer=regularizer,
               callback=gather if taylor else None, desc=f"{kind} round {r}")
        row = finish(r)
        bar.set_postfix(acc=f"{row['accuracy_test']:.3f}", pruned=f"{row['param_pruning_ratio']:.3f}")
        stop = row["accuracy_val"] < ref_val - p["stop_drop"]

    # Selection on validation accuracy: the most pruned round within the budget.
    ok = [h for h in state["history"] if h["accuracy_val"] >= ref_val - p["max_drop"]] or state["history"][:1]
    best = max(ok, key=lambda h: (h["param_pruning_ratio"], h["round"]))
    sd = model.state_dict()
    sd.update(state["snapshots"][best["round"]])
    model.load_state_dict(sd)
    return {"history": state["history"], "final": dict(best), "rule": rule.as_dict(), "seconds": state["seconds"]}


def _unit_costs(holders: dict[str, nn.Module]) -> dict[str, float]:
    """Weights one basis costs in its layer (D + Cout per group), for ``normalize='cost'``."""
    return {n: float(h.basis_matrix().shape[1] + h.coef.shape[0] // h.groups) for n, h in holders.items()}


def _measure_fn(ctx: _Context, reference: dict[str, float]) -> Callable[[nn.Module], dict[str, float]]:
    def fn(model: nn.Module) -> dict[str, float]:
        c = compact(model, ctx.example if channel_scales(model) else None)
        m = measure(c, ctx.example, reference)
        return {k: m[k] for k in ("params", "flops", "param_pruning_ratio", "flop_pruning_ratio")}
    return fn


def _reference(ctx: _Context, model: nn.Module) -> dict[str, float]:
    return measure(model, ctx.example)


def _channel_stage(ctx: _Context, model: nn.Module, ref: dict, ckpt: Path | None):
    p = ctx.p
    s = add_channel_scales(model, ctx.example, ignored=[ctx.head(model)])
    rule = (PruningRule(fraction=None, threshold=p["channel_threshold"]) if p["channel_threshold"] is not None
            else PruningRule(fraction=p["channel_fraction"]))
    warm = p["channel_warmup_epochs"] if p["channel_warmup_epochs"] is not None else p["warmup_epochs"]
    out = _prune_stage(ctx, s, kind="channel", rule=rule, rounds=p["channel_rounds"], warmup_epochs=warm,
                       regularizer=lambda m: p["channel_l1"] * l1_penalty(m), checkpoint=ckpt, measure_fn=_measure_fn(ctx, ref))
    return s, out


def _basis_stage(ctx: _Context, model: nn.Module, ref: dict, ckpt: Path | None,
                 warmup_epochs: int | None = None):
    p = ctx.p
    d = decompose(model, exclude=[ctx.head(model)])
    rule = PruningRule(scope=p["basis_scope"], fraction=p["basis_fraction"], normalize=p["basis_normalize"])
    warm = p["warmup_epochs"] if warmup_epochs is None else warmup_epochs
    out = _prune_stage(ctx, d, kind="basis", rule=rule, rounds=p["basis_rounds"], warmup_epochs=warm,
                       regularizer=None, checkpoint=ckpt, measure_fn=_measure_fn(ctx, ref))
    return d, out


def _pruning_record(out: dict, ref: dict) -> dict[str, Any]:
    first = out["history"][0]
    return {
        "reference": {"accuracy_test": first["accuracy_test"], "accuracy_val": first["accuracy_val"],
                      "params": ref["params"], "flops": ref["flops"]},
        "history": out["history"], "final": out["final"], "rule": out["rule"],
        "compute_seconds": out["seconds"],
    }


def _save_compact(ctx: _Context, model: nn.Module, workdir: Path | None, record: dict) -> dict:
    """Keep the selected model as a compact file (for latency benchmarks and reuse)."""
    experiment = record.pop("_experiment")
    if workdir is not None:
        path = workdir / f"{experiment}-compact.pt"
        save_model(compact(model, ctx.example if channel_scales(model) else None).cpu(), path)
        record["compact_model"] = str(path)
    return record


def _single_stage(ctx: _Context, workdir: Path | None, kind: str) -> dict[str, Any]:
    model = ctx.fresh_model()
    ref = _reference(ctx, model)
    stage = _channel_stage if kind == "channel" else _basis_stage
    pruned, out = stage(ctx, model, ref, _ck(workdir, kind))
    return _save_compact(ctx, pruned, workdir, {"_experiment": f"{kind}_pruning", **_pruning_record(out, ref)})


def channel_pruning(ctx: _Context, workdir: Path | None) -> dict[str, Any]:
    """Channel scaling and iterative channel pruning of the transfer model."""
    return _single_stage(ctx, workdir, "channel")


def basis_pruning(ctx: _Context, workdir: Path | None) -> dict[str, Any]:
    """Basis scaling and iterative basis pruning of the transfer model."""
    return _single_stage(ctx, workdir, "basis")


def double_pruning(ctx: _Context, workdir: Path | None) -> dict[str, Any]:
    """Channel pruning, compaction, then basis pruning; ratios against the unpruned transfer model."""
    model = ctx.fresh_model()
    ref = _reference(ctx, model)
    s, ch = _channel_stage(ctx, model, ref, _ck(workdir, "channel"))
    small = compact(s, ctx.example)
    # The channel stage already trained the head; the decomposed model starts equal to it, so the
    # basis stage's warm-up is the one scoring epoch (more would mix extra training into the drop).
    d, ba = _basis_stage(ctx, small, ref, _ck(workdir, "double-basis"), warmup_epochs=1)
    ch0 = ch["history"][0]
    for row in ba["history"] + [ba["final"]]:  # drops against the unpruned (channel-scaled) model
        row["accuracy_drop"] = ch0["accuracy_test"] - row["accuracy_test"]
    rec = _pruning_record(ba, ref)
    rec["reference"]["accuracy_test"] = ch0["accuracy_test"]
    rec["reference"]["accuracy_val"] = ch0["accuracy_val"]
    rec["stages"] = {"channel": {"history": ch["history"], "final": ch["final"], "seconds": ch["seconds"]},
                     "basis": {"history": ba["history"], "final": ba["final"], "seconds": ba["seconds"]}}
    rec["compute_seconds"] = ch["seconds"] + ba["seconds"]
    return _save_compact(ctx, d, workdir, {"_experiment": "double_pruning", **rec})


def transfer(ctx: _Context, workdir: Path | None) -> dict[str, Any]:
    """The four transfer baselines, each from the same pretrained model and seed."""
    p = ctx.p
    results: dict[str, Any] = {}
    for name in ("head_only", "basis_scales_head", "channel_scales_head", "full_finetune"):
        ck = _ck(workdir, f"transfer-{name}")
        if ck is not None and ck.exists():
            results[name] = load_checkpoint(ck, weights_only=False)["result"]
            continue
        seed_everything(p["seed"])
        model = ctx.fresh_model()
        head = ctx.head(model)
        bn_mode, lr = p["bn_mode"], p["lr"]
        if name == "head_only":
            trainable = freeze(model, lambda n, prm: n.startswith(head + "."))
        elif name == "basis_scales_head":
            model = decompose(model, exclude=[head])
            trainable = freeze(model, lambda n, prm: n.endswith(".scale") or n.startswith(head + "."))
        elif name == "channel_scales_head":
            model = add_channel_scales(model, ctx.example, ignored=[head])
            trainable = freeze(model, lambda n, prm: n.endswith(".scale") or n.startswith(head + "."))
        else:
            trainable = freeze(model, lambda n, prm: True)
            bn_mode, lr = "train", p["full_lr"]
        opt = torch.optim.Adam(trainable, lr=lr)
        start = time.perf_counter()
        _train(ctx, model, opt, p["transfer_epochs"], bn_mode=bn_mode, desc=name)
        seconds = time.perf_counter() - start
        results[name] = {**ctx.evaluate(model), "seconds": seconds,
                         "trainable_params": sum(t.numel() for t in trainable), "bn_mode": bn_mode, "lr": lr}
        if ck is not None:
            save_checkpoint(ck, result=results[name])
    return {"baselines": results}


EXPERIMENTS: dict[str, Callable[[_Context, Path | None], dict[str, Any]]] = {
    "transfer": transfer,
    "channel_pruning": channel_pruning,
    "basis_pruning": basis_pruning,
    "double_pruning": double_pruning,
}


# ------------------------------------------------------------------------------ entry point
def resolve_params(experiment: str, profile: str = "default", **params: Any) -> dict[str, Any]:
    """The profile's parameters with ``params`` applied, validated before any work starts.

    ``None`` for a parameter means the profile's value (except where None is a value of its own).
    Raises :class:`~basisprune.errors.ParameterError` (a ValueError) naming the parameter and
    what it allows (see :func:`basisprune.profiles.validate`); nothing is loaded or written.
    """
    if not isinstance(experiment, str) or experiment not in EXPERIMENTS:
        raise ParameterError("experiment", f"experiment must be one of {sorted(EXPERIMENTS)} (known experiments), "
                             f"got {experiment!r}", experiment)
    if not isinstance(profile, str) or profile not in profiles.PROFILES:
        raise ParameterError("profile", f"profile must be one of {sorted(profiles.PROFILES)}, got {profile!r}", profile)
    unknown = sorted(set(params) - set(profiles.PARAMETERS))
    if unknown:
        raise ParameterError(unknown[0], f"unknown parameter(s) {unknown}; allowed: {sorted(profiles.PARAMETERS)}")
    dataset = params.get("dataset")
    p = profiles.get(profile, dataset if isinstance(dataset, str) else None)
    p.update({k: v for k, v in params.items() if v is not None or profiles.PARAMETERS[k][0] is None})
    for k in ("datasets", "seeds", "table_seeds"):
        p.pop(k)
    return profiles.validate(p)


# The modules whose code decides an experiment's numbers; editing another module keeps the cache.
_RESULT_MODULES = ("channel", "compact", "data", "decompose", "experiments", "importance", "measure",
                   "models", "profiles", "prune", "train")

#: The file in a checkpoint directory naming the parameters and code its checkpoints belong to.
FINGERPRINT_FILE = "fingerprint.json"


def _code_hash() -> str:
    h = hashlib.sha256()
    for name in _RESULT_MODULES:
        h.update((Path(__file__).parent / f"{name}.py").read_bytes())
    return h.hexdigest()[:12]


def fingerprint(p: dict[str, Any]) -> dict[str, Any]:
    """What a run's numbers depend on: its parameters, a hash of the library code, and a digest
    of both (``runs/<digest[:16]>`` is :func:`default_workdir`)."""
    code = _code_hash()
    digest = hashlib.sha256(json.dumps({"p": p, "code": code}, sort_keys=True, default=str).encode()).hexdigest()
    return {"params": to_jsonable(p), "code": code, "digest": digest}


def default_workdir(p: dict[str, Any]) -> Path:
    """``runs/<hash of parameters and library code>`` under $BASISPRUNE_RUNS or ./runs.

    Experiments with the same parameters share the directory, so double pruning reuses the channel
    stage that channel pruning checkpointed (the stages are identical), and a rerun resumes.
    """
    return Path(os.environ.get("BASISPRUNE_RUNS", "runs")) / fingerprint(p)["digest"][:16]


def _ck(workdir: Path | None, stage: str) -> Path | None:
    return None if workdir is None else workdir / f"{stage}.pt"


def _check_workdir(wd: Path, fp: dict[str, Any]) -> None:
    """Refuse to resume from checkpoints that another run (other parameters or code) wrote."""
    if not wd.is_dir():
        return
    path = wd / FINGERPRINT_FILE
    if not path.exists():
        stale = sorted(f.name for f in wd.glob("*.pt"))
        if stale:
            raise WorkdirMismatchError(
                f"workdir {str(wd)!r} holds checkpoints ({', '.join(stale)}) but no {FINGERPRINT_FILE}, so "
                "nothing says which run made them; use another workdir or delete it"
            )
        return
    try:
        saved = read_results(path)
        old, code = dict(saved["params"]), saved["code"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WorkdirMismatchError(
            f"workdir {str(wd)!r}: its {FINGERPRINT_FILE} is unreadable ({type(e).__name__}: {e}), so nothing says "
            "which run made its checkpoints; use another workdir or delete it"
        ) from e
    new = fp["params"]
    differ = [k for k in sorted(set(old) | set(new)) if old.get(k, "<absent>") != new.get(k, "<absent>")]
    if differ:
        was = ", ".join(f"{k}={old.get(k, '<absent>')!r}" for k in differ)
        now = ", ".join(f"{k}={new.get(k, '<absent>')!r}" for k in differ)
        raise WorkdirMismatchError(
            f"workdir {str(wd)!r} was made with {was}, this run has {now}; use another workdir or delete it"
        )
    if code != fp["code"]:
        raise WorkdirMismatchError(
            f"workdir {str(wd)!r} was made by other library code (code hash {code}, this run {fp['code']}); "
            "its checkpoints may not match: use another workdir or delete it"
        )


def _open_workdir(wd: Path, fp: dict[str, Any]) -> None:
    """Create the checkpoint directory, clear its stale temporaries, record the fingerprint."""
    wd.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(wd)
    if not (wd / FINGERPRINT_FILE).exists():
        write_json(wd / FINGERPRINT_FILE, fp)


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
        profile: ``smoke``, ``default`` or ``paper`` (see :mod:`basisprune.profiles`).
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
        ctx = _Context(p)
        data.check_labels(ctx.loaders, ctx.num_classes)
        if wd is not None:
            _open_workdir(wd, fp)
        if out is not None:
            clean_stale_temporaries(out.parent)
        record = EXPERIMENTS[experiment](ctx, wd)
    record = {"experiment": experiment, "profile": profile, "params": p, **record,
              "fingerprint": {k: fp[k] for k in ("code", "digest")}}
    # Compute time of the pipeline itself, summed over resumes (total_seconds is this call only).
    timings["compute_seconds"] = record.pop("compute_seconds", timings["total_seconds"])
    if out is not None:
        record = write_results(out, record, p, p["seed"], timings)
    else:
        record["timings"] = timings
    return record
