"""Invariants of channel scaling."""

import pytest
import torch
import torchvision
from torch import nn

import basisprune as bp
from basisprune.channel import ScaledInput


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
