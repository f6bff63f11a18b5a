"""Invariants of the measures."""

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
