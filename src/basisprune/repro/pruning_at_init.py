"""Pruning-at-initialization experiments (chapter 6, ``notebooks/06_pruning_at_init``).

Three experiments of :data:`basisprune.repro.experiments.EXPERIMENTS`, run like the others with
:func:`basisprune.repro.experiments.run` (results file with provenance, checkpoint workdir, resume;
the CLI and sweeps): ``pai_scratch`` (:func:`scratch`), ``pai_transfer`` (:func:`transfer`) and
``pai_cost`` (:func:`cost`). Their settings are the ``pai`` section of the profile
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

:func:`transfer` -- for one seed, ProsPr and SNIP (any method of :data:`basisprune.pai.METHODS`) on the
pretrained transfer model of :mod:`basisprune.repro.experiments` (mobilenet_v2 in the ``smoke`` and
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

:func:`cost` -- for every method, :func:`prune_cost`: wall time of one method's whole pruning step (scores and top-k, SynFlow's
rounds included), the median of ``repeats`` runs, in the ProsPr paper's ResNet-20 setting
(3x32x32 inputs, batch 128, M = 3 inner steps) on random inputs and labels (the cost does not
depend on the pixel values), with :func:`basisprune.bench.hardware` naming the machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import bench, pai
from . import data, models, profiles, smallnets
from .train import evaluate, load_checkpoint, pick_device, save_checkpoint, seed_everything, train_epoch

__all__ = [
    "SCRATCH_METHODS",
    "TRANSFER_TARGETS",
    "LOADERS",
    "accuracy_table",
    "chapter_runs",
    "cost",
    "from_scratch",
    "matched_sparsity",
    "prune_cost",
    "scratch",
    "transfer",
    "transfer_many",
    "transfer_targets",
]

DENSE = "dense"
SCRATCH_METHODS: tuple[str, ...] = (DENSE, *pai.METHODS)
"""Methods :func:`from_scratch` accepts: the pruning methods plus the unpruned baseline."""

TRANSFER_TARGETS: dict[str, str] = {"basis_pruning": "basis pruning", "double_pruning": "double pruning"}
"""Experiments whose final parameter count :func:`transfer` can be matched to, with their labels."""


# ------------------------------------------------------------------------------ chapter 6
def chapter_runs(experiment: str, profile: str, settings: Mapping[str, Any], out_dir: str | Path) -> list[dict]:
    """Chapter 6's runs of one experiment (``pai_scratch``, ``pai_transfer`` or ``pai_cost``) through
    :func:`basisprune.repro.experiments.run`: one per seed of ``settings`` (a part of the ``pai``
    section, :func:`basisprune.repro.profiles.pai_settings`; the cost experiment: seed 0), none when
    its ``run`` is false; results files ``<experiment>-seed<seed>.json`` in ``out_dir``. Returns
    the records in seed order."""
    from . import experiments

    if not settings.get("run", True):
        return []
    params = {k: v for k, v in settings.items() if k not in profiles.PAI_LOOPS}
    return [experiments.run(experiment, profile=profile, seed=seed, out=Path(out_dir) / f"{experiment}-seed{seed}.json",
                            **params) for seed in settings.get("seeds", [0])]


# ---------------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _method_options(method: str, s: Mapping[str, Any], seed: int) -> dict[str, Any]:
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


def _prune_batches(dataset, batch_size: int, n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` batches of a loader over ``dataset`` shuffled by its own seeded generator."""
    g = torch.Generator().manual_seed(10_000 + int(seed))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g, drop_last=len(dataset) >= batch_size)
    out = []
    for x, y in loader:
        out.append((x, y))
        if len(out) == n:
            break
    return out


def _prune(model: nn.Module, method: str, sparsity: float, batches, options: Mapping[str, Any]):
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


def _prunable_counts(model: nn.Module) -> tuple[int, int]:
    """(prunable weight entries, all other parameter entries) of an unmasked model."""
    params = dict(model.named_parameters())
    prunable = sum(params[n].numel() for n in pai.prunable_weights(model))
    return prunable, sum(p.numel() for p in params.values()) - prunable


def _mask_stats(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
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


def _ck(workdir: Path | None, name: str) -> Path | None:
    return None if workdir is None else workdir / name


def _resumed(workdir: Path | None, name: str, compute) -> Any:
    """``compute()``'s result, kept in ``workdir/name``: a rerun loads it instead (resume)."""
    ck = _ck(workdir, name)
    if ck is not None and ck.exists():
        return load_checkpoint(ck, weights_only=False)["result"]
    result = compute()
    if ck is not None:
        save_checkpoint(ck, result=result)
    return result


# ------------------------------------------------------------------------------- data (Context)
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


#: How :class:`basisprune.repro.experiments.Context` builds each experiment's loaders (the cost
#: experiment has none: random inputs).
LOADERS = {"pai_scratch": scratch_loaders, "pai_transfer": transfer_loaders, "pai_cost": lambda s: ({}, 10)}


# ------------------------------------------------------------------------------ from scratch
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
    prunable, _ = _prunable_counts(model)
    params_total = sum(p.numel() for p in model.parameters())

    collapse = False
    prune_seconds = 0.0
    masks: dict[str, torch.Tensor] = {}
    if method != DENSE:
        batches = _prune_batches(train_loader.dataset, s["prune_batch_size"], s["steps"] + 1, seed)
        _sync(device)
        t0 = time.perf_counter()
        masks, collapse = _prune(model, method, sparsity, batches, _method_options(method, s, seed))
        _sync(device)
        prune_seconds = time.perf_counter() - t0
        pai.apply_masks(model, masks)

    torch.manual_seed(seed)  # the same global RNG state for training whatever the method consumed
    _sync(device)
    t0 = time.perf_counter()
    train_loss = _fit_one_cycle(model, train_loader, s, device)
    _sync(device)
    train_seconds = time.perf_counter() - t0
    ev = evaluate(model, test_loader, device=device, desc="test")

    if masks:
        stats = _mask_stats(model, masks)
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

        runs.append(_resumed(workdir, f"pai-scratch-{m}-{sp:g}.pt", one))
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


# ---------------------------------------------------------------------------------- transfer
def matched_sparsity(model: nn.Module, final_params: int | float) -> dict[str, float]:
    """The sparsity over ``model``'s prunable weights at which an unstructured mask leaves
    ``final_params`` parameters (kept prunable weights + every non-prunable parameter).

    Returns ``sparsity``, ``prunable``, ``non_prunable``, ``kept`` (whole weights) and ``reference``
    (all parameters of ``model``).  Raises ``ValueError`` if ``final_params`` does not fit.
    """
    prunable, rest = _prunable_counts(model)
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
        prunable, rest = _prunable_counts(shape_model)
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

        runs += _resumed(workdir, f"pai-transfer-{m}.pt", one)
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

    opts = _method_options(method, {**s, "synflow_iterations": 100}, seed)
    batches = _prune_batches(loaders["train"].dataset, pbs, s["steps"] + 1, seed)
    raw = None
    score_seconds = 0.0
    if method != "synflow":
        base = fresh()
        _sync(device)
        t0 = time.perf_counter()
        raw = pai.scores(base, method, batches, **opts)
        _sync(device)
        score_seconds = time.perf_counter() - t0
        del base

    order_state = loaders["train"].generator.get_state()
    out = []
    for label, sparsity in sp.items():
        loaders["train"].generator.set_state(order_state)  # the same batches for every sparsity
        model = fresh()
        prunable, rest = _prunable_counts(model)
        _sync(device)
        t0 = time.perf_counter()
        if raw is None:
            masks, collapse = _prune(model, method, sparsity, batches, opts)
        else:
            try:
                masks, collapse = pai.masks_from_scores(raw, sparsity, largest=method != "grasp"), False
            except pai.LayerCollapseError:
                masks = pai.masks_from_scores(raw, sparsity, largest=method != "grasp", dtype=None, allow_empty=True)
                collapse = True
        _sync(device)
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
        stats = _mask_stats(model, masks)
        out.append({
            "method": method, "target": label, "sparsity": sparsity, "seed": seed, **acc,
            "density_kept": stats["kept_weights"] / stats["prunable_weights"],
            "params_nonzero": stats["kept_weights"] + rest, "params_reference": prunable + rest,
            **stats, "layer_collapse": collapse, "prune_seconds": prune_seconds, "train_seconds": train_seconds,
            "epochs": epochs, "lr": lr, "bn_mode": s["bn_mode"], "prune_batch_size": pbs,
            "model": p["model"], "dataset": p["dataset"], "image_size": p["image_size"],
        })
    return out


# -------------------------------------------------------------------------------------- cost
def _hardware_name(device: torch.device, hw: Mapping[str, Any]) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"{hw['cpu_model']}, {hw['torch_threads']} torch thread(s), {hw['usable_cores']} usable core(s)"


def prune_cost(method: str, repeats: int = 5, model: str = "resnet20", batch: int = 128, steps: int = 3, *,
               width: int = 16, image_size: int = 32, sparsity: float = 0.9, warmup: int = 0,
               synflow_iterations: int = 100, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Wall time of ``pai.prune(model, method, sparsity, batches)``: the median of ``repeats`` runs
    (after ``warmup`` untimed ones) on a fresh ``model`` from :mod:`basisprune.repro.smallnets` with
    ``3 x image_size x image_size`` random inputs and random labels, ``batch`` images per batch.

    ProsPr (full and first order) takes ``steps`` inner steps on ``steps`` batches and its
    meta-loss on one more; SNIP and GraSP use one batch; SynFlow runs ``synflow_iterations``
    rounds on one all-ones sample (100 in the official code).  Returns ``median_seconds``,
    ``times_seconds``, the settings, ``hardware`` (:func:`basisprune.bench.hardware`) and
    ``hardware_name``.
    """
    profiles.pai_params("cost", model=model, width=width, batch=batch, steps=steps, image_size=image_size,
                        repeats=repeats, warmup=warmup, sparsity=sparsity, synflow_iterations=synflow_iterations,
                        device=device, methods=[method], seed=seed)  # bad input: one line, before any work
    dev = pick_device(device)
    torch.manual_seed(seed)
    net = smallnets.build(model, 10, 3, width=width).to(dev)
    g = torch.Generator().manual_seed(seed)
    n_batches = steps + 1 if method in ("prospr", "prospr_first_order") else 1
    batches = [(torch.randn(batch, 3, image_size, image_size, generator=g).to(dev),
                torch.randint(0, 10, (batch,), generator=g).to(dev)) for _ in range(n_batches)]
    opts: dict[str, Any] = {}
    if method in ("prospr", "prospr_first_order"):
        opts = {"steps": steps}
    elif method == "synflow":
        opts = {"iterations": synflow_iterations}
    times = []
    for i in range(warmup + repeats):
        _sync(dev)
        t0 = time.perf_counter()
        pai.prune(net, method, sparsity, batches, **opts)
        _sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    hw = bench.hardware()
    return {
        "method": method, "median_seconds": statistics.median(times), "times_seconds": times,
        "model": model, "width": width, "batch": batch, "steps": steps, "image_size": image_size,
        "repeats": repeats, "warmup": warmup, "sparsity": sparsity,
        "synflow_iterations": synflow_iterations if method == "synflow" else None,
        "params_prunable": _prunable_counts(net)[0], "device": str(dev),
        "hardware": hw, "hardware_name": _hardware_name(dev, hw),
    }


def cost(ctx, workdir: Path | None) -> dict[str, Any]:
    """Experiment ``pai_cost``: :func:`prune_cost` for every method of the settings (each kept in
    the workdir as it finishes); ``methods``: one record each."""
    s = ctx.p
    kw = {k: s[k] for k in ("repeats", "model", "batch", "steps", "width", "image_size", "sparsity", "warmup",
                            "synflow_iterations", "device", "seed")}
    return {"methods": [_resumed(workdir, f"pai-cost-{m}.pt", lambda m=m: prune_cost(m, **kw))
                        for m in tqdm(s["methods"], desc="pruning cost")]}
