"""The ``imagefolder`` data set: your own ``root/{train,test}[/val]`` torchvision ImageFolder trees,
kept in memory pre-resized when they fit (``MATERIALIZE_BYTES``), else decoded lazily."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .catalog import SPLITS, DataUnavailableError
from .dataset import MATERIALIZE_BYTES, ImageTensorDataset
from .splits import split_positions, subset_positions
from ...errors import ParameterError


def _imagefolder_dirs(root: str | os.PathLike | None) -> dict[str, Path]:
    if root is None:
        raise ValueError("imagefolder needs root=DIR with DIR/train and DIR/test ImageFolder trees (DIR/val optional)")
    r = Path(root).expanduser()
    dirs = {s: r / s for s in SPLITS if (r / s).is_dir()}
    if "train" not in dirs or "test" not in dirs:
        raise DataUnavailableError(
            f"imagefolder root {r} must contain train/ and test/ folders (one sub-folder per class, "
            f"optionally val/); found: {sorted(p.name for p in r.iterdir()) if r.is_dir() else 'no such folder'}"
        )
    return dirs


def _check_folder_classes(train: Path, n: int) -> None:
    if n < 2:
        raise ParameterError(
            "data_root", f"data_root: imagefolder needs at least 2 classes (one sub-folder each) in {train}, found {n}", train
        )


class _FolderSubset(Dataset):
    """Lazy PIL-decoding view of an ImageFolder for splits too large to keep in memory."""

    def __init__(self, folder, positions: np.ndarray, transform, meta: dict):
        self.folder, self.positions, self.transform = folder, positions, transform
        self.targets = torch.as_tensor([folder.targets[p] for p in positions], dtype=torch.int64)
        self.indices = positions
        for k, v in meta.items():
            setattr(self, k, v)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        path, y = self.folder.samples[int(self.positions[i])]
        return self.transform(self.folder.loader(path)), y


def _load_imagefolder(split, image_size, subset, root, mean, std, seed, val_fraction) -> Dataset:
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    dirs = _imagefolder_dirs(root)
    _check_folder_classes(dirs["train"], len([d for d in dirs["train"].iterdir() if d.is_dir()]))
    has_val = "val" in dirs
    src_split = "test" if split == "test" else ("val" if split == "val" and has_val else "train")
    folder = tvd.ImageFolder(str(dirs[src_split]))
    train_classes = tvd.ImageFolder(str(dirs["train"])).classes if src_split != "train" else folder.classes
    if folder.classes != train_classes:
        raise ValueError(f"class folders of {dirs[src_split]} differ from those of {dirs['train']}")
    labels = np.asarray(folder.targets)
    pos = split_positions("imagefolder", split, labels, len(labels), seed, val_fraction, has_val=has_val)
    pos = pos[subset_positions("imagefolder", split, labels[pos], subset, seed)]
    geometry = T.Compose([T.Lambda(lambda im: im.convert("RGB")), T.Resize(image_size), T.CenterCrop(image_size)])
    meta = dict(name="imagefolder", split=split, image_size=image_size, classes=folder.classes, source=f"imagefolder:{dirs[src_split]}")
    if len(pos) * 3 * image_size**2 <= MATERIALIZE_BYTES:
        import torchvision.transforms.functional as TF

        x = torch.zeros((len(pos), 3, image_size, image_size), dtype=torch.uint8)
        for j, p in enumerate(pos):
            x[j] = TF.pil_to_tensor(geometry(folder.loader(folder.samples[int(p)][0])))
        y = torch.as_tensor(labels[pos], dtype=torch.int64)
        return ImageTensorDataset(x, y, image_size, mean, std, indices=pos, **{k: meta[k] for k in ("name", "split", "classes", "source")})
    transform = T.Compose([geometry, T.ToTensor(), T.Normalize(mean, std)])
    return _FolderSubset(folder, pos, transform, dict(meta, mean=tuple(mean), std=tuple(std)))
