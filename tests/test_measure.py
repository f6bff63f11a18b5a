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


def _masked_linear(n: int, keep: int):
    lin = nn.Linear(n, n, bias=False)
    d = bp.decompose(nn.Sequential(lin), include_linear=True)
    layer = d[0]
    layer.mask.zero_()
    layer.mask[:keep] = 1
    return d, layer


def test_savings_below_break_even_are_one_pair_per_basis():
    """Below break-even every pruned basis saves exactly its pair's weights (D + Cout): an 8x8
    linear with 3 bases left costs 16 per basis and 64 in all, so a basis is 16/64 of the weights."""
    d, layer = _masked_linear(8, 3)
    s = bp.basis_savings({"0": layer}, {"0": 1})
    assert s["0"] == pytest.approx(16 / 64)


def test_savings_above_break_even_are_amortised_to_the_fold():
    """Above break-even (8 bases of an 8x8 linear: the pair would cost 128 > 64, so it is folded)
    pruning one basis saves nothing yet; the saving is amortised over the path down to one basis,
    (64 - 16) / 7 weights, less than a pair's 16."""
    d, layer = _masked_linear(8, 8)
    s = bp.basis_savings({"0": layer}, {"0": 1})
    assert s["0"] == pytest.approx((64 - 16) / 7 / 64)
    assert s["0"] < 16 / 64


def test_a_layer_at_one_basis_saves_nothing_and_is_never_ranked_first():
    """One basis left: the saving is 0, and the 'saved' normalisation ranks its units after every
    unit that saves something."""
    d, layer = _masked_linear(8, 1)
    assert bp.basis_savings({"0": layer}, {"0": 1})["0"] == 0.0
    scores = {"a": torch.tensor([1e-9, 1e-9]), "b": torch.tensor([5.0, 6.0, 7.0])}
    masks = {"a": torch.ones(2), "b": torch.ones(3)}
    rule = bp.PruningRule(fraction=0.45, normalize="saved", layer_floor=0.0)
    new = bp.select(scores, masks, rule, costs={"a": 0.0, "b": 1.0})
    assert new["a"].tolist() == [1.0, 1.0] and new["b"].tolist() == [0.0, 0.0, 1.0]


def test_output_positions_count_where_each_weight_is_used():
    """A 3x3 conv on a 6x6 input without padding uses each weight at 4x4 positions; a linear once."""
    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(48, 5))
    assert bp.output_positions(m, torch.randn(2, 2, 6, 6), ["0", "2"]) == {"0": 16, "2": 1}
    with pytest.raises(ValueError, match="no module"):
        bp.output_positions(m, torch.randn(1, 2, 6, 6), ["9"])


def test_flop_share_weights_layers_by_their_output_positions():
    """Two equal layers, one used at 4x the positions: its basis saves the same weights but 4x the
    multiply-accumulates, so its share is larger."""
    d1, l1 = _masked_linear(8, 3)
    d2, l2 = _masked_linear(8, 3)
    s = bp.basis_savings({"a": l1, "b": l2}, {"a": 1, "b": 4})
    assert s["b"] > s["a"]
    assert s["a"] == pytest.approx(0.5 * 16 / 128 + 0.5 * 16 / (64 + 256))
