"""Tests for basisprune.repro.train: devices, seeding, BN modes, freezing, epochs, checkpoints and streams."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from basisprune.repro.checkpoints import CheckpointError, load_checkpoint, restore_streams, save_checkpoint, stream_state
from basisprune.repro.devices import pick_device, seed_everything
from basisprune.repro.train import (
    evaluate,
    freeze,
    set_bn_mode,
    set_memory_format,
    train_epoch,
)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def tiny_data(n: int = 64, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g) * 3 + 1  # far from BN's initial running stats (0, 1)
    y = (x[:, 0] > 1).long()
    return list(zip(x.split(16), y.split(16)))


def bn_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# devices and seeds
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_pick_device_cuda_without_gpu_raises():
    """Asking for CUDA without a GPU is a ValueError that says what is allowed."""
    with pytest.raises(ValueError, match="no CUDA device is available") as info:
        pick_device("cuda")
    assert "'auto'" in str(info.value) and "'cpu'" in str(info.value)


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:x", "cpu0", ""])
def test_pick_device_unknown_name_raises(name):
    """An unknown device string is a ValueError, not a late torch error."""
    with pytest.raises(ValueError, match="unknown device"):
        pick_device(name)


def test_pick_device_auto_and_cpu():
    """'cpu' gives the CPU, 'auto' gives an available device type."""
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(" CPU ") == torch.device("cpu")
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}


@pytest.fixture
def restore_determinism():
    """Undo seed_everything's process-wide switches after the test."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
    if saved[4] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


def test_seed_everything_repeats_random_draws(restore_determinism):
    """The same seed gives the same Python, numpy and torch draws."""
    import random

    import numpy as np

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    seed_everything(123)
    first = draws()
    seed_everything(123)
    assert draws() == first
    assert torch.are_deterministic_algorithms_enabled()


# --------------------------------------------------------------------------------------------
# BatchNorm modes, freezing, epochs
# --------------------------------------------------------------------------------------------
def test_bn_eval_mode_keeps_running_stats_frozen():
    """bn_mode='eval' leaves BN running statistics untouched through a training epoch."""
    torch.manual_seed(0)
    model = bn_mlp()
    before = snapshot(model[1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_epoch(model, tiny_data(), opt, device="cpu", bn_mode="eval")
    after = model[1].state_dict()
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["weight"], after["weight"])  # affine BN params still train


def test_bn_train_mode_updates_running_stats():
    """bn_mode='train' updates BN running statistics."""
    torch.manual_seed(0)
    model = bn_mlp()
    before = snapshot(model[1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_epoch(model, tiny_data(), opt, device="cpu", bn_mode="train")
    assert not torch.equal(before["running_mean"], model[1].running_mean)
    assert model[1].num_batches_tracked.item() == 4


def test_set_bn_mode_rejects_unknown_mode():
    """A bn_mode other than 'train'/'eval' is a ValueError."""
    with pytest.raises(ValueError, match="bn_mode"):
        set_bn_mode(bn_mlp(), "frozen")


@pytest.mark.parametrize("how", ["list", "predicate"])
def test_freeze_only_chosen_params_change(how):
    """After freeze, only the chosen parameters get gradients and change, even with weight decay."""
    torch.manual_seed(0)
    model = bn_mlp()
    if how == "list":
        kept = freeze(model, [model[3].weight])
    else:
        kept = freeze(model, lambda name, p: name == "3.weight")
    assert kept == [model[3].weight]
    before = snapshot(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    train_epoch(model, tiny_data(), opt, device="cpu", bn_mode="eval")
    for name, p in model.named_parameters():
        if name == "3.weight":
            assert p.grad is not None and not torch.equal(p, before[name])
        else:
            assert p.grad is None and torch.equal(p, before[name]), name


def test_freeze_rejects_foreign_parameter():
    """A parameter that is not the model's is refused."""
    with pytest.raises(ValueError, match="not a parameter of the model"):
        freeze(bn_mlp(), [nn.Parameter(torch.zeros(3))])


def test_callback_runs_after_backward_before_step():
    """The callback sees this batch's gradients while the weights are still the pre-step ones."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    w0 = model.weight.detach().clone()
    seen = []

    def callback(m, batch_idx, inputs, targets, loss):
        seen.append((batch_idx, m.weight.detach().clone(), m.weight.grad.clone(), inputs.shape[0], loss.ndim))

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train_epoch(model, tiny_data(), opt, device="cpu", callback=callback)
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    batch_idx, w_seen, grad, size, loss_ndim = seen[0]
    assert torch.equal(w_seen, w0) and grad.abs().sum() > 0 and size == 16 and loss_ndim == 0
    assert torch.allclose(seen[1][1], w0 - 0.5 * grad)


def test_evaluate_counts_and_restores_modes():
    """evaluate reports n/accuracy without grads and leaves the model's modes as they were."""
    model = bn_mlp()
    set_bn_mode(model, "eval")
    modes = [m.training for m in model.modules()]
    out = evaluate(model, tiny_data(), device="cpu")
    assert out["n"] == 64 and 0.0 <= out["accuracy"] <= 1.0 and out["loss"] > 0
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def test_corrupt_checkpoint_is_a_checkpoint_error_naming_the_file(tmp_path):
    """Garbage in a checkpoint file is a CheckpointError (a RuntimeError) naming the file."""
    ckpt = tmp_path / "run.ckpt"
    ckpt.write_bytes(b"\x00garbage, not a checkpoint\xff" * 10)
    with pytest.raises(CheckpointError, match="(?i)delete it") as info:
        load_checkpoint(ckpt)
    assert str(ckpt) in str(info.value) and isinstance(info.value, RuntimeError)

def test_save_load_checkpoint_round_trip_leaves_no_temp_files(tmp_path):
    """save_checkpoint/load_checkpoint round-trip generic state and leave only the target file."""
    path = tmp_path / "sub" / "round3.ckpt"
    save_checkpoint(path, round=3, masks={"a": torch.ones(3, dtype=torch.bool)}, note="x")
    save_checkpoint(path, round=4, masks={"a": torch.zeros(3, dtype=torch.bool)}, note="y")
    state = load_checkpoint(path)
    assert state["round"] == 4 and state["note"] == "y" and not state["masks"]["a"].any()
    assert [p.name for p in path.parent.iterdir()] == ["round3.ckpt"]


def test_restored_streams_draw_the_same_batches_again():
    """restore_streams puts back stream_state's loader generators and global RNG: a shuffled loader
    then yields the same batches, and torch draws the same numbers, as right after the save."""
    x, y = torch.arange(48.0).reshape(48, 1), torch.zeros(48, dtype=torch.long)
    loaders = {"train": DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                                   generator=torch.Generator().manual_seed(0))}
    saved = stream_state(loaders, torch.device("cpu"))
    first = [b[0].flatten().tolist() for b in loaders["train"]], torch.rand(3)
    restore_streams(saved, loaders, torch.device("cpu"))
    again = [b[0].flatten().tolist() for b in loaders["train"]], torch.rand(3)
    assert first[0] == again[0] and torch.equal(first[1], again[1])
    assert sorted(v for batch in first[0] for v in batch) == x.flatten().tolist()

def test_distillation_loss_at_weight_zero_is_cross_entropy():
    """weight 0: the teacher is ignored and the loss is plain cross-entropy."""
    from basisprune.repro.train import distillation_loss

    g = torch.Generator().manual_seed(0)
    out, teach = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    assert distillation_loss(0.0, 4.0)(out, y, teach).item() == pytest.approx(
        torch.nn.functional.cross_entropy(out, y).item())


def test_distillation_loss_pulls_towards_the_teacher():
    """weight 1: zero loss and zero gradient when the student equals the teacher, and a gradient
    that lowers the gap to the teacher otherwise."""
    from basisprune.repro.train import distillation_loss

    g = torch.Generator().manual_seed(1)
    teach = torch.randn(5, 3, generator=g)
    y = torch.randint(0, 3, (5,), generator=g)
    same = teach.clone().requires_grad_(True)
    loss = distillation_loss(1.0, 2.0)(same, y, teach)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert same.grad.abs().max().item() < 1e-6
    other = torch.randn(5, 3, generator=g).requires_grad_(True)
    fn = distillation_loss(1.0, 2.0)
    before = fn(other, y, teach)
    before.backward()
    with torch.no_grad():
        stepped = other - 0.1 * other.grad
    assert fn(stepped, y, teach).item() < before.item()


@pytest.mark.parametrize("weight,temperature", [(-0.1, 4.0), (1.5, 4.0), (0.5, 0.0), (0.5, float("inf"))])
def test_distillation_loss_refuses_bad_settings(weight, temperature):
    """Weights outside [0, 1] and temperatures that are not finite and > 0 are refused."""
    from basisprune.repro.train import distillation_loss

    with pytest.raises(ValueError, match="distillation"):
        distillation_loss(weight, temperature)


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_channels_last_changes_the_layout_not_the_training():
    """One epoch with the weights laid out channels_last leaves them so, and ends where the
    contiguous epoch ends up to rounding (same loss, same weights)."""
    torch.manual_seed(1)
    data = TensorDataset(torch.randn(48, 3, 9, 9), torch.randint(0, 4, (48,)))
    out = {}
    for fmt in ("contiguous", "channels_last"):
        model = _conv_net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        r = train_epoch(model, DataLoader(data, batch_size=16), opt, device="cpu", bn_mode="train", memory_format=fmt)
        out[fmt] = (r["loss"], model)
    w = out["channels_last"][1][0].weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert out["contiguous"][1][0].weight.is_contiguous()
    assert out["channels_last"][0] == pytest.approx(out["contiguous"][0], rel=1e-5)
    for a, b in zip(out["contiguous"][1].parameters(), out["channels_last"][1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_set_memory_format_refuses_an_unknown_layout():
    with pytest.raises(ValueError, match="memory_format must be one of"):
        set_memory_format(_conv_net(), "nhwc")
