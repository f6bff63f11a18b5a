"""The package's entry points: :func:`load` (one split as a data set), :func:`make_loaders` (the
train/val/test DataLoaders of a run), and the checks a run makes before it loads anything
(:func:`num_classes`, :func:`check_root`, :func:`check_labels`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .catalog import DOWNLOADABLE, SPLITS, DataUnavailableError, _INFO, _check_name, test_fold
from .dataset import IMAGENET_MEAN, IMAGENET_STD, ImageTensorDataset, check_image_size, check_norm
from .imagefolder import _check_folder_classes, _imagefolder_dirs, _load_imagefolder
from .sources import _OFFLINE_ENV, _download_allowed, _pools
from .splits import split_positions, subset_positions
from ...errors import ParameterError

__all__ = ["check_labels", "check_root", "load", "make_loaders", "num_classes"]


def num_classes(name: str, root: str | os.PathLike | None = None) -> int:
    """Number of classes of a data set (for ``imagefolder``: class folders in ``root/train``)."""
    _check_name(name)
    n = _INFO[name].num_classes
    if n is not None:
        return n
    train = _imagefolder_dirs(root)["train"]
    n = len([d for d in train.iterdir() if d.is_dir()])
    _check_folder_classes(train, n)
    return n


def check_root(name: str, root: str | os.PathLike | None, download: bool | None = None) -> None:
    """Refuse a ``root`` that :func:`load` could not use, before anything is loaded.

    A root that is not a folder is refused; so is a missing one, unless ``name`` is a data set
    torchvision may download there (and downloads are allowed, see :func:`load`): then the download
    creates it, and a failed download removes it again. Raises
    :class:`~basisprune.errors.ParameterError` naming ``data_root``.
    """
    _check_name(name)
    if root is None:
        if name == "imagefolder":
            raise ParameterError("data_root", "data_root: imagefolder needs data_root=DIR with DIR/train and DIR/test "
                                 "ImageFolder trees (DIR/val optional)")
        return
    r = Path(root).expanduser()
    if r.exists() and not r.is_dir():
        raise ParameterError("data_root", f"data_root {str(root)!r} is a file, not a folder", root)
    if r.exists():
        if name == "imagefolder":
            try:
                num_classes(name, r)
            except DataUnavailableError as e:
                raise ParameterError("data_root", f"data_root: {e}", root) from None
        return
    if name in DOWNLOADABLE and _download_allowed(download):
        return
    why = (f"${_OFFLINE_ENV} turns downloads off, so nothing would be downloaded into it"
           if name in DOWNLOADABLE else f"{name} is read from it and never downloaded")
    raise ParameterError("data_root", f"data_root {str(root)!r} does not exist ({why})", root)


def check_labels(loaders: dict[str, Any], num_classes: int, *, min_classes: int = 2) -> None:
    """Refuse labels a ``num_classes``-way classifier cannot score, and fewer than 2 classes.

    ``loaders``: split name -> DataLoader (or dataset) whose dataset has ``targets``. Raises
    ValueError naming ``num_classes`` and the labels' range when a label is negative or not below
    ``num_classes`` (the loss would fail with an IndexError), and when the train split holds
    fewer than ``min_classes`` classes (one class: every score is zero, the accuracy meaningless).
    """
    for split, loader in loaders.items():
        targets = getattr(getattr(loader, "dataset", loader), "targets", None)
        if targets is None or len(targets) == 0:
            continue
        t = torch.as_tensor(targets)
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= num_classes:
            raise ParameterError(
                "num_classes",
                f"num_classes={num_classes} does not cover the labels of the {split} split, which range over "
                f"{lo}..{hi}; the classifier needs {hi + 1} outputs",
                num_classes,
            )
        if split == "train" and len(torch.unique(t)) < min_classes:
            raise ParameterError(
                "dataset", f"dataset: the train split holds {len(torch.unique(t))} class(es); classification needs "
                f"at least {min_classes}", lo
            )


def load(
    name: str,
    split: str,
    image_size: int,
    subset: int | None = None,
    root: str | os.PathLike | None = None,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int = 0,
    val_fraction: float = 0.1,
    download: bool | None = None,
    test_split: str = "fold0",
) -> Dataset:
    """One split of a data set as ``(image (3, S, S) float, label int)`` pairs.

    ``split``: ``"train"``, ``"val"`` (a seeded stratified ``val_fraction`` of the train set) or
    ``"test"``. ``subset``: a seeded, class-stratified number of images from that split
    (ValueError if larger than the split). ``root``: where to look for (and download to) the
    files; default :func:`basisprune.repro.assets.cache_dir`. ``download``: None = download if not
    found locally unless ``$BASISPRUNE_OFFLINE`` is set, False = never, True = allowed.
    Raises ValueError for unknown names/splits/bad sizes and :class:`DataUnavailableError` when
    the data is neither local nor downloadable (the message names the command that provides it).
    ``test_split``: for mnist5k and digits, which stratified fold of the file is the test split
    (:data:`TEST_SPLITS`; the train split is the rest); data sets with their own test split
    ignore it.
    """
    _check_name(name)
    fold = test_fold(test_split, seed)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    image_size = check_image_size(image_size)
    check_norm(mean, "mean")
    check_norm(std, "std")
    if name == "imagefolder":
        return _load_imagefolder(split, image_size, subset, root, mean, std, seed, val_fraction)
    train_pool, test_pool = _pools(name, root, download, fold)
    pool = test_pool if split == "test" else train_pool
    labels = pool.labels.numpy()
    pos = split_positions(name, split, train_pool.labels.numpy(), len(test_pool.labels), seed, val_fraction)
    pos = pos[subset_positions(name, split, labels[pos], subset, seed)]
    it = torch.from_numpy(pos)
    return ImageTensorDataset(
        pool.images[it],
        pool.labels[it],
        image_size,
        mean,
        std,
        classes=pool.classes,
        indices=pos,
        name=name,
        split=split,
        source=pool.source,
    )


def _has_val(name: str, root, val_fraction: float) -> bool:
    if name == "imagefolder" and "val" in _imagefolder_dirs(root):
        return True
    return val_fraction > 0


def make_loaders(
    name: str,
    image_size: int,
    batch_size: int,
    subset_train: int | None = None,
    subset_test: int | None = None,
    seed: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    root: str | os.PathLike | None = None,
    *,
    subset_val: int | None = None,
    val_fraction: float = 0.1,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
    download: bool | None = None,
    test_split: str = "fold0",
) -> dict[str, DataLoader]:
    """``{"train", "val", "test"}`` DataLoaders; only train is shuffled, by a generator seeded with
    ``seed``, so two calls with the same arguments yield the same batches. ``val`` is carved from
    the full train set before ``subset_train`` is drawn from the rest (``subset_val`` subsamples
    it); with ``val_fraction=0`` there is no ``"val"`` key (except for an imagefolder with its own
    val/). If the last training batch would hold a single image (BatchNorm cannot train on it)
    that image is dropped. ``eval_batch_size`` (default max(batch_size, 256)) is used for val/test.
    ``test_split``: the test fold of mnist5k and digits (see :func:`load`)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    common = dict(root=root, mean=mean, std=std, seed=seed, val_fraction=val_fraction, download=download,
                  test_split=test_split)

    def split(which: str, subset: int | None) -> Dataset:
        try:
            return load(name, which, image_size, subset, **common)
        except ParameterError as e:  # say which of the subset arguments
            if e.param != "subset":
                raise
            raise ParameterError(f"subset_{which}", f"subset_{which}: {e}", subset) from None

    sets = {
        "train": split("train", subset_train),
        "val": split("val", subset_val) if _has_val(name, root, val_fraction) else None,
        "test": split("test", subset_test),
    }
    ebs = eval_batch_size or max(batch_size, 256)
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for split, ds in sets.items():
        if ds is None:
            continue
        train = split == "train"
        out[split] = DataLoader(
            ds,
            batch_size=batch_size if train else ebs,
            shuffle=train,
            generator=g if train else None,
            drop_last=train and len(ds) % batch_size == 1,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )
    return out
