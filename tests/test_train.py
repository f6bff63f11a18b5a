"""Tests for basisprune.repro.train: devices, seeding, BN modes, freezing, epochs and resumable fit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from basisprune.repro.results import read_results, strip_volatile
from basisprune.repro.train import (
    CheckpointError,
    evaluate,
    fit,
    freeze,
    load_checkpoint,
    pick_device,
    save_checkpoint,
    seed_everything,
    set_bn_mode,
    set_memory_format,
    train_epoch,
)

SCRIPT = Path(__file__).parent / "scripts" / "tiny_fit.py"
EPOCHS = 4
KILL_AT_BATCH = 2 * 8 + 3  # the 3rd step of epoch 3 (8 steps per epoch): after epoch 2's checkpoint


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
class CountingLoader:
    """Wraps an iterable of batches and counts how many batches were drawn from it."""

    def __init__(self, batches):
        self.batches = batches
        self.drawn = 0

    def __iter__(self):
        for batch in self.batches:
            self.drawn += 1
            yield batch

    def __len__(self):
        return len(self.batches)


def tiny_data(n: int = 64, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g) * 3 + 1  # far from BN's initial running stats (0, 1)
    y = (x[:, 0] > 1).long()
    return list(zip(x.split(16), y.split(16)))


def bn_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def start_script(workdir: Path, name: str, kill_at: int | None = None) -> subprocess.Popen:
    cmd = [
        sys.executable, str(SCRIPT), "--epochs", str(EPOCHS),
        "--checkpoint", str(workdir / f"{name}.ckpt"),
        "--results", str(workdir / f"{name}.json"),
        "--weights", str(workdir / f"{name}.weights"),
    ]
    if kill_at is not None:
        cmd += ["--kill-at-batch", str(kill_at)]
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0"}
    with open(workdir / f"{name}.{'killed' if kill_at else 'run'}.log", "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)


def finish(proc: subprocess.Popen, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def log_of(workdir: Path, name: str, killed: bool = False) -> str:
    return (workdir / f"{name}.{'killed' if killed else 'run'}.log").read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    """Runs of tests/scripts/tiny_fit.py, two at a time (2 cores):

    ``a`` and ``c`` uninterrupted; ``b`` SIGKILLed mid-epoch 3, then started again on the same
    checkpoint.
    """
    d = tmp_path_factory.mktemp("tiny_fit")
    a, b = start_script(d, "a"), start_script(d, "b", kill_at=KILL_AT_BATCH)
    rc_a, rc_b_killed = finish(a), finish(b)
    assert rc_a == 0, log_of(d, "a")
    killed_ckpt_epoch = load_checkpoint(d / "b.ckpt")["epoch"] if (d / "b.ckpt").exists() else None
    killed_left_results = (d / "b.json").exists()
    b2, c = start_script(d, "b"), start_script(d, "c")
    rc_b, rc_c = finish(b2), finish(c)
    assert rc_b == 0, log_of(d, "b")
    assert rc_c == 0, log_of(d, "c")
    return SimpleNamespace(
        dir=d, rc_b_killed=rc_b_killed, killed_ckpt_epoch=killed_ckpt_epoch,
        killed_left_results=killed_left_results,
    )


# --------------------------------------------------------------------------------------------
# kill and resume, determinism (subprocess runs)
# --------------------------------------------------------------------------------------------
def test_kill_happens_mid_run_after_epoch_two_checkpoint(runs):
    """The crash run really dies by SIGKILL in epoch 3, leaving epoch 2's checkpoint and no results."""
    assert runs.rc_b_killed == -signal.SIGKILL, log_of(runs.dir, "b", killed=True)
    assert runs.killed_ckpt_epoch == 2
    assert not runs.killed_left_results


def test_resumed_run_matches_uninterrupted_run(runs):
    """Killed and restarted, the run ends with the same metrics, history and exact weights."""
    uninterrupted = strip_volatile(read_results(runs.dir / "a.json"))
    resumed = strip_volatile(read_results(runs.dir / "b.json"))
    assert resumed["final"] == uninterrupted["final"]
    assert resumed["history"] == uninterrupted["history"]
    assert resumed == uninterrupted
    wa = torch.load(runs.dir / "a.weights", weights_only=True)
    wb = torch.load(runs.dir / "b.weights", weights_only=True)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_identical_cpu_runs_write_identical_results(runs):
    """Two identical CPU runs write the same results file once volatile fields are stripped."""
    first = read_results(runs.dir / "a.json")
    second = read_results(runs.dir / "c.json")
    assert strip_volatile(first) == strip_volatile(second)
    assert first["final"]["val"]["accuracy"] is not None


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
def _fit_setup():
    torch.manual_seed(0)
    model = bn_mlp()
    train = CountingLoader(tiny_data())
    val = CountingLoader(tiny_data(32, seed=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, {"train": train, "val": val}, opt


def test_corrupt_checkpoint_raises_before_training(tmp_path):
    """Garbage in the checkpoint file is a CheckpointError naming it, before any batch is drawn."""
    ckpt = tmp_path / "run.ckpt"
    ckpt.write_bytes(b"\x00garbage, not a checkpoint\xff" * 10)
    model, loaders, opt = _fit_setup()
    before = snapshot(model)
    with pytest.raises(CheckpointError, match="(?i)delete it") as info:
        fit(model, loaders, opt, 2, device="cpu", checkpoint=ckpt)
    assert str(ckpt) in str(info.value) and isinstance(info.value, RuntimeError)
    assert loaders["train"].drawn == 0 and loaders["val"].drawn == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_mismatching_checkpoint_raises_before_training(tmp_path):
    """A checkpoint of a differently shaped model is a CheckpointError before any batch is drawn."""
    ckpt = tmp_path / "run.ckpt"
    model, loaders, opt = _fit_setup()
    fit(model, loaders, opt, 1, device="cpu", checkpoint=ckpt)
    other = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    train = CountingLoader(tiny_data())
    with pytest.raises(CheckpointError, match="does not match the model"):
        fit(other, {"train": train, "val": loaders["val"]}, torch.optim.SGD(other.parameters(), lr=0.1), 2,
            device="cpu", checkpoint=ckpt)
    assert train.drawn == 0


def test_complete_checkpoint_returns_without_training(tmp_path):
    """Re-running a finished fit loads the saved weights and history instead of training again."""
    ckpt = tmp_path / "run.ckpt"
    model, loaders, opt = _fit_setup()
    done = fit(model, loaders, opt, 2, device="cpu", checkpoint=ckpt, eval_every=2)
    assert [sorted(h) for h in done["history"]] == [["epoch", "lr", "train"], ["epoch", "lr", "train", "val"]]
    model2, loaders2, opt2 = _fit_setup()
    again = fit(model2, loaders2, opt2, 2, device="cpu", checkpoint=ckpt, eval_every=2)
    assert loaders2["train"].drawn == 0 and loaders2["val"].drawn == 0
    assert again == done
    assert all(torch.equal(v, model2.state_dict()[k]) for k, v in model.state_dict().items())


def test_save_load_checkpoint_round_trip_leaves_no_temp_files(tmp_path):
    """save_checkpoint/load_checkpoint round-trip generic state and leave only the target file."""
    path = tmp_path / "sub" / "round3.ckpt"
    save_checkpoint(path, round=3, masks={"a": torch.ones(3, dtype=torch.bool)}, note="x")
    save_checkpoint(path, round=4, masks={"a": torch.zeros(3, dtype=torch.bool)}, note="y")
    state = load_checkpoint(path)
    assert state["round"] == 4 and state["note"] == "y" and not state["masks"]["a"].any()
    assert [p.name for p in path.parent.iterdir()] == ["round3.ckpt"]


def test_fit_checkpoint_with_dataloader_generator(tmp_path):
    """fit saves a shuffling DataLoader's generator state and records one history entry per epoch."""
    x, y = torch.randn(48, 4), torch.randint(0, 2, (48,))
    gen = torch.Generator().manual_seed(0)
    loaders = {"train": DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=gen)}
    model = nn.Linear(4, 2)
    out = fit(model, loaders, torch.optim.SGD(model.parameters(), lr=0.1), 2, device="cpu",
              checkpoint=tmp_path / "c.ckpt")
    state = load_checkpoint(tmp_path / "c.ckpt")
    assert state["epoch"] == 2 and len(out["history"]) == 2
    assert torch.equal(state["generators"]["train.generator"], gen.get_state())


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
