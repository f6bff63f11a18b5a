"""Seeded, stratified splits of a data set's positions: the validation split carved from the training
split, and the subsets drawn from each split. Every draw has its own generator (seed, tag), so one
split's size never changes another's images."""

from __future__ import annotations

import numpy as np

from ...errors import ParameterError

__all__ = ["split_positions", "stratified_choice", "subset_positions"]


def stratified_choice(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of ``n`` items drawn per class in proportion to class frequency."""
    labels = np.asarray(labels)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if n >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * (n / counts.sum())
    take = np.floor(quota).astype(np.int64)
    short = n - int(take.sum())
    if short:
        order = np.lexsort((rng.random(len(classes)), -(quota - take)))  # largest remainders first
        take[order[:short]] += 1
    chosen = [rng.permutation(np.flatnonzero(inverse == k))[: take[k]] for k in range(len(classes))]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


_TAGS = {"val": 1, "train": 2, "subset-val": 3, "subset-test": 4}


def _rng(seed: int, tag: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), _TAGS[tag]])


def split_positions(
    name: str, split: str, train_labels: np.ndarray, test_len: int, seed: int, val_fraction: float, has_val: bool = False
) -> np.ndarray:
    if split == "test" or (split == "val" and has_val):
        return np.arange(test_len, dtype=np.int64)
    if has_val:  # imagefolder with its own val/: train is all of train/
        return np.arange(len(train_labels), dtype=np.int64)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * len(train_labels)))
    if split == "val" and n_val == 0:
        raise ValueError(f"val_fraction={val_fraction} leaves no images in the {name} val split")
    val = stratified_choice(train_labels, n_val, _rng(seed, "val"))
    if split == "val":
        return val
    return np.setdiff1d(np.arange(len(train_labels), dtype=np.int64), val)


def subset_positions(name: str, split: str, labels: np.ndarray, subset: int | None, seed: int) -> np.ndarray:
    n = len(labels)
    if subset is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(subset, bool) or not isinstance(subset, (int, np.integer)) or subset <= 0:
        raise ParameterError("subset", f"subset must be a positive int, got {subset!r}", subset)
    if subset > n:
        raise ParameterError("subset", f"subset={subset} is larger than the {name} {split} split, which has {n} images", subset)
    tag = {"train": "train", "val": "subset-val", "test": "subset-test"}[split]
    return stratified_choice(labels, int(subset), _rng(seed, tag))
