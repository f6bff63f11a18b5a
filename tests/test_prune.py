"""Invariants of the pruning rules and of the Taylor importance."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import basisprune as bp
from basisprune.prune import select


def test_taylor_importance_matches_finite_difference():
    """|s_i dL/ds_i| equals the finite-difference first-order loss change along s_i (float64)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3), nn.Tanh(), nn.Flatten(), nn.Linear(5 * 4 * 4, 3)).double()
    d = bp.decompose(model)
    layer = bp.basis_layers(d)["0"]
    with torch.no_grad():
        layer.scale.uniform_(0.5, 1.5)
    x, y = torch.randn(8, 2, 6, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    loss_fn = nn.CrossEntropyLoss()
    imp = bp.TaylorImportance()
    loss_fn(d(x), y).backward()
    imp.accumulate({"0": layer})
    score = imp.scores({"0": layer})["0"]
    eps = 1e-6
    for i in range(layer.num_bases):
        s0 = layer.scale.detach().clone()
        with torch.no_grad():
            layer.scale[i] = s0[i] * (1 + eps)
            up = loss_fn(d(x), y)
            layer.scale[i] = s0[i] * (1 - eps)
            down = loss_fn(d(x), y)
            layer.scale.copy_(s0)
        fd = ((up - down) / (2 * eps)).abs()  # d L / d log s_i = s_i dL/ds_i
        assert score[i].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-10)


def test_taylor_importance_averages_over_batches():
    """Scores are the mean of per-batch |s * grad| over the batches accumulated."""
    layer = bp.BasisConv2d(nn.Conv2d(2, 3, 1))
    imp = bp.TaylorImportance()
    for g in (torch.tensor([1.0, -2.0]), torch.tensor([3.0, 2.0])):
        layer.scale.grad = g
        imp.accumulate({"a": layer})
    torch.testing.assert_close(imp.scores({"a": layer})["a"], torch.tensor([2.0, 2.0]))


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 20), min_size=1, max_size=5),
    fraction=st.floats(0.01, 0.99),
    scope=st.sampled_from(["global", "layer"]),
    seed=st.integers(0, 10_000),
)
def test_fraction_rule_prunes_lowest_and_respects_min_keep(sizes, fraction, scope, seed):
    """A fraction round never revives units, keeps >= min_keep per layer, and prunes low scores."""
    g = torch.Generator().manual_seed(seed)
    scores = {f"l{i}": torch.rand(n, generator=g) for i, n in enumerate(sizes)}
    masks = {k: (torch.rand(v.numel(), generator=g) > 0.2).float() for k, v in scores.items()}
    for m in masks.values():
        m[0] = 1
    new = select(scores, masks, bp.PruningRule(scope=scope, fraction=fraction))
    live_before = sum(int(m.sum()) for m in masks.values())
    live_after = sum(int(m.sum()) for m in new.values())
    assert all(((new[k] > 0) <= (masks[k] > 0)).all() for k in masks)
    assert all(new[k].sum() >= 1 for k in new)
    if scope == "global":
        assert live_before - live_after <= int(fraction * live_before)
        pruned = [scores[k][i] for k in new for i in range(len(new[k])) if masks[k][i] > new[k][i]]
        kept = [scores[k][i] for k in new for i in range(len(new[k])) if new[k][i] > 0 and new[k].sum() > 1]
        if pruned and kept:
            assert max(pruned) <= min(kept)


def test_threshold_rule_removes_exactly_the_units_below():
    """With a threshold, every live unit under it is pruned and none above."""
    scores = {"a": torch.tensor([0.1, 0.5, 0.05, 0.9]), "b": torch.tensor([0.2, 0.01])}
    masks = {k: torch.ones_like(v) for k, v in scores.items()}
    new = select(scores, masks, bp.PruningRule(fraction=None, threshold=0.15))
    assert new["a"].tolist() == [0, 1, 0, 1] and new["b"].tolist() == [1, 0]


def test_mean_normalisation_equalises_layers():
    """Per-layer mean normalisation makes a uniformly larger layer rank like a smaller one."""
    scores = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([100.0, 200.0, 300.0])}
    masks = {k: torch.ones(3) for k in scores}
    new = select(scores, masks, bp.PruningRule(fraction=0.34, normalize="mean"))
    assert new["a"].tolist() == [0, 1, 1] and new["b"].tolist() == [0, 1, 1]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"fraction": 1.5}, "fraction"), ({"fraction": None}, "exactly one"),
     ({"fraction": None, "threshold": -1.0}, "threshold"), ({"scope": "net"}, "scope"),
     ({"normalize": "z"}, "normalize"), ({"min_keep": 0}, "min_keep")],
)
def test_bad_rules_are_refused(kwargs, match):
    """An out-of-range ratio, threshold or option is a ValueError naming what is allowed."""
    with pytest.raises(ValueError, match=match):
        bp.PruningRule(**kwargs)
