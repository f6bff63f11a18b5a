"""The ``paper`` profile runs end to end, offline, on stand-in files in the formats it downloads.

The profile asks for torchvision's ImageNet VGG16 (a GAP head, 224 px), MNIST and CIFAR-10, all
downloaded on first use. Here the downloads are replaced by files written where torchvision leaves
them: random VGG16 weights under the hub cache's file name (``$TORCH_HOME/hub/checkpoints``), MNIST
as gzipped IDX files under ``MNIST/raw`` and CIFAR-10 as python pickle batches under
``cifar-10-batches-py``, in ``$BASISPRUNE_DATA``. Sizes, epochs and rounds are cut by the ordinary
parameter overrides; the code path (data loading, model building, the pipeline) is the real one.
Sockets are refused, so any attempt to download fails the test.
"""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from basisprune.repro import data, experiments, models, profiles

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1 file name
N_TRAIN, N_TEST = 100, 40  # images per split of each stand-in data set

# The paper profile at reduced size: every override is an ordinary parameter.
SMALL = {"image_size": 32, "batch_size": 16, "subset_train": 60, "subset_test": 20, "warmup_epochs": 3, "lr": 1e-2,
         "epochs_per_round": 1, "basis_rounds": 1, "channel_rounds": 1,
         "transfer_epochs": 1, "stop_drop": 1.0, "max_drop": 1.0, "device": "cpu", "precision": "fp32"}


def _idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file (magic 0x0000080N, big-endian sizes), gzipped like the download."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images whose brightness gives their class (plus noise), so a short run learns above
    chance (the pipeline refuses a warm-up that ends at chance), and their labels, every class present."""
    labels = rng.permutation(np.arange(n) % 10)
    x = labels.reshape(-1, *[1] * len(shape)) * 24 + rng.integers(0, 16, (n, *shape))
    return x.astype(np.uint8), labels


def write_mnist(root: Path, rng: np.random.Generator) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        x, y = _images(rng, n, (28, 28))
        _idx(raw / f"{prefix}-images-idx3-ubyte.gz", x)
        _idx(raw / f"{prefix}-labels-idx1-ubyte.gz", y)


def write_cifar10(root: Path, rng: np.random.Generator) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = [(f"data_batch_{i}", N_TRAIN // 5) for i in range(1, 6)] + [("test_batch", N_TEST)]
    for name, n in batches:
        x, y = _images(rng, n, (3 * 32 * 32,))
        entry = {"batch_label": name, "labels": [int(v) for v in y], "data": x, "filenames": [f"{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_cases_per_batch": N_TRAIN // 5}))


@pytest.fixture
def paper_offline(tmp_path, monkeypatch):
    """Stand-in downloads in tmp folders, and no network."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    write_mnist(root, rng)
    write_cifar10(root, rng)
    torch_home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("BASISPRUNE_DATA", str(root))
    monkeypatch.setenv("BASISPRUNE_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("BASISPRUNE_OFFLINE", raising=False)  # downloads allowed: the files must be found
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    assert ckpt.is_relative_to(torch_home)
    ckpt.mkdir(parents=True)
    import torchvision.models as tvm

    torch.manual_seed(0)
    # Half precision keeps the stand-in file small; load_state_dict copies it into float32 parameters.
    state = {k: v.half() if v.is_floating_point() else v for k, v in tvm.vgg16(weights=None).state_dict().items()}
    torch.save(state, ckpt / VGG16_FILE)

    def refuse(*args, **kwargs):
        raise AssertionError("the paper profile tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    # The data root is a fresh tmp folder, so the loader's in-memory cache (keyed by root) cannot serve it.
    return {"root": root, "weights": ckpt / VGG16_FILE, "out": tmp_path / "results"}


def test_paper_profile_weights_file_is_torchvisions():
    """The stand-in file name is the one torchvision's VGG16 weights download to."""
    w = models._weights_enum("vgg16")
    assert os.path.basename(w.url) == VGG16_FILE


def test_paper_profile_data_are_found_without_download(paper_offline):
    """Both data sets of the paper profile are local in their downloaded formats, and load with the
    stand-in files' sizes, classes and labels."""
    for name in profiles.get("paper")["datasets"]:
        assert data.is_local(name), name
        loaders = data.make_loaders(name, image_size=32, batch_size=8, download=False, val_fraction=0.2)
        sizes = {k: len(v.dataset) for k, v in loaders.items()}
        assert sizes == {"train": N_TRAIN - N_TRAIN // 5, "val": N_TRAIN // 5, "test": N_TEST}, (name, sizes)
        x, y = next(iter(loaders["train"]))
        assert x.shape[1:] == (3, 32, 32) and y.max() < 10


@pytest.mark.slow
def test_paper_profile_runs_end_to_end(paper_offline, one_thread):
    """Every experiment of the paper profile runs on each of its data sets (VGG16 GAP from the hub
    cache's file), and each record is a finite pruning result with its parameters."""
    p = profiles.get("paper")
    for dataset in p["datasets"]:
        for experiment in ("double_pruning", "transfer"):
            out = paper_offline["out"] / f"{experiment}_{dataset}.json"
            record = experiments.run(experiment, profile="paper", dataset=dataset, out=out, **SMALL)
            assert out.is_file()
            assert record["params"]["model"] == "vgg16_gap" and record["params"]["pretrained"] is True
            assert record["split_sizes"]["test"] == SMALL["subset_test"], record["split_sizes"]
            text = out.read_text()
            assert "NaN" not in text and "Infinity" not in text
