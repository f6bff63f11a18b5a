"""Pruning-at-initialization experiments (chapter 6, ``notebooks/06_pruning_at_init``).

Three experiments of :data:`basisprune.repro.experiments.EXPERIMENTS`, run like the others with
:func:`basisprune.repro.experiments.run` (results file with provenance, checkpoint workdir, resume;
the CLI and sweeps): ``pai_scratch`` (:func:`scratch`, here), ``pai_transfer``
(:func:`basisprune.repro.pai_transfer.transfer`) and ``pai_cost`` (:func:`basisprune.repro.pai_cost.cost`). Their settings are the ``pai`` section of the profile
(:data:`basisprune.repro.profiles.PAI`), validated by :func:`basisprune.repro.profiles.pai_params`
before any data is loaded or model built.

:func:`scratch` -- for one seed, every method at every sparsity (and the unpruned baseline),
each through :func:`from_scratch`: a small CNN from :mod:`basisprune.repro.smallnets` is built from a seed,
pruned at initialization with :func:`basisprune.pai.prune` on a few training batches, the masks
are attached with :func:`basisprune.pai.apply_masks` (pruned weights stay exactly zero), the
network is trained and scored on the test set. Method ``"dense"`` (sparsity 0) is the unpruned
baseline. Our choices (none of them from the ProsPr paper, whose CIFAR runs train for hundreds of
epochs):

* data: Fashion-MNIST, a seeded class-stratified training subset (the seed draws it and its
  order), a fixed test subset (drawn with seed 0, the same for every run), grayscale repeated to
  three channels, normalised with Fashion-MNIST's mean 0.2860 and std 0.3530
  (:data:`basisprune.repro.data.STATS`);
* training: SGD with Nesterov momentum 0.9, weight decay 5e-4 and a one-cycle schedule (15 %
  linear warm-up to ``lr``, cosine decay, stepped every batch), BatchNorm in train mode
  (``optimizer="adamw"`` selects AdamW instead).  SGD rather than Adam: in our one-epoch trials on
  2,000 images both reached about the same dense accuracy, but SGD was clearly better at 90 %
  sparsity (vgg_small width 8, SNIP: about 65 % against 53 %).  Weight decay and momentum never
  revive a pruned weight: its gradient and its stored value are both zero;
* pruning data: every data-driven method sees the same ``steps + 1`` batches of
  ``prune_batch_size`` images (a loader seeded separately from the training loader, so the
  training order does not depend on the method): ProsPr takes ``steps`` inner SGD steps on the
  first ``steps`` of them and its meta-loss on the last; SNIP and GraSP average / sum over all
  of them; SynFlow needs only the input shape.  ProsPr's inner step uses ``inner_lr`` 0.1 without
  momentum (the official defaults, see :mod:`basisprune.pai`).  SynFlow runs
  ``synflow_iterations`` rounds (100 in the official code and in the ``paper`` profile, fewer in
  the CPU profiles);
* layer collapse: when a method's global top-k keeps no weight of some layer,
  :func:`basisprune.pai.prune` refuses; here the run goes on with exactly those masks (same
  scores, same top-k, the empty layer included), is trained and scored as usual (typically chance
  accuracy), and is flagged ``layer_collapse=True``.
Helpers the three experiments share (pruning data, layer collapse, mask statistics, resume) are
here too; the transfer and cost experiments are in :mod:`basisprune.repro.pai_transfer` and
:mod:`basisprune.repro.pai_cost`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import pai
from . import data, profiles, smallnets
from .checkpoints import load_checkpoint, save_checkpoint
from .devices import seed_everything
from .train import evaluate, train_epoch

__all__ = [
    "SCRATCH_METHODS",
    "accuracy_table",
    "from_scratch",
    "mask_stats",
    "method_options",
    "prunable_counts",
    "prune_batches",
    "prune_with_collapse",
    "resumed",
    "run_params",
    "scratch",
    "scratch_loaders",
    "sync",
]

DENSE = "dense"
SCRATCH_METHODS: tuple[str, ...] = (DENSE, *pai.METHODS)
"""Methods :func:`from_scratch` accepts: the pruning methods plus the unpruned baseline."""


# ------------------------------------------------------------------------------ chapter 6
def run_params(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of each run of one ``pai`` part's settings
    (:func:`basisprune.repro.profiles.pai_settings`) for :func:`basisprune.repro.experiments.run`:
    all but what a notebook loops over (:data:`basisprune.repro.profiles.PAI_LOOPS`); the seeds
    are the run plan's (:func:`basisprune.repro.plan.chapter_runs`, chapter 6)."""
    return {k: v for k, v in settings.items() if k not in profiles.PAI_LOOPS}


# ---------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def method_options(method: str, s: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """``pai.prune`` options of a method under settings ``s``."""
    if method in ("prospr", "prospr_first_order"):
        return {"steps": s["steps"], "inner_lr": s["inner_lr"]}
    if method in ("snip", "grasp"):
        return {"num_batches": s["steps"] + 1}
    if method == "synflow":
        return {"iterations": s["synflow_iterations"]} if "synflow_iterations" in s else {}
    if method == "random":
        return {"seed": seed}
    return {}


def prune_batches(dataset, batch_size: int, n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` batches of a loader over ``dataset`` shuffled by its own seeded generator."""
    g = torch.Generator().manual_seed(10_000 + int(seed))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g, drop_last=len(dataset) >= batch_size)
    out = []
    for x, y in loader:
        out.append((x, y))
        if len(out) == n:
            break
    return out


def prune_with_collapse(model: nn.Module, method: str, sparsity: float, batches, options: Mapping[str, Any]):
    """``pai.prune``; on layer collapse, the same scores' top-k with the empty layer(s) kept empty."""
    try:
        return pai.prune(model, method, sparsity, batches, **options), False
    except pai.LayerCollapseError:
        if method == "synflow":
            raise
    raw = pai.scores(model, method, batches, **options)
    masks = pai.masks_from_scores(raw, sparsity, largest=method != "grasp", dtype=None, allow_empty=True)
    params = dict(model.named_parameters())
    return {n: m.to(params[n]) for n, m in masks.items()}, True


def prunable_counts(model: nn.Module) -> tuple[int, int]:
    """(prunable weight entries, all other parameter entries) of an unmasked model."""
    params = dict(model.named_parameters())
    prunable = sum(params[n].numel() for n in pai.prunable_weights(model))
    return prunable, sum(p.numel() for p in params.values()) - prunable


def mask_stats(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Kept entries per the masks, and nonzero entries of the trained weights where the mask is 0."""
    modules = dict(model.named_modules())
    kept = total = revived = 0
    for name, mask in masks.items():
        mname, _, pname = name.rpartition(".")
        weight = getattr(modules[mname], pname).detach()
        kept += int(mask.sum().item())
        total += mask.numel()
        revived += int(((weight != 0) & (mask == 0)).sum().item())
    return {"kept_weights": kept, "prunable_weights": total, "pruned_nonzero_after_training": revived}


def resumed(workdir: Path | None, name: str, compute) -> Any:
    """``compute()``'s result, kept in ``workdir/name``: a rerun loads it instead (resume)."""
    ck = None if workdir is None else workdir / name
    if ck is not None and ck.exists():
        return load_checkpoint(ck, weights_only=False)["result"]
    result = compute()
    if ck is not None:
        save_checkpoint(ck, result=result)
    return result


# ------------------------------------------------------------------------------ from scratch
def scratch_loaders(s: Mapping[str, Any]) -> tuple[dict[str, DataLoader], int]:
    """A scratch run's loaders and classes: the training loader (subset and order from the seed) and
    the fixed test loader (subset drawn with seed 0), normalised with the data set's own statistics."""
    seed = s["seed"]
    common = dict(zip(("mean", "std"), data.STATS[s["dataset"]])) if s["dataset"] in data.STATS else {}
    train_set = data.load(s["dataset"], "train", s["image_size"], s["subset_train"], seed=seed, val_fraction=0.0,
                          **common)
    g = torch.Generator().manual_seed(int(seed))
    train = DataLoader(train_set, batch_size=s["batch_size"], shuffle=True, generator=g,
                       drop_last=len(train_set) % s["batch_size"] == 1)
    test_set = data.load(s["dataset"], "test", s["image_size"], s["subset_test"], seed=0, **common)
    test = DataLoader(test_set, batch_size=max(256, s["batch_size"]), shuffle=False)
    return {"train": train, "test": test}, data.num_classes(s["dataset"])


def _fit_one_cycle(model: nn.Module, loader, s: Mapping[str, Any], device: torch.device) -> float:
    """Train for ``s["epochs"]`` with a per-step one-cycle schedule; returns the last epoch's mean loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    if s["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=s["lr"], momentum=s["momentum"], nesterov=s["momentum"] > 0,
                              weight_decay=s["weight_decay"])
    else:
        opt = torch.optim.AdamW(params, lr=s["lr"], weight_decay=s["weight_decay"])
    total = s["epochs"] * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s["lr"], total_steps=total, pct_start=0.15,
                                                anneal_strategy="cos", cycle_momentum=False)
    loss = 0.0
    for epoch in range(s["epochs"]):
        loss = train_epoch(model, loader, opt, device=device, bn_mode="train", after_step=sched.step,
                           desc=f"train {epoch + 1}/{s['epochs']}")["loss"]
    return loss


def from_scratch(ctx, method: str, sparsity: float, *, return_model: bool = False) -> dict[str, Any]:
    """Prune a freshly initialised small CNN with ``method`` at ``sparsity``, train it, score it.

    ``ctx``: the run's :class:`~basisprune.repro.experiments.Context` (``pai_scratch``: its
    settings and loaders; the training loader's generator must be at the state the context made
    it in, :func:`scratch` restores it); ``method``: one of :data:`SCRATCH_METHODS` (``"dense"``
    needs ``sparsity=0``); ``sparsity``: the fraction of prunable weights (every Conv2d/Linear
    weight) removed, in [0, 1). The seed fixes the initialisation (identical across methods), the
    training subset and its order.

    Returns ``method, sparsity, seed, accuracy_test, density_kept, prune_seconds, train_seconds``
    plus ``loss_test``, ``kept_weights``, ``prunable_weights``, ``params_total``,
    ``pruned_nonzero_after_training`` (0: no pruned weight came back), ``layer_collapse``, ``net``,
    ``width``; with ``return_model=True`` also ``model`` (trained, masks attached).
    """
    if method not in SCRATCH_METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(SCRATCH_METHODS)}")
    sparsity = pai.check_sparsity(sparsity)
    if method == DENSE and sparsity != 0.0:
        raise ValueError(f"method 'dense' is the unpruned baseline: sparsity must be 0, got {sparsity}")
    s, device, seed = ctx.p, ctx.device, ctx.p["seed"]
    train_loader, test_loader = ctx.loaders["train"], ctx.loaders["test"]
    seed_everything(seed)
    model = smallnets.build(s["net"], ctx.num_classes, 3, width=s["width"]).to(device)
    prunable, _ = prunable_counts(model)
    params_total = sum(p.numel() for p in model.parameters())

    collapse = False
    prune_seconds = 0.0
    masks: dict[str, torch.Tensor] = {}
    if method != DENSE:
        batches = prune_batches(train_loader.dataset, s["prune_batch_size"], s["steps"] + 1, seed)
        sync(device)
        t0 = time.perf_counter()
        masks, collapse = prune_with_collapse(model, method, sparsity, batches, method_options(method, s, seed))
        sync(device)
        prune_seconds = time.perf_counter() - t0
        pai.apply_masks(model, masks)

    torch.manual_seed(seed)  # the same global RNG state for training whatever the method consumed
    sync(device)
    t0 = time.perf_counter()
    train_loss = _fit_one_cycle(model, train_loader, s, device)
    sync(device)
    train_seconds = time.perf_counter() - t0
    ev = evaluate(model, test_loader, device=device, desc="test")

    if masks:
        stats = mask_stats(model, masks)
    else:
        stats = {"kept_weights": prunable, "prunable_weights": prunable, "pruned_nonzero_after_training": 0}
    out: dict[str, Any] = {
        "method": method,
        "sparsity": sparsity,
        "seed": seed,
        "accuracy_test": float(ev["accuracy"]),
        "density_kept": stats["kept_weights"] / stats["prunable_weights"],
        "prune_seconds": prune_seconds,
        "train_seconds": train_seconds,
        "loss_test": float(ev["loss"]),
        "loss_train_last_epoch": train_loss,
        **stats,
        "params_total": params_total,
        "layer_collapse": collapse,
        "net": s["net"],
        "width": s["width"],
    }
    if return_model:
        out["model"] = model
    return out


def scratch(ctx, workdir: Path | None) -> dict[str, Any]:
    """Experiment ``pai_scratch``: the dense baseline, then every method of the settings at every
    sparsity (sparsity by sparsity), each :func:`from_scratch` from the same initial weights and
    training order. ``runs``: one record each; each is kept in the workdir as it finishes."""
    s = ctx.p
    order = ctx.loaders["train"].generator.get_state()
    cells = [(DENSE, 0.0)] + [(m, float(sp)) for sp in s["sparsities"] for m in s["methods"] if m != DENSE]
    runs = []
    for m, sp in tqdm(cells, desc=f"from scratch, seed {s['seed']}", dynamic_ncols=True):

        def one(m=m, sp=sp) -> dict[str, Any]:
            ctx.loaders["train"].generator.set_state(order)  # every run trains on the same order
            return from_scratch(ctx, m, sp)

        runs.append(resumed(workdir, f"pai-scratch-{m}-{sp:g}.pt", one))
    return {"runs": runs}


def accuracy_table(records: Iterable[Mapping[str, Any]], digits: int = 1):
    """Test accuracy (%) as ``mean ± std`` over seeds: one row per method, one column per sparsity
    (the dense baseline as its own row at 0 %).  Returns a pandas DataFrame of strings."""
    import pandas as pd

    from .report import mean_std

    df = pd.DataFrame(list(records))
    order = [m for m in SCRATCH_METHODS if m in set(df["method"])]
    table = (df.groupby(["method", "sparsity"])["accuracy_test"]
               .agg(lambda v: mean_std(v, 100, digits)).unstack("sparsity"))
    table = table.reindex(order)
    table.columns = [f"{100 * c:g}%" for c in table.columns]
    return table.fillna("")
