"""When does pruning without fine-tuning win? One cell of the training-set-size study (issue 25).

The experiment ``data_size`` runs, on one class-balanced training subset (``subset_train``, a
multiple of the number of classes) and one seed, every method the study compares, each at the FLOPs
that double pruning selected for that cell (as in chapter 7):

* ``double_pruning`` and ``channel_pruning``: the papers' methods (pretrained weights frozen; scales
  and head trained); channel pruning is double pruning's first stage (one checkpoint serves both);
* ``peer_finetune``: Torch-Pruning's magnitude channel pruning to double pruning's FLOPs, then every
  weight trained (:func:`basisprune.repro.comparison.prune_to_flops`, Adam at ``full_lr``);
* ``peer_scales_head``: the same pruned model with our trainable set (weights frozen, channel
  scales and head trained at ``lr``);
* ``full_finetune`` and ``head_only``: the unpruned transfer model, every weight or the head alone;
* ``scales_head``: the unpruned model with channel scales and head trained, i.e. double pruning's
  fair reference at its selected round (no extra training).

Our choices where the papers and the issue are silent:

* Every baseline and peer trains for double pruning's epoch budget (warm-up plus every round of both
  stages, :func:`basisprune.repro.comparison.training_epochs`), so no method gets more passes.
* An epoch is at least :data:`EPOCH_IMAGES` images: a smaller training set is drawn again (a fresh
  permutation each pass) until the epoch holds that many, so a 100-image set is not trained with one
  optimizer step per epoch. From :data:`EPOCH_IMAGES` images up an epoch is the set itself.
* The validation split (round selection) is the profile's, carved from the rest of the training
  split, whatever the training size: the study varies the data a model learns from, not how well a
  selection is verified. A real small-data setting would have a small validation split too, which
  makes our selection noisier; the peer and the baselines use none.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, RandomSampler

from ..errors import ParameterError
from ..measure import measure
from .checkpoints import load_checkpoint, save_checkpoint
from .devices import seed_everything

if TYPE_CHECKING:  # annotations only: experiments imports this module
    from .experiments import Context

__all__ = ["EPOCH_IMAGES", "LABELS", "METHODS", "OURS", "crossing", "data_size", "floored_loader",
           "paired_gaps", "study_rows", "study_table", "tier_status"]

#: The fewest images an epoch holds (a smaller training set is drawn again until it holds this many).
EPOCH_IMAGES = 1000

#: The methods of a cell, in the order the chapter shows them.
METHODS = ("double_pruning", "channel_pruning", "peer_finetune", "peer_scales_head", "full_finetune",
           "scales_head", "head_only")

#: The methods that never train a pretrained weight (the papers').
OURS = ("double_pruning", "channel_pruning")

#: How the chapter names the methods.
LABELS = {"double_pruning": "double pruning (ours, frozen)", "channel_pruning": "channel pruning (ours, frozen)",
          "peer_finetune": "Torch-Pruning + full fine-tuning", "peer_scales_head": "Torch-Pruning + scales & head",
          "full_finetune": "unpruned, full fine-tuning", "scales_head": "unpruned, scales & head",
          "head_only": "unpruned, head only"}


def floored_loader(loader: DataLoader, min_images: int, seed: int) -> DataLoader:
    """``loader`` (a shuffled training loader) with epochs of at least ``min_images`` images: each
    epoch is ``max(len(dataset), min_images)`` draws, whole permutations of the set back to back
    (no image is drawn twice before every image was drawn once). A set of ``min_images`` or more
    images keeps its loader as it is."""
    ds = loader.dataset
    if len(ds) >= min_images:
        return loader
    n = int(min_images)
    g = torch.Generator().manual_seed(int(seed))
    return DataLoader(ds, batch_size=loader.batch_size, sampler=RandomSampler(ds, num_samples=n, generator=g),
                      drop_last=n % loader.batch_size == 1, num_workers=loader.num_workers)


def _per_class(ctx: Context) -> int:
    """Images per class of the training split; refuses a split that is not class-balanced."""
    targets = torch.as_tensor(ctx.loaders["train"].dataset.targets)
    counts = torch.bincount(targets, minlength=ctx.num_classes)
    if int(counts.min()) != int(counts.max()):
        raise ParameterError("subset_train", f"subset_train={len(targets)}: data_size needs a class-balanced "
                             f"training split, but drawn in proportion to the classes of {ctx.p['dataset']} it holds "
                             f"{int(counts.min())} to {int(counts.max())} images per class; use a size that splits "
                             "evenly, or a data set whose classes are equal (fashion_mnist)", len(targets))
    return int(counts[0])


def _summary(fin: dict[str, Any]) -> dict[str, Any]:
    return {k: fin[k] for k in ("accuracy_test", "accuracy_val", "params", "flops", "param_pruning_ratio",
                                "flop_pruning_ratio")}


#: The transfer baseline whose trainable set each trained method of a cell uses
#: (:func:`basisprune.repro.experiments.transfer_setup`).
_SETUP = {"peer_finetune": "full_finetune", "full_finetune": "full_finetune",
          "peer_scales_head": "channel_scales_head", "head_only": "head_only"}


def _train_method(ctx: Context, name: str, model: torch.nn.Module, epochs: int, ref: dict[str, float]) -> dict[str, Any]:
    """Train a copy of ``model`` the way method ``name`` does for ``epochs`` epochs from the seed;
    the params and FLOPs are the deployed model's (channel scales fold into the conv before them),
    ``ref`` a :func:`basisprune.measure.measure` of the unpruned model."""
    from .experiments import transfer_setup
    from .reference import _train

    p = ctx.p
    size = measure(model, ctx.example.cpu(), reference=ref)  # before seeding: its forward pass may draw
    seed_everything(p["seed"])
    # Every method sees the same batches, in the same order, whatever ran before it in this process
    # (a resumed cell skips the methods already checkpointed): the shuffling generator starts anew.
    ctx.loaders["train"].sampler.generator.manual_seed(int(p["seed"]))
    start = time.perf_counter()
    trained, trainable, bn_mode, lr = transfer_setup(ctx, copy.deepcopy(model).to(ctx.device), _SETUP[name])
    _train(ctx, trained, torch.optim.Adam(trainable, lr=lr), epochs, bn_mode=bn_mode, desc=name)
    seconds = time.perf_counter() - start
    trained.eval()
    return {**ctx.evaluate(trained), **{k: size[k] for k in ("params", "flops", "param_pruning_ratio",
                                                               "flop_pruning_ratio")},
            "seconds": seconds, "epochs": epochs, "trainable_params": sum(t.numel() for t in trainable),
            "bn_mode": bn_mode, "lr": lr}


def data_size(ctx: Context, workdir: Path | None) -> dict[str, Any]:
    """Every method of the study on this cell's training subset (see the module's docstring)."""
    from . import experiments
    from .comparison import prune_to_flops, training_epochs

    p = ctx.p
    per_class = _per_class(ctx)
    ctx.loaders["train"] = floored_loader(ctx.loaders["train"], EPOCH_IMAGES, p["seed"])
    methods: dict[str, Any] = {}

    ch = experiments.channel_pruning(ctx, workdir)
    seed_everything(p["seed"])
    dp = experiments.double_pruning(ctx, workdir)  # resumes its channel stage from channel pruning's
    for name, rec in (("channel_pruning", ch), ("double_pruning", dp)):
        methods[name] = {**_summary(rec["final"]), "seconds": rec["compute_seconds"],
                         "reference_seconds": rec["reference_seconds"], "epochs": training_epochs({**rec, "params": p,
                         "experiment": name})["total"]}
    budget = methods["double_pruning"]["epochs"]
    ref = dp["reference"]
    methods["scales_head"] = {"accuracy_test": ref["accuracy_test"], "accuracy_val": ref["accuracy_val"],
                              "params": ref["params"], "flops": ref["flops"], "param_pruning_ratio": 0.0,
                              "flop_pruning_ratio": 0.0, "seconds": dp["reference_seconds"], "epochs": ref["epochs"]}
    target = float(dp["final"]["flop_pruning_ratio"])
    reference = ctx.fresh_model().cpu().eval()
    example = ctx.example.cpu()
    ref_size = measure(reference, example)
    peer, prune_seconds, info = None, 0.0, {}
    for name in ("peer_finetune", "peer_scales_head", "full_finetune", "head_only"):
        ck = None if workdir is None else workdir / f"data_size-{name}.pt"
        if ck is not None and ck.exists():
            methods[name] = load_checkpoint(ck, weights_only=False)["result"]
            continue
        if name.startswith("peer") and peer is None:
            seed_everything(p["seed"])
            t0 = time.perf_counter()
            peer, info = prune_to_flops(reference, example, target)
            prune_seconds = time.perf_counter() - t0
        model = peer if name.startswith("peer") else reference
        out = _train_method(ctx, name, model, budget, ref_size)
        if name.startswith("peer"):
            out.update(prune_seconds=prune_seconds, seconds=out["seconds"] + prune_seconds,
                       channel_pruning_ratio=info.get("pruning_ratio"))
        methods[name] = out
        if ck is not None:
            save_checkpoint(ck, result=out)
    return {"train_per_class": per_class, "epoch_images": max(EPOCH_IMAGES, per_class * ctx.num_classes),
            "budget_epochs": budget, "target_flop_pruning_ratio": target, "methods": methods,
            "double_pruning": {k: dp[k] for k in ("history", "final", "final_stage", "stages", "reference")},
            "channel_pruning": {k: ch[k] for k in ("history", "final", "reference")},
            # The fair reference (scales_head) is the evaluation protocol's cost, counted apart.
            "compute_seconds": sum(m["seconds"] for k, m in methods.items() if k != "scales_head"),
            "reference_seconds": dp["reference_seconds"]}


# ------------------------------------------------------------------------------------ the study's tables
def study_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell and method of ``data_size`` records: images per class, seed, method, test
    accuracy, FLOPs and parameters pruned, seconds and epochs (fractions and seconds as recorded)."""
    rows = []
    for r in records:
        for name, m in r["methods"].items():
            rows.append({"per_class": r["train_per_class"], "train_images": r["split_sizes"]["train"],
                         "seed": r["params"]["seed"], "method": name, "accuracy": m["accuracy_test"],
                         "flops_pruned": m["flop_pruning_ratio"], "params_pruned": m["param_pruning_ratio"],
                         "seconds": m["seconds"], "epochs": m["epochs"], "test_images": r["split_sizes"]["test"]})
    return rows


def study_table(rows: list[dict[str, Any]]):
    """Per images per class and method: seeds, test accuracy and FLOPs pruned, each a mean with its
    95% interval over seeds (:func:`basisprune.repro.stats.interval`, fractions), and the median
    seconds of compute a run spent."""
    import pandas as pd

    from .stats import interval

    df = pd.DataFrame(rows)
    out = []
    for (k, name), g in df.groupby(["per_class", "method"], sort=True):
        acc, acc_lo, acc_hi = interval(g["accuracy"])
        fl, fl_lo, fl_hi = interval(g["flops_pruned"])
        out.append({"per_class": int(k), "method": name, "seeds": int(g["seed"].nunique()), "accuracy": acc,
                    "accuracy_low": acc_lo, "accuracy_high": acc_hi, "flops_pruned": fl, "flops_pruned_low": fl_lo,
                    "flops_pruned_high": fl_hi, "seconds": float(g["seconds"].median()),
                    "epochs": float(g["epochs"].median())})
    t = pd.DataFrame(out)
    t["order"] = t["method"].map({m: i for i, m in enumerate(METHODS)})
    return t.sort_values(["per_class", "order"]).drop(columns="order").reset_index(drop=True)


def paired_gaps(rows: list[dict[str, Any]], ours: str = "double_pruning", other: str = "peer_finetune"):
    """Per images per class: ``ours`` minus ``other`` in test accuracy, paired by seed (the same
    subset, split and head initialisation), mean and 95% interval over seeds, and the verdict:
    ``"ours"`` when the whole interval is above zero, ``"other"`` when below, ``"tie"`` otherwise."""
    import pandas as pd

    from .stats import interval

    df = pd.DataFrame(rows)
    wide = df.pivot_table(index=["per_class", "seed"], columns="method", values="accuracy")
    out = []
    for k, g in wide.dropna(subset=[ours, other]).groupby(level="per_class"):
        m, lo, hi = interval(g[ours] - g[other])
        out.append({"per_class": int(k), "seeds": len(g), "gap": m, "gap_low": lo, "gap_high": hi,
                    "winner": "ours" if lo > 0 else "other" if hi < 0 else "tie"})
    return pd.DataFrame(out)


def crossing(gaps) -> str:
    """One sentence: below which training size ``ours`` wins (the largest size whose interval is
    above zero, when every smaller size also wins), or that it never does on these sizes."""
    wins = [int(k) for k, w in zip(gaps["per_class"], gaps["winner"]) if w == "ours"]
    sizes = sorted(int(k) for k in gaps["per_class"])
    if not wins:
        losses = [int(k) for k, w in zip(gaps["per_class"], gaps["winner"]) if w == "other"]
        return (f"pruning without fine-tuning wins at none of the sizes measured ({', '.join(map(str, sizes))} "
                f"images per class); fine-tuning wins at {len(losses)} of them, the rest are ties at 95%")
    below = [k for k in sizes if k <= max(wins)]
    if all(k in wins for k in below):
        text = f"pruning without fine-tuning wins at {max(wins)} images per class and below (95% intervals above zero)"
    else:
        text = (f"pruning without fine-tuning wins at {', '.join(map(str, wins))} images per class, but not at every "
                "smaller size: no single crossing point")
    above = {w: [k for k, x in zip(gaps["per_class"], gaps["winner"]) if x == w and int(k) > max(wins)]
             for w in ("tie", "other")}
    if above["tie"] or above["other"]:
        parts = ([f"ties at {', '.join(map(str, above['tie']))}"] if above["tie"] else []) + \
                ([f"fine-tuning wins at {', '.join(map(str, above['other']))}"] if above["other"] else [])
        text += "; above it, " + " and ".join(parts)
    return text


def tier_status(tier: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """One sentence: how much of the tier is computed, where, at which commit and at what cost."""
    sizes = sorted({r["train_per_class"] for r in records})
    commit = str(tier.get("git", {}).get("commit") or "unknown")[:10]
    # A resumed sweep's wall time covers only the cells its last run computed.
    wall = "" if tier.get("wall_seconds") is None else \
        f", the sweep's last run {tier['wall_seconds'] / 60:.0f} minutes of wall time"
    text = (f"{len(records)} of {tier['cells']} cells computed ({', '.join(map(str, sizes))} images per class) "
            f"on {tier['device']} at commit {commit}, {tier['core_seconds'] / 3600:.1f} core-hours{wall}")
    if tier.get("missing"):
        text += f"; {len(tier['missing'])} cells are still to compute (tier.json lists them)"
    return text
