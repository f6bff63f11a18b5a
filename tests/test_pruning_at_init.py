"""Tests for basisprune.repro.pai_experiment: the pruning-at-initialization experiments (chapter 6)."""

from __future__ import annotations

import types

import pytest
import torch

from basisprune import pai
from basisprune.repro import data, pai_experiment as pe, smallnets
from basisprune.repro.train import seed_everything

# Tiny smoke settings: a few hundred images, one epoch, width-4 vgg_small.
TINY = dict(subset_train=96, subset_test=64, batch_size=32, prune_batch_size=16, synflow_iterations=3)


@pytest.mark.parametrize("method, sparsity", [("prospr", 0.8), ("snip", 0.5), ("synflow", 0.9), ("dense", 0.0)])
def test_from_scratch_density_and_accuracy(method, sparsity):
    """The kept fraction of prunable weights is 1 - sparsity (to one weight), accuracy is a fraction."""
    r = pe.from_scratch(method, sparsity, 0, "smoke", **TINY)
    assert {"method", "sparsity", "seed", "accuracy_test", "density_kept", "prune_seconds",
            "train_seconds"} <= set(r)
    assert r["method"] == method and r["sparsity"] == sparsity and r["seed"] == 0
    assert r["density_kept"] == pytest.approx(1 - sparsity, abs=1 / r["prunable_weights"])
    assert r["kept_weights"] == round((1 - sparsity) * r["prunable_weights"])
    assert 0.0 <= r["accuracy_test"] <= 1.0
    assert r["pruned_nonzero_after_training"] == 0
    assert r["train_seconds"] > 0
    if method == "dense":
        assert r["prune_seconds"] == 0 and r["density_kept"] == 1.0
    else:  # scoring took measurable time
        assert r["prune_seconds"] > 0


def test_prune_seconds_is_the_time_spent_pruning(monkeypatch):
    """prune_seconds is the clock time spent in pai.prune: with a clock that only pai.prune moves
    (by 7 s), it is 7 s, and training, which does not move it, adds nothing."""
    now = [100.0]
    real_prune = pe.pai.prune

    def prune_taking_7s(*args, **kwargs):
        now[0] += 7.0
        return real_prune(*args, **kwargs)

    monkeypatch.setattr(pe.pai, "prune", prune_taking_7s)
    monkeypatch.setattr(pe, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    r = pe.from_scratch("snip", 0.5, 0, "smoke", **TINY)
    assert r["prune_seconds"] == 7.0 and r["train_seconds"] == 0.0


def test_pruned_weights_stay_zero_after_training():
    """Training moves the kept weights; every pruned weight is exactly zero afterwards."""
    r = pe.from_scratch("snip", 0.7, 1, "smoke", return_model=True, **TINY)
    model = r["model"]
    seed_everything(1)  # from_scratch builds the network right after seeding with the run's seed
    init = smallnets.build("vgg_small", 10, 3, width=4)
    init_params = dict(init.named_parameters())
    modules = dict(model.named_modules())
    n_pruned = n_moved = 0
    for name in pai.prunable_weights(init):
        mname, _, pname = name.rpartition(".")
        module = modules[mname]
        mask = getattr(module, f"{pname}_mask")
        weight = getattr(module, pname).detach()
        orig = getattr(module, f"{pname}_orig").detach()
        assert torch.all(weight[mask == 0] == 0)
        assert torch.all(orig[mask == 0] == 0)
        n_pruned += int((mask == 0).sum())
        n_moved += int((weight[mask == 1] != init_params[name][mask == 1]).sum())
    assert n_pruned == r["prunable_weights"] - r["kept_weights"] > 0
    assert n_moved > 0  # it did train


def test_same_seed_same_result():
    a = pe.from_scratch("magnitude", 0.5, 2, "smoke", **TINY)
    b = pe.from_scratch("magnitude", 0.5, 2, "smoke", **TINY)
    assert a["accuracy_test"] == b["accuracy_test"] and a["loss_test"] == b["loss_test"]


@pytest.mark.parametrize(
    "args, kwargs, match",
    [(("nope", 0.5, 0), {}, "allowed: dense, prospr"),
     (("snip", 1.0, 0), {}, r"sparsity must be a number in \[0, 1\)"),
     (("snip", -0.1, 0), {}, "sparsity"),
     (("snip", "0.5", 0), {}, "sparsity"),
     (("dense", 0.5, 0), {}, "sparsity must be 0"),
     (("snip", 0.5, -1), {}, "seed"),
     (("snip", 0.5, 0, "huge"), {}, "profile must be one of smoke, default, gpu, paper"),
     (("snip", 0.5, 0, "smoke"), {"epoch": 3}, "allowed:"),
     (("snip", 0.5, 0, "smoke"), {"net": "resnet50"}, "allowed: resnet20, vgg_small"),
     (("snip", 0.5, 0, "smoke"), {"optimizer": "lbfgs"}, "allowed: sgd, adamw"),
     (("snip", 0.5, 0, "smoke"), {"epochs": 0}, "epochs"),
     (("snip", 0.5, 0, "smoke"), {"dataset": "imagenet"}, "allowed:")],
)
def test_bad_input_fails_before_work(args, kwargs, match, monkeypatch):
    """Bad names and values raise ValueError naming what is allowed, before any data is loaded."""

    def no_work(*a, **k):
        raise AssertionError("work started before the input was validated")

    monkeypatch.setattr(data, "load", no_work)
    monkeypatch.setattr(data, "make_loaders", no_work)
    with pytest.raises(ValueError, match=match):
        pe.from_scratch(*args, **kwargs)


def test_grid_and_transfer_validation(monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("work started before the input was validated")

    monkeypatch.setattr(data, "load", no_work)
    monkeypatch.setattr(data, "make_loaders", no_work)
    with pytest.raises(ValueError, match="allowed: dense"):
        pe.scratch_grid("smoke", methods=["prospr", "obd"])
    with pytest.raises(ValueError, match="each sparsity"):
        pe.scratch_grid("smoke", sparsities=[0.5, 1.2])
    with pytest.raises(ValueError, match="allowed: prospr"):
        pe.transfer("obd", 0.5, 0, "smoke")
    with pytest.raises(ValueError, match="sparsity"):
        pe.transfer("snip", 1.5, 0, "smoke")
    with pytest.raises(ValueError, match="allowed: basis_pruning, double_pruning"):
        pe.transfer_targets("smoke", targets=["channel_pruning"])
    with pytest.raises(ValueError, match="allowed: resnet20, vgg_small"):
        pe.prune_cost("snip", model="resnet18")
    with pytest.raises(ValueError, match="allowed: prospr"):
        pe.prune_cost("obd")
    with pytest.raises(ValueError, match="repeats"):
        pe.prune_cost("snip", repeats=0)


def test_scratch_grid_and_table():
    records = pe.scratch_grid("smoke", methods=["random"], sparsities=[0.5], seeds=[0, 1], progress=False, **TINY)
    assert [(r["method"], r["seed"]) for r in records] == [("dense", 0), ("dense", 1), ("random", 0), ("random", 1)]
    table = pe.accuracy_table(records)
    assert list(table.index) == ["dense", "random"]
    assert list(table.columns) == ["0%", "50%"]
    assert "±" in table.loc["random", "50%"]


def test_layer_collapse_is_flagged_not_fatal():
    """When the global top-k empties a layer, pai.prune refuses; the experiment keeps that mask."""
    torch.manual_seed(0)
    net = smallnets.vgg_small(10, 3, width=4)
    with torch.no_grad():
        net.features[3].weight.mul_(1e-6)  # second conv: tiny weights, lowest magnitudes
    masks, collapsed = pe._prune(net, "magnitude", 0.9, None, {})
    assert collapsed
    assert masks["features.3.weight"].sum() == 0
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * total)
    masks, collapsed = pe._prune(net, "magnitude", 0.01, None, {})  # 47 of its 144 weights go
    assert not collapsed


def test_matched_sparsity_equal_parameter_count():
    net = smallnets.resnet20(10, 3, width=4)
    total = sum(p.numel() for p in net.parameters())
    prunable = sum(dict(net.named_parameters())[n].numel() for n in pai.prunable_weights(net))
    m = pe.matched_sparsity(net, 0.3 * total)
    assert m["reference"] == total and m["prunable"] == prunable
    assert m["kept"] + m["non_prunable"] == round(0.3 * total)
    assert m["sparsity"] == pytest.approx(1 - m["kept"] / prunable)
    assert pe.matched_sparsity(net, total)["sparsity"] == 0.0
    with pytest.raises(ValueError, match="prunable weights"):
        pe.matched_sparsity(net, total - prunable)  # nothing left to keep
    with pytest.raises(ValueError, match="prunable weights"):
        pe.matched_sparsity(net, total + 10)


def test_prune_cost_tiny():
    r = pe.prune_cost("prospr", repeats=3, model="resnet20", batch=2, steps=1, width=2, image_size=8, sparsity=0.5)
    assert len(r["times_seconds"]) == 3
    assert min(r["times_seconds"]) <= r["median_seconds"] <= max(r["times_seconds"])
    assert r["hardware"]["cpu_model"] and r["hardware_name"]
    assert r["batch"] == 2 and r["steps"] == 1
