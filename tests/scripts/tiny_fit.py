"""A tiny, deterministic CPU training run for tests/test_train.py (kill-and-resume, determinism).

Trains a small CNN with BatchNorm and dropout on synthetic 8x8 images (shuffled loader with its own
generator, SGD with momentum and weight decay, StepLR, an L1 regulariser on the BN scales), through
``basisprune.repro.train.fit`` with a checkpoint, then writes the final weights and a results file.

``--kill-at-batch N`` makes the process SIGKILL itself at the N-th training step (counted over the
whole run, from 1), between backward() and optimizer.step(), to simulate a crash mid-epoch.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from basisprune.repro.results import Timer, write_results
from basisprune.repro.train import fit, seed_everything

BATCHES_PER_EPOCH = 8  # 256 training samples / batch size 32


def make_data(seed: int) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(320, 1, 8, 8, generator=g)
    teacher = torch.randn(64, 4, generator=g)
    y = (x.flatten(1) @ teacher).argmax(1)
    return TensorDataset(x[:256], y[:256]), TensorDataset(x[256:], y[256:])


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(8 * 8 * 8, 4),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kill-at-batch", type=int, default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)
    seed_everything(args.seed)
    timings: dict[str, float] = {}
    train_set, val_set = make_data(args.seed)
    loaders = {
        "train": DataLoader(
            train_set, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(args.seed)
        ),
        "val": DataLoader(val_set, batch_size=32),
    }
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    steps = 0

    def callback(model, batch_idx, inputs, targets, loss):
        nonlocal steps
        steps += 1
        if args.kill_at_batch is not None and steps == args.kill_at_batch:
            os.kill(os.getpid(), signal.SIGKILL)

    with Timer(timings, "fit"):
        out = fit(
            model, loaders, optimizer, args.epochs, device="cpu", checkpoint=args.checkpoint,
            regularizer=lambda m: 1e-3 * m[1].weight.abs().sum(), bn_mode="train",
            scheduler=scheduler, callback=callback,
        )
    torch.save(model.state_dict(), args.weights)
    params = {"epochs": args.epochs, "seed": args.seed, "lr": 0.1, "batch_size": 32}
    write_results(args.results, out, params=params, seed=args.seed, timings=timings)


if __name__ == "__main__":
    main()
