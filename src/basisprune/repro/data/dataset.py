"""The in-memory data set every loader serves: uint8 (or float) images resized once and normalised
per item (:class:`ImageTensorDataset`), with the ImageNet normalisation it defaults to."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MATERIALIZE_BYTES", "ImageTensorDataset", "check_image_size", "check_norm"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MATERIALIZE_BYTES = 1 << 30
"""Pre-resize a split in memory when its uint8 (float for digits) storage fits in this many bytes;
larger splits are resized batch by batch on access."""


def check_image_size(image_size: int) -> int:
    """``image_size`` as an int, or ValueError unless it is a positive integer."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return int(image_size)


def check_norm(values: Sequence[float], what: str) -> torch.Tensor:
    """``values`` (one, or one per RGB channel; a std positive) as a (3, 1, 1) tensor, or ValueError."""
    t = torch.as_tensor(tuple(float(v) for v in values), dtype=torch.float32)
    if t.numel() == 1:
        t = t.repeat(3)
    if t.numel() != 3:
        raise ValueError(f"{what} needs 3 values (one per RGB channel), got {tuple(values)}")
    if what == "std" and bool((t <= 0).any()):
        raise ValueError(f"std must be positive, got {tuple(values)}")
    return t.view(3, 1, 1)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear antialiased resize of a (N, C, H, W) uint8 or float batch to (N, C, size, size)."""
    if x.shape[-2:] == (size, size):
        return x
    import torchvision.transforms.v2.functional as TF

    return TF.resize(x, [size, size], antialias=True)


class ImageTensorDataset(Dataset):
    """``(image, label)`` pairs from in-memory images, normalised on access.

    Attributes: ``name``, ``split``, ``image_size``, ``classes``, ``targets`` (int64 tensor),
    ``indices`` (positions in the source split: train/val index the official train set, test the
    test set), ``source`` (where the data came from), ``mean``/``std``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        image_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        *,
        classes: Sequence[str] = (),
        indices: np.ndarray | None = None,
        name: str = "",
        split: str = "",
        source: str = "",
    ):
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.image_size = check_image_size(image_size)
        self.mean_t = check_norm(mean, "mean")
        self.std_t = check_norm(std, "std")
        self.mean = tuple(float(v) for v in mean) if len(mean) == 3 else (float(mean[0]),) * 3
        self.std = tuple(float(v) for v in std) if len(std) == 3 else (float(std[0]),) * 3
        n, c = images.shape[:2]
        nbytes = n * c * self.image_size**2 * images.element_size()
        self.materialized = nbytes <= MATERIALIZE_BYTES
        if self.materialized and images.shape[-2:] != (self.image_size,) * 2:
            images = torch.cat([_resize(chunk, self.image_size) for chunk in images.split(4096)]) if n else images
        self.images = images.contiguous()
        self.targets = torch.as_tensor(targets, dtype=torch.int64)
        self.classes = list(classes)
        self.indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        self.name, self.split, self.source = name, split, source

    def __len__(self) -> int:
        return len(self.targets)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize(x, self.image_size)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean_t) / self.std_t

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        return self._prepare(self.images[i : i + 1])[0], int(self.targets[i])

    def __getitems__(self, idx: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """Batched fetch used by DataLoader: one gather and one normalisation per batch."""
        it = torch.as_tensor(list(idx), dtype=torch.int64)
        x = self._prepare(self.images[it])
        return list(zip(x.unbind(0), self.targets[it].tolist()))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images (normalised, (N, 3, S, S)) and labels as two tensors."""
        return self._prepare(self.images), self.targets.clone()

    def __repr__(self) -> str:
        return (
            f"ImageTensorDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"image_size={self.image_size}, classes={len(self.classes)}, source={self.source!r})"
        )
