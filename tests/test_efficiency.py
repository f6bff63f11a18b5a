"""Invariants of the efficiency measurements (tiny models; no timing is ever asserted)."""

import statistics

import pytest
import torch
from torch import nn

import basisprune as bp
from conftest import random_basis_masks
from basisprune.repro import comparison, efficiency, smallnets, speed

SHAPE = (3, 12, 12)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(32, 32, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5),
    ).eval()


def pruned_compact(keep=0.3, seed=0):
    """(decomposed net with random basis masks, its compact model with some kept pairs)."""
    d = bp.decompose(tiny_net(), exclude=["9"]).eval()
    random_basis_masks(d, keep, seed)
    return d, bp.compact(d).eval()


QUICK = {"min_run_time": 0.002, "min_runs": 2, "warmup": 1}


@pytest.mark.parametrize("rounds", [1, 2])
def test_speed_table_rows_have_fields_and_reference_speedup_is_one(rounds):
    """One row per model and batch size, in order, with every field; the reference's speedup is
    exactly 1, another model's is the median over rounds of the reference's round median over its
    own (not its timing against itself), and the FLOP columns agree with count_flops."""
    _, small = pruned_compact()
    models = {"ref": tiny_net(), "small": small}
    rows = speed.speed_table(models, SHAPE, batch_sizes=(1, 3), threads=1, onnx=False, rounds=rounds, **QUICK)
    assert [(r["model"], r["batch_size"]) for r in rows] == [("ref", 1), ("ref", 3), ("small", 1), ("small", 3)]
    fields = {"model", "params", "flops", "param_pruning_ratio", "flop_pruning_ratio", "flop_reduction", "batch_size",
              "median_ms", "p25_ms", "p75_ms", "iqr_ms", "runs", "rounds", "threads", "device", "speedup"}
    x = torch.randn(1, *SHAPE)
    for r in rows:
        assert fields <= set(r)
        assert r["threads"] == 1 and r["rounds"] == rounds and len(r["round_medians_ms"]) == rounds
        m = models[r["model"]]
        assert r["flops"] == bp.count_flops(m, x) and r["params"] == bp.count_params(m)
        assert r["flop_reduction"] == pytest.approx(1 / (1 - r["flop_pruning_ratio"]))
    for r in rows[:2]:
        assert r["speedup"] == 1.0 and r["flop_pruning_ratio"] == 0.0 and r["flop_reduction"] == 1.0
    for ref, r in zip(rows[:2], rows[2:]):  # same batch size
        ratios = [q / m for q, m in zip(ref["round_medians_ms"], r["round_medians_ms"])]
        assert r["speedup"] == pytest.approx(statistics.median(ratios), rel=1e-12)
        assert r["round_medians_ms"] != ref["round_medians_ms"]  # two models, two timings
    assert rows[2]["flops"] < rows[0]["flops"]


def test_speed_table_onnx_columns():
    """With onnx, every row has ONNX Runtime timings from every round and the reference's ONNX
    speedup is 1."""
    rows = speed.speed_table({"ref": tiny_net(), "copy": tiny_net()}, SHAPE, batch_sizes=(2,), threads=1,
                                  onnx=True, onnx_repeats=2, rounds=2, **QUICK)
    for r in rows:
        assert r["onnx_error"] is None and r["onnx_median_ms"] > 0 and r["onnx_exporter"] == "legacy"
        assert len(r["onnx_round_medians_ms"]) == 2
    assert rows[0]["onnx_speedup"] == 1.0
    assert "b2 speedup" in speed.latency_pivot(rows, "onnx").columns


def test_speed_table_refuses_empty_and_bad_rounds():
    with pytest.raises(ValueError, match="empty"):
        speed.speed_table({}, SHAPE)
    with pytest.raises(ValueError, match="rounds"):
        speed.speed_table({"ref": tiny_net()}, SHAPE, rounds=0)


def test_lift_pairs_keeps_the_function_and_finds_every_pair():
    """Lifting the kept pairs of a compact model back to basis layers changes no output; each pair
    becomes one basis layer with all its bases kept."""
    d, small = pruned_compact()
    pairs = [n for n, m in small.named_modules() if isinstance(m, nn.Sequential) and len(m) == 2 and n]
    assert pairs, "the fixture should leave at least one kept pair"
    lifted = speed.lift_pairs(small)
    assert set(bp.basis_layers(lifted)) == set(pairs)
    assert all(l.kept == l.num_bases for l in bp.basis_layers(lifted).values())
    x = torch.randn(4, *SHAPE)
    torch.testing.assert_close(lifted(x), small(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(small(x), d(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pair_faster", [True, False])
def test_latency_compact_follows_the_timings(pair_faster):
    """With fake timings, pairs survive exactly when they are faster; the output never changes."""
    _, small = pruned_compact()

    def timer(module, x):  # a Sequential is the pair, a plain conv the folded layer
        return (1.0 if pair_faster else 3.0) if isinstance(module, nn.Sequential) else 2.0

    x = torch.randn(1, *SHAPE)
    out, decisions = speed.latency_compact(small, x, batch_sizes=(1, 2), timer=timer)
    assert decisions and all(dec["fold"] is (not pair_faster) for dec in decisions)
    assert all(dec["reason"] == ("pair faster" if pair_faster else "latency") for dec in decisions)
    n_pairs = sum(isinstance(m, nn.Sequential) and len(m) == 2 for n, m in out.named_modules() if n)
    assert n_pairs == (len(decisions) if pair_faster else 0)
    xb = torch.randn(3, *SHAPE)
    torch.testing.assert_close(out(xb), small(xb), rtol=1e-4, atol=1e-4)


def test_latency_compact_without_pairs_is_a_copy():
    net = tiny_net()
    out, decisions = speed.latency_compact(net, torch.randn(1, *SHAPE))
    assert decisions == [] and out is not net
    x = torch.randn(2, *SHAPE)
    torch.testing.assert_close(out(x), net(x))


@pytest.mark.parametrize("target", [0.3, 0.6])
def test_peer_at_target_flops_has_at_most_the_target(target):
    """The peer pruned to our FLOP ratio has at most our FLOPs (and the reference is untouched)."""
    torch.manual_seed(0)
    ref = smallnets.resnet20(num_classes=4, in_channels=1, width=8)
    x = torch.randn(1, 1, 16, 16)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    net, info = comparison.prune_to_flops(ref, x, target)
    flops, flops_ref = bp.count_flops(net, x), bp.count_flops(ref, x)
    assert flops <= (1 - target) * flops_ref
    assert info["flop_pruning_ratio"] >= target
    assert all(torch.equal(v, before[k]) for k, v in ref.state_dict().items())


def test_peer_with_nothing_to_prune_is_a_copy():
    ref = tiny_net()
    net, info = comparison.prune_to_flops(ref, torch.randn(1, *SHAPE), 0.0)
    assert net is not ref and info["pruning_ratio"] == 0.0
    assert bp.count_params(net) == bp.count_params(ref)


def _history(warmup, rounds, per_round, start=0):
    """Rows of a stage: round k's model has trained start + warmup + k * per_round epochs."""
    return [{"round": k, "epochs": start + warmup + k * per_round} for k in range(rounds)]


def test_training_epochs_counts_every_epoch_trained():
    """A stage trained its warm-up plus epochs_per_round per round run (selected or not); double
    pruning's basis stage starts from the channel stage's selected model, so only the epochs it
    added count (its one scoring epoch, not the profile's warm-up)."""
    p = {"epochs_per_round": 2, "warmup_epochs": 5}
    basis = {"experiment": "basis_pruning", "params": p, "history": _history(5, 21, 2)}
    assert comparison.training_epochs(basis) == {"channel": 0, "basis": 5 + 40, "total": 45}
    channel = {"experiment": "channel_pruning", "params": p, "history": _history(3, 4, 2)}
    assert comparison.training_epochs(channel)["total"] == 3 + 6
    ch = {"history": _history(3, 13, 2), "final": {"epochs": 3 + 2 * 4}}  # round 4 selected
    dp = {"experiment": "double_pruning", "params": p,
          "stages": {"channel": ch, "basis": {"history": _history(1, 9, 2, start=11)}}}
    assert comparison.training_epochs(dp) == {"channel": 3 + 24, "basis": 1 + 16, "total": 44}


def _comparison(ours_s, reached_s, whole_s, acc_ours=0.9, acc_peer=0.9):
    return {"experiment": "basis_pruning", "dataset": "d",
            "ours": {"accuracy_test": acc_ours, "flop_pruning_ratio": 0.5, "pipeline_seconds": ours_s,
                     "pipeline_seconds_source": "this run", "epochs": {"total": 10}},
            "peer": {"accuracy_test": acc_peer, "flop_pruning_ratio": 0.51, "epochs_run": 10, "seconds": whole_s,
                     "prune_seconds": 1.0, "reached_epoch": None if reached_s is None else 3,
                     "reached_seconds": reached_s}}


def _rows(ours_ms, peer_ms, ref_ms=100.0, reduction=4.0):
    def row(model, ms, red):
        return {"model": model, "batch_size": 64, "median_ms": ms, "p25_ms": ms * 0.95, "p75_ms": ms * 1.05,
                "speedup": ref_ms / ms, "flop_reduction": red, "device": "cpu", "threads": 1}
    return [row("ref", ref_ms, 1.0), row("ours", ours_ms, reduction), row("peer", peer_ms, reduction)]


def test_assess_targets_logic():
    """(a) speedup vs half the FLOP reduction, (b) speed at equal accuracy, (c) time ratio, and the
    not-reached and not-measured cases."""
    v = efficiency.assess_targets(_rows(40.0, 50.0), _comparison(10.0, 40.0, 100.0), ours="ours", peer="peer")
    assert v["a"]["met"] and v["b"]["met"] and v["c"]["met"] and v["c"]["ratio"] == pytest.approx(0.25)
    v = efficiency.assess_targets(_rows(60.0, 50.0), _comparison(20.0, 40.0, 100.0), ours="ours", peer="peer")
    assert v["a"]["met"] is False and v["b"]["met"] is False and v["c"]["met"] is False
    more_accurate_peer = _comparison(10.0, 40.0, 100.0, acc_ours=0.8, acc_peer=0.9)
    v = efficiency.assess_targets(_rows(40.0, 50.0), more_accurate_peer, ours="ours", peer="peer")
    assert v["b"]["met"] is False
    never = efficiency.assess_targets(_rows(40.0, 50.0), _comparison(10.0, None, 100.0), ours="ours", peer="peer")["c"]
    assert never["met"] is True and never["ratio_bound"] == pytest.approx(0.1)
    assert efficiency.assess_targets(_rows(40.0, 50.0), _comparison(50.0, None, 100.0), ours="ours",
                                     peer="peer")["c"]["met"] is None
    assert efficiency.assess_targets(_rows(40.0, 50.0), _comparison(None, 40.0, 100.0), ours="ours",
                                     peer="peer")["c"]["met"] is None
    cost = efficiency.pipeline_cost([_comparison(10.0, 40.0, 100.0), _comparison(10.0, None, 100.0)])
    assert cost[0]["time_ratio"] == pytest.approx(0.25) and cost[1]["time_ratio_bound"] == pytest.approx(0.1)


def test_never_slower():
    rows = _rows(40.0, 120.0)
    assert efficiency.never_slower(rows, "ours", "ref")["slower_median_at"] == []
    v = efficiency.never_slower(rows, "peer", "ref")
    assert v["slower_median_at"] == [64] and v["clearly_slower_at"] == [64] and v["min_speedup"] < 1


def _our_run(workdir, accuracy_test):
    """A stand-in for our run's record: what peer_comparison reads of it (nothing to prune, 3 epochs)."""
    return {"experiment": "basis_pruning", "params": {"epochs_per_round": 1}, "history": [{"epochs": 3}],
            "workdir": str(workdir), "reference": {"params": 100, "flops": 100},
            "final": {"flop_pruning_ratio": 0.0, "accuracy_test": accuracy_test, "params": 100, "flops": 100,
                      "param_pruning_ratio": 0.0}}


def test_cached_peer_run_answers_the_requests_its_history_covers(tmp_path):
    """Fine-tuning is seeded, so a cached peer run answers a shorter request, and a stop-at-target
    request it reaches, with its first epochs; a longer request is computed anew, and its first
    epochs are the cached run's."""
    tiny = dict(subset_train=64, subset_test=32, batch_size=32)
    ask = lambda acc, **kw: comparison.peer_comparison("smoke", experiment="basis_pruning",
                                                       record=_our_run(tmp_path, acc), **tiny, **kw)["peer"]
    strip = lambda hist: [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in hist]
    first = ask(2.0, epochs=2)  # an accuracy no run reaches
    assert not first["cached"] and [h["epoch"] for h in first["history"]] == [0, 1, 2]
    shorter = ask(2.0, epochs=1)
    assert shorter["cached"] and shorter["history"] == first["history"][:2]
    assert shorter["accuracy_test"] == first["history"][1]["accuracy_test"] and shorter["epochs_run"] == 1
    best = max(h["accuracy_test"] for h in first["history"])
    reached = next(h["epoch"] for h in first["history"] if h["accuracy_test"] >= best)
    stopped = ask(best, epochs=10, stop_at_target=True)
    assert stopped["cached"] and stopped["epochs_run"] == stopped["reached_epoch"] == reached
    longer = ask(2.0, epochs=3)
    assert not longer["cached"] and [h["epoch"] for h in longer["history"]] == [0, 1, 2, 3]
    assert strip(longer["history"][:3]) == strip(first["history"])


def test_speed_targets_logic():
    """(never) no model slower than the reference, (ratio) speedup against fraction of the compact
    model's FLOP reduction, (peer) at least as fast as the peer; and not-measured cases."""
    rows = _rows(40.0, 50.0)  # ours 2.5x faster, compact model 4x fewer FLOPs, peer 2x faster
    rows.append({**rows[1], "model": "compact", "median_ms": 80.0})
    v = efficiency.speed_targets(rows, ours="ours", pruned="compact", peer="peer", reference="ref", fraction=0.5)
    assert v["never"]["met"] and v["ratio"]["met"] and v["peer"]["met"]
    assert v["ratio"]["required"] == pytest.approx(2.0) and v["peer"]["speed_ratio"] == pytest.approx(1.25)
    v = efficiency.speed_targets(rows, ours="ours", pruned="compact", peer="peer", reference="ref", fraction=0.7)
    assert v["ratio"]["met"] is False  # 2.5x < 0.7 * 4x
    slow = _rows(60.0, 120.0)
    v = efficiency.speed_targets(slow, ours="ours", pruned="ours", peer="peer", reference="ref")
    assert v["never"]["met"] is False and v["never"]["slower"] == {"peer": [64]} and v["peer"]["met"]
    v = efficiency.speed_targets(slow, ours="ours", pruned="ours", peer="absent", reference="ref", backend="onnx")
    assert v["ratio"]["met"] is None and v["peer"]["met"] is None and v["never"]["met"] is True


def test_inference_forms_label_and_summarise():
    """Each model gets one inference form, labelled with FORM, on the CPU, computing its outputs;
    the summary counts its folded batch norms."""
    _, small = pruned_compact()
    x = torch.randn(2, *SHAPE)
    forms, summary = speed.inference_forms({"ref": tiny_net(), "small": small}, x, (1, 2), merge="flops",
                                                memory_format="contiguous")
    assert list(forms) == ["ref" + speed.FORM, "small" + speed.FORM]
    assert [s["batch norms folded"] for s in summary] == [1, 1]
    with torch.no_grad():
        torch.testing.assert_close(forms["small" + speed.FORM](x), small(x), rtol=1e-4, atol=1e-5)


def test_speed_table_extra_mode_columns(monkeypatch):
    """An extra mode adds its columns to every row (timings from bench.latency in that mode; a
    model that fails gets an error and no timings); an unknown mode is refused."""
    from basisprune import bench

    real = bench.latency

    def fake(model, *args, mode="eager", **kwargs):
        if mode == "compile" and isinstance(model, nn.Sequential) and len(model) == 1:
            raise RuntimeError("cannot compile")
        return real(model, *args, **kwargs)  # eager timings stand in for compiled ones

    monkeypatch.setattr(bench, "latency", fake)
    models = {"ref": tiny_net(), "copy": tiny_net(), "broken": nn.Sequential(tiny_net())}
    rows = speed.speed_table(models, SHAPE, batch_sizes=(1,), threads=1, onnx=False, modes=("compile",), **QUICK)
    assert rows[0]["compile_speedup"] == 1.0 and rows[1]["compile_median_ms"] > 0
    assert rows[2]["compile_error"].startswith("RuntimeError") and rows[2]["compile_median_ms"] is None
    assert "b1 speedup" in speed.latency_pivot(rows, "compile").columns
    with pytest.raises(ValueError, match="modes"):
        speed.speed_table(models, SHAPE, modes=("turbo",))
