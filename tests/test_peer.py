"""Invariants of the Torch-Pruning peer: FLOP target reached, shapes consistent, fine-tuning trains."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import basisprune as bp
from basisprune.repro import peer, smallnets



pytestmark = pytest.mark.usefixtures("one_thread")


X = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))


def tiny_resnet():
    torch.manual_seed(0)
    return smallnets.resnet20(num_classes=4, in_channels=1, width=8)


@pytest.mark.parametrize("importance,steps", [("magnitude", 1), ("taylor", 2)])
def test_pruned_flops_reach_target_and_shapes_agree(importance, steps):
    """The pruned net's FLOPs are at most (1 - target) of the reference, its output shape is the
    reference's, and the reference is left untouched."""
    ref = tiny_resnet()
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    target = 0.4
    net, info = peer.torch_pruning_channel_prune(ref, X, target, importance=importance,
                                                 iterative_steps=steps, return_info=True)
    flops, flops_ref = bp.count_flops(net, X), bp.count_flops(ref, X)
    assert flops <= (1 - target) * flops_ref
    assert info["flop_pruning_ratio"] == pytest.approx(1 - flops / flops_ref)
    assert net.eval()(X).shape == ref.eval()(X).shape
    assert net.linear.out_features == 4  # the classifier's outputs are never pruned
    assert all(torch.equal(v, before[k]) for k, v in ref.state_dict().items())


def test_unreachable_target_is_refused():
    """A target beyond what max_pruning_ratio allows raises ValueError instead of under-pruning."""
    with pytest.raises(ValueError, match="cannot reach"):
        peer.torch_pruning_channel_prune(tiny_resnet(), X, 0.95, max_pruning_ratio=0.2)


def test_finetune_changes_weights_and_returns_history():
    """finetune trains all weights (every conv changes), freezes them afterwards and returns one
    history entry per epoch plus the initial evaluation, with accuracies."""
    net = peer.torch_pruning_channel_prune(tiny_resnet(), X, 0.3)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 4, (16,), generator=g))
    loaders = {"train": DataLoader(data, batch_size=8), "test": DataLoader(data, batch_size=16)}
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    hist = peer.finetune(net, loaders, epochs=2, lr=1e-2, device="cpu")
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert all(0.0 <= h["accuracy_test"] <= 1.0 for h in hist)
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    assert all(not torch.equal(before[f"{n}.weight"], net.get_submodule(n).weight) for n in convs)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training


def test_finetune_counts_wall_time_from_start_seconds():
    """Wall seconds grow epoch by epoch and include the starting offset."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 4, (16,), generator=g))
    loaders = {"train": DataLoader(data, batch_size=8), "test": DataLoader(data, batch_size=16)}
    walls = [h["wall_seconds"] for h in peer.finetune(tiny_resnet(), loaders, 2, 1e-2, start_seconds=5.0)]
    assert walls[0] >= 5.0 and walls == sorted(walls)


def test_finetune_stops_at_a_met_target():
    """With stop_at_target and a target the initial evaluation already meets, no epoch is trained."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 4, (16,), generator=g))
    loaders = {"train": DataLoader(data, batch_size=8), "test": DataLoader(data, batch_size=16)}
    hist = peer.finetune(tiny_resnet(), loaders, 3, 1e-2, target=0.0, stop_at_target=True)
    assert [h["epoch"] for h in hist] == [0]
