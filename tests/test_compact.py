"""Invariants of compaction: smaller, never larger per layer, same outputs, save/load."""

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import basisprune as bp
from conftest import random_basis_masks
from basisprune.compact import CompactionError, pair_cost


def tiny_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )


@settings(max_examples=25, deadline=None)
@given(keep=st.floats(0.05, 1.0), seed=st.integers(0, 1000))
def test_compact_model_equals_masked_model(keep, seed):
    """Whatever the masks, the compact model computes the masked model's outputs."""
    torch.manual_seed(seed)
    d = bp.decompose(tiny_net().eval(), include_linear=True).eval()
    random_basis_masks(d, keep, seed)
    x = torch.randn(2, 3, 12, 12)
    c = bp.compact(d).eval()
    assert not bp.basis_layers(c)
    torch.testing.assert_close(c(x), d(x), rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(keep=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_compaction_never_grows_a_layer(keep, seed):
    """Each compacted layer has at most the parameters and FLOPs of the original layer."""
    torch.manual_seed(seed)
    base = tiny_net().eval()
    d = bp.decompose(base).eval()
    random_basis_masks(d, keep, seed)
    c = bp.compact(d).eval()
    x = torch.randn(1, 3, 12, 12)
    for name in bp.basis_layers(d):
        orig, new = base.get_submodule(name), c.get_submodule(name)
        assert bp.count_params(new) <= bp.count_params(orig)
        conv_in = _layer_input(base, name, x)
        assert bp.count_flops(new, conv_in) <= bp.count_flops(orig, conv_in)


def _layer_input(model, name, x):
    seen = {}

    def hook(module, inputs, output):
        seen["x"] = inputs[0]

    h = model.get_submodule(name).register_forward_hook(hook)
    model(x)
    h.remove()
    return seen["x"]


@pytest.mark.parametrize("cin, cout, k, keep", [(8, 16, 3, 3), (16, 32, 1, 5), (4, 64, 3, 2)])
def test_param_count_matches_closed_form(cin, cout, k, keep):
    """A kept pair has D*r' + r'*Cout weights (+ bias); D = Cin*kh*kw."""
    layer = bp.BasisConv2d(nn.Conv2d(cin, cout, k))
    layer.mask.zero_()
    layer.mask[:keep] = 1
    d = cin * k * k
    pair, orig = pair_cost(layer, keep)
    assert pair == d * keep + keep * cout and orig == d * cout
    c = bp.compact(nn.Sequential(layer))[0]
    expected = min(pair, orig) + cout  # folded back when the pair is not smaller
    assert bp.count_params(c) == expected


def test_layer_folds_back_when_pair_costs_more():
    """With rank close to full the compact layer is a single conv of the original shape."""
    conv = nn.Conv2d(8, 8, 3)
    d = bp.decompose(nn.Sequential(conv))
    c = bp.compact(d)
    assert isinstance(c[0], nn.Conv2d) and c[0].weight.shape == conv.weight.shape
    x = torch.randn(1, 8, 6, 6)
    torch.testing.assert_close(c(x), conv(x), rtol=1e-4, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    """A saved compact model loads back and gives identical outputs."""
    torch.manual_seed(0)
    d = bp.decompose(tiny_net().eval()).eval()
    random_basis_masks(d, 0.3, 0)
    c = bp.compact(d).eval()
    bp.save_model(c, tmp_path / "m.pt")
    loaded = bp.load_model(tmp_path / "m.pt").eval()
    x = torch.randn(2, 3, 12, 12)
    assert torch.equal(loaded(x), c(x))


def test_channel_pruning_resnet18_through_dependency_graph():
    """Pruning channel groups of resnet18 keeps shapes consistent and equals the masked model."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    s = bp.add_channel_scales(model, x, ignored=["fc"]).eval()
    g = torch.Generator().manual_seed(0)
    for cs in bp.channel_scales(s).values():
        cs.mask.copy_((torch.rand(cs.num_channels, generator=g) > 0.4).float())
        with torch.no_grad():
            cs.scale.uniform_(0.5, 1.5, generator=g)
    c = bp.compact(s, x).eval()
    with torch.no_grad():
        torch.testing.assert_close(c(x), s(x), rtol=1e-4, atol=1e-6)
    kept_stream = bp.channel_scales(s)["conv1"].kept  # the stem's group is the layer1 residual stream
    assert c.layer1[0].conv1.in_channels == kept_stream == c.layer1[1].conv2.out_channels
    assert bp.count_params(c) < bp.count_params(model)


def test_compact_refuses_channels_without_example_input():
    """Channel groups are removed through a traced graph: no input, a clear error."""
    model = tiny_net().eval()
    s = bp.add_channel_scales(model, torch.randn(1, 3, 12, 12), ignored=["9"])
    with pytest.raises(ValueError, match="example_input"):
        bp.compact(s)


class ReverseChannels(nn.Module):
    """Reverses the channel order: Torch-Pruning maps it as an element-wise op (the identity)."""

    def forward(self, x):
        return x.flip(1)


def test_compact_raises_instead_of_returning_a_model_that_differs():
    """When the graph misleads compaction, compact() raises one line; it returns no wrong model."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), ReverseChannels(), nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    s = bp.add_channel_scales(m, x, ignored=["3"])
    bp.channel_scales(s)["0"].mask[:3] = 0
    with pytest.raises(CompactionError, match="differs from the masked model on example_input") as info:
        bp.compact(s, x)
    assert "\n" not in str(info.value)


def test_channels_last_linear_layers_decompose_and_compact_exactly():
    """ConvNeXt's pointwise Linear layers on (B, H, W, C) tensors: the basis form equals the block,
    and the compact model equals the masked one."""
    from test_channel import CNBlock

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), CNBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(8, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    d = bp.decompose(m, include_linear=True, exclude=["4"]).eval()
    assert {"1.pw1", "1.pw2"} <= set(bp.basis_layers(d))
    torch.testing.assert_close(d(x), m(x), rtol=1e-4, atol=1e-5)
    random_basis_masks(d, 0.5, 0)
    torch.testing.assert_close(bp.compact(d, x)(x), d(x), rtol=1e-4, atol=1e-5)
