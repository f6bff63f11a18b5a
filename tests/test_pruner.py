"""Invariants of bp.Pruner: the pruning loop inside a user's own training loop."""

import copy

import pytest
import torch
from torch import nn

import basisprune as bp


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 12, 3, groups=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4))


def _batches(n: int = 4, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 3, 9, 9, generator=g), torch.randint(0, 4, (6,), generator=g)) for _ in range(n)]


def _train(model: nn.Module, opt: torch.optim.Optimizer, pruner: bp.Pruner | None, batches) -> list[float]:
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if pruner is not None:
            pruner.accumulate()
        opt.step()
        losses.append(loss.item())
    return losses


def _setup(seed: int = 0, rule: bp.PruningRule | None = None):
    d = bp.decompose(_net(seed), exclude=["6"])
    opt = torch.optim.Adam([p for p in d.parameters() if p.requires_grad], lr=0.01)
    return d, opt, bp.Pruner(d, "basis", rule or bp.PruningRule(fraction=0.3), bp.TaylorImportance())


def test_step_matches_hand_assembled_select_and_apply_masks():
    """pruner.step() sets the masks that select() then apply_masks() set from the same scores."""
    d, opt, pruner = _setup()
    hand = copy.deepcopy(d)
    hopt = torch.optim.Adam([p for p in hand.parameters() if p.requires_grad], lr=0.01)
    imp, hs = bp.TaylorImportance(), bp.basis_layers(hand)
    for x, y in _batches():
        for m, o in ((d, opt), (hand, hopt)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
        pruner.accumulate()
        imp.accumulate(hs)
        opt.step()
        hopt.step()
    step = pruner.step()
    bp.apply_masks(hs, bp.select(imp.scores(hs), {n: h.mask for n, h in hs.items()}, pruner.rule))
    for n, h in bp.basis_layers(d).items():
        torch.testing.assert_close(h.mask, hs[n].mask, rtol=0, atol=0)
        assert step.kept[n] == h.kept and step.removed[n] == h.num_bases - h.kept
    assert step.round == 1 and step.total_removed > 0


def test_scores_accumulate_over_backward_passes_and_reset_after_step():
    """Scores average every accumulate() since the last step; step() starts a fresh average."""
    d, opt, pruner = _setup()
    _train(d, opt, pruner, _batches(3))
    assert pruner.importance.batches == 3
    pruner.step()
    assert pruner.importance.batches == 0
    with pytest.raises(ValueError, match="no batch accumulated"):
        pruner.step()


def test_state_dict_round_trip_resumes_identically():
    """A pruner and model restored mid-round from state_dicts prune and train exactly like the original."""
    d, opt, pruner = _setup()
    _train(d, opt, pruner, _batches(2, seed=1))
    pruner.step()
    _train(d, opt, pruner, _batches(2, seed=2))
    saved = copy.deepcopy((d.state_dict(), opt.state_dict(), pruner.state_dict()))
    d2, opt2, pruner2 = _setup()
    d2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    pruner2.load_state_dict(saved[2])
    for m, o, p in ((d, opt, pruner), (d2, opt2, pruner2)):
        _train(m, o, p, _batches(2, seed=3))
    s1, s2 = pruner.step(), pruner2.step()
    assert s1 == s2 and s1.round == 2
    for a, b in zip(d.state_dict().values(), d2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_load_state_dict_refuses_another_pruner():
    """The state of a channel pruner does not load into a basis pruner (one line naming both)."""
    d, _, pruner = _setup()
    x = torch.randn(2, 3, 9, 9)
    ch = bp.Pruner(bp.add_channel_scales(_net(), x, ignored=["6"]), "channel", importance=bp.ScaleMagnitude())
    with pytest.raises(ValueError, match="channel pruner .* basis pruner"):
        pruner.load_state_dict(ch.state_dict())


def test_double_pruning_is_channel_then_basis():
    """A channel pruner, compaction, decomposition and a basis pruner chain; a basis pruner on a model
    that still has channel scales is refused, naming the order."""
    x = torch.randn(2, 3, 9, 9)
    s = bp.add_channel_scales(_net(), x, ignored=["6"])
    opt = torch.optim.Adam([p for n, p in s.named_parameters() if n.endswith(".scale")], lr=0.01)
    ch = bp.Pruner(s, "channel", bp.PruningRule(fraction=0.3))
    _train(s, opt, ch, _batches())
    assert ch.step().total_removed > 0
    with pytest.raises(ValueError, match="compact the channel-pruned model"):
        bp.Pruner(bp.decompose(s, exclude=["6"]), "basis")
    small = ch.compact(x)
    d = bp.decompose(small, exclude=["6"])
    ba = bp.Pruner(d, "basis", bp.PruningRule(fraction=0.3))
    _train(d, torch.optim.Adam([p for p in d.parameters() if p.requires_grad], lr=0.01), ba, _batches())
    assert ba.step().total_removed > 0
    torch.testing.assert_close(bp.compact(d)(x), d(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("args, match", [
    (dict(model="net"), "model must be a Module"),
    (dict(rule=0.1), "rule must be a PruningRule"),
    (dict(importance="taylor"), "importance must have reset"),
    (dict(kind="weights"), "kind must be 'basis' or 'channel'"),
])
def test_bad_arguments_are_refused_in_one_line(args, match):
    """Each bad argument is refused with one line that names it and what is allowed."""
    kw = dict(model=bp.decompose(_net(), exclude=["6"]), kind="basis")
    kw.update(args)
    with pytest.raises((TypeError, ValueError), match=match) as e:
        bp.Pruner(**kw)
    assert "\n" not in str(e.value)


def test_shrink_trains_and_scores_like_the_masked_model():
    """Dropping pruned bases after each step (shrink) gives the masked model's losses, scores and
    masks over several rounds, within 1e-5 relative."""
    runs = []
    for shrink in (False, True):
        d, opt, pruner = _setup(rule=bp.PruningRule(fraction=0.25))
        losses, scores = [], []
        for r in range(4):
            losses += _train(d, opt, pruner, _batches(3, seed=r))
            sc = pruner.importance.scores(pruner.holders)
            kept = {n: h.mask.bool() for n, h in pruner.holders.items()}
            scores.append(torch.cat([sc[n][kept[n]] for n in sorted(sc)]))
            pruner.step()
            if shrink:
                pruner.shrink(opt)
        runs.append((torch.tensor(losses), torch.cat(scores), {n: h.kept for n, h in pruner.holders.items()}, d))
    (l0, s0, k0, masked), (l1, s1, k1, small) = runs
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=0)
    torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-9)
    assert k0 == k1
    assert sum(h.scale.numel() for h in bp.basis_layers(small).values()) < sum(
        h.scale.numel() for h in bp.basis_layers(masked).values())
    x = _batches(1, seed=9)[0][0]
    torch.testing.assert_close(bp.compact(small)(x), bp.compact(masked)(x), rtol=1e-5, atol=1e-6)
