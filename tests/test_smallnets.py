"""Tests for basisprune.repro.smallnets (small CNNs for the from-scratch experiments)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from basisprune.repro import smallnets


@pytest.mark.parametrize("name", smallnets.NAMES)
@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_output_shape_for_mnist_and_cifar_inputs(name: str, size: int, in_channels: int) -> None:
    """Every network maps (N, C, H, H) with H in {28, 32}, C in {1, 3} to (N, num_classes) logits."""
    torch.manual_seed(0)
    net = smallnets.build(name, num_classes=10, in_channels=in_channels).eval()
    with torch.no_grad():
        out = net(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@settings(max_examples=8, deadline=None)
@given(
    name=st.sampled_from(smallnets.NAMES),
    num_classes=st.integers(2, 20),
    in_channels=st.integers(1, 4),
    width=st.sampled_from([2, 4, 8]),
    size=st.sampled_from([28, 32]),
    batch=st.integers(1, 3),
)
def test_output_shape_follows_arguments(
    name: str, num_classes: int, in_channels: int, width: int, size: int, batch: int
) -> None:
    """The logits have shape (batch, num_classes) for any width and input channel count."""
    net = smallnets.build(name, num_classes=num_classes, in_channels=in_channels, width=width).eval()
    with torch.no_grad():
        assert net(torch.randn(batch, in_channels, size, size)).shape == (batch, num_classes)


def test_resnet20_has_the_cifar_layout() -> None:
    """ResNet-20: 19 3x3 convs + 1 Linear (20 layers), 16/32/64 channels, two option-B 1x1 shortcuts."""
    net = smallnets.resnet20()
    convs3 = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    convs1 = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(convs3) == 19 and len(linears) == 1 and len(convs1) == 2
    assert sorted({m.out_channels for m in convs3}) == [16, 32, 64]
    # The published 0.27M (269,722 with option A) plus 2,752 for the two projection shortcuts.
    assert sum(p.numel() for p in net.parameters()) == 269_722 + 2_752


def test_build_rejects_unknown_name_listing_known_ones() -> None:
    """build() raises ValueError naming every known network for an unknown name."""
    with pytest.raises(ValueError, match="resnet20.*vgg_small"):
        smallnets.build("resnet1202")
