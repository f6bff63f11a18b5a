"""Invariants of the measures."""

import pytest
import torch
from torch import nn

import basisprune as bp


def test_flops_of_a_conv_match_the_closed_form():
    """FlopCounterMode counts 2 * Cout * Cin * kh * kw * Hout * Wout for a conv (no bias)."""
    conv = nn.Conv2d(3, 8, 3, bias=False)
    x = torch.randn(1, 3, 10, 10)
    assert bp.count_flops(conv, x) == 2 * 8 * 3 * 9 * 8 * 8


def test_ratios_against_reference():
    """Pruning ratio is 1 - kept / reference for params and FLOPs."""
    big, small = nn.Conv2d(4, 8, 3, bias=False), nn.Conv2d(4, 2, 3, bias=False)
    x = torch.randn(1, 4, 6, 6)
    m = bp.measure(small, x, reference=big)
    assert m["params"] == 72 and m["params_ref"] == 288
    assert abs(m["param_pruning_ratio"] - 0.75) < 1e-12 and abs(m["flop_pruning_ratio"] - 0.75) < 1e-12


def test_basis_ceiling_leaves_one_basis_per_layer():
    """One basis of a 3x3 conv from 4 to 16 channels costs D + Cout = 36 + 16 weights (instead of
    36 * 16); the excluded head and the bias are kept whole."""
    model = nn.Sequential(nn.Conv2d(4, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 2))
    out = bp.basis_ceiling(model, torch.randn(1, 4, 6, 6), exclude=["3"])
    assert out["params"] == 36 + 16 + 16 + (256 * 2 + 2)
    assert out["param_pruning_ratio"] == 1 - out["params"] / bp.count_params(model)


def test_vgg_pooled_head_replaces_the_fully_connected_layers():
    """vgg16_gap: VGG16's conv base, a global average pool and one 512 -> C linear classifier."""
    from basisprune.repro import models

    m = models.load("vgg16_gap", 10, pretrained=False).eval()
    name, head = models.classifier(m)
    assert (head.in_features, head.out_features) == (512, 10)
    assert not any(isinstance(x, nn.Linear) for x in m.modules() if x is not head)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_basis_ceiling_of_vgg16_with_and_without_its_fully_connected_head():
    """Basis pruning alone reaches past 99% of vgg16_gap's parameters, but under 12% of
    torchvision's VGG16, whose fully connected layers hold 89% of them."""
    from basisprune.repro import models

    x = torch.randn(1, 3, 32, 32)
    for name, lo, hi in (("vgg16_gap", 0.99, 1.0), ("vgg16", 0.0, 0.12)):
        m = models.load(name, 10, pretrained=False).eval()
        ratio = bp.basis_ceiling(m, x, exclude=[models.classifier(m)[0]])["param_pruning_ratio"]
        assert lo < ratio < hi, (name, ratio)
