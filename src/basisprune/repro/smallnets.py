"""Small CNNs for from-scratch pruning-at-initialization experiments on 2 CPU cores.

Both networks accept 28 px (MNIST-like) and 32 px (CIFAR-like) inputs with any number
of input channels: the spatial size only reaches the classifier through a global
average pool.

* :func:`resnet20` is the CIFAR ResNet-20 of He et al. (2016, sec. 4.2): a 3x3 stem,
  three stages of three BasicBlocks with ``width``, ``2*width`` and ``4*width``
  channels (16/32/64 by default), global average pooling and one Linear layer.
  The two down-sampling shortcuts use **option B** (1x1 strided conv + BatchNorm)
  rather than the paper's parameter-free option A (zero padding).  Option A pads the
  channel dimension with ``F.pad``, which Torch-Pruning's DependencyGraph cannot map
  channel indices through, so structured masks could not be compacted.  Option B adds
  2,752 parameters at width 16 (269,722 -> 272,474).
* :func:`vgg_small` is a VGG-style stack of 3x3 conv-BN-ReLU pairs with three
  max-pools, global average pooling and one Linear layer (about 0.29M parameters at
  the default width 32).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BasicBlock", "ResNetCifar", "VGGSmall", "resnet20", "vgg_small", "build", "NAMES"]


def _init_weights(module: nn.Module) -> None:
    """Kaiming-normal init for conv/linear weights, as in He et al. (2015/2016)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (identity, or option-B 1x1 conv-BN)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Out-of-place add: keeps the block safe for double backward (ProsPr).
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR-style ResNet: stem, three stages of BasicBlocks, GAP, Linear."""

    def __init__(
        self,
        blocks_per_stage: tuple[int, int, int] = (3, 3, 3),
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = width
        stages = []
        for i, n_blocks in enumerate(blocks_per_stage):
            out_planes = width * 2**i
            layers = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(planes, out_planes, stride))
                planes = out_planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes, num_classes)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(self.pool(out), 1))


class VGGSmall(nn.Module):
    """VGG-style net: ``[w, w, M, 2w, 2w, M, 4w, 4w, M]`` conv3x3-BN-ReLU, GAP, Linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        cfg: list[int | str] = [width, width, "M", 2 * width, 2 * width, "M", 4 * width, 4 * width, "M"]
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def resnet20(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> ResNetCifar:
    """CIFAR ResNet-20 (3 stages x 3 BasicBlocks, ``width``/2x/4x channels, option-B shortcuts)."""
    return ResNetCifar((3, 3, 3), num_classes=num_classes, in_channels=in_channels, width=width)


def vgg_small(num_classes: int = 10, in_channels: int = 3, width: int = 32) -> VGGSmall:
    """Six-conv VGG-style network (``width``, 2x, 4x channels; three max-pools)."""
    return VGGSmall(num_classes=num_classes, in_channels=in_channels, width=width)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {"resnet20": resnet20, "vgg_small": vgg_small}
NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: int) -> nn.Module:
    """Build a small network by name (``resnet20`` or ``vgg_small``); extra kwargs (``width``) pass through."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown network {name!r}; known names: {', '.join(NAMES)}")
    return _BUILDERS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
