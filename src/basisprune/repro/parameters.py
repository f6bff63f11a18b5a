"""The experiment parameters: one default and help line per parameter (:data:`PARAMETERS`, the
``default`` profile's values), what each accepts (:data:`SPECS`, each a
:class:`~basisprune.repro.validator.Spec`), :func:`validate` for a full parameter set and
:func:`describe` for the command line's help. Profiles override the defaults
(:mod:`basisprune.repro.profiles`)."""

from __future__ import annotations

from typing import Any

from ..errors import ParameterError
from .validator import Spec

__all__ = ["PARAMETERS", "SPECS", "describe", "validate"]

# name -> (default, help). The defaults are the `default` profile's values.
PARAMETERS: dict[str, tuple[Any, str]] = {
    "model": ("mobilenet_v2", "torchvision model name (or efficientnet_lite0)"),
    "dataset": ("mnist5k", "dataset name (basisprune.repro.data.available())"),
    "pretrained": (True, "start from ImageNet weights"),
    "image_size": (32, "input side in pixels"),
    "batch_size": (128, "training batch size"),
    "subset_train": (None, "training images (None: the whole split)"),
    "subset_test": (None, "test images (None: the whole split)"),
    "val_fraction": (0.2, "share of the training split held out for model selection"),
    "test_split": ("seed", "mnist5k and digits: which of five stratified folds of the file is the test split: "
                           "seed (fold seed mod 5, the default: one fold's sampling error does not enter every "
                           "seed) or one fixed fold (fold0, the partition of earlier results, ... fold4); data "
                           "sets with their own test split ignore it"),
    "data_root": (None, "directory with downloaded datasets"),
    "seed": (0, "random seed"),
    "device": ("auto", "auto, cpu, cuda or mps"),
    "precision": ("auto", "autocast: auto (bf16 on CUDA where supported, fp16 with one grad scaler on older GPUs, "
                          "fp32 on CPU), fp32, bf16 or fp16; Taylor scores are always summed in fp32"),
    "memory_format": ("channels_last", "layout of the conv weights while training: channels_last (faster on a CPU; "
                                       "ours) or contiguous; results differ only by rounding"),
    "bn_mode": ("eval", "batch norm while training: eval keeps ImageNet statistics, train uses batch statistics"),
    "lr": (3e-3, "Adam learning rate for scales and classifier"),
    "warmup_epochs": (10, "epochs training scales and classifier before the first pruning round"),
    "epochs_per_round": (2, "training epochs after each pruning round"),
    "max_drop": (0.01, "accuracy budget: the selected round is the most pruned one within this drop (validation)"),
    "select_margin": (1.0, "standard errors of the validation drop a selected round keeps below max_drop "
                           "(0: the drop itself; ours)"),
    "stop_drop": (0.02, "stop pruning once validation accuracy falls this far below the reference "
                        "(calibrated: replayed on the calibration's stages, 2 points changed no selection)"),
    "basis_rounds": (20, "basis pruning rounds"),
    "basis_fraction": (0.1, "share of live bases pruned per round"),
    "basis_scope": ("global", "rank bases globally or per layer"),
    "basis_normalize": ("none", "score normalisation: none, mean, max, l2, cost (weights per basis), "
                                "saved (share of weights and FLOPs a basis actually saves, fold-aware; ours)"),
    "layer_floor": (0.5, "share of a layer's live units (bases or channels) that every pruning round keeps"),
    "shrink_bases": (False, "drop pruned bases after each basis pruning round (bp.Pruner.shrink), so later rounds "
                            "train a smaller model; results differ from the masked model's by rounding (ours)"),
    "channel_rounds": (12, "channel pruning rounds"),
    "channel_fraction": (0.15, "share of live channels pruned per round"),
    "channel_threshold": (None, "prune channels with |scale| below this instead of a fraction"),
    "channel_l1": (1e-4, "L1 penalty on channel scales"),
    "channel_importance": ("taylor", "rank channels by taylor (|s dL/ds|) or magnitude (|s|, the paper's)"),
    "channel_warmup_epochs": (None, "warm-up epochs of the channel stage (None: warmup_epochs)"),
    "distill": (0.0, "weight of distillation from the unpruned model in the scales' training loss after "
                     "each stage's warm-up (0: cross-entropy only, the papers'; ours)"),
    "distill_temperature": (4.0, "softmax temperature of the distillation loss"),
    "transfer_epochs": (4, "epochs of each transfer baseline"),
    "full_lr": (3e-4, "Adam learning rate of full fine-tuning"),
}


def _models() -> list[str]:
    from . import models

    return models.available()


def _datasets() -> list[str]:
    from . import data

    return data.available()


_FRACTION = Spec("float", low=0.0, high=1.0, low_open=True, high_open=True)
_DROP = Spec("float", low=0.0, high=1.0)
_RATE = Spec("float", low=0.0)
_EPOCHS = Spec("int", low=0)
_SUBSET = Spec("int", low=1, optional=True)

# name -> what it accepts. The choices of bn_mode, precision, basis_scope and basis_normalize are
# those of basisprune.repro.train.BN_MODES, basisprune.repro.train.PRECISIONS and basisprune.prune (a test keeps
# them equal).
SPECS: dict[str, Spec] = {
    "model": Spec("str", choices=_models, choices_name="known models"),
    "dataset": Spec("str", choices=_datasets, choices_name="known datasets"),
    "pretrained": Spec("bool"),
    "image_size": Spec("int", low=1),
    "batch_size": Spec("int", low=1),
    "subset_train": _SUBSET,
    "subset_test": _SUBSET,
    "val_fraction": _FRACTION,
    "test_split": Spec("str", choices=("fold0", "fold1", "fold2", "fold3", "fold4", "seed")),
    "data_root": Spec("path", optional=True),
    "seed": Spec("int", low=0, high=2**32 - 1),
    "device": Spec("str"),  # the forms and what this machine has: basisprune.repro.devices.pick_device
    "precision": Spec("str", choices=("auto", "fp32", "bf16", "fp16")),
    "memory_format": Spec("str", choices=("channels_last", "contiguous")),
    "bn_mode": Spec("str", choices=("eval", "train")),
    "lr": _RATE,
    "warmup_epochs": _EPOCHS,
    "epochs_per_round": Spec("int", low=1),
    "max_drop": _DROP,
    "select_margin": Spec("float", low=0.0),
    "stop_drop": _DROP,
    "basis_rounds": _EPOCHS,
    "basis_fraction": _FRACTION,
    "basis_scope": Spec("str", choices=("global", "layer")),
    "basis_normalize": Spec("str", choices=("none", "mean", "max", "l2", "cost", "saved")),
    "layer_floor": Spec("float", low=0.0, high=1.0, high_open=True),
    "shrink_bases": Spec("bool"),
    "channel_rounds": _EPOCHS,
    "channel_fraction": _FRACTION,
    "channel_threshold": Spec("float", low=0.0, optional=True),
    "channel_l1": _RATE,
    "channel_importance": Spec("str", choices=("taylor", "magnitude")),
    "channel_warmup_epochs": Spec("int", low=0, optional=True),
    "distill": Spec("float", low=0.0, high=1.0),
    "distill_temperature": Spec("float", low=0.0, low_open=True),
    "transfer_epochs": _EPOCHS,
    "full_lr": _RATE,
}
assert set(SPECS) == set(PARAMETERS), "every parameter needs a Spec"


def validate(p: dict[str, Any]) -> dict[str, Any]:
    """Check every parameter of ``p`` (a full parameter set); returns a copy with canonical types.

    Raises :class:`~basisprune.errors.ParameterError` (a ValueError) naming the first parameter
    that is not allowed and what is: unknown names, wrong types (a bool is not an integer),
    values out of range, unknown choices, a device this machine lacks, an image size too small
    for the model, a ``data_root`` that does not exist (unless a download will create it);
    pretrained weights that are neither cached nor obtainable raise
    :class:`~basisprune.repro.models.PretrainedUnavailableError`. Nothing is loaded: data, models and
    weights are only looked up by name.
    """
    unknown = sorted(set(p) - set(SPECS))
    if unknown:
        raise ParameterError(unknown[0], f"unknown parameter(s) {unknown}; allowed: {sorted(SPECS)}")
    missing = sorted(set(SPECS) - set(p))
    if missing:
        raise ParameterError(missing[0], f"parameter(s) {missing} missing; every one of {sorted(SPECS)} is needed")
    import torch

    from . import data, models
    from .devices import pick_device

    p = dict(p)
    if isinstance(p["device"], torch.device):
        p["device"] = str(p["device"])
    out = {k: SPECS[k].check(k, p[k]) for k in PARAMETERS}
    try:
        pick_device(out["device"])
    except ValueError as e:
        raise ParameterError("device", str(e), out["device"]) from None
    try:
        models.check_image_size(out["model"], out["image_size"])
    except ValueError as e:
        raise ParameterError("image_size", str(e), out["image_size"]) from None
    data.check_root(out["dataset"], out["data_root"])
    if out["pretrained"]:
        models.check_pretrained(out["model"])
    return out


def describe() -> str:
    """One line per parameter: name, default, help (for ``basisprune --help``)."""
    return "\n".join(f"  --{k.replace('_', '-'):24s} {v!r:>14}  {h}" for k, (v, h) in PARAMETERS.items())
