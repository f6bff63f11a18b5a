"""Parameter profiles: ``smoke`` (CI, seconds), ``default`` (CPU, offline), ``paper`` (GPU, online).

One table, :data:`PROFILES`, for everything a profile sets, and the public entry point of the
settings: every experiment parameter has one default (:data:`PARAMETERS`, with :data:`SPECS`,
:func:`validate` and :func:`describe`, from :mod:`basisprune.repro.parameters`); a profile
overrides some of them, and a caller (notebook, CLI) overrides any. ``datasets`` and ``seeds`` are
what notebooks loop over. Besides the experiment parameters each profile has two sections
(:data:`SECTIONS`, read with :func:`section`): ``pai``, the settings of chapter 6's
pruning-at-initialization experiments (:mod:`basisprune.repro.pruning_at_init`; one default per
setting in :data:`PAI`, from :mod:`basisprune.repro.pai_parameters`, a profile sets only what
differs, :func:`pai_params` validates them with the same :class:`Spec`, from
:mod:`basisprune.repro.validator`), and ``timing``, how long chapter 7 times things
(:mod:`basisprune.repro.speed`).
"""

from __future__ import annotations

import copy
from typing import Any

from ..errors import ParameterError
from .pai_parameters import PAI, PAI_LOOPS, pai_specs
from .parameters import PARAMETERS, SPECS, describe, validate
from .validator import Spec

__all__ = ["PAI", "PAI_LOOPS", "PARAMETERS", "PROFILES", "SECTIONS", "SPECS", "Spec", "check_profile", "get", "describe",
           "pai_params", "pai_settings", "pai_specs", "section", "validate"]

#: The sections of a profile that are not experiment parameters (:func:`get` leaves them out).
SECTIONS = ("pai", "timing")

# ``timing`` (speed.speed_table): seconds of timing per model, batch size and round (at least),
# runs per round (at least), untimed warm-up calls, rounds (every model timed once per round, so that
# a change of load on a shared machine hits all models alike), ONNX Runtime calls; and the per-layer
# timings of the latency fold rule. The default profile times 2 rounds so that chapter 7 fits the
# book's build time (its timings are in the book's results, not here).
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
        "epochs_per_round": 1,
        "lr": 1e-3,  # the pipeline check's old rate: at 3e-3 a 40% round of its tiny model falls to chance
        "transfer_epochs": 1,
        "basis_rounds": 2,
        "basis_fraction": 0.3,
        "channel_rounds": 2,
        "channel_fraction": 0.3,
        "stop_drop": 1.0,
        "max_drop": 0.5,  # smoke exercises the pruned code paths; its accuracies mean nothing
        "device": "cpu",
        "pai": {
            "scratch": {"width": 4, "subset_train": 256, "subset_test": 256, "prune_batch_size": 32,
                        "synflow_iterations": 10, "methods": ["prospr", "snip"], "sparsities": [0.5, 0.9],
                        "seeds": [0]},
            "transfer": {"experiments_profile": "smoke", "targets": [], "fixed": {"fixed 50%": 0.5}, "epochs": 1,
                         "lr": None, "subset_train": 128, "prune_batch_size": 16},
            "cost": {"width": 4, "batch": 16, "synflow_iterations": 10},
        },
        "timing": {"min_run_time": 0.02, "min_runs": 3, "warmup": 1, "rounds": 1, "onnx": False, "onnx_repeats": 5,
                   "fold_min_run_time": 0.003, "fold_min_runs": 3},
    },
    "default": {
        "datasets": ["mnist5k", "fashion_mnist"],
        "seeds": [0],
        # The main table (notebook 05) repeats runs over seeds; on 2 CPU cores only mnist5k gets 3.
        "table_seeds": {"mnist5k": [0, 1, 2], "fashion_mnist": [0]},
        # mnist5k is small (5,000 images: 2,800 train / 1,200 val / 1,000 test): a 1,200-image
        # validation split keeps the standard error of a paired accuracy drop near half a point.
        # Fashion-MNIST is cut to a like training size; 5% of its 60,000 training images (3,000) are
        # its validation split: evaluating the model and its reference on 12,000 images every
        # epoch cost more than training on 4,000.
        "per_dataset": {"mnist5k": {"val_fraction": 0.3},
                        "fashion_mnist": {"subset_train": 4000, "subset_test": 2000, "val_fraction": 0.05}},
        "pai": {"scratch": {}, "transfer": {}, "cost": {}},  # the defaults of PAI
        "timing": {"min_run_time": 0.2, "min_runs": 5, "warmup": 3, "rounds": 2, "onnx": True, "onnx_repeats": 30,
                   "fold_min_run_time": 0.02, "fold_min_runs": 5},
    },
    "gpu": {
        # The GPU tier (sweeps/gpu_tier.yaml, benchmarks/gpu_tier.py): committed results, not
        # recomputed by `make book`. 96 px, where transfer accuracy is far above 32 px's, a
        # Fashion-MNIST subset of 20,000 training images, and the CPU-calibrated schedule run longer.
        "datasets": ["mnist5k", "fashion_mnist"],
        "seeds": [0, 1, 2],
        "table_seeds": {"mnist5k": [0, 1, 2], "fashion_mnist": [0, 1, 2]},
        "image_size": 96,
        "device": "cuda",
        "basis_rounds": 30,
        "channel_rounds": 16,
        "per_dataset": {"mnist5k": {"val_fraction": 0.3},
                        "fashion_mnist": {"subset_train": 20000, "subset_test": 5000}},
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
        "pai": {
            "scratch": {"image_size": 32, "net": "resnet20", "width": 16, "subset_train": None, "subset_test": None,
                        "batch_size": 128, "epochs": 30, "prune_batch_size": 128, "synflow_iterations": 100,
                        "device": "auto"},
            "transfer": {"experiments_profile": "paper", "seeds": [0, 1, 2], "epochs": None, "lr": None,
                         "subset_train": None, "prune_batch_size": None},
            "cost": {"repeats": 5, "warmup": 1, "device": "auto"},
        },
        "timing": {"min_run_time": 0.5, "min_runs": 7, "warmup": 3, "rounds": 3, "onnx": True, "onnx_repeats": 50,
                   "fold_min_run_time": 0.05, "fold_min_runs": 7},
    },
}


# The GPU tier runs double pruning only; its chapter 6 and 7 settings, should a book be built with
# it, are the default profile's.
for _name in SECTIONS:
    PROFILES["gpu"].setdefault(_name, copy.deepcopy(PROFILES["default"][_name]))


def check_profile(profile: Any) -> str:
    """``profile`` if it names a profile of :data:`PROFILES`, else :class:`ParameterError`."""
    if not isinstance(profile, str) or profile not in PROFILES:
        raise ParameterError("profile", f"profile must be one of {', '.join(PROFILES)}, got {profile!r}", profile)
    return profile


def section(profile: str, name: str) -> dict[str, Any]:
    """A copy of one of a profile's :data:`SECTIONS` (``pai`` or ``timing``); ``pai`` with every
    setting, the profile's values over the defaults of :data:`PAI`."""
    if name not in SECTIONS:
        raise ParameterError("section", f"section must be one of {', '.join(SECTIONS)}, got {name!r}", name)
    own = copy.deepcopy(PROFILES[check_profile(profile)][name])
    if name != "pai":
        return own
    return {part: {k: copy.deepcopy(v) for k, (v, _) in specs.items()} | own.get(part, {})
            for part, specs in PAI.items()}


def pai_settings(part: str, profile: str = "default", **overrides: Any) -> dict[str, Any]:
    """One part of the profile's ``pai`` section (``scratch``, ``transfer`` or ``cost``) with
    ``overrides`` applied (``None`` keeps the profile's value), each setting checked by its
    :class:`Spec` and the device against this machine. Raises :class:`ParameterError` naming the
    setting and what it allows."""
    if part not in PAI:
        raise ParameterError("part", f"part must be one of {', '.join(PAI)}, got {part!r}", part)
    s = section(profile, "pai")[part]
    specs = {k: spec for k, (_, spec) in PAI[part].items()} | {"seed": SPECS["seed"]}
    unknown = sorted(set(overrides) - set(s) - {"seed"})
    if unknown:
        raise ParameterError(unknown[0], f"unknown setting(s) {unknown} of pai {part}; allowed: {sorted(s)}")
    s.update({k: v for k, v in overrides.items() if v is not None})
    out = {k: specs[k].check(k, v) for k, v in s.items()}
    if "device" in out:
        from .devices import pick_device

        try:
            pick_device(out["device"])
        except ValueError as e:
            raise ParameterError("device", str(e), out["device"]) from None
    return out


def pai_params(part: str, profile: str = "default", **params: Any) -> dict[str, Any]:
    """The parameters of one run of a ``pai`` part: :func:`pai_settings` without what notebooks
    loop over (:data:`PAI_LOOPS`), plus a ``seed`` (default 0)."""
    unknown = sorted(set(params) & set(PAI_LOOPS))
    if unknown:
        raise ParameterError(unknown[0], f"{unknown[0]} is what a notebook loops over, not a parameter of one run; "
                             "give seed")
    s = pai_settings(part, profile, **{"seed": 0} | params)
    return {k: v for k, v in s.items() if k not in PAI_LOOPS}


def get(profile: str = "default", dataset: str | None = None) -> dict[str, Any]:
    """All parameters of ``profile`` (defaults overridden by the profile), plus datasets and seeds.

    With ``dataset``, the profile's settings for that dataset (``per_dataset``) apply too.
    """
    check_profile(profile)
    out = {k: v for k, (v, _) in PARAMETERS.items()}
    out.update({"datasets": [out["dataset"]], "seeds": [out["seed"]], "table_seeds": {}})
    prof = {k: v for k, v in copy.deepcopy(PROFILES[profile]).items() if k not in SECTIONS}
    per_dataset = prof.pop("per_dataset", {})
    out.update(prof)
    if dataset is not None:
        out["dataset"] = dataset
        out.update(per_dataset.get(dataset, {}))
    return out
