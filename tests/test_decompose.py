"""Invariants of the basis decomposition (one per test, PyTorch pruning-test style)."""

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import basisprune as bp
from basisprune.decompose import BasisConv2d, BasisLinear, is_eligible_conv


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    depthwise = draw(st.booleans()) and groups > 1
    cin = groups * (1 if depthwise else draw(st.integers(1, 3)))
    cout = groups * draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dilation = draw(st.integers(1, 2))
    same = draw(st.booleans())
    stride = 1 if same else draw(st.integers(1, 3))
    padding = "same" if same else draw(st.integers(0, 2))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    bias = draw(st.booleans())
    return dict(in_channels=cin, out_channels=cout, kernel_size=(kh, kw), stride=stride,
                padding=padding, dilation=dilation, groups=groups, bias=bias, padding_mode=mode)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=conv_configs(), seed=st.integers(0, 2**16))
def test_decomposed_conv_equals_original(cfg, seed):
    """For any Conv2d configuration the basis pair computes the original output (1e-5 relative)."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(**cfg).double()
    x = torch.randn(2, cfg["in_channels"], 11, 12, dtype=torch.float64)
    expected = conv(x)
    if not is_eligible_conv(conv):
        with pytest.raises(ValueError, match="no layer"):
            bp.decompose(nn.Sequential(conv))
        return
    got = BasisConv2d(conv)(x)
    assert got.shape == expected.shape
    scale = expected.abs().max().clamp_min(1e-12)
    assert ((got - expected).abs().max() / scale).item() < 1e-5


@settings(max_examples=40, deadline=None)
@given(cfg=conv_configs(), seed=st.integers(0, 2**16))
def test_basis_filters_are_orthonormal(cfg, seed):
    """Within each group the basis filters, flattened, are orthonormal: V^T V = I."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(**cfg)
    if not is_eligible_conv(conv):
        return
    layer = BasisConv2d(conv)
    v = layer.basis_matrix().double().view(layer.groups, layer.rank, -1)
    gram = v @ v.transpose(1, 2)
    eye = torch.eye(layer.rank, dtype=torch.float64).expand_as(gram)
    assert (gram - eye).abs().max().item() < 1e-5


def test_scale_is_a_trainable_parameter_starting_at_one():
    """Each decomposed layer exposes `scale`, a trainable parameter of ones, one per basis."""
    layer = BasisConv2d(nn.Conv2d(4, 6, 3))
    assert isinstance(layer.scale, nn.Parameter) and layer.scale.requires_grad
    assert torch.equal(layer.scale.detach(), torch.ones(min(6, 4 * 9)))


def test_depthwise_convs_are_left_alone():
    """A depthwise conv has rank 1 per group: decompose keeps it as it is."""
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=8))
    d = bp.decompose(model)
    assert isinstance(d[0], BasisConv2d) and type(d[1]) is nn.Conv2d


class PadInForwardConv(nn.Conv2d):
    """A TF 'same'-padding port: pads asymmetrically in forward, then convolves unpadded."""

    def forward(self, x):
        x = nn.functional.pad(x, (0, 2, 1, 1))
        return super().forward(x)


def test_conv_subclass_keeps_its_own_padding():
    """Conv2d subclasses that pad in forward keep doing so after decomposition."""
    torch.manual_seed(0)
    conv = PadInForwardConv(3, 5, 3, stride=2)
    x = torch.randn(2, 3, 9, 9)
    layer = BasisConv2d(conv)
    assert isinstance(layer.basis, PadInForwardConv)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-6)


def test_linear_decomposition_is_opt_in_and_exact():
    """nn.Linear is decomposed only with include_linear=True, and then exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 7))
    assert isinstance(bp.decompose(model)[2], nn.Linear)
    d = bp.decompose(model, include_linear=True)
    assert isinstance(d[2], BasisLinear)
    x = torch.randn(3, 3, 6, 6)
    torch.testing.assert_close(d(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg11", "densenet121"])
def test_torchvision_models_end_to_end_exact(name):
    """Decomposing a whole torchvision model leaves its outputs unchanged (random init)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10).eval()
    d = bp.decompose(model).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), d(x)
    assert ((a - b).abs().max() / a.abs().max()).item() < 1e-4
    n_eligible = sum(is_eligible_conv(m) for m in model.modules())
    assert len(bp.basis_layers(d)) == n_eligible > 0


def test_pruning_k_weakest_bases_equals_low_rank_reconstruction():
    """Masking the k bases of smallest singular value gives the rank-(r-k) truncated SVD weight."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3).double()
    layer = BasisConv2d(conv)
    r, k = layer.rank, 4
    layer.mask[r - k:] = 0  # torch.linalg.svd returns singular values in descending order
    u, s, vh = torch.linalg.svd(conv.weight.detach().reshape(10, -1), full_matrices=False)
    expected = (u[:, : r - k] * s[: r - k]) @ vh[: r - k]
    torch.testing.assert_close(layer.reconstruct().reshape(10, -1), expected)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    ref = nn.functional.conv2d(x, expected.reshape_as(conv.weight), conv.bias)
    torch.testing.assert_close(layer(x), ref)


@pytest.mark.parametrize(
    "bad, match",
    [(42, "torch.nn.Module"), (nn.Sequential(nn.ReLU(), nn.Linear(3, 1)), "no layer"),
     (nn.Sequential(nn.Conv2d(4, 4, 3, groups=4)), "no layer")],
)
def test_bad_input_is_refused_before_work(bad, match):
    """Not a module, or nothing to decompose: a ValueError that says what is allowed."""
    with pytest.raises(ValueError, match=match):
        bp.decompose(bad)


def test_exclude_must_name_existing_modules():
    """A typo in `exclude` is an error, not a silent no-op."""
    with pytest.raises(ValueError, match="does not have"):
        bp.decompose(nn.Sequential(nn.Conv2d(3, 4, 3)), exclude=["classifer"])
