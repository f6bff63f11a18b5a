"""The settings of chapter 6's pruning-at-initialization experiments (the ``pai`` section of a
profile): per part (``scratch``, ``transfer``, ``cost``), each setting's default and what it accepts
(:data:`PAI`), the settings a notebook loops over (:data:`PAI_LOOPS`), the parameters of one run
(:func:`pai_specs`) and the experiment of each part (:data:`PAI_EXPERIMENTS`). A profile's values
over these defaults: :func:`basisprune.repro.profiles.section` and
:func:`~basisprune.repro.profiles.pai_settings`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import ParameterError
from ..pai import METHODS as PAI_METHODS
from .parameters import SPECS
from .validator import Spec

__all__ = ["PAI", "PAI_EXPERIMENTS", "PAI_LOOPS", "pai_specs"]

_ALL_SPARSITIES = [0.5, 0.8, 0.9, 0.95, 0.98]


def _smallnets() -> list[str]:
    from . import smallnets

    return list(smallnets.NAMES)


def _profiles() -> list[str]:
    from .profiles import PROFILES  # at call time: profiles imports this module

    return list(PROFILES)


_SPARSITY = Spec("float", low=0.0, high=1.0, high_open=True)
_POSITIVE = Spec("float", low=0.0, low_open=True)
_SEEDS = Spec("list", item=SPECS["seed"])
_PAI_METHODS = Spec("list", item=Spec("str", choices=PAI_METHODS))
_PAI_SUBSET = Spec("int", low=10, optional=True)

#: Chapter 6's pruning-at-initialization experiments (:mod:`basisprune.repro.pruning_at_init`): per
#: part, setting -> (default, what it accepts). The defaults are the ``default`` profile's, sized for
#: 2 CPU cores; a profile's ``pai`` section sets only what differs
#: (:func:`basisprune.repro.profiles.section` merges them).
#: ``scratch`` (experiment ``pai_scratch``): a small CNN trained from scratch, Fashion-MNIST at 28 px,
#: 2,000 training images, one epoch, vgg_small at width 8 (18.4k prunable weights), SynFlow with 20
#: rounds instead of the official 100; ``methods`` x ``sparsities`` (plus the dense baseline) is
#: one run's grid. ``transfer`` (``pai_transfer``): ``None`` means the value of the experiments
#: profile ``experiments_profile`` (dataset, model, subsets, ``epochs`` = its ``transfer_epochs``,
#: ``lr`` = its ``full_lr``, ``prune_batch_size`` = its ``batch_size``); ``targets`` are the pruning
#: experiments whose final parameter counts set the sparsities, ``fixed`` extra labelled
#: sparsities. Its default fine-tunes two epochs on 1,800 of the training images at Adam lr 1e-3
#: instead of the experiments profile's epochs on all of them at its ``full_lr`` 3e-4 (after one
#: epoch at 3e-4 the pruned MobileNetV2 was still at chance accuracy). ``cost`` (``pai_cost``): the
#: pruning step's wall time in the ProsPr paper's ResNet-20 setting, the median of ``repeats`` calls.
PAI: dict[str, dict[str, tuple[Any, Spec]]] = {
    "scratch": {
        "dataset": ("fashion_mnist", SPECS["dataset"]),
        "image_size": (28, Spec("int", low=8)),
        "net": ("vgg_small", Spec("str", choices=_smallnets, choices_name="small networks")),
        "width": (8, Spec("int", low=1)),
        "subset_train": (2000, _PAI_SUBSET),
        "subset_test": (2000, _PAI_SUBSET),
        "batch_size": (32, Spec("int", low=2)),
        "epochs": (1, Spec("int", low=1)),
        "optimizer": ("sgd", Spec("str", choices=("sgd", "adamw"))),
        "lr": (0.1, _POSITIVE),
        "momentum": (0.9, Spec("float", low=0.0, high=1.0, high_open=True)),
        "weight_decay": (5e-4, Spec("float", low=0.0)),
        "prune_batch_size": (64, Spec("int", low=2)),
        "steps": (3, Spec("int", low=0)),
        "inner_lr": (0.1, _POSITIVE),
        "synflow_iterations": (20, Spec("int", low=1)),
        "device": ("cpu", SPECS["device"]),
        "methods": (list(PAI_METHODS), Spec("list", item=Spec("str", choices=("dense", *PAI_METHODS)))),
        "sparsities": (list(_ALL_SPARSITIES), Spec("list", item=_SPARSITY)),
        "seeds": ([0, 1, 2], _SEEDS),
    },
    "transfer": {
        "run": (True, Spec("bool")),
        "experiments_profile": ("default", Spec("str", choices=_profiles, choices_name="profiles")),
        "dataset": (None, replace(SPECS["dataset"], optional=True)),
        "model": (None, replace(SPECS["model"], optional=True)),
        "seeds": ([0], _SEEDS),
        "methods": (["prospr", "snip"], _PAI_METHODS),
        "targets": (["basis_pruning", "double_pruning"],
                    Spec("list", item=Spec("str", choices=("basis_pruning", "double_pruning")))),
        "fixed": ({}, Spec("mapping", item=_SPARSITY)),
        "epochs": (2, Spec("int", low=1, optional=True)),
        "lr": (1e-3, Spec("float", low=0.0, low_open=True, optional=True)),
        "subset_train": (1800, _PAI_SUBSET),
        "subset_test": (None, _PAI_SUBSET),
        "prune_batch_size": (64, Spec("int", low=2, optional=True)),
        "steps": (3, Spec("int", low=0)),
        "inner_lr": (0.1, _POSITIVE),
        "bn_mode": ("train", SPECS["bn_mode"]),
    },
    "cost": {
        "model": ("resnet20", Spec("str", choices=_smallnets, choices_name="small networks")),
        "width": (16, Spec("int", low=1)),
        "batch": (128, Spec("int", low=1)),
        "steps": (3, Spec("int", low=0)),
        "image_size": (32, Spec("int", low=8)),
        "repeats": (3, Spec("int", low=1)),
        "warmup": (0, Spec("int", low=0)),
        "sparsity": (0.9, _SPARSITY),
        "synflow_iterations": (100, Spec("int", low=1)),
        "device": ("cpu", SPECS["device"]),
        "methods": (list(PAI_METHODS), _PAI_METHODS),
    },
}

#: Settings of a ``pai`` part that say what a notebook loops over (like a profile's ``seeds``), not
#: parameters of one run: a run has one ``seed`` (default 0) instead.
PAI_LOOPS = ("seeds", "run")

#: The pruning-at-initialization experiments and the part of the profile's ``pai`` settings that
#: holds their parameters.
PAI_EXPERIMENTS: dict[str, str] = {"pai_scratch": "scratch", "pai_transfer": "transfer", "pai_cost": "cost"}


def pai_specs(part: str) -> dict[str, Spec]:
    """What each parameter of one run of a ``pai`` part accepts: its settings but what notebooks
    loop over (:data:`PAI_LOOPS`), and ``seed`` (the names
    :func:`basisprune.repro.profiles.pai_params` takes)."""
    if part not in PAI:
        raise ParameterError("part", f"part must be one of {', '.join(PAI)}, got {part!r}", part)
    return {k: spec for k, (_, spec) in PAI[part].items() if k not in PAI_LOOPS} | {"seed": SPECS["seed"]}
