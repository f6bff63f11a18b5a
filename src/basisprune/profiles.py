"""Parameter profiles: ``smoke`` (CI, seconds), ``default`` (CPU, offline), ``paper`` (GPU, online).

Every experiment parameter has one default here; a profile overrides some of them, and a caller
(notebook, CLI) overrides any. ``datasets`` and ``seeds`` are what notebooks loop over.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["PARAMETERS", "PROFILES", "get", "describe"]

# name -> (default, help). The defaults are the `default` profile's values.
PARAMETERS: dict[str, tuple[Any, str]] = {
    "model": ("mobilenet_v2", "torchvision model name (or efficientnet_lite0)"),
    "dataset": ("mnist5k", "dataset name (basisprune.data.available())"),
    "pretrained": (True, "start from ImageNet weights"),
    "image_size": (32, "input side in pixels"),
    "batch_size": (128, "training batch size"),
    "subset_train": (None, "training images (None: the whole split)"),
    "subset_test": (None, "test images (None: the whole split)"),
    "val_fraction": (0.2, "share of the training split held out for model selection"),
    "data_root": (None, "directory with downloaded datasets"),
    "seed": (0, "random seed"),
    "device": ("auto", "auto, cpu, cuda or mps"),
    "precision": ("auto", "autocast: auto (bf16 on CUDA where supported, fp16 with one grad scaler on older GPUs, "
                          "fp32 on CPU), fp32, bf16 or fp16; Taylor scores are always summed in fp32"),
    "bn_mode": ("eval", "batch norm while training: eval keeps ImageNet statistics, train uses batch statistics"),
    "lr": (1e-3, "Adam learning rate for scales and classifier"),
    "warmup_epochs": (4, "epochs training scales and classifier before the first pruning round"),
    "epochs_per_round": (1, "training epochs after each pruning round"),
    "max_drop": (0.01, "accuracy budget: the selected round is the most pruned one within this drop (validation)"),
    "stop_drop": (0.05, "stop pruning once validation accuracy falls this far below the reference"),
    "basis_rounds": (12, "basis pruning rounds"),
    "basis_fraction": (0.1, "share of live bases pruned per round"),
    "basis_scope": ("global", "rank bases globally or per layer"),
    "basis_normalize": ("none", "score normalisation: none, mean, max, l2, cost"),
    "layer_floor": (0.5, "share of a layer's live units (bases or channels) that every pruning round keeps"),
    "channel_rounds": (8, "channel pruning rounds"),
    "channel_fraction": (0.15, "share of live channels pruned per round"),
    "channel_threshold": (None, "prune channels with |scale| below this instead of a fraction"),
    "channel_l1": (1e-4, "L1 penalty on channel scales"),
    "channel_importance": ("taylor", "rank channels by taylor (|s dL/ds|) or magnitude (|s|, the paper's)"),
    "channel_warmup_epochs": (None, "warm-up epochs of the channel stage (None: warmup_epochs)"),
    "transfer_epochs": (4, "epochs of each transfer baseline"),
    "full_lr": (3e-4, "Adam learning rate of full fine-tuning"),
}

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "dataset": "digits",
        "datasets": ["digits"],
        "seeds": [0],
        "table_seeds": {"digits": [0, 1]},
        "batch_size": 64,
        "subset_train": 512,
        "subset_test": 256,
        "warmup_epochs": 1,
        "transfer_epochs": 1,
        "basis_rounds": 2,
        "basis_fraction": 0.3,
        "channel_rounds": 2,
        "channel_fraction": 0.3,
        "stop_drop": 1.0,
        "max_drop": 0.5,  # smoke exercises the pruned code paths; its accuracies mean nothing
        "device": "cpu",
    },
    "default": {
        "datasets": ["mnist5k", "fashion_mnist"],
        "seeds": [0],
        # The main table (notebook 05) repeats runs over seeds; on 2 CPU cores only mnist5k gets 3.
        "table_seeds": {"mnist5k": [0, 1, 2], "fashion_mnist": [0]},
        # mnist5k is small (5,000 images: 2,800 train / 1,200 val / 1,000 test): a 1,200-image
        # validation split keeps the standard error of a paired accuracy drop near half a point.
        # Fashion-MNIST is cut to a like training size; its validation split (12,000) is large.
        "per_dataset": {"mnist5k": {"val_fraction": 0.3},
                        "fashion_mnist": {"subset_train": 4000, "subset_test": 2000}},
    },
    "paper": {
        # The papers transfer an ImageNet VGG16 with a new classifier; torchvision's VGG16 keeps 89% of
        # its parameters in three fully connected layers that neither method touches, so the paper
        # profile uses the conv base with a global-average-pool head (models.GAP; our choice).
        "model": "vgg16_gap",
        "dataset": "cifar10",
        "datasets": ["mnist", "cifar10"],
        "seeds": [0],
        "table_seeds": {"mnist": [0, 1, 2], "cifar10": [0, 1, 2]},
        "image_size": 224,
        "batch_size": 64,
        "subset_train": None,
        "subset_test": None,
        "warmup_epochs": 10,
        "transfer_epochs": 10,
        "basis_rounds": 30,
        "channel_rounds": 20,
        "device": "cuda",
    },
}


def get(profile: str = "default", dataset: str | None = None) -> dict[str, Any]:
    """All parameters of ``profile`` (defaults overridden by the profile), plus datasets and seeds.

    With ``dataset``, the profile's settings for that dataset (``per_dataset``) apply too.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known profiles: {sorted(PROFILES)}")
    out = {k: v for k, (v, _) in PARAMETERS.items()}
    out.update({"datasets": [out["dataset"]], "seeds": [out["seed"]], "table_seeds": {}})
    prof = copy.deepcopy(PROFILES[profile])
    per_dataset = prof.pop("per_dataset", {})
    out.update(prof)
    if dataset is not None:
        out["dataset"] = dataset
        out.update(per_dataset.get(dataset, {}))
    return out


def describe() -> str:
    """One line per parameter: name, default, help (for ``basisprune --help``)."""
    return "\n".join(f"  --{k.replace('_', '-'):24s} {v!r:>14}  {h}" for k, (v, h) in PARAMETERS.items())
