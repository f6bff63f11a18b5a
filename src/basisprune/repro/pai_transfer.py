"""The pruning-at-initialization transfer experiment ``pai_transfer`` (chapter 6).

:func:`transfer` -- for one seed (a run of :func:`basisprune.repro.experiments.run`), ProsPr and
SNIP (any method of :data:`basisprune.pai.METHODS`) on the pretrained transfer model of :mod:`basisprune.repro.experiments` (mobilenet_v2 in the ``smoke`` and
``default`` profiles), at the parameter count that basis pruning or double pruning reached, then
fine-tuned (all weights train, masks kept) and scored on the same test set.  *Equal parameter
counts*: basis/double pruning's ``final["params"]`` counts every parameter of its compact model.
An unstructured mask leaves the tensors dense, so we count what survives: the kept entries of the
prunable weights (every Conv2d/Linear weight, classifier included) plus every parameter that is
never pruned (BatchNorm affine parameters, biases).  The sparsity over prunable weights is chosen
so that this count equals ``final["params"]`` (up to rounding to whole weights)::

    sparsity = 1 - (final_params - non_prunable) / prunable

which is ``1 - final/reference`` over the prunable weights up to the 1.5 % of non-prunable
parameters of mobilenet_v2.  The sparse count does not include the indices a sparse format would
store, so it flatters unstructured pruning.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import pai
from . import data, models, profiles
from .pruning_at_init import mask_stats, method_options, prunable_counts, prune_batches, prune_with_collapse, resumed, sync
from .devices import pick_device, seed_everything
from .train import evaluate, train_epoch

__all__ = ["TRANSFER_TARGETS", "matched_sparsity", "transfer", "transfer_loaders", "transfer_many", "transfer_targets"]

TRANSFER_TARGETS: dict[str, str] = {"basis_pruning": "basis pruning", "double_pruning": "double pruning"}
"""Experiments whose final parameter count :func:`transfer` can be matched to, with their labels."""


def _transfer_params(s: Mapping[str, Any]) -> dict[str, Any]:
    """The experiments parameters a transfer run shares with basis/double pruning."""
    from . import experiments

    ep = profiles.get(s["experiments_profile"])
    ds = s["dataset"] or ep["datasets"][0]
    over = {k: s[k] for k in ("model",) if s[k] is not None}
    return experiments.resolve_params("basis_pruning", s["experiments_profile"], dataset=ds, seed=s["seed"], **over)


def transfer_loaders(s: Mapping[str, Any]) -> tuple[dict[str, DataLoader], int]:
    """A transfer run's loaders and classes: basis/double pruning's data (its model's normalisation),
    with the transfer settings' subsets where they are set."""
    p = _transfer_params(s)
    mean, std = models.normalization(p["model"])
    loaders = data.make_loaders(
        p["dataset"], p["image_size"], p["batch_size"],
        subset_train=s["subset_train"] if s["subset_train"] is not None else p["subset_train"],
        subset_test=s["subset_test"] if s["subset_test"] is not None else p["subset_test"],
        seed=s["seed"], mean=mean, std=std, root=p["data_root"], val_fraction=p["val_fraction"],
    )
    return loaders, data.num_classes(p["dataset"], p["data_root"])


def matched_sparsity(model: nn.Module, final_params: int | float) -> dict[str, float]:
    """The sparsity over ``model``'s prunable weights at which an unstructured mask leaves
    ``final_params`` parameters (kept prunable weights + every non-prunable parameter).

    Returns ``sparsity``, ``prunable``, ``non_prunable``, ``kept`` (whole weights) and ``reference``
    (all parameters of ``model``).  Raises ``ValueError`` if ``final_params`` does not fit.
    """
    prunable, rest = prunable_counts(model)
    kept = int(round(float(final_params) - rest))
    if not 0 < kept <= prunable:
        raise ValueError(f"final_params={final_params} leaves {kept} prunable weights; "
                         f"must be in (0, {prunable}] (the model has {rest} non-prunable parameters)")
    return {"sparsity": 1.0 - kept / prunable, "prunable": prunable, "non_prunable": rest, "kept": kept,
            "reference": prunable + rest}


def transfer_targets(s: Mapping[str, Any], shape_model: nn.Module) -> dict[str, dict[str, Any]]:
    """Run (or resume from checkpoints) basis/double pruning and turn their final parameter counts
    into sparsities (see :func:`matched_sparsity`); ``s``: a ``pai_transfer`` run's settings,
    ``shape_model``: the transfer model (only its parameter shapes count).

    Calls ``experiments.run(target, profile=<experiments profile>, dataset=..., seed=...)`` with
    the same parameters as chapters 4 and 5, so their checkpoints are reused when those ran first.
    Returns ``{label: {sparsity, final_params, reference_params, accuracy_test, ...}}``, plus the
    ``fixed`` sparsities of the settings.
    """
    from . import experiments

    p = _transfer_params(s)
    out: dict[str, dict[str, Any]] = {}
    for target in s["targets"]:
        rec = experiments.run(target, profile=s["experiments_profile"], dataset=p["dataset"], seed=s["seed"],
                              **({"model": s["model"]} if s["model"] else {}))
        m = matched_sparsity(shape_model, rec["final"]["params"])
        out[TRANSFER_TARGETS[target]] = {
            **m, "experiment": target, "final_params": rec["final"]["params"],
            "reference_params": rec["reference"]["params"], "accuracy_test": rec["final"]["accuracy_test"],
            "reference_accuracy_test": rec["reference"]["accuracy_test"],
            "param_pruning_ratio": rec["final"]["param_pruning_ratio"],
        }
    for label, sp in s["fixed"].items():
        prunable, rest = prunable_counts(shape_model)
        kept = int(round((1 - sp) * prunable))
        out[label] = {"sparsity": float(sp), "prunable": prunable, "non_prunable": rest, "kept": kept,
                      "reference": prunable + rest, "experiment": None, "final_params": kept + rest,
                      "reference_params": prunable + rest, "accuracy_test": None}
    return out


def transfer(ctx, workdir: Path | None) -> dict[str, Any]:
    """Experiment ``pai_transfer``: the targets (:func:`transfer_targets`), then every method of the
    settings pruned to their sparsities and fine-tuned (:func:`transfer_many`), each method from the
    loaders' starting state; ``targets`` and ``runs`` (each method's records kept in the workdir)."""
    s = ctx.p
    p = _transfer_params(s)
    order = ctx.loaders["train"].generator.get_state()
    shape_model = models.load(p["model"], ctx.num_classes, pretrained=False)
    targets = transfer_targets(s, shape_model)
    runs: list[dict[str, Any]] = []
    for m in tqdm(s["methods"], desc=f"transfer seed {s['seed']}"):

        def one(m=m) -> list[dict[str, Any]]:
            ctx.loaders["train"].generator.set_state(order)
            return transfer_many(ctx, m, {k: v["sparsity"] for k, v in targets.items()})

        runs += resumed(workdir, f"pai-transfer-{m}.pt", one)
    return {"targets": targets, "runs": runs}


def transfer_many(ctx, method: str, sparsities: Mapping[str, float]) -> list[dict[str, Any]]:
    """Prune the pretrained transfer model with ``method`` at several labelled sparsities, fine-tune
    all weights (masks kept; Adam, BatchNorm in train mode, as the full fine-tuning baseline of
    chapter 2) and score each; ``ctx``: a ``pai_transfer`` run's context.

    For every method but SynFlow (whose rounds depend on the sparsity) the masks of all
    sparsities come from one call of :func:`basisprune.pai.scores` and
    :func:`basisprune.pai.masks_from_scores`, which is what :func:`basisprune.pai.prune` does;
    each record's ``prune_seconds`` is that shared scoring time plus its own top-k.  Every
    sparsity starts from the same pretrained model and sees the same training batches.
    """
    if method not in pai.METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(pai.METHODS)}")
    if not isinstance(sparsities, Mapping) or not sparsities:
        raise ValueError("sparsities must be a non-empty mapping label -> sparsity")
    sp = {str(k): pai.check_sparsity(v) for k, v in sparsities.items()}
    s, seed, loaders = ctx.p, ctx.p["seed"], ctx.loaders
    p = _transfer_params(s)
    device = pick_device(p["device"])
    seed_everything(seed)
    num_classes = ctx.num_classes
    epochs = s["epochs"] if s["epochs"] is not None else p["transfer_epochs"]
    lr = s["lr"] if s["lr"] is not None else p["full_lr"]
    pbs = s["prune_batch_size"] or p["batch_size"]

    def fresh() -> nn.Module:  # as experiments: pretrained backbone, head from the seed
        torch.manual_seed(seed)
        return models.load(p["model"], num_classes, pretrained=p["pretrained"]).to(device)

    opts = method_options(method, {**s, "synflow_iterations": 100}, seed)
    batches = prune_batches(loaders["train"].dataset, pbs, s["steps"] + 1, seed)
    raw = None
    score_seconds = 0.0
    if method != "synflow":
        base = fresh()
        sync(device)
        t0 = time.perf_counter()
        raw = pai.scores(base, method, batches, **opts)
        sync(device)
        score_seconds = time.perf_counter() - t0
        del base

    order_state = loaders["train"].generator.get_state()
    out = []
    for label, sparsity in sp.items():
        loaders["train"].generator.set_state(order_state)  # the same batches for every sparsity
        model = fresh()
        prunable, rest = prunable_counts(model)
        sync(device)
        t0 = time.perf_counter()
        if raw is None:
            masks, collapse = prune_with_collapse(model, method, sparsity, batches, opts)
        else:
            try:
                masks, collapse = pai.masks_from_scores(raw, sparsity, largest=method != "grasp"), False
            except pai.LayerCollapseError:
                masks = pai.masks_from_scores(raw, sparsity, largest=method != "grasp", dtype=None, allow_empty=True)
                collapse = True
        sync(device)
        prune_seconds = score_seconds + time.perf_counter() - t0
        pai.apply_masks(model, masks)
        seed_everything(seed)
        opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=lr)
        t0 = time.perf_counter()
        for e in range(epochs):
            train_epoch(model, loaders["train"], opt, device=device, bn_mode=s["bn_mode"],
                        desc=f"{method} {label} {e + 1}/{epochs}", memory_format=p["memory_format"])
        train_seconds = time.perf_counter() - t0
        acc = {f"accuracy_{k}": evaluate(model, loaders[k], device=device, desc=k)["accuracy"]
               for k in ("val", "test") if k in loaders}
        stats = mask_stats(model, masks)
        out.append({
            "method": method, "target": label, "sparsity": sparsity, "seed": seed, **acc,
            "density_kept": stats["kept_weights"] / stats["prunable_weights"],
            "params_nonzero": stats["kept_weights"] + rest, "params_reference": prunable + rest,
            **stats, "layer_collapse": collapse, "prune_seconds": prune_seconds, "train_seconds": train_seconds,
            "epochs": epochs, "lr": lr, "bn_mode": s["bn_mode"], "prune_batch_size": pbs,
            "model": p["model"], "dataset": p["dataset"], "image_size": p["image_size"],
        })
    return out
