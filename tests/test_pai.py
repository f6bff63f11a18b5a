"""Tests for basisprune.pai (pruning at initialization: ProsPr and baselines)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from basisprune import pai
from basisprune.repro.smallnets import resnet20

DT = torch.float64


class TinyCNN(nn.Module):
    """conv-BN-ReLU x2, global average pool, Linear classifier."""

    def __init__(self, cin: int = 2, c1: int = 4, c2: int = 6, classes: int = 3, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c1, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(c2)
        self.fc = nn.Linear(c2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def tiny_cnn(seed: int = 0, **kw: int) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN(**kw).to(DT)


def make_batches(n: int, seed: int = 1, bs: int = 8, cin: int = 2, hw: int = 6, classes: int = 3) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(bs, cin, hw, hw, generator=g, dtype=DT), torch.randint(0, classes, (bs,), generator=g))
        for _ in range(n)
    ]


def prunable(model: nn.Module) -> list[str]:
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# ----------------------------------------------------------------------------- ProsPr identities


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("num_batches", [1, 2])
def test_prospr_with_zero_steps_equals_snip(structured: bool, num_batches: int) -> None:
    """ProsPr with M = 0 inner steps gives exactly the SNIP scores |g * w|."""
    model, batches = tiny_cnn(), make_batches(3)
    a = pai.scores(model, "prospr", batches, structured=structured, steps=0, num_batches=num_batches)
    b = pai.scores(model, "snip", batches, structured=structured, num_batches=num_batches)
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_first_order_prospr_equals_grad_at_w_M_times_w_init(momentum: float) -> None:
    """First-order ProsPr = |grad L(w_M) * w_init|, w_M from M torch.optim.SGD steps on batches 0..M-1."""
    steps, lr = 3, 0.2
    model, batches = tiny_cnn(), make_batches(steps + 1)
    got = pai.scores(model, "prospr_first_order", batches, steps=steps, inner_lr=lr, inner_momentum=momentum)

    net = copy.deepcopy(model).train()
    w_init = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    for x, y in batches[:steps]:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.zero_grad()
    x, y = batches[steps]
    F.cross_entropy(net(x), y).backward()
    params = dict(net.named_parameters())
    for n in prunable(model):
        torch.testing.assert_close(got[n], (params[n].grad * w_init[n]).abs(), rtol=1e-9, atol=1e-13)


def _meta_loss(model: nn.Module, masks: dict, batches: list, steps: int, lr: float, momentum: float) -> float:
    """L(w_M(c)) by brute force: mask the weights, run torch.optim.SGD, evaluate the next batch."""
    net = copy.deepcopy(model).train()
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    for x, y in batches[:steps]:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        x, y = batches[steps]
        return F.cross_entropy(net(x), y).item()


@pytest.mark.parametrize("structured", [False, True])
def test_full_prospr_meta_gradient_matches_finite_differences(structured: bool) -> None:
    """|dL(w_M)/dc| from ProsPr equals a central finite difference in individual mask entries
    (per-weight masks, or per-output-channel masks when structured)."""
    steps, lr, momentum, eps = 2, 0.3, 0.5, 1e-6
    model, batches = tiny_cnn(), make_batches(steps + 1)
    kw = dict(steps=steps, inner_lr=lr, inner_momentum=momentum, structured=structured)
    got = pai.scores(model, "prospr", batches, **kw)
    first = pai.scores(model, "prospr_first_order", batches, **kw)

    g = torch.Generator().manual_seed(3)
    params = dict(model.named_parameters())
    ones = {n: torch.ones(params[n].shape[:1] + (1,) * (params[n].dim() - 1) if structured else params[n].shape,
                          dtype=DT) for n in got}
    checked = 0
    for n in got:
        flat = got[n].reshape(-1)
        for i in [int(flat.argmax()), int(torch.randint(flat.numel(), (1,), generator=g))]:
            plus, minus = copy.deepcopy(ones), copy.deepcopy(ones)
            plus[n].view(-1)[i] += eps
            minus[n].view(-1)[i] -= eps
            fd = (
                _meta_loss(model, plus, batches, steps, lr, momentum)
                - _meta_loss(model, minus, batches, steps, lr, momentum)
            ) / (2 * eps)
            assert abs(fd) == pytest.approx(flat[i].item(), rel=1e-5, abs=1e-9)
            checked += 1
    assert checked == 2 * len(got)
    # The second-order terms matter here, so the check above is not a first-order one.
    assert any(not torch.allclose(got[n], first[n], rtol=1e-3) for n in got)


# ----------------------------------------------------------------------------- masks and density


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 5)), min_size=1, max_size=4),
    sparsity=st.floats(0.0, 0.99, exclude_max=False),
    largest=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_masks_from_scores_keeps_exact_count(shapes: list, sparsity: float, largest: bool, seed: int) -> None:
    """masks_from_scores keeps exactly the round((1 - s) * total) best entries; it refuses to empty a
    layer (LayerCollapseError) unless allow_empty, which then keeps the same global top-k."""
    g = torch.Generator().manual_seed(seed)
    sc = {f"l{i}.weight": torch.rand(s, generator=g, dtype=DT) for i, s in enumerate(shapes)}
    total = sum(v.numel() for v in sc.values())
    n_keep = round((1 - sparsity) * total)
    flat = torch.cat([v.reshape(-1) for v in sc.values()])
    best = set(torch.argsort(flat, descending=largest)[:n_keep].tolist())
    bounds = torch.tensor([0] + [v.numel() for v in sc.values()]).cumsum(0).tolist()
    collapse = not all(any(lo <= j < hi for j in best) for lo, hi in zip(bounds[:-1], bounds[1:]))
    if collapse:
        with pytest.raises(pai.LayerCollapseError, match="every entry of layer"):
            pai.masks_from_scores(sc, sparsity, largest=largest)
    masks = pai.masks_from_scores(sc, sparsity, largest=largest, allow_empty=collapse)
    assert int(sum(m.sum() for m in masks.values())) == n_keep
    kept = set(torch.nonzero(torch.cat([m.reshape(-1) for m in masks.values()])).reshape(-1).tolist())
    assert kept == best
    assert all(m.shape == sc[n].shape and set(m.unique().tolist()) <= {0.0, 1.0} for n, m in masks.items())


@pytest.mark.parametrize("method", pai.METHODS)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.6])
def test_prune_density_is_exact(method: str, sparsity: float) -> None:
    """prune() keeps exactly round((1 - s) * total) weights, one 0/1 mask per Conv2d/Linear weight."""
    model = tiny_cnn(c1=6, c2=8)
    masks = pai.prune(model, method, sparsity, make_batches(4), steps=2, iterations=5)
    params = dict(model.named_parameters())
    assert list(masks) == prunable(model)
    assert all(m.shape == params[n].shape and m.dtype == params[n].dtype for n, m in masks.items())
    total = sum(m.numel() for m in masks.values())
    assert int(sum(m.sum() for m in masks.values())) == round((1 - sparsity) * total)


@pytest.mark.parametrize("method", ["prospr", "snip", "synflow", "magnitude", "random"])
def test_structured_masks_remove_whole_channels_and_spare_classifier(method: str) -> None:
    """Structured masks are (Cout,), keep round((1-s)*channels) channels, zero whole rows, skip the classifier."""
    model, sparsity = tiny_cnn(c1=6, c2=8), 0.25
    masks = pai.prune(model, method, sparsity, make_batches(3), structured=True, steps=1, iterations=5)
    assert list(masks) == ["conv1.weight", "conv2.weight"]  # classifier fc excluded
    params = dict(model.named_parameters())
    assert all(m.shape == params[n].shape[:1] for n, m in masks.items())
    total = sum(m.numel() for m in masks.values())
    assert int(sum(m.sum() for m in masks.values())) == round((1 - sparsity) * total)

    fc_before = model.fc.weight.detach().clone()
    pai.apply_masks(model, masks)
    for n, m in masks.items():
        w = model.get_submodule(n.rpartition(".")[0]).weight
        assert torch.all(w[m == 0] == 0) and torch.all(w[m == 1].abs().sum(dim=(1, 2, 3)) > 0)
    assert torch.equal(model.fc.weight, fc_before)


def test_mask_emptying_a_layer_raises_naming_it() -> None:
    """A global top-k that would remove every weight of a layer raises ValueError naming that layer."""
    model = tiny_cnn()
    with torch.no_grad():
        model.conv1.weight.mul_(1e-6)  # far below every other weight in magnitude
    with pytest.raises(ValueError, match=r"conv1\.weight"):
        pai.prune(model, "magnitude", 0.5, None)


# ----------------------------------------------------------------------------- baselines


def test_grasp_scores_equal_minus_w_times_hessian_gradient_product() -> None:
    """GraSP scores equal -w * (H g) with H, g of the temperature-scaled loss w.r.t. the weights."""
    model, batches, temp = tiny_cnn(), make_batches(1), 5.0
    got = pai.scores(model, "grasp", batches, temperature=temp)

    net = copy.deepcopy(model).train()
    names = prunable(model)
    w = tuple(dict(net.named_parameters())[n].detach() for n in names)
    x, y = batches[0]

    def loss(*ws: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, dict(zip(names, ws)), (x,)) / temp, y)

    grad = torch.autograd.functional.jacobian(loss, w)
    _, hg = torch.autograd.functional.hvp(loss, w, v=grad)
    for n, wi, h in zip(names, w, hg):
        torch.testing.assert_close(got[n], -wi * h, rtol=1e-8, atol=1e-14)


def test_synflow_single_round_equals_path_product_gradient() -> None:
    """One SynFlow round on a bias-free MLP equals |W * dR/dW| with R = 1^T |W3||W2||W1| 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7, bias=False), nn.ReLU(), nn.Linear(7, 4, bias=False), nn.ReLU(),
                          nn.Linear(4, 3, bias=False)).to(DT)
    batches = [(torch.randn(2, 5, dtype=DT), torch.tensor([0, 1]))]
    got = pai.scores(model, "synflow", batches)

    ws = [model[i].weight.detach().abs().requires_grad_(True) for i in (0, 2, 4)]
    r = torch.ones(1, 3, dtype=DT) @ ws[2] @ ws[1] @ ws[0] @ torch.ones(5, 1, dtype=DT)
    grads = torch.autograd.grad(r.sum(), ws)
    for name, wi, gi in zip(["0.weight", "2.weight", "4.weight"], ws, grads):
        torch.testing.assert_close(got[name], (wi * gi).abs().detach(), rtol=1e-12, atol=0)


def test_random_masks_are_seeded() -> None:
    """Random pruning is reproducible for a seed and changes with it."""
    model = tiny_cnn()
    a = pai.prune(model, "random", 0.5, None, seed=1)
    b = pai.prune(model, "random", 0.5, None, seed=1)
    c = pai.prune(model, "random", 0.5, None, seed=2)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


# ----------------------------------------------------------------------------- applying masks


@pytest.mark.parametrize("structured", [False, True])
def test_pruned_weights_stay_exactly_zero_during_training(structured: bool) -> None:
    """After apply_masks, SGD with momentum and weight decay keeps pruned weights exactly zero."""
    model, batches = tiny_cnn(), make_batches(5)
    masks = pai.prune(model, "snip", 0.3 if structured else 0.5, batches, structured=structured)
    pai.apply_masks(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model(batches[0][0])  # refresh the masked weights
    full = {n: (m if m.dim() > 1 else m.view(-1, 1, 1, 1).expand_as(dict(tiny_cnn().named_parameters())[n]))
            for n, m in masks.items()}
    pai.remove_masks(model)
    params = dict(model.named_parameters())
    assert set(params) == {n for n, _ in tiny_cnn().named_parameters()}  # names restored
    for n, m in full.items():
        assert torch.all(params[n][m == 0] == 0)
        assert torch.any(params[n][m == 1] != 0)


@pytest.mark.parametrize("method", pai.METHODS)
def test_prune_leaves_model_unchanged(method: str) -> None:
    """prune() does not change the model's parameters, buffers or train/eval mode."""
    model = tiny_cnn()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pai.prune(model, method, 0.5, make_batches(4), steps=2, iterations=3)
    assert not model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


class _Untouchable:
    """Batches that fail the test if anything iterates them."""

    def __iter__(self):  # noqa: ANN204
        raise AssertionError("batches were consumed before input validation")


@pytest.mark.parametrize(
    "model, method, sparsity, options, match",
    [
        (None, "prune_me", 0.5, {}, "unknown method.*prospr.*random"),
        (None, "snip", 1.0, {}, "sparsity"),
        (None, "snip", -0.1, {}, "sparsity"),
        (None, "snip", math.nan, {}, "sparsity"),
        (None, "snip", "0.5", {}, "sparsity"),
        (None, "snip", 0.5, {"stepz": 3}, "unknown option"),
        (None, "prospr", 0.5, {"steps": -1}, "steps"),
        (nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), "snip", 0.5, {}, "Conv2d/Linear"),
    ],
)
def test_bad_input_raises_before_any_work(model, method, sparsity, options, match) -> None:  # noqa: ANN001
    """Bad method/sparsity/options/model raise ValueError with a clear message, before touching the batches."""
    with pytest.raises(ValueError, match=match):
        pai.prune(model if model is not None else tiny_cnn(), method, sparsity, _Untouchable(), **options)


@pytest.mark.parametrize("batches", [[], iter([])])
def test_empty_batches_raise(batches) -> None:  # noqa: ANN001
    """Empty batches raise ValueError (for data-free methods too)."""
    with pytest.raises(ValueError, match="empty"):
        pai.prune(tiny_cnn(), "snip", 0.5, batches)
    with pytest.raises(ValueError, match="empty"):
        pai.prune(tiny_cnn(), "magnitude", 0.5, [])


# ----------------------------------------------------------------------------- structured compaction


def test_structured_to_channel_keep_lists_kept_indices() -> None:
    """structured_to_channel_keep maps module names to the indices of nonzero channel masks."""
    masks = {"a.conv.weight": torch.tensor([1.0, 0.0, 1.0, 1.0]), "fc.weight": torch.ones(3, 2)}
    assert {k: v.tolist() for k, v in pai.structured_to_channel_keep(masks).items()} == {"a.conv": [0, 2, 3]}


def test_compacted_model_matches_group_zeroed_model() -> None:
    """compact_structured gives fewer parameters and the same outputs as the model with pruned
    channels zeroed through their dependency group (conv weight and bias, BatchNorm weight and bias)."""
    model = tiny_cnn(c1=6, c2=8)
    masks = pai.prune(model, "prospr", 0.4, make_batches(3), structured=True, steps=1)
    x = make_batches(1, seed=9)[0][0]
    small = pai.compact_structured(model, masks, x[:1])

    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for conv, bn in [("conv1", "bn1"), ("conv2", "bn2")]:
            drop = masks[f"{conv}.weight"] == 0
            for p in (zeroed.get_submodule(conv).weight, zeroed.get_submodule(conv).bias,
                      zeroed.get_submodule(bn).weight, zeroed.get_submodule(bn).bias):
                p[drop] = 0
    kept = pai.structured_to_channel_keep(masks)
    assert small.conv1.out_channels == len(kept["conv1"]) and small.conv2.out_channels == len(kept["conv2"])
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    small.eval(), zeroed.eval()
    torch.testing.assert_close(small(x), zeroed(x), rtol=1e-10, atol=1e-12)


def test_compacting_a_resnet_keeps_shapes_consistent() -> None:
    """A structurally pruned ResNet-20 compacts (residual groups included) to a smaller model that runs."""
    torch.manual_seed(0)
    model = resnet20(num_classes=5, in_channels=1, width=4).to(DT)
    masks = pai.prune(model, "random", 0.3, None, structured=True, seed=0)
    x = torch.randn(2, 1, 8, 8, dtype=DT)
    for rule in ("all", "any"):
        small = pai.compact_structured(model, masks, x[:1], rule=rule)
        assert small(x).shape == (2, 5)
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
