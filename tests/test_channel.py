"""Invariants of channel scaling."""

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import basisprune as bp
from basisprune.channel import ChannelGraphError, ScaledInput, unsupported_channel_groups


def chain():
    return nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


def test_scales_start_at_one_and_change_nothing():
    """Fresh channel scales are ones: the model computes what it computed before."""
    torch.manual_seed(0)
    m = chain().eval()
    x = torch.randn(2, 3, 9, 9)
    s = bp.add_channel_scales(m, x, ignored=["6"])
    torch.testing.assert_close(s(x), m(x))
    assert all(torch.equal(c.scale.detach(), torch.ones(c.num_channels)) for c in bp.channel_scales(s).values())


def test_scale_multiplies_the_activation_of_the_root_conv_in_a_chain():
    """In a chain the group scale acts after the root conv's activation, as in the paper."""
    torch.manual_seed(0)
    m = chain().eval()
    x = torch.randn(2, 3, 9, 9)
    s = bp.add_channel_scales(m, x, ignored=["6"])
    sc = bp.channel_scales(s)["0"]
    with torch.no_grad():
        sc.scale.copy_(torch.linspace(0.1, 2.0, 6))
    h = torch.relu(m[0](x)) * sc.scale.detach().view(1, -1, 1, 1)
    expected = m[4:](torch.relu(m[2](h)))
    torch.testing.assert_close(s(x), expected)


def test_l1_penalty_is_sum_of_live_absolute_scales():
    """The regulariser is sum |s| over channels that are not pruned."""
    m = chain().eval()
    s = bp.add_channel_scales(m, torch.randn(1, 3, 9, 9), ignored=["6"])
    scales = bp.channel_scales(s)
    with torch.no_grad():
        scales["0"].scale.fill_(-2.0)
    scales["0"].mask[:2] = 0
    assert bp.l1_penalty(s).item() == pytest.approx(4 * 2.0 + 8 * 1.0)


def test_mobilenet_groups_cover_expansion_and_residual_channels():
    """MobileNetV2 gets one group per expansion and per residual stream, all consumers wrapped."""
    m = torchvision.models.mobilenet_v2(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    s = bp.add_channel_scales(m, x, ignored=["classifier.1"])
    wrapped = {n for n, mod in s.named_modules() if isinstance(mod, ScaledInput)}
    # the project conv consumes expansion channels; the classifier the last 1280; expand convs a stream
    assert {"features.17.conv.2", "classifier.1", "features.16.conv.0.0"} <= wrapped
    assert len(bp.channel_scales(s)) == 25
    torch.testing.assert_close(s(x), m(x))


def test_bad_roots_are_named():
    """Asking for a group root that does not exist lists the roots that do."""
    with pytest.raises(ValueError, match="rooted at"):
        bp.add_channel_scales(chain(), torch.randn(1, 3, 9, 9), ignored=["6"], roots=["7"])


def test_not_a_module_is_refused():
    """A ValueError that says a module is expected."""
    with pytest.raises(ValueError, match="nn.Module"):
        bp.add_channel_scales("vgg", torch.randn(1, 3, 9, 9))


# ----------------------------------------------------------- grouped convs, shuffles, channels-last
def grouped_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1, groups=4), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 12, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    )


def test_grouped_conv_ties_the_same_in_group_position_of_every_group():
    """Channels a grouped conv reads (or writes) at one in-group position form one unit."""
    s = bp.add_channel_scales(grouped_cnn().eval(), torch.randn(1, 3, 8, 8), ignored=["10"])
    scales = bp.channel_scales(s)
    read, written = scales["0"], scales["3"]  # 16 channels read by groups of 4; 24 written by groups of 6
    assert (read.num_units, read.num_channels) == (4, 16)
    assert read.unit_of.tolist() == [0, 1, 2, 3] * 4
    assert (written.num_units, written.num_channels) == (6, 24)
    assert scales["6"].num_units == scales["6"].num_channels == 12  # an ordinary conv ties nothing


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), keep=st.floats(0.1, 0.9))
def test_grouped_conv_compacts_to_the_masked_model(seed, keep):
    """Whatever the unit masks, the compact grouped CNN runs and equals the masked model."""
    torch.manual_seed(seed)
    x = torch.randn(2, 3, 8, 8)
    s = bp.add_channel_scales(grouped_cnn().eval(), x, ignored=["10"]).eval()
    g = torch.Generator().manual_seed(seed)
    for cs in bp.channel_scales(s).values():
        cs.mask.copy_((torch.rand(cs.num_units, generator=g) < keep).float())
        cs.mask[0] = 1
        with torch.no_grad():
            cs.scale.uniform_(0.5, 1.5, generator=g)
    c = bp.compact(s, x).eval()
    with torch.no_grad():
        torch.testing.assert_close(c(x), s(x), rtol=1e-4, atol=1e-5)
    assert c[3].groups == 4 and c[3].in_channels == 4 * bp.channel_scales(s)["0"].kept


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle: a reshape that splits the channel dimension."""

    def forward(self, x):
        b, c, h, w = x.shape
        return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


def test_channel_shuffle_is_refused_in_one_line_before_any_change():
    """Channels that pass through a shuffle (which Torch-Pruning maps as if it were the identity) are
    refused in one line naming the reshape; the model is untouched."""
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), Shuffle(), nn.Conv2d(8, 4, 1)).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ChannelGraphError, match=r"reshape \(1, 8, 4, 4\) -> \(1, 2, 4, 4, 4\) .* splits the channel") as info:
        bp.add_channel_scales(m, torch.randn(1, 3, 4, 4), ignored=["3"], inplace=True)
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)
    assert not bp.channel_scales(m) and all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


class CNBlock(nn.Module):
    """ConvNeXt's block: depthwise conv, channels-last LayerNorm and pointwise linear layers."""

    def __init__(self, dim: int):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1, self.act, self.pw2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.layer_scale = nn.Parameter(torch.rand(dim, 1, 1) + 0.5)

    def forward(self, x):
        y = self.pw2(self.act(self.pw1(self.norm(self.dw(x).permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return x + self.layer_scale * y


def convnext_like():
    return nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), CNBlock(8), CNBlock(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def test_channels_last_linear_is_scaled_on_its_last_dimension():
    """A scaled pointwise Linear on (B, H, W, C) multiplies C, as the channel scale means."""
    torch.manual_seed(0)
    m = convnext_like().eval()
    x = torch.randn(1, 3, 8, 8)
    s = bp.add_channel_scales(m, x, ignored=["5"]).eval()
    torch.testing.assert_close(s(x), m(x))
    hidden = bp.channel_scales(s)["1.pw1"]
    with torch.no_grad():
        hidden.scale.copy_(torch.linspace(0.1, 2.0, 32))
    blk = m[1]
    h = blk.act(blk.pw1(blk.norm(blk.dw(m[0](x)).permute(0, 2, 3, 1)))) * hidden.scale.detach()
    expected = m[0](x) + blk.layer_scale * blk.pw2(h).permute(0, 3, 1, 2)
    torch.testing.assert_close(s[1](m[0](x)), expected)


def test_groups_through_a_channel_layernorm_are_left_unscaled_with_a_reason():
    """The residual stream passes through a LayerNorm over channels: no scale, a named reason;
    with on_unsupported='raise' the model is refused in one line."""
    m = convnext_like().eval()
    x = torch.randn(1, 3, 8, 8)
    why = unsupported_channel_groups(m, x, ignored=["5"])
    assert len(why) == 1 and "(LayerNorm), which mixes channels" in next(iter(why.values()))
    assert set(bp.channel_scales(bp.add_channel_scales(m, x, ignored=["5"]))) == {"1.pw1", "2.pw1"}
    with pytest.raises(ChannelGraphError, match="is not supported: its channels pass through"):
        bp.add_channel_scales(m, x, ignored=["5"], on_unsupported="raise")
