"""Invariants of the inference form and of the checked ONNX export.

The inference form must compute what the pruned model computes; the tests compare in float64
where the algebra is the point (tolerance 1e-9 of the output's scale), in float32 on torchvision
models (1e-5 of the output's scale). Timing-driven choices are tested with fake timers.
"""

import os

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import basisprune as bp
from basisprune import deploy, fx_passes, inference, merge
from conftest import random_basis_masks

pytestmark = pytest.mark.usefixtures("one_thread")


def randomise_batchnorms(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial frozen statistics and affine parameters, so that folding them is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return model


def tiny_net():
    """Conv-BN pairs, a grouped conv, a linear chain without activation, dropout, a linear head."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),  # no activation:
        nn.Conv2d(16, 12, 1), nn.BatchNorm2d(12), nn.ReLU(),                         # a linear chain
        nn.Conv2d(12, 12, 3, padding=1, groups=2), nn.ReLU(), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    )


def assert_same(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    got, want = got.detach(), want.detach()
    scale = float(want.abs().max())
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= rel * max(scale, 1e-12), float((got - want).abs().max()) / scale


def pruned(seed: int, keep: float, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    d = bp.decompose(randomise_batchnorms(tiny_net(), seed).to(dtype), include_linear=True).eval()
    random_basis_masks(d, keep, seed)
    return d


def count(model: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@settings(max_examples=20, deadline=None)
@given(keep=st.floats(0.05, 1.0), seed=st.integers(0, 1000), merge=st.sampled_from(["flops", "none"]),
       fmt=st.sampled_from(["contiguous", "channels_last"]))
def test_inference_form_equals_pruned_model_in_float64(keep, seed, merge, fmt):
    """Whatever the masks, scales, merge mode and memory format, the inference form computes the
    masked (and so the compact) model's outputs, to float64 rounding."""
    d = pruned(seed, keep)
    x = torch.randn(3, 3, 10, 10, dtype=torch.float64)
    f = bp.inference_form(d, x, merge=merge, memory_format=fmt)
    assert_same(f(x), d(x), 1e-9)
    y = torch.randn(1, 3, 10, 10, dtype=torch.float64)  # another batch size
    assert_same(f(y), d(y), 1e-9)


def test_every_batchnorm_after_a_conv_is_folded():
    """No batch norm is left in a net whose batch norms all follow a conv read only by them."""
    f = bp.inference_form(pruned(0, 0.5), torch.randn(2, 3, 10, 10, dtype=torch.float64))
    assert count(f, nn.BatchNorm2d) == 0
    assert len(f.inference_report["bn_folded"]) == 3


def test_batchnorm_not_folded_when_the_conv_output_is_read_twice():
    """A batch norm whose conv output also feeds a residual addition stays (folding it would
    change the addition), and the output is unchanged."""

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    m = randomise_batchnorms(Residual(), 0).double().eval()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    f = bp.inference_form(m, x)
    assert count(f, nn.BatchNorm2d) == 1
    assert_same(f(x), m(x), 1e-12)


def test_batchnorm_without_running_statistics_is_kept():
    """A batch norm that normalises by the batch in eval mode is not folded."""
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).double().eval()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    f = bp.inference_form(m, x)
    assert count(f, nn.BatchNorm2d) == 1
    assert_same(f(x), m(x), 1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), groups=st.sampled_from([1, 2, 4]), k=st.sampled_from([1, 3]),
       stride=st.sampled_from([1, 2]), widths=st.lists(st.sampled_from([4, 8, 12]), min_size=1, max_size=3),
       bias=st.booleans())
def test_merge_layers_equals_the_chain(seed, groups, k, stride, widths, bias):
    """A conv followed by 1x1 convs of its groups merges into one conv with the chain's outputs."""
    torch.manual_seed(seed)
    chain = [nn.Conv2d(8, 8, k, stride=stride, padding=k // 2, groups=groups, bias=bias)]
    cin = 8
    for w in widths:
        chain.append(nn.Conv2d(cin, w, 1, groups=groups, bias=bias or w == 12))
        cin = w
    chain = nn.Sequential(*chain).double()
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    merged = merge.merge_layers(list(chain))
    assert isinstance(merged, nn.Conv2d) and merged.groups == groups and merged.stride == (stride, stride)
    assert_same(merged(x), chain(x), 1e-12)


def test_merge_layers_of_linear_layers():
    """Linear layers multiply out into one linear layer, biases carried through."""
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Linear(6, 3), nn.Linear(3, 9, bias=False), nn.Linear(9, 4)).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    merged = merge.merge_layers(list(chain))
    assert type(merged) is nn.Linear and merged.weight.shape == (4, 6)
    assert_same(merged(x), chain(x), 1e-12)


@pytest.mark.parametrize("chain", [
    [nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3)],             # second conv not 1x1
    [nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1, stride=2)],   # strided
    [nn.Conv2d(4, 4, 1, groups=2), nn.Conv2d(4, 4, 1)],   # groups differ
    [nn.Conv2d(4, 6, 1), nn.Conv2d(4, 4, 1)],             # channels do not match
    [nn.Linear(4, 4), nn.Conv2d(4, 4, 1)],
])
def test_merge_layers_refuses_what_is_not_a_linear_chain(chain):
    """merge_layers raises ValueError instead of building a wrong layer."""
    with pytest.raises(ValueError, match="layers"):
        merge.merge_layers(chain)


def test_flops_merge_never_adds_flops_and_merges_cheap_chains():
    """Under merge="flops" the form has at most the compact model's FLOPs, and the chain
    4 -> 16 -> 4 (cheaper as one 4 -> 4 conv) is merged while 16 -> 4 -> 16 (a bottleneck) is not."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 16, 1), nn.Conv2d(16, 4, 1), nn.ReLU(),
                      nn.Conv2d(4, 16, 1), nn.ReLU(), nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    f = bp.inference_form(m, x, merge="flops", channel_multiple=1)
    assert bp.count_flops(f, x) <= bp.count_flops(m, x)
    segments = [s for c in f.inference_report["chains"] for s in c["segments"]]
    assert ["0", "1", "2"] in segments  # 3 -> 4 -> 16 -> 4 as one 3x3 conv 3 -> 4
    assert ["6"] in segments and ["7"] in segments
    assert count(f, nn.Conv2d) == 4
    assert_same(f(x), m(x), 1e-12)


def form_with_timer(timer, keep=0.9, **kwargs):
    """(model, input, merge="latency" form) with merged layers tagged ``_parts`` (the number of
    layers they replace) so that a fake timer can tell them apart."""
    orig = merge.merge_layers

    def tagged(layers):
        out = orig(layers)
        out._parts = len(layers)
        return out

    d = pruned(3, keep)
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    kwargs.setdefault("guard", False)  # these tests time layers; the guard's whole-form timing has its own
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(merge, "merge_layers", tagged)
        f = bp.inference_form(d, x, merge="latency", batch_sizes=(1, 4), timer=timer, **kwargs)
    return d, x, f


@pytest.mark.parametrize("merged_faster", [True, False])
def test_latency_merge_follows_the_timer(merged_faster):
    """With merge="latency", every chain becomes one conv when merged layers time faster, and
    none is merged when they time slower (a fake timer: 1 per layer, a merged layer half or
    one and a half times the layers it replaces)."""

    def timer(module, x):
        parts = getattr(module, "_parts", 1)
        return 1.0 if parts == 1 else parts * (0.5 if merged_faster else 1.5)

    d, x, f = form_with_timer(timer)
    chains = f.inference_report["chains"]
    assert chains
    for c in chains:
        assert len(c["segments"]) == (1 if merged_faster else len(c["layers"]))
        assert len(c["ms_merged"]) == 2
    assert_same(f(x), d(x), 1e-9)


def kernels(module: nn.Module) -> int:
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())


@pytest.mark.parametrize("pairs_faster", [True, False])
def test_guard_keeps_pairs_only_when_the_whole_form_is_faster(pairs_faster):
    """The guard times the whole form against the form with every basis pair folded back: the
    form with pairs is kept when it is faster at every batch size, the folded one otherwise (a
    fake timer: layers 1 each; whole forms by kernel count, the one with pairs cheaper or dearer)."""
    def layer_timer(module, x):  # layers: every pair kept (a split times 0.4 a layer, a merge 1)
        return 1.0 if getattr(module, "_parts", 1) > 1 else 0.4

    most = kernels(form_with_timer(layer_timer, keep=0.5)[2])  # the form the guard judges

    def timer(module, x):
        if not isinstance(module, torch.fx.GraphModule):
            return layer_timer(module, x)
        k = kernels(module)
        return (1.0 if k == most else 2.0) if pairs_faster else (2.0 if k == most else 1.0)

    d, x, f = form_with_timer(timer, keep=0.5, guard=True, rounds=3)
    g = f.inference_report["guard"]
    assert g["kept"] == ("pairs" if pairs_faster else "folded")
    assert (kernels(f) == most) == pairs_faster
    assert len(g["pairs_ms"]) == len(g["folded_ms"]) == 2
    assert_same(f(x), d(x), 1e-9)


def test_guard_ties_fold_the_pairs():
    """Whole forms that time the same (a tie, or noise) give the folded form: a pruned pair that
    cannot be shown to pay is the unpruned layer again."""

    def timer(module, x):
        return 1.0 if getattr(module, "_parts", 1) > 1 else 0.4

    d, x, f = form_with_timer(timer, keep=0.5, guard=True, rounds=3)
    assert f.inference_report["guard"]["kept"] == "folded"
    assert kernels(f) < kernels(bp.inference_form(d, x, merge="none"))
    assert_same(f(x), d(x), 1e-9)


def test_guard_runs_only_where_there_is_a_pair_to_fold():
    """No guard on a compact model (its pairs are plain convs now), on merge="flops", or when
    compaction keeps no pair; the report says None."""
    d = pruned(3, 0.5)
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    assert bp.inference_form(d, x, merge="flops").inference_report["guard"] is None
    assert bp.inference_form(bp.compact(d, x), x, merge="latency", timer=lambda m, x: 1.0,
                             rounds=1).inference_report["guard"] is None
    full = pruned(3, 1.0)  # nothing pruned: every pair folds by parameters
    assert bp.inference_form(full, x, merge="latency", timer=lambda m, x: 1.0,
                             rounds=1).inference_report["guard"] is None
    with pytest.raises(ValueError, match="guard must be True or False"):
        bp.inference_form(d, x, guard="yes")


@pytest.mark.parametrize("cl_faster", [True, False])
def test_auto_memory_format_picks_the_faster(cl_faster):
    """memory_format="auto" keeps channels-last exactly when it times faster."""

    def timer(module, x):
        cl = "channels_last" in module.code
        return 1.0 if cl == cl_faster else 2.0

    d = pruned(1, 0.5)
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    f = bp.inference_form(d, x, memory_format="auto", timer=timer, batch_sizes=(1, 2))
    rep = f.inference_report
    assert rep["memory_format"] == ("channels_last" if cl_faster else "contiguous")
    assert len(rep["memory_format_ms"]["channels_last"]) == 2
    assert_same(f(x), d(x), 1e-9)


def test_channels_last_stores_4d_weights_channels_last():
    """memory_format="channels_last" converts the input on entry and stores conv weights so."""
    f = bp.inference_form(pruned(2, 0.5), torch.randn(2, 3, 10, 10, dtype=torch.float64),
                          memory_format="channels_last")
    convs = [m for m in f.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


def test_channel_and_basis_pruned_model_is_compacted_then_folded():
    """A double-pruned model with masks (channel scales compacted, then basis layers) gives an
    inference form with no basis layer, no channel scale and the masked model's outputs."""
    torch.manual_seed(0)
    base = randomise_batchnorms(tiny_net(), 0).double().eval()
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    # groups feeding or leaving the grouped conv are left out: random masks would break its groups
    c = bp.add_channel_scales(base, x, ignored=["13"], roots=["0", "3"]).eval()
    g = torch.Generator().manual_seed(0)
    for s in bp.channel_scales(c).values():
        s.mask.copy_((torch.rand(s.num_channels, generator=g) < 0.6).double())
        s.mask[0] = 1
        with torch.no_grad():
            s.scale.uniform_(0.5, 1.5, generator=g)
    want = c(x)
    f1 = bp.inference_form(c, x)
    assert_same(f1(x), want, 1e-9)
    d = bp.decompose(bp.compact(c, x), exclude=["13"]).eval()
    random_basis_masks(d, 0.6, 0)
    f2 = bp.inference_form(d, x)
    assert not bp.basis_layers(f2) and not bp.channel_scales(f2)
    assert_same(f2(x), d(x), 1e-9)


def widths(model: nn.Module) -> list[int]:
    """Channel widths convs write and convs / linear layers read (the input's 3 channels left out)."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            out += [m.out_channels] + ([m.in_channels] if m.in_channels != 3 else [])
        elif isinstance(m, nn.Linear):
            out.append(m.in_features)
    return out


def test_channel_padding_rounds_every_width_of_a_channel_pruned_mobilenet():
    """Torch-Pruning leaves odd widths in MobileNetV2 (residual groups, hidden channels, the last
    conv feeding the classifier); padded to multiples of 8 every width is one, and the outputs
    are unchanged."""
    from basisprune.repro import peer

    torch.manual_seed(0)
    m = randomise_batchnorms(torchvision.models.mobilenet_v2(num_classes=10), 0).eval()
    x = torch.randn(2, 3, 32, 32)
    tp = peer.torch_pruning_channel_prune(m, x[:1], 0.4).eval()
    assert any(w % 8 for w in widths(tp))
    f = bp.inference_form(tp, x, channel_multiple=8)
    assert all(w % 8 == 0 for w in widths(f))
    assert f.inference_report["padded"]
    with torch.no_grad():
        assert_same(f(x), tp(x), 1e-5)


def test_channel_padding_leaves_widths_it_cannot_pad():
    """A conv whose output is the model's output (or is read by a non-channel-wise op) keeps its
    width; the rest is padded and the output is unchanged."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 6, 3, padding=1), nn.Hardswish(),
                      nn.Conv2d(6, 6, 3, groups=6), nn.Conv2d(6, 7, 1)).double().eval()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    f = bp.inference_form(m, x, merge="none", channel_multiple=4)
    assert [c.out_channels for c in f.modules() if isinstance(c, nn.Conv2d)] == [8, 8, 8, 7]
    assert [p["channels"] for p in f.inference_report["padded"]] == [5, 6]
    assert_same(f(x), m(x), 1e-12)


def test_inference_form_leaves_the_model_alone():
    """The input model keeps its modules, weights and training flag."""
    d = pruned(4, 0.5).train()
    before = {k: v.clone() for k, v in d.state_dict().items()}
    bp.inference_form(d, torch.randn(2, 3, 10, 10, dtype=torch.float64))
    assert d.training and bp.basis_layers(d)
    after = d.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_check_catches_a_wrong_fold(monkeypatch):
    """A broken batch-norm fold (the conv returned unchanged) is caught by the output check."""
    monkeypatch.setattr(fx_passes, "fuse_conv_bn_eval", lambda conv, bn: conv)
    with pytest.raises(inference.InferenceCheckError, match="differs"):
        bp.inference_form(pruned(0, 0.5), torch.randn(2, 3, 10, 10, dtype=torch.float64))


def test_bad_arguments_raise_value_error():
    """Bad arguments raise ValueError naming the parameter."""
    d, x = pruned(0, 0.5), torch.randn(2, 3, 10, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match="merge"):
        bp.inference_form(d, x, merge="fast")
    with pytest.raises(ValueError, match="memory_format"):
        bp.inference_form(d, x, memory_format="nhwc")
    with pytest.raises(ValueError, match="model"):
        bp.inference_form("net", x)
    with pytest.raises(ValueError, match="example"):
        bp.inference_form(d, [1, 2])

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ValueError, match="torch.fx cannot trace"):
        bp.inference_form(Branchy(), x)


def test_inference_form_saves_and_loads(tmp_path):
    """save_model / load_model round-trip an inference form with its outputs."""
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    f = bp.inference_form(pruned(5, 0.5), x, memory_format="channels_last")
    bp.save_model(f, tmp_path / "f.pt")
    g = bp.load_model(tmp_path / "f.pt")
    assert_same(g(x), f(x), 0.0)


def test_mobilenet_v2_inference_form_equals_compact_model():
    """torchvision's MobileNetV2 with random basis masks: the inference form (batch norms folded,
    flops merges, channels-last) gives the compact model's outputs in float32 to 1e-5 of their
    scale, has no batch norm left and fewer modules."""
    torch.manual_seed(0)
    m = randomise_batchnorms(torchvision.models.mobilenet_v2(num_classes=10), 0).eval()
    d = bp.decompose(m, exclude=["classifier.1"]).eval()
    random_basis_masks(d, 0.3, 0)
    c = bp.compact(d).eval()
    x = torch.randn(2, 3, 32, 32)
    f = bp.inference_form(c, x, memory_format="channels_last")
    assert count(f, nn.BatchNorm2d) == 0
    assert len(list(f.modules())) < len(list(c.modules()))
    with torch.no_grad():
        assert_same(f(x), c(x), 1e-5)
        assert_same(f.double()(x.double()), c.double()(x.double()), 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
def test_torchvision_inference_forms_equal_the_model(arch):
    """ResNet and EfficientNet (residuals, squeeze-excitation, stochastic depth) keep their outputs."""
    torch.manual_seed(0)
    m = randomise_batchnorms(getattr(torchvision.models, arch)(num_classes=10), 0).eval()
    x = torch.randn(2, 3, 64, 64)
    f = bp.inference_form(m, x, memory_format="channels_last")
    assert count(f, nn.BatchNorm2d) == 0
    with torch.no_grad():
        assert_same(f(x), m(x), 1e-5)


# ------------------------------------------------------------------------------------- export
def test_export_writes_a_file_onnx_runtime_agrees_with(tmp_path):
    """The exported file runs in ONNX Runtime at another batch size with PyTorch's outputs."""
    import onnxruntime as ort

    x = torch.randn(2, 3, 10, 10)
    f = bp.inference_form(pruned(0, 0.5, torch.float32), x, memory_format="channels_last")
    info = bp.export(f, tmp_path / "m.onnx", x, exporter="legacy")
    assert info["batch_sizes"] == [2, 3] and info["exporter"] == "legacy"
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    y = torch.randn(5, 3, 10, 10)
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: y.numpy()})[0])
    with torch.no_grad():
        assert_same(got, f(y), 1e-5)


def test_export_mismatch_raises_and_writes_nothing(tmp_path, monkeypatch):
    """When ONNX Runtime disagrees, export raises and leaves an existing file untouched."""
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    monkeypatch.setattr(deploy, "max_diff", lambda got, want, rtol, atol: (False, 1.0))
    with pytest.raises(inference.ExportCheckError, match="not written"):
        bp.export(tiny_net().eval(), path, torch.randn(2, 3, 10, 10), exporter="legacy")
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_export_refuses_bad_arguments(tmp_path):
    """A non-module or a non-tensor example raises ValueError."""
    with pytest.raises(ValueError, match="model"):
        bp.export("net", tmp_path / "m.onnx", torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="example"):
        bp.export(tiny_net(), tmp_path / "m.onnx", None)


@pytest.fixture
def no_export(monkeypatch):
    """Export must refuse before any work: reaching the ONNX exporter fails the test."""
    def boom(*args, **kwargs):
        raise AssertionError("the exporter ran before the refusal")
    monkeypatch.setattr(deploy.bench, "export_onnx", boom)


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "\x1b" not in msg, msg
    return msg


def test_export_refuses_bad_paths_in_one_line_before_any_work(tmp_path, no_export):
    """A folder, a file standing where a folder should be and a missing folder in the filesystem
    root are refused in one line naming the path, and nothing is created."""
    x = torch.randn(2, 3, 10, 10)
    (tmp_path / "file").write_text("x")
    for bad, words in [(tmp_path, "is a folder"), (tmp_path / "file" / "m.onnx", "is a file"),
                       ("/basisprune-no-such-folder-27/m.onnx", "filesystem root")]:
        with pytest.raises(ValueError, match=words) as e:
            bp.export(tiny_net().eval(), bad, x)
        one_line_error(e)
    assert sorted(os.listdir(tmp_path)) == ["file"] and not os.path.exists("/basisprune-no-such-folder-27")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_export_refuses_an_unwritable_folder_before_any_work(tmp_path, no_export):
    """A folder without write permission is refused with a one-line PermissionError."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="cannot write") as e:
            bp.export(tiny_net().eval(), locked / "sub" / "m.onnx", torch.randn(2, 3, 10, 10))
        one_line_error(e)
    finally:
        locked.chmod(0o700)


def test_export_refuses_a_wrong_example_and_a_masked_model_in_one_line(tmp_path, no_export):
    """An example the model cannot run on, and a model that still has pruning masks, are refused in
    one line (no colour codes) that says what to do; nothing is written."""
    with pytest.raises(ValueError, match="example: the model cannot run") as e:
        bp.export(tiny_net().eval(), tmp_path / "m.onnx", torch.randn(2, 5, 10, 10))
    one_line_error(e)
    with pytest.raises(ValueError, match="inference_form") as e:
        bp.export(pruned(0, 0.5, torch.float32), tmp_path / "m.onnx", torch.randn(2, 3, 10, 10))
    one_line_error(e)
    assert os.listdir(tmp_path) == []


def test_export_creates_missing_folders_and_builds_the_form(tmp_path):
    """A compact model is exported as its inference form (batch norms folded) into a folder that
    did not exist, and ONNX Runtime agreed at two batch sizes."""
    import onnx

    x = torch.randn(2, 3, 10, 10)
    c = bp.compact(pruned(0, 0.5, torch.float32), x)
    path = tmp_path / "a" / "b" / "m.onnx"
    info = bp.export(c, path, x, exporter="legacy")
    assert info["form"] and path.exists() and info["batch_sizes"] == [2, 3]
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "BatchNormalization" not in ops


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = tiny_net()

    def forward(self, x):
        y = self.body(x)
        return y, y.softmax(1)


def test_export_checks_every_output_of_a_tuple_model(tmp_path):
    """A model returning a tuple of tensors is exported with one batch-dynamic ONNX output per
    tensor, each checked against PyTorch."""
    import onnxruntime as ort

    m = randomise_batchnorms(TwoHeads(), 0).eval()
    x = torch.randn(2, 3, 10, 10)
    info = bp.export(m, tmp_path / "m.onnx", x, exporter="legacy")
    assert info["outputs"] == 2
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    y = torch.randn(4, 3, 10, 10)
    got = sess.run(None, {sess.get_inputs()[0].name: y.numpy()})
    with torch.no_grad():
        for g, w in zip(got, m(y)):
            assert_same(torch.from_numpy(g), w, 1e-5)


@pytest.mark.slow
def test_export_with_the_dynamo_exporter(tmp_path):
    """The torch.export-based exporter also passes the check on an inference form."""
    x = torch.randn(2, 3, 10, 10)
    f = bp.inference_form(pruned(0, 0.5, torch.float32), x)
    assert bp.export(f, tmp_path / "m.onnx", x, exporter="dynamo")["exporter"] == "dynamo"


def test_channel_padding_through_a_residual_that_one_conv_reads_and_writes():
    """In x + conv(x) the conv reads and writes the same channels: both its sides are padded."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv = nn.Conv2d(3, 5, 3), nn.Conv2d(5, 5, 1)
            self.head = nn.Conv2d(5, 2, 1)

        def forward(self, x):
            x = self.stem(x)
            return self.head(torch.relu(x + self.conv(x)))

    m = Block().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    f = bp.inference_form(m, x, channel_multiple=8)
    assert (f.conv.in_channels, f.conv.out_channels, f.head.in_channels) == (8, 8, 8)
    assert_same(f(x), m(x), 1e-12)


def test_latency_merge_keeps_the_unpruned_layer_on_a_tie():
    """With merge="latency", a chain whose split times within the noise margin of the chain merged
    into one layer (here 1% faster) is merged: a basis pair that does not pay is folded back."""

    def timer(module, x):
        return 1.0 if getattr(module, "_parts", 1) > 1 else 0.99 / 2  # split: 2 x 0.495 vs 1.0 merged

    d, x, f = form_with_timer(timer, rounds=3)
    chains = [c for c in f.inference_report["chains"] if len(c["layers"]) == 2]
    assert chains
    assert all(len(c["segments"]) == 1 and c["split_to_one_layer"] < 1 for c in chains)
    assert_same(f(x), d(x), 1e-9)


def test_auto_memory_format_ignores_one_slow_probe():
    """One channels-last timing hit by load (10x slower, batch 1, first round) does not decide the
    memory format when channels-last is twice as fast in every other measurement."""
    seen = []

    def timer(module, x):
        cl = "channels_last" in module.code
        if cl and x.shape[0] == 1 and not seen:
            seen.append(1)
            return 10.0
        return 0.5 if cl else 1.0

    d = pruned(1, 0.5)
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    f = bp.inference_form(d, x, memory_format="auto", timer=timer, batch_sizes=(1, 2), rounds=5)
    rep = f.inference_report
    assert seen and rep["memory_format"] == "channels_last"
    assert rep["memory_format_ms"]["channels_last_to_contiguous"] == pytest.approx(0.5)
    assert rep["timed_on"]["threads"] >= 1


class SamePadConv(nn.Conv2d):
    """TensorFlow-"SAME" padding computed from the input's shape: control flow torch.fx cannot trace."""

    def forward(self, x):
        ih, iw = x.size()[-2:]
        pad_h = max((-(-ih // self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - ih, 0)
        pad_w = max((-(-iw // self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - iw, 0)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)


def test_inference_form_traces_around_submodules_with_control_flow():
    """A model whose convs decide their padding from the input's shape (as EfficientNet-Lite's do)
    gets a form: those convs stay whole (listed in leaf_types), the batch norms after them are
    folded, and the form computes the model's function."""
    torch.manual_seed(0)
    m = randomise_batchnorms(nn.Sequential(
        SamePadConv(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU6(),
        SamePadConv(8, 8, 3, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)), 0).double().eval()
    x = torch.randn(2, 3, 11, 11, dtype=torch.float64)
    f = bp.inference_form(m, x)
    rep = f.inference_report
    assert rep["leaf_types"] == [f"{__name__}.SamePadConv"] and len(rep["bn_folded"]) == 2
    assert count(f, nn.BatchNorm2d) == 0
    assert_same(f(x), m(x), 1e-12)


def test_control_flow_in_the_model_itself_is_one_line():
    """Control flow in the top module's own forward (no submodule to keep whole) is a one-line
    ValueError naming the model."""

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="cannot trace Branchy") as e:
        bp.inference_form(Branchy(), torch.randn(2, 4))
    assert "\n" not in str(e.value)


def test_forms_timed_in_onnx_runtime_compute_the_model():
    """runtime="onnxruntime" times the choices in ONNX Runtime (recorded in timed_on), keeps the
    contiguous format and still computes the pruned model's function."""
    d = pruned(5, 0.5, torch.float32)
    x = torch.randn(2, 3, 10, 10)
    f = bp.inference_form(d, x, merge="latency", memory_format="auto", runtime="onnxruntime", batch_sizes=(1,),
                          rounds=1, min_run_time=0.001, min_runs=1)
    rep = f.inference_report
    assert rep["timed_on"]["runtime"] == "onnxruntime" and rep["memory_format"] == "contiguous"
    assert rep["chains"] and all("ms_one_layer" in c for c in rep["chains"])
    assert_same(f(x), d(x), 1e-5)
