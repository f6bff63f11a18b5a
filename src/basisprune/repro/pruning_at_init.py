"""Pruning-at-initialization experiments (the library behind ``notebooks/06_pruning_at_init``).

Three experiments, each a function the notebook calls; their settings come from
the ``pai`` section of :data:`basisprune.repro.profiles.PROFILES` and keyword overrides, validated before
any data is loaded or model built (``ValueError`` naming the allowed values).

:func:`from_scratch` -- a small CNN from :mod:`basisprune.repro.smallnets` is built from a seed,
pruned at initialization with :func:`basisprune.pai.prune` on a few training batches, the masks
are attached with :func:`basisprune.pai.apply_masks` (pruned weights stay exactly zero), the
network is trained and scored on the test set. Method ``"dense"`` (sparsity 0) is the unpruned
baseline. Our choices (none of them from the ProsPr paper, whose CIFAR runs train for hundreds of
epochs):

* data: Fashion-MNIST, a seeded class-stratified training subset (the seed draws it and its
  order), a fixed test subset (drawn with seed 0, the same for every run), grayscale repeated to
  three channels, normalised with Fashion-MNIST's mean 0.2860 and std 0.3530;
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

:func:`transfer` -- ProsPr and SNIP (any method of :data:`basisprune.pai.METHODS`) on the
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

:func:`prune_cost` -- wall time of one method's whole pruning step (scores and top-k, SynFlow's
rounds included), the median of ``repeats`` runs, in the ProsPr paper's ResNet-20 setting
(3x32x32 inputs, batch 128, M = 3 inner steps) on random inputs and labels (the cost does not
depend on the pixel values), with :func:`basisprune.bench.hardware` naming the machine.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import bench, pai
from . import data, experiments, models, profiles, smallnets
from .train import evaluate, pick_device, seed_everything, train_epoch

__all__ = [
    "SCRATCH_METHODS",
    "TRANSFER_TARGETS",
    "profile_settings",
    "transfer_comparison",
    "from_scratch",
    "scratch_grid",
    "accuracy_table",
    "matched_sparsity",
    "transfer_targets",
    "transfer",
    "transfer_many",
    "prune_cost",
    "cost_table",
]

DENSE = "dense"
SCRATCH_METHODS: tuple[str, ...] = (DENSE, *pai.METHODS)
"""Methods :func:`from_scratch` accepts: the pruning methods plus the unpruned baseline."""

TRANSFER_TARGETS: dict[str, str] = {"basis_pruning": "basis pruning", "double_pruning": "double pruning"}
"""Experiments whose final parameter count :func:`transfer` can be matched to, with their labels."""

FASHION_MNIST_MEAN = (0.2860,) * 3
FASHION_MNIST_STD = (0.3530,) * 3
OPTIMIZERS = ("sgd", "adamw")

_GRID_KEYS = ("methods", "sparsities", "seeds")


# ------------------------------------------------------------------------------- validation
def profile_settings(profile: str = "default", section: str = "scratch", **overrides: Any) -> dict[str, Any]:
    """A copy of ``profiles.section(profile, "pai")[section]`` with ``overrides`` applied (``None`` keeps the
    profile's value), validated.  Raises ``ValueError`` listing the allowed names/values."""
    sections = profiles.section(profile, "pai")
    if section not in sections:
        raise ValueError(f"unknown section {section!r}; allowed: {', '.join(sections)}")
    s = copy.deepcopy(sections[section])
    unknown = sorted(set(overrides) - set(s))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for {section}; allowed: {sorted(s)}")
    s.update({k: v for k, v in overrides.items() if v is not None})
    {"scratch": _check_scratch, "transfer": _check_transfer, "cost": _check_cost}[section](s)
    return s


def _int(s: Mapping[str, Any], key: str, lo: int, none_ok: bool = False) -> None:
    v = s[key]
    if v is None and none_ok:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{key} must be an integer >= {lo}{' or None' if none_ok else ''}, got {v!r}")


def _positive(s: Mapping[str, Any], key: str, none_ok: bool = False) -> None:
    v = s[key]
    if v is None and none_ok:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{key} must be a positive number{' or None' if none_ok else ''}, got {v!r}")


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


def _check_methods(methods: Sequence[str], allowed: Sequence[str], what: str = "method") -> None:
    bad = [m for m in methods if m not in allowed]
    if bad:
        raise ValueError(f"unknown {what}(s) {bad}; allowed: {', '.join(allowed)}")


def _check_scratch(s: dict[str, Any]) -> None:
    if s["dataset"] not in data.available():
        raise ValueError(f"unknown dataset {s['dataset']!r}; allowed: {', '.join(data.available())}")
    if s["net"] not in smallnets.NAMES:
        raise ValueError(f"unknown net {s['net']!r}; allowed: {', '.join(smallnets.NAMES)}")
    if s["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {s['optimizer']!r}; allowed: {', '.join(OPTIMIZERS)}")
    for k, lo in (("image_size", 8), ("width", 1), ("batch_size", 2), ("epochs", 1), ("prune_batch_size", 2),
                  ("steps", 0), ("synflow_iterations", 1)):
        _int(s, k, lo)
    for k in ("subset_train", "subset_test"):
        _int(s, k, 10, none_ok=True)
    for k in ("lr", "inner_lr"):
        _positive(s, k)
    if not (isinstance(s["momentum"], (int, float)) and 0 <= s["momentum"] < 1):
        raise ValueError(f"momentum must be in [0, 1), got {s['momentum']!r}")
    if not (isinstance(s["weight_decay"], (int, float)) and s["weight_decay"] >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {s['weight_decay']!r}")
    pick_device(s["device"])
    _check_methods(s["methods"], SCRATCH_METHODS)
    for sp in s["sparsities"]:
        pai.check_sparsity(sp, "each sparsity")
    for seed in s["seeds"]:
        _check_seed(seed)


def _check_transfer(s: dict[str, Any]) -> None:
    profiles.check_profile(s["experiments_profile"])
    _check_methods(s["methods"], pai.METHODS)
    _check_methods(s["targets"], list(TRANSFER_TARGETS), "target")
    if not isinstance(s["fixed"], Mapping):
        raise ValueError(f"fixed must be a mapping label -> sparsity, got {s['fixed']!r}")
    for sp in s["fixed"].values():
        pai.check_sparsity(sp, "each fixed sparsity")
    for seed in s["seeds"]:
        _check_seed(seed)
    if s["model"] is not None and s["model"] not in models.available():
        raise ValueError(f"unknown model {s['model']!r}; allowed: {', '.join(models.available())}")
    if s["dataset"] is not None and s["dataset"] not in data.available():
        raise ValueError(f"unknown dataset {s['dataset']!r}; allowed: {', '.join(data.available())}")
    _int(s, "epochs", 1, none_ok=True)
    _int(s, "prune_batch_size", 2, none_ok=True)
    _int(s, "steps", 0)
    for k in ("subset_train", "subset_test"):
        _int(s, k, 10, none_ok=True)
    _positive(s, "lr", none_ok=True)
    _positive(s, "inner_lr")
    if s["bn_mode"] not in ("train", "eval"):
        raise ValueError(f"bn_mode must be 'train' or 'eval', got {s['bn_mode']!r}")


def _check_cost(s: dict[str, Any]) -> None:
    if s["model"] not in smallnets.NAMES:
        raise ValueError(f"unknown model {s['model']!r}; allowed: {', '.join(smallnets.NAMES)}")
    for k, lo in (("width", 1), ("batch", 1), ("steps", 0), ("image_size", 8), ("repeats", 1), ("warmup", 0),
                  ("synflow_iterations", 1)):
        _int(s, k, lo)
    pai.check_sparsity(s["sparsity"])
    pick_device(s["device"])
    _check_methods(s["methods"], pai.METHODS)


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


def _scratch_data(s: Mapping[str, Any], seed: int):
    """Seeded training loader (subset and order from ``seed``) and the fixed test loader (seed 0)."""
    common = dict(mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD) if s["dataset"] == "fashion_mnist" else {}
    train_set = data.load(s["dataset"], "train", s["image_size"], s["subset_train"], seed=seed, val_fraction=0.0,
                          **common)
    g = torch.Generator().manual_seed(int(seed))
    train = DataLoader(train_set, batch_size=s["batch_size"], shuffle=True, generator=g,
                       drop_last=len(train_set) % s["batch_size"] == 1)
    test_set = data.load(s["dataset"], "test", s["image_size"], s["subset_test"], seed=0, **common)
    test = DataLoader(test_set, batch_size=max(256, s["batch_size"]), shuffle=False)
    return train, test


# ------------------------------------------------------------------------------ from scratch
def from_scratch(method: str, sparsity: float, seed: int, profile: str = "default", *,
                 return_model: bool = False, **overrides: Any) -> dict[str, Any]:
    """Prune a freshly initialised small CNN with ``method`` at ``sparsity``, train it, score it.

    ``method``: one of :data:`SCRATCH_METHODS` (``"dense"`` needs ``sparsity=0``); ``sparsity``:
    the fraction of prunable weights (every Conv2d/Linear weight) removed, in [0, 1); ``seed``
    fixes the initialisation (identical across methods), the training subset and its order;
    ``overrides``: settings of ``profiles.section(profile, "pai")["scratch"]``.

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
    seed = _check_seed(seed)
    s = profile_settings(profile, "scratch", **overrides)
    device = pick_device(s["device"])

    train_loader, test_loader = _scratch_data(s, seed)
    seed_everything(seed)
    num_classes = data.num_classes(s["dataset"])
    model = smallnets.build(s["net"], num_classes, 3, width=s["width"]).to(device)
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


def scratch_grid(profile: str = "default", *, methods: Sequence[str] | None = None,
                 sparsities: Sequence[float] | None = None, seeds: Sequence[int] | None = None,
                 dense: bool = True, progress: bool = True, **overrides: Any) -> list[dict[str, Any]]:
    """:func:`from_scratch` over methods x sparsities x seeds (the profile's unless given), plus the
    dense baseline per seed (``dense=True``).  Everything is validated before the first run."""
    s = profile_settings(profile, "scratch", methods=methods, sparsities=sparsities, seeds=seeds, **overrides)
    runs = [(DENSE, 0.0, seed) for seed in s["seeds"]] if dense else []
    runs += [(m, float(sp), seed) for seed in s["seeds"] for sp in s["sparsities"] for m in s["methods"] if m != DENSE]
    extra = {k: v for k, v in overrides.items() if k not in _GRID_KEYS}
    out = []
    bar = tqdm(runs, desc="from scratch", disable=not progress, dynamic_ncols=True)
    for m, sp, seed in bar:
        bar.set_postfix_str(f"{m} {sp:.0%} seed {seed}")
        out.append(from_scratch(m, sp, seed, profile, **extra))
    return out


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


def _transfer_params(s: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The experiments parameters a transfer run shares with basis/double pruning."""
    ep = profiles.get(s["experiments_profile"])
    ds = s["dataset"] or ep["datasets"][0]
    over = {k: s[k] for k in ("model",) if s[k] is not None}
    return experiments.resolve_params("basis_pruning", s["experiments_profile"], dataset=ds, seed=seed, **over)


def transfer_targets(profile: str = "default", seed: int = 0, *, targets: Sequence[str] | None = None,
                     **overrides: Any) -> dict[str, dict[str, Any]]:
    """Run (or resume from checkpoints) basis/double pruning and turn their final parameter counts
    into sparsities for :func:`transfer` (see :func:`matched_sparsity`).

    Calls ``experiments.run(target, profile=<experiments profile>, dataset=..., seed=seed)`` with
    the same parameters as chapters 4 and 5, so their checkpoints are reused when those ran first.
    Returns ``{label: {sparsity, final_params, reference_params, accuracy_test, ...}}``, plus the
    ``fixed`` sparsities of the profile.
    """
    seed = _check_seed(seed)
    s = profile_settings(profile, "transfer", targets=targets, **overrides)
    p = _transfer_params(s, seed)
    shape_model = models.load(p["model"], data.num_classes(p["dataset"], p["data_root"]), pretrained=False)
    out: dict[str, dict[str, Any]] = {}
    for target in s["targets"]:
        rec = experiments.run(target, profile=s["experiments_profile"], dataset=p["dataset"], seed=seed,
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


def transfer_comparison(profile: str = "default", **overrides: Any) -> tuple[dict[int, dict], list[dict[str, Any]]]:
    """Chapter 6's transfer comparison: for every seed of the profile's ``transfer`` settings (with
    ``overrides``), the basis/double pruning targets (:func:`transfer_targets`) and every method
    pruned to their sparsities (:func:`transfer_many`). Returns ``(targets by seed, rows)``; both
    empty when the settings' ``run`` is false."""
    s = profile_settings(profile, "transfer", **overrides)
    rows: list[dict[str, Any]] = []
    targets_used: dict[int, dict] = {}
    if s["run"]:
        for seed in s["seeds"]:
            targets = transfer_targets(profile, seed=seed, **overrides)
            targets_used[seed] = targets
            for m in tqdm(s["methods"], desc=f"transfer seed {seed}"):
                rows += transfer_many(m, {k: v["sparsity"] for k, v in targets.items()}, seed, profile, **overrides)
    return targets_used, rows


def transfer_many(method: str, sparsities: Mapping[str, float], seed: int, profile: str = "default",
                  **overrides: Any) -> list[dict[str, Any]]:
    """:func:`transfer` at several labelled sparsities, scoring the pretrained model once.

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
    seed = _check_seed(seed)
    s = profile_settings(profile, "transfer", **overrides)
    p = _transfer_params(s, seed)
    device = pick_device(p["device"])
    seed_everything(seed)
    mean, std = models.normalization(p["model"])
    loaders = data.make_loaders(
        p["dataset"], p["image_size"], p["batch_size"],
        subset_train=s["subset_train"] if s["subset_train"] is not None else p["subset_train"],
        subset_test=s["subset_test"] if s["subset_test"] is not None else p["subset_test"],
        seed=seed, mean=mean, std=std, root=p["data_root"], val_fraction=p["val_fraction"],
    )
    num_classes = data.num_classes(p["dataset"], p["data_root"])
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


def transfer(method: str, sparsity: float, seed: int, profile: str = "default", **overrides: Any) -> dict[str, Any]:
    """Prune the pretrained transfer model with ``method`` at ``sparsity``, fine-tune all weights
    (masks kept; Adam, BatchNorm in train mode, as the full fine-tuning baseline of chapter 2) for
    the profile's epochs at the profile's ``lr`` (``None``: the experiments profile's ``full_lr``),
    and score it.

    The data, model and seed are those of basis/double pruning in the experiments profile named by
    ``profiles.section(profile, "pai")["transfer"]["experiments_profile"]``; ``overrides`` are settings of
    that section.  Returns ``method, target, sparsity, seed, accuracy_val, accuracy_test,
    density_kept, params_nonzero, params_reference, prune_seconds, train_seconds, ...``.
    """
    return transfer_many(method, {f"{100 * pai.check_sparsity(sparsity):g}%": sparsity}, seed, profile, **overrides)[0]


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
    s = {"model": model, "width": width, "batch": batch, "steps": steps, "image_size": image_size,
         "repeats": repeats, "warmup": warmup, "sparsity": sparsity, "synflow_iterations": synflow_iterations,
         "device": device, "methods": [method]}
    _check_cost(s)
    _check_seed(seed)
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


def cost_table(profile: str = "default", *, progress: bool = True, **overrides: Any) -> list[dict[str, Any]]:
    """:func:`prune_cost` for every method of ``profiles.section(profile, "pai")["cost"]`` (with overrides)."""
    s = profile_settings(profile, "cost", **overrides)
    kw = {k: s[k] for k in ("repeats", "model", "batch", "steps", "width", "image_size", "sparsity", "warmup",
                            "synflow_iterations", "device")}
    return [prune_cost(m, **kw) for m in tqdm(s["methods"], desc="pruning cost", disable=not progress)]
