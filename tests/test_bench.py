"""Invariants of the latency benchmarks and of latency-aware compaction (timings are never asserted).

Timings use one thread (``threads=1``) where the thread count is not the point: on a shared CPU,
OpenMP threads contending for cores make tiny convolutions hundreds of times slower.
"""

import pytest
import torch
from torch import nn

import basisprune as bp
from conftest import random_basis_masks
from basisprune import bench
from basisprune.repro.onnx_timing import onnx_latency

SHAPE = (3, 12, 12)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )


def pruned_basis_net(keep=0.4, seed=0):
    """A decomposed tiny net with random basis masks (>= 1 basis per group) and random scales."""
    torch.manual_seed(seed)
    d = bp.decompose(tiny_net(), exclude=["11"]).eval()
    random_basis_masks(d, keep, seed)
    return d


FIELDS = {"batch_size", "median_ms", "p25_ms", "p75_ms", "iqr_ms", "mean_ms", "runs", "number_per_run",
          "throughput_ips", "threads", "device", "device_name", "backend"}


def test_latency_one_record_per_batch_size_with_fields():
    """latency() returns one record per batch size, in order, with every field and a positive median."""
    recs = bench.latency(tiny_net(), SHAPE, batch_sizes=(1, 3), threads=1, min_run_time=0.005, min_runs=3,
                         label="tiny")
    assert [r["batch_size"] for r in recs] == [1, 3]
    for r in recs:
        assert FIELDS <= set(r)
        assert r["median_ms"] > 0 and r["runs"] >= 3 and r["p25_ms"] <= r["median_ms"] <= r["p75_ms"]
        assert r["threads"] == 1 and r["model"] == "tiny" and r["device"] == "cpu"


def test_latency_runs_in_eval_mode_and_restores_mode():
    """A model with BatchNorm and Dropout gives the same eval output before and after latency(),
    so BN statistics were not updated (eval mode), and its training flag is restored."""
    torch.manual_seed(0)
    m = tiny_net().train()
    x = torch.randn(4, *SHAPE)
    m.eval()
    before = m(x)
    m.train()
    bench.latency(m, SHAPE, batch_sizes=(2,), threads=1, min_run_time=0.01, min_runs=2)
    assert m.training and all(mod.training for mod in m.modules())
    m.eval()
    torch.testing.assert_close(m(x), before, rtol=0, atol=0)


def test_latency_threads_are_stated_and_restored():
    """Without ``threads`` the current torch thread count is recorded; with ``threads`` that count
    is used and recorded, and the previous torch thread count comes back afterwards."""
    old = torch.get_num_threads()
    assert bench.latency(nn.Flatten(), SHAPE, batch_sizes=(1,), min_run_time=0.001)[0]["threads"] == old
    recs = bench.latency(nn.Flatten(), SHAPE, batch_sizes=(1,), threads=1, min_run_time=0.001, min_runs=2)
    assert recs[0]["threads"] == 1 and torch.get_num_threads() == old


def test_onnx_round_trip_matches_torch():
    """onnxruntime's output of an exported compact (basis-pruned) net equals torch's to 1e-4, at
    several batch sizes through one dynamic batch axis."""
    c = bp.compact(pruned_basis_net()).eval()
    assert any(isinstance(m, nn.Sequential) for m in c.modules() if m is not c)  # a pair survives
    recs = onnx_latency(c, SHAPE, batch_sizes=(1, 3), repeats=2, warmup=1, threads=1)
    assert [r["batch_size"] for r in recs] == [1, 3]
    for r in recs:
        assert r["max_abs_diff"] <= 1e-4 and r["median_ms"] > 0 and r["backend"] == "onnxruntime"


def _pairs(model):
    return [m for m in model.modules() if isinstance(m, nn.Sequential) and len(m) == 2
            and isinstance(m[1], nn.Conv2d) and m[1].kernel_size == (1, 1)]


def test_latency_fold_rule_folds_every_slower_pair():
    """When every pair is timed slower than its folded conv, the compact model has no pair left."""
    d = pruned_basis_net(keep=0.2)
    assert _pairs(bp.compact(d))  # the parameter rule alone keeps some pairs
    slow_pairs = lambda module, x: 2.0 if isinstance(module, nn.Sequential) else 1.0  # noqa: E731
    rule = bench.latency_fold_rule(d, torch.randn(2, *SHAPE), batch_sizes=(1, 4), timer=slow_pairs)
    assert not _pairs(bp.compact(d, fold_rule=rule))
    assert all(r["fold"] for r in rule.records)


def test_latency_fold_rule_keeps_faster_pairs_only_if_params_allow():
    """With pairs timed faster, the rule folds exactly the layers fold_by_params folds."""
    d = pruned_basis_net(keep=0.6, seed=3)
    fast_pairs = lambda module, x: 1.0 if isinstance(module, nn.Sequential) else 2.0  # noqa: E731
    rule = bench.latency_fold_rule(d, torch.randn(2, *SHAPE), batch_sizes=(1,), timer=fast_pairs)
    from basisprune.compact import kept_indices, fold_by_params

    for name, layer in bp.basis_layers(d).items():
        k = kept_indices(layer)[1]
        assert rule(name, layer, k) == fold_by_params(name, layer, k)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_latency_fold_rule_compact_equals_masked_and_never_grows(seed):
    """With real (short) timings, the compact model gives the masked model's outputs and has no
    more parameters than the unpruned model."""
    torch.manual_seed(seed)
    base = tiny_net().eval()
    d = pruned_basis_net(keep=0.3 + 0.3 * seed, seed=seed)
    rule = bench.latency_fold_rule(d, torch.randn(2, *SHAPE), batch_sizes=(1, 2),
                                   min_run_time=0.002, min_runs=2, threads=1)
    c = bp.compact(d, fold_rule=rule).eval()
    x = torch.randn(3, *SHAPE)
    torch.testing.assert_close(c(x), d(x), rtol=1e-4, atol=1e-5)
    assert bp.count_params(c) <= bp.count_params(base)


def test_latency_fold_rule_needs_basis_layers():
    """A model without basis layers is refused with a ValueError."""
    with pytest.raises(ValueError, match="basis layers"):
        bench.latency_fold_rule(tiny_net(), torch.randn(1, *SHAPE))


def test_latency_mode_is_recorded_and_unknown_modes_refused():
    """Eager records say so with no setup time; an unknown mode, or CUDA graphs without CUDA,
    raise ValueError."""
    rec = bench.latency(tiny_net(), SHAPE, batch_sizes=(1,), threads=1, min_run_time=0.002, min_runs=2)[0]
    assert rec["mode"] == "eager" and rec["setup_s"] == 0.0
    with pytest.raises(ValueError, match="mode"):
        bench.latency(tiny_net(), SHAPE, mode="turbo")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cudagraph"):
            bench.latency(tiny_net(), SHAPE, mode="cudagraph")


@pytest.mark.slow
def test_latency_compile_mode_times_a_compiled_model():
    """torch.compile mode compiles once per batch size (setup_s > 0) and times the compiled model."""
    recs = bench.latency(tiny_net(), SHAPE, batch_sizes=(1, 2), threads=1, min_run_time=0.002, min_runs=2,
                         mode="compile")
    assert [r["mode"] for r in recs] == ["compile", "compile"]
    assert all(r["setup_s"] > 0 and r["median_ms"] > 0 for r in recs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_gives_the_eager_output():
    """The CUDA-graph callable returns the eager model's output for a new input of the same shape."""
    m = tiny_net().cuda().eval()
    x = torch.randn(2, *SHAPE, device="cuda")
    with torch.no_grad():
        run = bench._cuda_graph(m, x)
        y = torch.randn(2, *SHAPE, device="cuda")
        torch.testing.assert_close(run(y).clone(), m(y))


def test_clearly_faster_needs_a_margin_and_most_rounds():
    """An alternative replaces the default only when its median paired ratio is below 1 - margin
    and its upper quartile below 1: ties and one lucky round keep the default, a clear win does not."""
    base = [[1.0, 1.0]] * 5
    assert not bench.clearly_faster([[0.99, 1.0]] * 5, base)["faster"]  # within the margin
    lucky = [[0.5, 0.5]] + [[1.01, 1.0]] * 4
    assert not bench.clearly_faster(lucky, base)["faster"]
    noisy_win = [[0.6, 0.6]] * 4 + [[3.0, 3.0]]  # one round hit by load on a shared machine
    assert bench.clearly_faster(noisy_win, base)["faster"]
    mixed = [[0.5, 1.0]] * 5  # faster at one input only
    assert bench.clearly_faster(mixed, base)["faster"] and not bench.clearly_faster(mixed, base, each=True)["faster"]


def test_interleaved_times_rotates_the_order_and_pairs_rounds():
    """Every candidate is timed once per input and round, and no candidate is always timed first."""
    calls = []

    def timer(module, x):
        calls.append(module)
        return float(len(calls))

    a, b, c = nn.Identity(), nn.ReLU(), nn.Tanh()
    xs = [torch.zeros(1), torch.zeros(2)]
    t = bench.interleaved_times([(a, xs), (b, xs), (c, xs)], timer, rounds=4)
    assert [len(tc) for tc in t] == [4, 4, 4] and all(len(r) == 2 for tc in t for r in tc)
    assert len(calls) == 3 * 4 * 2
    firsts = {id(calls[r * 6]) for r in range(4)}
    assert len(firsts) > 1


def test_latency_fold_rule_folds_pairs_that_tie_with_the_folded_conv():
    """A pair timed within 1% of its folded conv (a tie) is folded: where pruning a layer does not
    pay, the layer stays as it was."""
    d = pruned_basis_net(keep=0.2)
    tie = lambda module, x: 0.995 if isinstance(module, nn.Sequential) else 1.0  # noqa: E731
    rule = bench.latency_fold_rule(d, torch.randn(2, *SHAPE), batch_sizes=(1, 4), timer=tie, rounds=3)
    timed = [r for r in rule.records if r["reason"] != "params"]
    assert timed and all(r["fold"] and r["reason"] == "latency" for r in timed)
    assert rule.timed_on["device"] == "cpu" and rule.timed_on["threads"] >= 1
